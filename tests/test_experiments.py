"""Smoke tests of every script under experiments/: the Python scripts run on the tiny model (one step), the
shell scripts that launch long studies print their commands (``DRY_RUN=1``) and every command composes and
passes check_config, so a renamed key or a broken import fails here rather than an hour into a study."""

import json
import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import PARITY_REWARD, TINY_OVERRIDES, compose_config
from srtlab.train import check_config, fit

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SHELL_SCRIPTS = sorted(p.name for p in EXPERIMENTS.glob("*.sh"))
PYTHON_SCRIPTS = sorted(p.name for p in EXPERIMENTS.glob("*.py"))
TESTED_PYTHON = {"bench_step.py", "bench_generate.py", "bench_vote.py", "summarize.py", "summarize_retry.py", "curriculum_summary.py",
                 "gpu_check.py", "collapse_summary.py", "seed_table.py", "bench_memory.py",
                 "sampler_gap.py"}


def _run_script(name: str, args: list[str], monkeypatch, capsys) -> str:
    """Run experiments/NAME in this process (as ``python experiments/NAME ARGS``) and return its stdout."""
    capsys.readouterr()  # drop what ran before
    monkeypatch.setattr(sys, "argv", [str(EXPERIMENTS / name), *args])
    runpy.run_path(str(EXPERIMENTS / name), run_name="__main__")
    return capsys.readouterr().out


def test_every_python_script_has_a_smoke_test():
    assert set(PYTHON_SCRIPTS) == TESTED_PYTHON


def test_bench_step_runs_one_step_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = _run_script("bench_step.py", ["--steps", "1", "--peak-bf16", "1e12", "--peak-fp32", "3e11",
                                        "--bandwidth", "2e10", "--profile", str(tmp_path / "prof"),
                                        f"model.path={tiny_model_dir}", f"run_dir={tmp_path}",
                                        *TINY_OVERRIDES], monkeypatch, capsys)
    assert "SRT step: 2 prompts x 4 samples" in out and "generation tokens/s" in out
    assert "ratio" in out and "roofline" in out and "TFLOP/s" in out


def test_bench_generate_runs_fixed_lengths_on_the_tiny_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = _run_script("bench_generate.py", ["--rows", "8", "--new", "2,3", "--train", "5", "--peak-sampling", "1e11",
                                            "--peak-train", "1e11", "--bandwidth", "2e10", f"model.path={tiny_model_dir}",
                                            f"run_dir={tmp_path}", *TINY_OVERRIDES], monkeypatch, capsys)
    assert "8 sequences x    3 new tokens" in out and "tokens/s" in out and "ratio" in out
    assert "x     5 tokens" in out and "log_softmax" in out


def test_gpu_check_runs_small_on_the_cpu(tiny_model_dir, monkeypatch, capsys):
    out = _run_script("gpu_check.py", ["--device", "cpu", "--small", "--model-path", str(tiny_model_dir), "--steps",
                                       "1", "--batch", "2", "--n", "2", "--max-new-tokens", "4", "--long", "3,6",
                                       "--skip-tests"],
                      monkeypatch, capsys)
    assert "Qwen2 small shape, random weights" in out and "MFU" in out and "peak memory" in out
    assert out.count("training tokens/s") == 4  # two models, then the long rows (T = 3 and 6 here)
    assert "8 x 8 x 3 new tokens" in out and "8 x 8 x 6 new tokens" in out
    assert "largest micro-batch that fits: " in out and out.count("a training pass over the step") >= 2


def test_bench_vote_runs_small(monkeypatch, capsys):
    out = _run_script("bench_vote.py", ["--runs", "1", "--prompts", "2", "--samples", "4"], monkeypatch, capsys)
    assert "vote 2 x 4 math answers: median" in out and "one group of 8 adversarial answers" in out


