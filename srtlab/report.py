"""``python -m srtlab report RUN [RUN ...]``: one self-contained HTML page about the training dynamics of runs.

What a researcher reads instead of CSVs: held-out mean@k / maj@k / pass@k against the step for every run
on one axis (the SRT paper's figures), self-label accuracy, majority share, entropy and response length,
the guard's events as vertical lines, and the before/after table of ``results.json``. Runs whose configs
differ only in the seed (``-m seed=0,1,2``) form one line: the mean, shaded by one standard error. Figures
are PNGs embedded as base64, so the page needs no network and no other file.

A RUN is a run folder (``config.yaml``, ``logs/version_N/metrics.csv``, ``results.json``, ``guard/events.jsonl``)
or a folder holding run folders (a sweep, ``outputs/<name>``)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srtlab.plot import read_metrics

# Keys that do not make two runs different experiments: the seed (aggregated) and where the run lives
# (values that contain the run's own folder, e.g. trainer.default_root_dir, are skipped too).
NOT_THE_EXPERIMENT = ("seed", "data.seed", "run_dir", "resume", "ckpt_path")
HELDOUT = ("mean", "maj", "pass")
DYNAMICS = ["train/label_accuracy", "train/majority_share", "train/answer_concentration", "train/entropy",
            "train/response_length", "train/reward/mixed", "train/answer_rate", "val/*/top_answer_share",
            "guard/probe/vote_rate", "guard/probe/base_agreement", "guard/probe/distinct_ratio"]  # the guard's probe
ACTION_STYLE = {"warn": ":", "stop": "--", "rollback": "-."}


@dataclass
class Run:
    """One run folder, read."""

    path: Path
    name: str
    seed: Any
    config: dict[str, Any]  # flattened: "optim.lr" -> 2e-06
    metrics: dict[str, dict[int, float]]
    results: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as values."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_run(path: Path) -> Run:
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").exists() else {}
    metrics = read_metrics(path)
    if not metrics:
        raise FileNotFoundError(f"run {path}: no logs/version_*/metrics.csv; accepted: a run folder of "
                                "`python -m srtlab fit`, or a folder that holds such run folders")
    results = json.loads((path / "results.json").read_text()) if (path / "results.json").exists() else {}
    events_file = path / "guard" / "events.jsonl"
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()] \
        if events_file.exists() else []
    return Run(path, str(config.get("name", path.name)), config.get("seed"), flatten(config), metrics, results,
               events)


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Every run folder given, or found up to three levels below a folder given."""
    runs: list[Run] = []
    for given in map(Path, paths):
        if not given.is_dir():
            raise FileNotFoundError(f"RUN {str(given)!r} is not a folder; accepted: a run folder or a folder of runs")
        if (given / "logs").is_dir():
            runs.append(load_run(given))
            continue
        found = sorted({p.parent.parent for depth in ("*/", "*/*/", "*/*/*/")
                        for p in given.glob(f"{depth}logs/version_*")})
        if not found:
            raise FileNotFoundError(f"RUN {str(given)!r} holds no run folder (no logs/version_*/metrics.csv below it)")
        runs += [load_run(p) for p in found]
    return runs


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs that differ only in NOT_THE_EXPERIMENT keys form one group, labelled by the experiment name
    (plus the differing keys when two groups share a name)."""
    def key(run: Run) -> tuple:
        here = str(run.config.get("run_dir") or run.path)
        return tuple(sorted((k, repr(v)) for k, v in run.config.items()
                            if k not in NOT_THE_EXPERIMENT and not (isinstance(v, str) and here in v)))

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    labels: dict[str, list[Run]] = {}
    for k, members in groups.items():
        name = members[0].name
        rivals = [other for other in groups if other != k and groups[other][0].name == name]
        if rivals:
            differ = sorted({item for other in rivals for item in set(k) ^ set(other)} & set(k))
            name += " (" + ", ".join(f"{a.rsplit('.', 1)[-1]}={v}" for a, v in differ[:3]) + ")"  # short keys
        labels[name] = members
    return labels


def aggregate(series: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    """Steps, mean and standard error (0 where one run has the step) over runs' {step: value}."""
    steps = sorted({s for one in series for s in one})
    means, errors = [], []
    for s in steps:
        values = [one[s] for one in series if s in one]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        means.append(mean)
        errors.append(math.sqrt(var / len(values)))
    return steps, means, errors


