"""Print the collapse study's tables from run folders (docs/collapse.md).

``python experiments/collapse_summary.py RUN...``: one row per run: held-out mean@k at every evaluation, its peak,
the final value, steps trained after the peak, steps discarded by rollbacks and guard events.

``python experiments/collapse_summary.py --study OUT [--figure PNG]``: the study of ``experiments/collapse_study.sh``
(run folders ``OUT/tune/<arm>-s<seed>`` and ``OUT/final/<arm>-s<seed>``):

- **tune** (guard=warn everywhere): each collapse run's held-out peak, and for every rule the first step it
  fires, replayed on the run's logged signals (``train/*``, ``guard/probe/*``, ``val/*``) with the shipped
  thresholds of ``configs/guard/warn.yaml`` and with the candidate thresholds of the sweep. The thresholds are
  chosen here; no held-out gold answer is read by any rule.
- **final** (the shipped defaults, seeds the sweep never saw): per collapse run, the first event (its step
  against the held-out peak before it: the unguarded run is the same run up to its first event), the final
  held-out mean@k against that peak, the rollbacks; per control run, its events (every one a false alarm);
  the guard's own cost (``time/guard`` over the step time); mean ± standard error over seeds.

An evaluation's step is its metrics.csv step: optimizer steps taken before it (0: before training). Runs made
before srtlab logged that "step" (Lightning's own counter put an evaluation after step s at s - 1) are read one
step early.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from srtlab.guard.rules import AnswerDiversity, BaseDrift, FlipRisk, KLJump, RephraseDrop, VoteRateDrop
from srtlab.guard.signals import History
from srtlab.guard.votes import PromptVotes, clear_agreement
from srtlab.report import Run, load_run

SCENARIOS = ("chain_sum", "addition", "letters")  # collapse scenarios: <s>_srt; controls: demo_srt, <s>_rlvr
CONTROLS = ("demo_srt", "chain_sum_rlvr", "addition_rlvr", "letters_rlvr")
TARGET_AFTER_PEAK = 3  # an event no later than this many steps after the held-out peak
TARGET_POINTS = 0.05  # rollback ends within this of the peak
DRIFT_AT = 0.6  # the shipped drift rule's min_agreement (drawn in the figure)


def heldout_curve(run: Run) -> dict[int, float]:
    """{optimizer step: held-out mean@k} over every evaluation (the worst held-out set when there are several)."""
    keys = [k for k in run.metrics if k.startswith("val/") and k.split("/")[-1].startswith("mean@")]
    if not keys:
        raise ValueError(f"run {run.path}: no val/<set>/mean@k in its metrics.csv; accepted: a fit run that evaluated")
    steps = sorted({step for k in keys for step in run.metrics[k]})
    return {step: min(run.metrics[k][step] for k in keys if step in run.metrics[k]) for step in steps}


def peak(curve: dict[int, float], until: int | None = None) -> tuple[int, float]:
    """(step, value) of the highest held-out mean@k at or before ``until`` (the earliest of equal peaks)."""
    steps = [s for s in curve if until is None or s <= until]
    best = max(steps, key=lambda s: (curve[s], -s))
    return best, curve[best]


def summary_row(run: Run) -> dict[str, object]:
    """The per-run table's cells."""
    curve = heldout_curve(run)
    peak_step, peak_value = peak(curve)
    last_step = max(curve)
    rolled_back = sum(e["step"] - e.get("restored_step", e["step"])
                      for e in run.events if e.get("action") == "rollback")
    return {"run": run.path.name, "evaluations": len(curve), "peak": peak_value, "peak_step": peak_step,
            "final": curve[last_step], "last_step": last_step, "after_peak": last_step - peak_step,
            "rolled_back": rolled_back, "events": len(run.events),
            "actions": ",".join(sorted({str(e.get("action")) for e in run.events})) or "-"}


