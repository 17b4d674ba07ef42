"""The sampler mismatch at length (issue 26, item 7): how far the engine's log-probs of its own tokens are from
the trainer's, per token and per sequence, which is what ``algorithm.is_correction`` would correct.

For each T it samples ``--prompts`` x ``--n`` completions of at most T new tokens with the configured engine
(by default the HF engine's bf16 sampling copy, as on a GPU; ``--engine-dtype float32`` for this CPU's
default), recomputes the same tokens' log-probs with the trainer (``PolicyModule.policy_logprobs``: fp32,
or under bf16 autocast with ``--train-bf16``, as ``trainer.precision=auto`` trains on a GPU) and prints

- per token, d = trainer - sampler log-prob: mean |d|, median, 99th percentile, max;
- per sequence, the log of the importance ratio, sum(d) over the completion: mean |.| and max |.|, and the
  ratio exp(sum d) range;
- the share of tokens whose ratio exp(d) exceeds ``--cap`` (what TIS truncates, MIS masks).

The completions end where the model ends them: ``--min-new`` forces a length, but the sampler then samples
from the distribution without end-of-sequence and records those log-probs, a gap of its own (-log(1 - p_eos)
per token). Long answers come from long tasks: ``data=math12k`` (the model reasons before it answers).

    python experiments/sampler_gap.py data=math12k                     # T = 256, 1024: bf16 engine, fp32 trainer
    python experiments/sampler_gap.py --lengths 256 --train-bf16       # both sides bf16, as on a GPU
    python experiments/sampler_gap.py --engine-dtype float32           # this CPU's default: one fp32 model

Any fit override follows (``model.path=...``). bf16 matmuls are slow on a CPU without native bf16 (an AVX2
machine runs them ~100x slower than fp32), so the defaults are small: 2 prompts x 4 samples.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).parent))

from bench_step import policy_from  # noqa: E402  (the policy module as fit builds it)

from srtlab import config_dir  # noqa: E402
from srtlab.builder import Builder  # noqa: E402
from srtlab.rollout.engine import SamplingSettings  # noqa: E402
from srtlab.train import register_resolvers  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def gaps(trainer: torch.Tensor, sampler: list[list[float]], mask: torch.Tensor) -> tuple[list[float], list[float]]:
    """(per-token d = trainer - sampler, per-sequence sum of d) over the completions' tokens."""
    tokens, sequences = [], []
    for i, row in enumerate(sampler):
        d = (trainer[i, : len(row)] - torch.tensor(row, dtype=trainer.dtype))[mask[i, : len(row)]]
        tokens += d.tolist()
        sequences.append(float(d.sum()))
    return tokens, sequences


def summary(tokens: list[float], sequences: list[float], cap: float) -> str:
    import math

    absd = sorted(abs(x) for x in tokens)
    p99 = absd[min(len(absd) - 1, int(0.99 * len(absd)))]
    over = sum(1 for x in tokens if x > math.log(cap)) / len(tokens)
    ratio = [math.exp(max(min(s, 700.0), -700.0)) for s in sequences]
    return (f"per token |d| mean {statistics.mean(absd):.4f} median {statistics.median(absd):.4f} p99 {p99:.3f} "
            f"max {absd[-1]:.3f} nats; mean d {statistics.mean(tokens):+.4f}; ratio > {cap:g}: {100 * over:.2f}% of "
            f"tokens | per sequence |sum d| mean {statistics.mean(abs(s) for s in sequences):.3f} max "
            f"{max(abs(s) for s in sequences):.3f} nats, ratio exp(sum d) {min(ratio):.3g} ... {max(ratio):.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=_ints, default=[256, 1024], help="T, comma-separated")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--engine-dtype", default="bfloat16", help="rollout.engine.dtype (bfloat16, float32, auto)")
    parser.add_argument("--train-bf16", action="store_true", help="the trainer's log-probs under bf16 autocast")
    parser.add_argument("--min-new", type=int, default=0, help="min_new_tokens (0: completions end naturally)")
    parser.add_argument("--cap", type=float, default=2.0, help="the importance-ratio cap (algorithm.is_cap)")
    parser.add_argument("overrides", nargs="*", help="fit config overrides")
    args = parser.parse_args()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=["experiment=srt", "run_dir=/tmp/srtlab-bench", *args.overrides,
                                        f"rollout.engine.dtype={args.engine_dtype}"])
    module = policy_from(cfg)
    module.model.eval()  # the trainer's forward as in the loss pass (no dropout in these models either way)
    engine = module.rollouts.make_engine(model=module.model, tokenizer=module.tokenizer)
    dm = Builder(cfg)("data")
    dm.setup()
    prompts = dm.train.prompts[: args.prompts]
    base = module.rollouts.sampling
    sampling_dtype = next(engine.model.parameters()).dtype
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.train_bf16 else contextlib.nullcontext()
    print(f"sampler {sampling_dtype} ({'its own copy' if not engine.shares_policy else 'the policy itself'}), "
          f"trainer {'bf16 autocast' if args.train_bf16 else 'fp32'}; {cfg.model.path}; {args.prompts} prompts x "
          f"{args.n} samples, temperature {base.temperature}, top_p {base.top_p}, top_k {base.top_k}", flush=True)
    for length in args.lengths:
        sampling = SamplingSettings(temperature=base.temperature, top_p=base.top_p, top_k=base.top_k,
                                    max_new_tokens=length, min_new_tokens=min(args.min_new, length))
        t = time.perf_counter()
        r = engine.generate(prompts, args.n, sampling, seed=0)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad(), autocast:
            out = module.policy_logprobs(r.prompt_ids, r.completion_ids, r.n)
        tokens, sequences = gaps(out.logp.float(), r.sampler_logprobs, out.mask)
        cut = r.finish_reasons.count("length")
        print(f"T={length:5d} ({len(tokens)} tokens, {cut} of {len(r)} cut at T; generate {gen_s:.0f} s, trainer "
              f"{time.perf_counter() - t:.0f} s)\n  {summary(tokens, sequences, args.cap)}", flush=True)


if __name__ == "__main__":
    main()