def _matching(runs: list[Run], pattern: str) -> list[str]:
    from fnmatch import fnmatch

    return sorted({name for run in runs for name in run.metrics if fnmatch(name, pattern)})


def _panel(ax, groups: dict[str, list[Run]], metric: str, colors: dict[str, Any]) -> None:
    """One metric, one line per group (mean over seeds, shaded by the standard error), guard events."""
    from matplotlib.ticker import MaxNLocator

    for label, runs in groups.items():
        series = [run.metrics[metric] for run in runs if metric in run.metrics]
        if not series:
            continue
        steps, mean, se = aggregate(series)
        n = len(series)
        ax.plot(steps, mean, color=colors[label], marker="o" if len(steps) <= 12 else None, ms=3,
                label=f"{label} (n={n})")
        if n > 1:
            ax.fill_between(steps, [m - e for m, e in zip(mean, se)], [m + e for m, e in zip(mean, se)],
                            color=colors[label], alpha=0.2, linewidth=0)
        for run in runs:
            for event in run.events:
                ax.axvline(event["step"], color=colors[label], alpha=0.6, lw=1,
                           ls=ACTION_STYLE.get(event.get("action"), ":"))
    ax.set_title(metric, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def _figure(groups: dict[str, list[Run]], metrics: list[str], cols: int = 3) -> str:
    """A grid of panels as a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    palette = plt.get_cmap("tab10")
    colors = {label: palette(i % 10) for i, label in enumerate(groups)}
    cols = min(cols, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 2.9 * rows + 0.3), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _panel(ax, groups, metric, colors)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    actions = sorted({e.get("action") for runs in groups.values() for r in runs for e in r.events})
    handles += [Line2D([], [], color="grey", ls=ACTION_STYLE.get(a, ":")) for a in actions]
    labels += [f"guard: {a}" for a in actions]
    fig.legend(handles, labels, loc="upper center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.9 * rows + 0.3)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def heldout_metrics(runs: list[Run]) -> list[str]:
    """val/<set>/mean@k, maj@k, pass@k: one row of panels per held-out set."""
    return [m for s in sorted({m.split("/")[1] for m in _matching(runs, "val/*/mean@*")})
            for kind in HELDOUT for m in _matching(runs, f"val/{s}/{kind}@*")]


def dynamics_metrics(runs: list[Run]) -> list[str]:
    return [m for pattern in DYNAMICS for m in _matching(runs, pattern)]


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{mean:.3f} ± {se:.3f}"


def results_table(groups: dict[str, list[Run]]) -> str:
    """Before / after / change per group and held-out metric (mean ± standard error over seeds)."""
    rows = []
    for label, runs in groups.items():
        metrics = sorted({k for r in runs for part in ("before", "after") for k in r.results.get(part, {})})
        for metric in metrics:
            before = [r.results["before"][metric] for r in runs if metric in r.results.get("before", {})]
            after = [r.results["after"][metric] for r in runs if metric in r.results.get("after", {})]
            change = [r.results["after"][metric] - r.results["before"][metric] for r in runs
                      if metric in r.results.get("before", {}) and metric in r.results.get("after", {})]
            rows.append(f"<tr><td>{html.escape(label)}</td><td>{html.escape(metric)}</td><td>{_fmt(before)}</td>"
                        f"<td>{_fmt(after)}</td><td>{_fmt(change)}</td><td>{len(runs)}</td></tr>")
    if not rows:
        return "<p>No results.json with before/after evaluations in these runs.</p>"
    return ("<table><tr><th>experiment</th><th>metric</th><th>before</th><th>after</th><th>change</th>"
            "<th>seeds</th></tr>" + "".join(rows) + "</table>")


def events_table(groups: dict[str, list[Run]]) -> str:
    rows = [f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(r.seed))}</td><td>{e['step']}</td>"
            f"<td>{html.escape(str(e.get('action')))}</td><td>{html.escape(', '.join(e.get('rules', [])))}</td>"
            f"<td>{'yes' if e.get('uses_labels') else 'no'}</td>"
            f"<td><code>{html.escape(json.dumps(e.get('values', {})))}</code></td></tr>"
            for label, runs in groups.items() for r in runs for e in r.events]
    if not rows:
        return "<p>No guard events (the guard was off, or no rule fired).</p>"
    return ("<table><tr><th>experiment</th><th>seed</th><th>step</th><th>action</th><th>rules</th>"
            "<th>read gold</th><th>signal values</th></tr>" + "".join(rows) + "</table>")


def runs_table(groups: dict[str, list[Run]]) -> str:
    rows = [f"<tr><td>{html.escape(label)}</td><td>{html.escape(str(r.seed))}</td>"
            f"<td>{r.results.get('steps', max((max(v) for v in r.metrics.values() if v), default=0))}</td>"
            f"<td><code>{html.escape(str(r.path))}</code></td></tr>" for label, runs in groups.items() for r in runs]
    return "<table><tr><th>experiment</th><th>seed</th><th>steps</th><th>folder</th></tr>" + "".join(rows) + "</table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:1em auto;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}table{border-collapse:collapse;
font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
img{max-width:100%}p.note{color:#555;font-size:.9em}"""


def _image(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def render(groups: dict[str, list[Run]]) -> str:
    runs = [r for members in groups.values() for r in members]
    head = ("<!doctype html><html><head><meta charset='utf-8'><title>srtlab report</title>"
            f"<style>{STYLE}</style></head><body><h1>srtlab training report</h1>")
    note = ("<p class='note'>Lines: mean over seeds; shading: ± one standard error (n = seeds). Vertical lines: guard "
            "events (dotted warn, dashed stop, dash-dot rollback), at the step they fired. x: optimizer steps taken "
            "(0: the evaluation before training; a training step is drawn at the count after its update).</p>")
    parts = [head, note, "<h2>Runs</h2>", runs_table(groups)]
    held = heldout_metrics(runs)
    parts.append("<h2>Held-out accuracy</h2>")
    parts.append(_image(_figure(groups, held), "held-out accuracy") if held else "<p>No held-out evaluations.</p>")
    dyn = dynamics_metrics(runs)
    parts.append("<h2>Training dynamics</h2><p class='note'>label_accuracy: how often the majority answer is right "
                 "(uses gold, monitor only); majority_share toward 1, entropy toward 0 and top_answer_share toward 1 "
                 "go with collapse; the guard's probe (guard/probe/*, no gold read) sees it: vote_rate and "
                 "base_agreement fall as the policy leaves the base model's own votes (docs/guard.md).</p>")
    parts.append(_image(_figure(groups, dyn), "training dynamics") if dyn else "<p>No training metrics.</p>")
    parts += ["<h2>Guard events</h2>", events_table(groups), "<h2>Before / after</h2>", results_table(groups),
              "</body></html>"]
    return "\n".join(parts)


def write_report(paths: list[str | Path], out: str | Path = "report.html") -> Path:
    """Read the runs, write the page to ``out``, return its path."""
    groups = group_runs(find_runs(paths))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(groups))
    return out


def main(args: list[str]) -> None:
    """The ``report`` command: ``python -m srtlab report RUN [RUN ...] [--out FILE]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m srtlab report", description="One HTML page about runs.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="a run folder, or a folder of runs (a sweep)")
    parser.add_argument("--out", default="report.html", help="the page to write (default: report.html)")
    options = parser.parse_args(args)
    try:
        print(write_report(options.runs, options.out))
    except FileNotFoundError as err:  # a wrong folder: the message, not a traceback
        raise SystemExit(f"report: {err}") from None