def main(paths: list[str]) -> None:
    runs = [load_run(Path(p)) for p in paths]
    rows = [summary_row(run) for run in runs]
    print("| run | evaluations | peak mean@k (step) | final mean@k (step) | final - peak | steps after peak "
          "| steps rolled back | guard events (actions) |")
    print("|---" * 8 + "|")
    for r in rows:
        print(f"| {r['run']} | {r['evaluations']} | {r['peak']:.3f} ({r['peak_step']}) | {r['final']:.3f} "
              f"({r['last_step']}) | {r['final'] - r['peak']:+.3f} | {r['after_peak']} | {r['rolled_back']} "
              f"| {r['events']} ({r['actions']}) |")
    print()
    for run in runs:  # the curves behind the table, step:mean@k
        print(f"{run.path.name}: " + " ".join(f"{s}:{v:.3f}" for s, v in sorted(heldout_curve(run).items())))


# -- replaying rules on logged signals -----------------------------------------------------------------
def shipped_rules() -> dict[str, Any]:
    """The rules of ``configs/guard/warn.yaml`` (the label-free default), built."""
    import yaml
    from hydra.utils import instantiate

    from srtlab import config_dir

    node = yaml.safe_load((config_dir() / "guard" / "warn.yaml").read_text())
    return {name: instantiate(spec) for name, spec in node["rules"].items()}


def replay(run: Run, rules: dict[str, Any], baseline_steps: int = 3,
           extra: Callable[[int], dict[str, float]] | None = None, until: int | None = None) -> dict[str, int | None]:
    """The first step each rule fires on this run's logged signals, checked as the guard checks them: step rules
    after each training step (its ``train/*`` and ``guard/*`` values), eval rules after each evaluation.
    ``extra(step)``: more values for that step (flip statistics recomputed with other settings). ``until``: stop
    after this step (a rollback run is the unguarded run only up to its first event)."""
    steps = sorted({s for series in run.metrics.values() for s in series if until is None or s <= until})
    h, first = History(), {name: None for name in rules}

    def at(step: int, prefixes: tuple[str, ...]) -> dict[str, float]:
        return {k: v[step] for k, v in run.metrics.items() if k.startswith(prefixes) and step in v}

    for step in steps:
        h.add(step, at(step, ("train/",)))
        h.add(step, {k: v for k, v in at(step, ("guard/probe/",)).items()})
        for more in (clear_base_agreement(run), extra):
            if more is not None:
                h.add(step, more(step))
        h.freeze_baselines(baseline_steps)
        checks = [("step", step > 0)]
        val = at(step, ("val/",))
        if val:
            h.add(step, val)
        checks.append(("eval", bool(val)))
        for when, due in checks:
            for name, rule in rules.items():
                if due and rule.when == when and first[name] is None:
                    finding = rule.check(h)
                    if finding is not None and finding.fired:
                        first[name] = step
    return first


def clear_base_agreement(run: Run) -> Callable[[int], dict[str, float]]:
    """``guard/probe/base_agreement`` over the base model's clear votes, recomputed from ``guard/probe.jsonl`` for
    runs logged before it was defined so (they logged the agreement over every probe question)."""
    if "guard/probe/base_agreement_all" in run.metrics or not (run.path / "guard" / "probe.jsonl").exists():
        return lambda step: {}
    rows = [json.loads(line) for line in (run.path / "guard" / "probe.jsonl").read_text().splitlines()]
    base = rows[0]
    by_step = {row["step"]: {"guard/probe/base_agreement": clear_agreement(row["answers"], base["answers"],
                                                                           base["shares"])} for row in rows}
    return lambda step: by_step.get(step, {})


def base_agreement(run: Run) -> dict[int, float]:
    """{step: the probe's agreement with the base model's clear votes} (recomputed for runs logged before it)."""
    if "guard/probe/base_agreement_all" in run.metrics or not (run.path / "guard" / "probe.jsonl").exists():
        return dict(run.metrics.get("guard/probe/base_agreement", {}))
    at = clear_base_agreement(run)
    return {s: at(s)["guard/probe/base_agreement"] for s in sorted(run.metrics.get("guard/probe/base_agreement", {}))}