@pytest.fixture(scope="module")
def retry_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A one-step reflect-retry run of the tiny model: its results hold mean@k etc. and the R3 metrics."""
    run = tmp_path_factory.mktemp("runs") / "reflect_retry"
    fit(compose_config("fit", [f"model.path={tiny_model_dir}", f"run_dir={run}", *TINY_OVERRIDES,
                               "experiment=reflect_retry", "trainer.max_steps=1"]))
    return run


def test_summarize_tables_a_run(retry_run, monkeypatch, capsys):
    out = _run_script("summarize.py", [str(retry_run)], monkeypatch, capsys)
    row = out.splitlines()[2].split(" | ")
    assert row[0] == "| reflect_retry" and row[-1] == "1 |"
    assert all(cell != "-" for cell in row[1:-1])  # every before/after metric was found


def test_summarize_retry_tables_a_run(retry_run, monkeypatch, capsys):
    (retry_run.parent / "reflect_retry.time").write_text("wall_s 75.5 max_rss_kb 1\n")
    lines = _run_script("summarize_retry.py", [str(retry_run)], monkeypatch, capsys).splitlines()
    assert [line.split(" | ")[1] for line in lines[2:]] == ["before", "after"]
    assert "-" not in lines[3].split(" | ")[2:8] and lines[3].endswith("| 1 | 1 min 15 s |")


def test_curriculum_summary_tables_a_climb(tiny_cfg, tmp_path, monkeypatch, capsys):
    run = tmp_path / "climb"
    fit(tiny_cfg("experiment=curriculum", *PARITY_REWARD, "callbacks.curriculum.tasks.chain_sum.levels=[0,1]",
                 "callbacks.curriculum.advance.steps=1", "callbacks.curriculum.eval_size=1", "data.prompt.shots=[]",
                 "trainer.max_steps=1", run_dir=run))
    lines = _run_script("curriculum_summary.py", [str(run)], monkeypatch, capsys).splitlines()
    assert len(lines) == 2 + 2 and all(line.startswith("| climb |") for line in lines[2:])
    import shutil

    for seed in (0, 1):  # two seeds of one arm: their levels aggregated (identical runs: standard error 0)
        shutil.copytree(run, tmp_path / f"climb-s{seed}")
    lines = _run_script("curriculum_summary.py", [str(tmp_path / "climb-s0"), str(tmp_path / "climb-s1")],
                        monkeypatch, capsys).splitlines()
    aggregated = [line for line in lines if line.startswith("| climb (2) |")]
    assert len(aggregated) == 2 and all("± 0.000" in line for line in aggregated)


def test_seed_table_gives_mean_and_standard_error(tmp_path, monkeypatch, capsys):
    runs = []
    for seed, (before, after) in enumerate([(0.4, 0.6), (0.5, 0.6), (0.6, 0.9)]):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps({"before": {"val/x/mean@8": before},
                                                      "after": {"val/x/mean@8": after}, "steps": 30}))
        runs.append(str(run))
    lines = _run_script("seed_table.py", runs, monkeypatch, capsys).splitlines()
    assert lines[0].startswith("| metric (n = 3) |")
    # standard deviations 0.1, 0.173, 0.1 over 3 runs: standard errors 0.058, 0.100, 0.058
    assert lines[2].startswith("| val/x/mean@8 | 0.500 ± 0.058 | 0.700 ± 0.100 | 0.200 ± 0.058 | 0.400 -> 0.600")


def test_collapse_summary_tables_evaluations_and_guard_events(tiny_cfg, tmp_path, monkeypatch, capsys):
    run = tmp_path / "srt_rollback"
    fit(tiny_cfg(*PARITY_REWARD, "trainer.max_steps=4", "trainer.val_check_interval=2", "checkpoint_every=100",
                 run_dir=run))
    events = [{"step": 3, "action": "rollback", "restored_step": 2, "rules": ["majority"]},
              {"step": 4, "action": "warn", "rules": ["entropy"]}]
    (run / "guard").mkdir(exist_ok=True)
    (run / "guard" / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    lines = _run_script("collapse_summary.py", [str(run)], monkeypatch, capsys).splitlines()
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "srt_rollback" and cells[1] == "3"  # evaluations before training, after steps 2 and 4
    assert cells[3].endswith("(4)") and cells[6] == "1" and cells[7] == "2 (rollback,warn)"
    curve = lines[-1].split(": ")[1].split()
    assert [point.split(":")[0] for point in curve] == ["0", "2", "4"]


def _dry_run(script: str, out: Path, *overrides: str) -> list[list[str]]:
    """The srtlab commands a shell script would run (its DRY_RUN=1 output), each as its argument list."""
    env = {**os.environ, "DRY_RUN": "1"}
    done = subprocess.run(["bash", str(EXPERIMENTS / script), str(out), *overrides], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if line.strip()]
    assert commands and all(c[c.index("srtlab") - 2:c.index("srtlab")] == ["python", "-m"] for c in commands)
    return [c[c.index("srtlab") + 1:] for c in commands]


STUDIES = {"compare_rewards.sh": 7, "curriculum_climb.sh": 6, "reflect_retry.sh": 2, "srt_vs_rlvr.sh": 12,
           "slurm_fit.sh": 1, "collapse_study.sh": 28}


def test_every_shell_script_has_a_smoke_test():
    assert set(SHELL_SCRIPTS) == set(STUDIES)


@pytest.mark.parametrize("script", sorted(STUDIES))
def test_study_script_commands_compose(script, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    commands = _dry_run(script, out, f"model.path={tiny_model_dir}")
    assert len(commands) == STUDIES[script]
    out.mkdir(exist_ok=True)
    (out / "labels.jsonl").write_text('{"id": "products/train/0", "label": "1"}\n')  # what `label` would write
    for command, *overrides in commands:
        assert command in ("fit", "label")
        if script == "slurm_fit.sh" and not torch.cuda.is_available():  # its GPUs, as CPU processes here
            overrides.append("trainer.accelerator=cpu")
        cfg = compose_config(command, overrides)
        if command == "fit":
            check_config(cfg)
        assert str(cfg.model.path) == str(tiny_model_dir)


def test_bench_memory_measures_each_stage_in_its_own_process(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = _run_script("bench_memory.py", ["--lengths", "3,6", "--qwen", "0", "--peak-bf16", "1e11", "--peak-fp32",
                                          "1e11", "--bandwidth", "2e10", "--json", str(tmp_path / "m.json"),
                                          "--plot", str(tmp_path / "m.png"), f"model.path={tiny_model_dir}",
                                          *TINY_OVERRIDES], monkeypatch, capsys)
    assert "T=3" in out and "T=6" in out and "FAILED" not in out and "roofline" in out and "KB/token" in out
    assert "T=6 stage done: generate" in out and out.index("T=6 stage done: train") < out.index("T=6  peak")  # live
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert [r["completion_tokens"] for r in rows] == [2 * 4 * 3, 2 * 4 * 6]  # forced lengths, 2 prompts x 4 samples
    for row in rows:
        assert set(row["stages"]) == {"load", "generate", "reward", "train", "sync"}
        assert row["peak_gib"] >= max(s["start_gib"] for s in row["stages"].values()) > 0
    assert (tmp_path / "m.png").stat().st_size > 0
    out = _run_script("bench_memory.py", ["--plot-from", str(tmp_path / "m.json"), "--plot", str(tmp_path / "again.png")],
                      monkeypatch, capsys)  # runs made apart, drawn together; nothing runs
    assert "T=3" not in out and (tmp_path / "again.png").stat().st_size > 0


def test_bench_memory_qwen_shape_is_qwen2_5_0_5b(tmp_path):
    sys.path.insert(0, str(EXPERIMENTS))
    from bench_memory import qwen_overrides
    from transformers import AutoConfig, AutoModelForCausalLM

    overrides = qwen_overrides(tmp_path)
    assert overrides == [f"model.path={tmp_path}", "model.init=random"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    assert model.config.vocab_size == 151936 and 490e6 < sum(p.numel() for p in model.parameters()) < 500e6


def test_sampler_gap_measures_a_bf16_sampler_against_the_trainer(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = _run_script("sampler_gap.py", ["--lengths", "5", "--prompts", "2", "--n", "2", f"model.path={tiny_model_dir}",
                                         f"run_dir={tmp_path}", *TINY_OVERRIDES], monkeypatch, capsys)
    assert "sampler torch.bfloat16 (its own copy), trainer fp32" in out and "T=    5 (" in out
    assert "per token |d| mean" in out and "per sequence |sum d|" in out
