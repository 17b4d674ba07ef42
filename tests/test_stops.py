"""A run stops cleanly: on SIGTERM within a bounded time with a checkpoint that resumes exactly, and never with a
non-finite update applied."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import PARITY_REWARD, TINY_OVERRIDES, compose_config
from srtlab import interrupt
from srtlab.plot import read_metrics
from srtlab.train import fit

REPO = Path(__file__).resolve().parents[1]
TRAIN = [*PARITY_REWARD, "eval_before=false", "eval_after=false", "trainer.val_check_interval=100", "optim.lr=1e-3",
         "rollout.sampling.temperature=1.0"]


def _cfg(model_dir, run_dir, *extra):
    return compose_config("fit", [f"model.path={model_dir}", f"run_dir={run_dir}", *TINY_OVERRIDES, *TRAIN, *extra])


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


# -- SIGTERM ----------------------------------------------------------------------------------------------------
def test_a_stop_request_ends_the_decode_loop_and_the_loss_pass_at_once(tiny_model_and_tokenizer):
    from srtlab.rollout.engine import SamplingSettings
    from srtlab.rollout.hf import HFEngine
    from srtlab.types import Prompt

    model, tok = tiny_model_and_tokenizer
    prompt = [Prompt(id="a", messages=[{"role": "user", "content": "hi"}], task="t")]
    interrupt._RECEIVED[:] = [signal.SIGTERM]
    try:
        with pytest.raises(interrupt.Interrupted, match="SIGTERM"):
            HFEngine(model, tok).generate(prompt, 2, SamplingSettings(max_new_tokens=1000), seed=0)
    finally:
        interrupt._RECEIVED.clear()


def test_sigterm_stops_within_seconds_and_resume_continues_exactly(tiny_model_dir, tmp_path):
    """A real ``python -m srtlab fit`` gets SIGTERM mid-run: it exits within 30 s with status 143 and one line, its
    checkpoint continues (resume=true) to the same weights and logged values as a run never stopped."""
    steps = ["trainer.max_steps=8", "rollout.sampling.max_new_tokens=48", "checkpoint_every=100"]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    env.pop("SRTLAB_COMMAND", None)
    cmd = [sys.executable, "-m", "srtlab", "fit", f"model.path={tiny_model_dir}", f"run_dir={stopped}",
           *TINY_OVERRIDES, *TRAIN, *steps]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    metrics = stopped / "logs" / "version_0" / "metrics.csv"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and (
            not metrics.exists() or metrics.read_text().count("\n") < 3):  # a header and two steps logged
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    took = time.time() - sent
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert took < 30
    last = [line for line in err.strip().splitlines() if line][-1]
    assert last.startswith("interrupted: received SIGTERM at step ") and "continue with resume=true" in last
    said = int(re.search(r"holds step (\d+)", last).group(1))  # the step the one line promises
    stopped_at = _weights(stopped)["global_step"]
    assert stopped_at == said and 1 <= said < 8  # the checkpoint on disk is the one named, taken mid-run
    fit(_cfg(tiny_model_dir, stopped, *steps, "resume=true"))
    straight = tmp_path / "straight"
    fit(_cfg(tiny_model_dir, straight, *steps))
    a, b = _weights(straight), _weights(stopped)
    assert a["global_step"] == b["global_step"] == 8
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0)
    for name in ("train/reward/mixed", "train/loss", "train/response_length"):
        assert read_metrics(stopped)[name] == read_metrics(straight)[name]


# -- non-finite updates -----------------------------------------------------------------------------------------
class _Weights(L.Callback):
    def __init__(self):
        self.after = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def _fit_with(cfg, *callbacks):
    from srtlab.train import build

    module, datamodule, trainer = build(cfg)
    trainer.callbacks.extend(callbacks)
    trainer.fit(module, datamodule=datamodule)
    return module


@pytest.mark.parametrize("fault", ["nan_loss", "inf_gradient"])
def test_a_non_finite_update_is_skipped_and_the_weights_stay(tiny_model_dir, tmp_path, monkeypatch, fault):
    from srtlab.modules import loss_pass

    state = {"step": 0}
    real_loss = loss_pass.policy_gradient_loss

    def faulty_loss(*args, **kwargs):  # at step 2 only
        loss, metrics = real_loss(*args, **kwargs)
        if state["step"] == 2 and fault == "nan_loss":
            loss = loss * float("nan")
        if state["step"] == 2 and fault == "inf_gradient":
            loss = loss + (args[0] * 0).sum() * float("inf")  # finite loss (0 * inf is only in the gradient)
        return loss, metrics

    class Step(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            state["step"] = trainer.global_step + 1

    monkeypatch.setattr(loss_pass, "policy_gradient_loss", faulty_loss)
    weights = _Weights()
    run = tmp_path / "run"
    _fit_with(_cfg(tiny_model_dir, run, "trainer.max_steps=3"), Step(), weights)
    assert set(weights.after) == {1, 2, 3}  # Lightning counted the skipped step: data and seeds stay in step
    for k, v in weights.after[1].items():
        torch.testing.assert_close(weights.after[2][k], v, rtol=0, atol=0)  # step 2 applied nothing
    assert any(not torch.equal(weights.after[3][k], v) for k, v in weights.after[2].items())  # step 3 trained
    assert read_metrics(run)["train/skipped_nonfinite"] == {1: 0.0, 2: 1.0, 3: 0.0}
    saved = _weights(run)["state_dict"]
    assert all(bool(torch.isfinite(v).all()) for v in saved.values())


def test_non_finite_steps_in_a_row_stop_the_run_with_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from srtlab.modules import loss_pass

    real_loss = loss_pass.policy_gradient_loss
    monkeypatch.setattr(loss_pass, "policy_gradient_loss",
                        lambda *a, **k: (real_loss(*a, **k)[0] * math.nan, real_loss(*a, **k)[1]))
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        fit(_cfg(tiny_model_dir, run, "trainer.max_steps=5", "module.max_nonfinite_steps=2"))
    assert stop.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("training error: 2 steps in a row up to step 2 had a non-finite loss or gradient")
    saved = _weights(run)  # the checkpoint of step 1 (every step here): the starting weights, finite
    assert saved["global_step"] == 1 and all(bool(torch.isfinite(v).all()) for v in saved["state_dict"].values())