def probe_flips(run: Run, min_visits: int, max_flip_rate: float, min_share: float,
                recent: int = 3) -> Callable[[int], dict[str, float]]:
    """``guard/probe/{at_risk,eligible}`` recomputed from ``guard/probe.jsonl`` with other TTRL-Guard settings."""
    rows = [json.loads(line) for line in (run.path / "guard" / "probe.jsonl").read_text().splitlines()]
    votes, by_step = PromptVotes(), {}
    for row in rows:
        for i, (answer, share) in enumerate(zip(row["answers"], row["shares"])):
            votes.record(str(i), row["step"], answer, share)
        stats = votes.flip_stats(min_visits, max_flip_rate, min_share, recent)
        by_step[row["step"]] = {"guard/probe/at_risk": stats["at_risk"], "guard/probe/eligible": stats["eligible"]}
    return lambda step: by_step.get(step, {})


SWEEP: list[tuple[str, Callable[[], Any], dict[str, Any]]] = [
    *[(f"drift min_agreement={x} window=2", lambda x=x: BaseDrift(min_agreement=x, window=2), {})
      for x in (0.4, 0.6, 0.8)],
    *[(f"drift min_agreement={x} max_majority_share={m}",
       lambda x=x, m=m: BaseDrift(min_agreement=x, max_majority_share=m), {})
      for x in (0.4, 0.6, 0.8) for m in (0.8, 0.85, 0.9, None)],
    *[(f"vote_drop max_drop={x}", lambda x=x: VoteRateDrop(max_drop=x), {}) for x in (0.1, 0.15, 0.2, 0.25, 0.3)],
    *[(f"diversity min_ratio={x}", lambda x=x: AnswerDiversity(min_ratio=x), {}) for x in (0.5, 0.625, 0.75)],
    *[(f"kl max_kl={x}", lambda x=x: KLJump(max_kl=x), {}) for x in (1.0, 2.0, 4.0)],
    *[(f"rephrase max_drop={x}", lambda x=x: RephraseDrop(max_drop=x), {}) for x in (0.125, 0.25)],
    *[(f"flips threshold={t} (visits {v}, flip rate > {f}, share > {s})", lambda t=t: FlipRisk(threshold=t),
       {"min_visits": v, "max_flip_rate": f, "min_share": s})
      for t in (0.125, 0.25) for v, f, s in ((5, 0.3, 0.7), (3, 0.3, 0.7), (3, 0.3, 0.5))],
]


# -- the study ---------------------------------------------------------------------------------------------
def study_runs(out: Path, phase: str) -> dict[str, list[Run]]:
    """arm -> its runs (seeds in order) under ``OUT/<phase>/``; runs that did not finish are left out."""
    arms: dict[str, list[Run]] = {}
    for folder in sorted((out / phase).glob("*-s*")):
        results = folder / "results.json"
        if folder.is_dir() and results.exists() and "after" in json.loads(results.read_text()):  # finished
            arms.setdefault(folder.name.rsplit("-s", 1)[0], []).append(load_run(folder))
    return arms


def seed_of(run: Run) -> str:
    return run.path.name.rsplit("-s", 1)[1]


def mean_se(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:+.3f}" if mean < 0 else f"{mean:.3f}"
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{mean:.3f} ± {se:.3f}"


def guard_cost(run: Run) -> tuple[float, float]:
    """(the guard's seconds, the training steps' seconds) over the run: ``time/guard`` (the base probe before
    training included) against generate + reward + train + sync."""
    m = run.metrics
    guard = sum(m.get("time/guard", {}).values()) + sum(m.get("time/guard_base_probe", {}).values())
    steps = sum(sum(m.get(f"time/{k}", {}).values()) for k in ("generate", "reward", "train", "sync"))
    return guard, steps


