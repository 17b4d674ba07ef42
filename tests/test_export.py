"""Export round trip: a tiny fit checkpoint, exported, reloaded by transformers, gives the trainer's log-probs."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import PARITY_REWARD
from srtlab.export import export_checkpoint
from srtlab.train import build, fit

IDS = torch.tensor([[5, 17, 40, 41, 42, 60, 61, 3, 9, 33]])


def _logprobs(model) -> torch.Tensor:
    """Per-token log-probs [1, T-1] of IDS under ``model``."""
    with torch.no_grad():
        logits = model(input_ids=IDS).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, IDS[:, 1:, None]).squeeze(-1)


def _trained(tiny_cfg, run, *extra):
    """A 2-step fit; returns its checkpoint and the trainer's policy restored from it by Lightning."""
    cfg = tiny_cfg(*PARITY_REWARD, "eval_before=false", "eval_after=false", "trainer.val_check_interval=100",
                   "optim.lr=1e-2", "rollout.sampling.temperature=1.0", *extra, run_dir=run)
    fit(cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    module, _, _ = build(cfg, with_checkpoints=False)
    module.configure_model()
    module.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"], strict=False)
    return ckpt, module.model.eval()


@pytest.mark.parametrize("lora", [0, 4])
def test_exported_folder_gives_the_trainers_logprobs(tiny_cfg, tmp_path, tiny_model_dir, lora):
    ckpt, policy = _trained(tiny_cfg, tmp_path / "run", f"model.lora.r={lora}")
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert {"config.json", "config.yaml", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in exported.state_dict())  # merged: a plain model
    torch.testing.assert_close(_logprobs(exported), _logprobs(policy), rtol=0, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    assert (_logprobs(exported) - _logprobs(base)).abs().max() > 1e-3  # training moved it: the test can fail

    if lora:  # the adapter alone, loaded on its base by transformers' peft integration
        adapter = export_checkpoint(ckpt, tmp_path / "adapter", adapter_only=True)
        assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
        with_adapter = AutoModelForCausalLM.from_pretrained(adapter).eval()
        torch.testing.assert_close(_logprobs(with_adapter), _logprobs(policy), rtol=0, atol=1e-5)


def test_out_dir_is_checked_before_anything_loads(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ValueError, match="OUT_DIR=.*full.*not an empty folder"):
        export_checkpoint(tmp_path / "missing.ckpt", full)
    with pytest.raises(FileNotFoundError, match="no config.yaml in its run folder"):
        export_checkpoint(tmp_path / "checkpoints" / "missing.ckpt", tmp_path / "new")
    result = subprocess.run([sys.executable, "-m", "srtlab", "export", str(tmp_path / "missing.ckpt"), str(full)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().startswith("export error: export OUT_DIR=")
