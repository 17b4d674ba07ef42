"""Benchmark the math-aware vote and answer extraction (issue 11 item 3, issue 14 item 4).

Prints, as the median over ``--runs`` runs (each with a fresh answer mix and sympy's and math-verify's
caches cleared, since each training step sees new answers):

- the cost of voting 16 prompts x 32 MATH-style answers (``cluster_answers(..., "math")`` per group):
  integers, fractions, radicals, intervals and tuples written in several equivalent forms, wrong
  answers, about 10% unreadable (None) and one or two adversarial answers per group;
- the cost of one group of 8 adversarial answers (exponent towers, factorial chains, ``\\frac{`` * 5000);
- extraction time of 100 kB and 1 MB adversarial completions (open tags, ``$`` runs, unclosed boxes).

    python experiments/bench_vote.py --runs 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from math_verify.parser import parse_latex_cached
from sympy.core.cache import clear_cache

from srtlab.answers.canonical import ScoreStats, cluster_answers
from srtlab.answers.extract import extract_answer

# (correct forms, wrong answers) of one problem; equivalent forms of the right answer vote together
PROBLEMS: list[tuple[list[str], list[str]]] = [
    (["12", "12.0", r"12 \text{ cm}", "012"], ["13", "24", "6"]),
    ([r"\frac{3}{4}", "3/4", r"\dfrac{3}{4}", "0.75"], [r"\frac{4}{3}", "0.7", r"\frac{1}{4}"]),
    ([r"2\sqrt{3}", r"\sqrt{12}", r"2 \sqrt 3"], [r"\sqrt{3}", r"3\sqrt{2}", "4"]),
    ([r"(1, 5]", r"\left(1,5\right]", "(1,5]"], ["[1, 5]", "(1, 5)", r"(-\infty, 5]"]),
    ([r"\left( 2, -\frac{1}{2} \right)", "(2,-1/2)", "(2, -0.5)"], ["(2, 1/2)", "(-2, -1/2)"]),
    ([r"\frac{\pi}{6}", r"\pi/6"], [r"\frac{\pi}{3}", "30"]),
    ([r"x^2 + 2x + 1", r"(x+1)^2"], [r"x^2 + 1", r"(x-1)^2"]),
    (["-7", r"-7.00"], ["7", "-6"]),
]
ADVERSARIAL = [r"2^{2^{2^{30}}}", r"10^{10^{10^{10}}}", "9!!!!!!!!!!!!", "\\frac{" * 5000,
               "(" * 30 + "1" + ")" * 30, r"3^{10^{9}}", r"\sum_{i=1}^{10^{10}} i", "1" * 100_000]


def make_group(rng: random.Random, size: int) -> list[str | None]:
    """One prompt's answers: ~45% right (any form), ~35% wrong, ~10% None, 1-2 adversarial."""
    right, wrong = PROBLEMS[rng.randrange(len(PROBLEMS))]
    answers: list[str | None] = rng.sample(ADVERSARIAL, rng.randint(1, 2))
    while len(answers) < size:
        draw = rng.random()
        answers.append(rng.choice(right) if draw < 0.5 else rng.choice(wrong) if draw < 0.88 else None)
    rng.shuffle(answers)
    return answers


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes, with sympy's and math-verify's caches cleared first."""
    clear_cache()
    parse_latex_cached.cache_clear()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    cluster_answers(["1/2", "0.5"], "math")  # import-time warm-up, not measured

    batch_times, stats = [], ScoreStats()
    for run in range(args.runs):
        rng = random.Random(run)
        groups = [make_group(rng, args.samples) for _ in range(args.prompts)]
        batch_times.append(timed(lambda groups=groups: [cluster_answers(g, "math", stats=stats) for g in groups]))
    print(f"vote {args.prompts} x {args.samples} math answers: median {statistics.median(batch_times):.2f} s "
          f"(runs: {', '.join(f'{t:.2f}' for t in batch_times)}); per run: refused {stats.refused / args.runs:.0f}, "
          f"timeouts {stats.timeouts / args.runs:.1f}, text_only {stats.text_only / args.runs:.1f}")

    adversarial = [timed(lambda: cluster_answers(ADVERSARIAL, "math")) for _ in range(args.runs)]
    print(f"one group of 8 adversarial answers: median {statistics.median(adversarial) * 1000:.1f} ms")

    for size in (100_000, 1_000_000):
        texts = {"open tags": "<answer>" * (size // 8), "dollar run": r"\boxed{" + "$" * size + "}",
                 "unclosed box": r"\boxed{" + "{" * size, "answer lines": "Answer: x " * (size // 10)}
        cost = {name: statistics.median(timed(lambda t=t: extract_answer(t)) for _ in range(args.runs))
                for name, t in texts.items()}
        print(f"extract {size // 1000} kB: " + ", ".join(f"{name} {s * 1000:.1f} ms" for name, s in cost.items()))


if __name__ == "__main__":
    main()