def sweep(runs: list[tuple[str, Run]]) -> list[tuple[str, list[int | str | None]]]:
    """Each SWEEP rule's first firing step on each run (up to a rollback run's first event; n/a: not logged)."""
    out = []
    for label, make, flips in SWEEP:
        fired: list[int | str | None] = []
        for _, run in runs:
            rule = make()
            if not any(fnmatch(k, pattern) for pattern in rule.reads for k in run.metrics):
                fired.append("n/a")  # this run did not log the signal (KL, rephrasing: chain_sum seed 0 only)
                continue
            until = run.events[0]["step"] if run.events and run.events[0].get("action") == "rollback" else None
            fired.append(replay(run, {"x": rule}, extra=probe_flips(run, **flips) if flips else None,
                                until=until)["x"])
        out.append((label, fired))
    return out


def tune_tables(arms: dict[str, list[Run]]) -> None:
    rules = shipped_rules()
    collapse = [(a, r) for a in (f"{s}_srt" for s in SCENARIOS) for r in arms.get(a, [])]
    controls = [(a, r) for a in CONTROLS for r in arms.get(a, [])]
    print("## Tune: held-out peaks of the collapse runs (guard=warn: the unguarded curves)\n")
    for arm, run in collapse:
        curve = heldout_curve(run)
        step, value = peak(curve)
        print(f"- {arm} seed {seed_of(run)}: peak {value:.3f} at step {step} (base {curve[0]:.3f}, end "
              f"{curve[max(curve)]:.3f}); " + " ".join(f"{s}:{v:.3f}" for s, v in sorted(curve.items())))
    names = [f"{a} s{seed_of(r)}" for a, r in collapse + controls]
    print("\n## Tune: first step each rule fires (replayed; collapse runs: step - held-out peak)\n")
    print("| rule | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")

    def row(label: str, fired: list[int | str | None]) -> None:
        cells = []
        for (arm, run), step in zip(collapse + controls, fired):
            if step is None or isinstance(step, str):
                cells.append(step or "-")
            elif arm in CONTROLS:
                cells.append(f"**{step}**")  # a false alarm
            else:
                cells.append(f"{step} ({step - peak(heldout_curve(run))[0]:+d})")
        print(f"| {label} | " + " | ".join(cells) + " |")

    replays = [replay(r, rules) for _, r in collapse + controls]
    for name in rules:
        row(f"{name} (shipped)", [rep[name] for rep in replays])
    for label, fired in sweep(collapse + controls):
        row(label, fired)
    print("\n(bold: a false alarm on a healthy control; -: never fired)")
    print("\n## Tune: the rollback target each label-free criterion would pick at the shipped rules' first event\n")
    print("| run | first event (step) | peak (step) | vote_rate picks: step, held-out | top_answer_share picks: step, "
          "held-out |")
    print("|---" * 5 + "|")
    for (arm, run), rep in zip(collapse, replays):
        fired = [step for step in rep.values() if step is not None]
        if not fired:
            print(f"| {arm} s{seed_of(run)} | none | | | |")
            continue
        event, curve = min(fired), heldout_curve(run)
        picks = []
        for metric, sign in (("guard/probe/vote_rate", 1), ("val/", -1)):
            if metric == "val/":
                shares = {st: max(v[st] for k, v in run.metrics.items() if k.endswith("/top_answer_share") and st in v)
                          for st in curve}
            else:
                shares = run.metrics.get(metric, {})
            scored = {st: sign * v for st, v in shares.items() if st <= event}
            best = max(scored, key=lambda st: (scored[st], st))  # ties: the later, as the guard keeps it
            near = min(curve, key=lambda st: (abs(st - best), st))
            picks.append(f"{best}, {curve[near]:.3f}")
        p_step, p_value = peak(curve, event)
        print(f"| {arm} s{seed_of(run)} | {event} | {p_value:.3f} ({p_step}) | {picks[0]} | {picks[1]} |")


