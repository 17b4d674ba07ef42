"""What the README promises, under the shipped precision where bf16 is native (the bf16 sampling copy and
``bf16-mixed`` training, which ``auto`` picks on a GPU or an AVX512-BF16 CPU; forced here, so the path is tested on
any CPU), not the float32 ``dtype=null`` / ``32-true`` that the other end-to-end tests use. Exact resume (clean stop, ``kill -9``, ``resume=true`` finding the newest
run), ``eval ckpt_path=`` really loading the weights, a fit with the majority vote itself, and
``top_k`` / stop strings in sampling.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch

from conftest import PARITY_REWARD, TINY_OVERRIDES, compose_config, start_and_kill
from srtlab.plot import read_metrics
from srtlab.train import evaluate, fit

REPO = Path(__file__).resolve().parents[1]
# The tiny settings with the bf16 path forced instead of the two float32 overrides.
DEFAULTS = [*(o for o in TINY_OVERRIDES if o not in ("rollout.engine.dtype=null", "trainer.precision=32-true")),
            "rollout.engine.dtype=bfloat16", "trainer.precision=bf16-mixed"]
TRAIN = ["eval_before=false", "eval_after=false", "trainer.val_check_interval=100", "optim.lr=1e-3",
         "rollout.sampling.temperature=1.0"]


def _cfg(model_dir: Path, run_dir: Path, *extra: str, name: str = "fit"):
    return compose_config(name, [f"model.path={model_dir}", f"run_dir={run_dir}", *DEFAULTS, *extra])


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=0)


def test_shipped_precision_follows_the_machine(tiny_model_dir, tmp_path, monkeypatch):
    """``auto``: bf16 sampling copy and bf16-mixed training where bf16 matmuls are native, fp32 where they are not
    (an AVX2 CPU runs them ~150x slower)."""
    from srtlab.models import precision
    from srtlab.rollout.hf import HFEngine
    from srtlab.train import build

    shipped = [o for o in TINY_OVERRIDES if o not in ("rollout.engine.dtype=null", "trainer.precision=32-true")]
    cfg = compose_config("fit", [f"model.path={tiny_model_dir}", f"run_dir={tmp_path / 'run'}", *shipped])
    assert cfg.rollout.engine.dtype == "auto" and cfg.trainer.precision == "auto"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    real = precision.fast_bf16
    for native, (trained, sampled) in ((True, ("bf16-mixed", torch.bfloat16)), (False, ("32-true", torch.float32))):
        monkeypatch.setattr(precision, "fast_bf16", lambda device_type="cpu", native=native: native)
        assert build(cfg, with_checkpoints=False)[2].precision == trained
        engine = HFEngine(model, tok, dtype="auto")
        assert next(engine.model.parameters()).dtype == sampled and engine.shares_policy == (not native)
    measured = real.__wrapped__("cpu")  # the real question, answered by timing one matmul in each dtype
    assert isinstance(measured, bool)


def test_resume_after_a_clean_stop_is_exact(tiny_model_dir, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    fit(_cfg(tiny_model_dir, straight, *PARITY_REWARD, *TRAIN, "trainer.max_steps=4"))
    fit(_cfg(tiny_model_dir, stopped, *PARITY_REWARD, *TRAIN, "trainer.max_steps=2"))
    fit(_cfg(tiny_model_dir, stopped, *PARITY_REWARD, *TRAIN, "trainer.max_steps=4", "resume=true"))
    _assert_same_weights(_state(straight), _state(stopped))
    ra, rb = read_metrics(straight)["train/reward/mixed"], read_metrics(stopped)["train/reward/mixed"]
    assert ra == rb and sorted(ra) == [1, 2, 3, 4]
    from transformers import AutoModelForCausalLM

    init = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(init[k.removeprefix("model.")], v) for k, v in _state(straight)["state_dict"].items())


def test_resume_true_finds_the_newest_run(tiny_model_dir, tmp_path, monkeypatch):
    """Two runs of one name under outputs/<name>/: resume=true continues the newer (by its folder's date)."""
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "outputs" / "fit"
    common = [*PARITY_REWARD, *TRAIN, "trainer.max_steps=1"]
    fit(_cfg(tiny_model_dir, base / "2026-01-01_00-00-00", *common))
    fit(_cfg(tiny_model_dir, base / "2026-01-02_00-00-00", *common))
    cfg = compose_config("fit", [f"model.path={tiny_model_dir}", *DEFAULTS, *PARITY_REWARD, *TRAIN,
                                 "trainer.max_steps=2", "resume=true"])
    assert cfg.run_dir == str(Path("outputs/fit/2026-01-02_00-00-00"))
    fit(cfg)
    assert _state(base / "2026-01-02_00-00-00")["global_step"] == 2
    assert _state(base / "2026-01-01_00-00-00")["global_step"] == 1  # the older run is left alone


def test_killed_run_resumes_exactly_under_defaults(tiny_model_dir, tmp_path):
    """SIGKILL a real `python -m srtlab fit` after its first checkpoint, resume it, compare."""
    steps = [*TRAIN, "trainer.max_steps=8", "rollout.sampling.max_new_tokens=32"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "srtlab", "fit", f"model.path={tiny_model_dir}", f"run_dir={killed}",
           *DEFAULTS, *PARITY_REWARD, *steps]
    last = killed / "checkpoints" / "last.ckpt"
    start_and_kill(cmd, killed, tmp_path, max_steps=8)

    fit(_cfg(tiny_model_dir, killed, *PARITY_REWARD, *steps, "resume=true"))
    straight = tmp_path / "straight"
    fit(_cfg(tiny_model_dir, straight, *PARITY_REWARD, *steps))
    _assert_same_weights(_state(straight), torch.load(last, weights_only=True))
    assert read_metrics(killed)["train/reward/mixed"] == read_metrics(straight)["train/reward/mixed"]


class WeightsAtValidation(L.Callback):
    """Records the policy's weights when evaluation starts (after Lightning has loaded ``ckpt_path``)."""

    seen: ClassVar[list[dict[str, torch.Tensor]]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        WeightsAtValidation.seen.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_eval_of_a_checkpoint_loads_its_weights(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    fit(_cfg(tiny_model_dir, run, *PARITY_REWARD, *TRAIN))
    saved = _state(run)["state_dict"]
    probe = "+callbacks.probe._target_=test_defaults.WeightsAtValidation"
    WeightsAtValidation.seen = []
    evaluate(_cfg(tiny_model_dir, tmp_path / "eval", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", probe,
                  name="eval"))
    evaluate(_cfg(tiny_model_dir, tmp_path / "base", probe, name="eval"))
    loaded, base = WeightsAtValidation.seen
    assert loaded.keys() == saved.keys()
    for k, v in saved.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)
    assert any(not torch.equal(base[k], v) for k, v in saved.items())  # the checkpoint differs from the base


class DigitAnswers:
    """The HF engine, with each completion's answer read as its token-id sum mod 3: the tiny random model
    never writes a readable answer, so this gives the real majority vote groups with majorities to find."""

    def __new__(cls, **settings):
        from srtlab.rollout.hf import HFEngine

        class Engine(HFEngine):
            def generate(self, *args, **kwargs):
                batch = super().generate(*args, **kwargs)
                batch.answers = [str(sum(c) % 3) for c in batch.completion_ids]
                return batch

        return Engine(**settings)


def test_default_suite_fit_with_the_majority_vote(tiny_model_dir, tmp_path):
    """reward=vote (the default), bf16 defaults: the vote gives varied rewards and the weights move."""
    run = tmp_path / "run"
    engine = ["rollout.engine._target_=test_defaults.DigitAnswers"]
    results = fit(_cfg(tiny_model_dir, run, *engine, *TRAIN, "trainer.max_steps=3"))
    assert results["steps"] == 3
    metrics = read_metrics(run)
    assert metrics["train/majority_share"] and all(0.25 <= v <= 1 for v in metrics["train/majority_share"].values())
    assert metrics["train/reward/vote"]
    from transformers import AutoModelForCausalLM

    init = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(init[k.removeprefix("model.")], v) for k, v in _state(run)["state_dict"].items())


def test_top_k_one_is_greedy_and_stop_strings_end_completions(tiny_model_and_tokenizer):
    from srtlab.rollout.engine import SamplingSettings
    from srtlab.rollout.hf import HFEngine
    from srtlab.types import Prompt

    model, tokenizer = tiny_model_and_tokenizer
    engine = HFEngine(model=model, tokenizer=tokenizer, answer_style="answer_line")
    prompts = [Prompt(id=f"p/{i}", messages=[{"role": "user", "content": q}], task="t", answer="1")
               for i, q in enumerate(["What is 2+2?", "Name a colour."])]
    greedy = engine.generate(prompts, 1, SamplingSettings(temperature=0, max_new_tokens=12), seed=0)
    top1 = engine.generate(prompts, 3, SamplingSettings(temperature=1.5, top_k=1, max_new_tokens=12), seed=1)
    assert top1.texts == [t for t in greedy.texts for _ in range(3)]  # top_k=1 leaves one choice: greedy's
    free = engine.generate(prompts, 3, SamplingSettings(temperature=1.5, top_k=0, max_new_tokens=12), seed=1)
    assert free.texts != top1.texts  # without top_k the samples differ (so the check above can fail)

    long = engine.generate(prompts, 2, SamplingSettings(temperature=1.0, max_new_tokens=24), seed=2)
    stop = next(ch for ch in long.texts[0][1:] if ch.strip())  # a character the model does write
    cut = engine.generate(prompts, 2, SamplingSettings(temperature=1.0, max_new_tokens=24, stop=[stop]), seed=2)
    for before, after in zip(long.texts, cut.texts):
        if stop in before:  # same seed, same samples up to the stop string, which ends the completion
            assert after == before[: before.index(stop) + len(stop)]
        else:
            assert after == before
    assert any(stop in t for t in long.texts) and cut.texts != long.texts