def final_tables(arms: dict[str, list[Run]]) -> dict[str, Any]:
    """The final runs' tables; -> the numbers the targets are judged on."""
    print("## Final: the shipped defaults (guard=rollback on collapse runs, guard=warn on controls)\n")
    print("| scenario | seed | held-out peak before the first event (step) | first event: step, rules | event - peak "
          "| rollbacks (to step) | final mean@k (step) | final - peak | guard cost |")
    print("|---" * 9 + "|")
    judged: dict[str, Any] = {"collapse": {}, "controls": {}, "cost": {}}
    for scenario in SCENARIOS:
        for run in arms.get(f"{scenario}_srt", []):
            curve = heldout_curve(run)
            first = run.events[0] if run.events else None
            until = first["step"] if first else None
            p_step, p_value = peak(curve, until)
            last = max(curve)
            g, s = guard_cost(run)
            backs = ", ".join(str(e.get("restored_step")) for e in run.events if e.get("action") == "rollback") or "-"
            lag = first["step"] - p_step if first else None
            judged["collapse"].setdefault(scenario, []).append(
                {"seed": seed_of(run), "fired": first is not None, "lag": lag, "peak": p_value, "final": curve[last],
                 "final_minus_peak": curve[last] - p_value})
            print(f"| {scenario} | {seed_of(run)} | {p_value:.3f} ({p_step}) | "
                  f"{(str(first['step']) + ', ' + '+'.join(first['rules'])) if first else 'none'} | "
                  f"{lag if lag is not None else '-'} | {backs} | {curve[last]:.3f} ({last}) | "
                  f"{curve[last] - p_value:+.3f} | {g / s:.0%} |")
    print("\n| control | seed | events (rules, steps) | held-out before -> after | guard cost |")
    print("|---" * 5 + "|")
    for arm in CONTROLS:
        for run in arms.get(arm, []):
            curve = heldout_curve(run)
            g, s = guard_cost(run)
            events = "; ".join(f"{'+'.join(e['rules'])} at {e['step']}" for e in run.events) or "0"
            judged["controls"].setdefault(arm, []).append(len(run.events))
            judged["cost"].setdefault(arm, []).append(g / s)
            print(f"| {arm} | {seed_of(run)} | {events} | {curve[0]:.3f} -> {curve[max(curve)]:.3f} | {g / s:.0%} |")
    print("\n## Final: per scenario, over seeds (mean ± standard error)\n")
    print("| scenario | seeds | fired | event no later than 3 steps after the peak | event - peak | final - peak "
          "| within 5 points of the peak |")
    print("|---" * 7 + "|")
    for scenario, rows in judged["collapse"].items():
        lags = [r["lag"] for r in rows if r["lag"] is not None]
        on_time = sum(r["lag"] is not None and r["lag"] <= TARGET_AFTER_PEAK for r in rows)
        kept = sum(r["final_minus_peak"] >= -TARGET_POINTS for r in rows)
        print(f"| {scenario} | {len(rows)} | {sum(r['fired'] for r in rows)}/{len(rows)} | {on_time}/{len(rows)} | "
              f"{mean_se([float(x) for x in lags])} | {mean_se([r['final_minus_peak'] for r in rows])} | "
              f"{kept}/{len(rows)} |")
    runs = [(f"{sc}_srt", r) for sc in SCENARIOS for r in arms.get(f"{sc}_srt", [])] + \
        [(a, r) for a in CONTROLS for r in arms.get(a, [])]
    print("\n## Final, after the fact: the sweep's rules on the final runs (not used to choose anything)\n")
    print("| rule | " + " | ".join(f"{a} s{seed_of(r)}" for a, r in runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for label, fired in sweep(runs):
        cells = []
        for (arm, run), step in zip(runs, fired):
            if step is None or isinstance(step, str):
                cells.append(step or "-")
            elif arm in CONTROLS:
                cells.append(f"**{step}**")
            else:
                cells.append(f"{step} ({step - peak(heldout_curve(run), step)[0]:+d})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n| control | seeds | runs with an event (false alarms) | guard cost (time/guard / step time) |")
    print("|---" * 4 + "|")
    for arm, counts in judged["controls"].items():
        print(f"| {arm} | {len(counts)} | {sum(c > 0 for c in counts)} ({sum(counts)} events) | "
              f"{mean_se(judged['cost'][arm])} |")
    return judged


def figure(out: Path, tune: dict[str, list[Run]], final: dict[str, list[Run]], path: Path) -> Path:
    """Held-out mean@8 against the step for each collapse scenario (top: the unguarded tune run and the final
    rollback runs, events marked) and the probe's agreement with the base model's clear votes (bottom: the
    collapse runs, up to their first event, against the controls; dotted: the drift rule's threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(SCENARIOS), figsize=(4.2 * len(SCENARIOS), 6.4), squeeze=False)
    for col, scenario in enumerate(SCENARIOS):
        ax = axes[0][col]
        for run in tune.get(f"{scenario}_srt", []):
            curve = heldout_curve(run)
            ax.plot(list(curve), list(curve.values()), color="black", lw=1.5, marker="o", ms=3,
                    label=f"guard=warn (unguarded), seed {seed_of(run)}")
        for i, run in enumerate(final.get(f"{scenario}_srt", [])):
            curve = heldout_curve(run)
            color = plt.get_cmap("tab10")(i)
            ax.plot(list(curve), list(curve.values()), color=color, lw=1.2, marker="o", ms=3,
                    label=f"guard=rollback, seed {seed_of(run)}")
            for e in run.events:
                ax.axvline(e["step"], color=color, ls="-." if e.get("action") == "rollback" else ":", lw=1)
        ax.set_title(f"{scenario}: held-out mean@8", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax = axes[1][col]
        for arm, color in ((f"{scenario}_srt", "tab:red"), (f"{scenario}_rlvr", "tab:green"), ("demo_srt", "tab:blue")):
            for phase, runs in (("tune", tune), ("final", final)):
                for run in runs.get(arm, []):
                    series = base_agreement(run)
                    if run.events and arm == f"{scenario}_srt" and phase == "final":  # up to its first event
                        series = {s: v for s, v in series.items() if s <= run.events[0]["step"]}
                    ax.plot(list(series), list(series.values()), color=color, lw=1, alpha=0.8,
                            ls="-" if phase == "tune" else "--", marker="o", ms=2)
        ax.axhline(DRIFT_AT, color="grey", ls=":", lw=1)
        ax.plot([], [], color="tab:red", label=f"{scenario} SRT (collapse)")
        ax.plot([], [], color="tab:green", label=f"{scenario} RLVR (control)")
        ax.plot([], [], color="tab:blue", label="demo SRT (control)")
        ax.plot([], [], color="grey", ls="-", label="tune (seed 0)")
        ax.plot([], [], color="grey", ls="--", label="final (seeds 1-3)")
        ax.set_title("probe: questions keeping the base model's clear majority", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def study(out: Path, figure_path: Path | None = None) -> None:
    tune, final = study_runs(out, "tune"), study_runs(out, "final")
    if not tune and not final:
        raise FileNotFoundError(f"no finished runs under {out}/tune or {out}/final; accepted: the OUT of "
                                "experiments/collapse_study.sh")
    if tune:
        tune_tables(tune)
        print()
    if final:
        final_tables(final)
    if figure_path is not None:
        print(f"\nfigure: {figure(out, tune, final, figure_path)}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if args else 2)
    if args[:1] == ["--study"]:
        fig_path = Path(args[args.index("--figure") + 1]) if "--figure" in args else None
        study(Path(args[1]), fig_path)
    else:
        main(args)
