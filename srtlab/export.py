"""Export a fit checkpoint as a Hugging Face model folder that transformers and vLLM load.

``python -m srtlab export CKPT OUT_DIR [--adapter-only]`` writes the policy's weights (a LoRA adapter
merged into its base model, or with ``--adapter-only`` the adapter alone, which peft and vLLM's LoRA
support load on top of the base), the tokenizer, and the run's ``config.yaml`` beside them, so a
trained model can be evaluated with any harness. The checkpoint is read with ``weights_only=True``
and the run's config says how to rebuild the model (``model.path``, ``model.dtype``, ``model.lora``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from srtlab.models.load import load_model, load_policy_weights


def check_out_dir(out_dir: str | Path) -> Path:
    """OUT_DIR must be an empty or missing folder whose nearest existing parent is writable."""
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"export OUT_DIR={str(out_dir)!r} exists and is not an empty folder; "
                         "give a new or empty folder")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"export OUT_DIR={str(out_dir)!r}: {str(parent)!r} is not writable")
    return out


def run_config(ckpt: Path):
    """The ``config.yaml`` of the run that wrote ``ckpt`` (``<run>/checkpoints/<file>.ckpt``)."""
    from omegaconf import OmegaConf

    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    file = run / "config.yaml"
    if not file.is_file():
        raise FileNotFoundError(f"export CKPT={str(ckpt)!r}: no config.yaml in its run folder {str(run)!r}; "
                                "export checkpoints written by `python -m srtlab fit`")
    return OmegaConf.load(file), file


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, adapter_only: bool = False) -> Path:
    """Write the Hugging Face folder of ``ckpt`` at ``out_dir`` (checked before anything loads)."""
    from srtlab.train import build_module, register_resolvers

    out, ckpt = check_out_dir(out_dir), Path(ckpt).expanduser()
    cfg, config_file = run_config(ckpt)
    if not ckpt.is_file():
        hint = " (a sharded FSDP checkpoint folder: consolidate it first)" if ckpt.is_dir() else ""
        raise FileNotFoundError(f"export CKPT={str(ckpt)!r} is not a checkpoint file{hint}")
    register_resolvers()
    module = build_module(cfg)  # the run's own module, as fit built it
    if adapter_only and module.settings.lora.r == 0:
        raise ValueError(f"export --adapter-only: the run of {str(ckpt)!r} trained all weights (model.lora.r=0); "
                         "there is no adapter to export")
    # the policy alone, as load_model builds it: no reference, no activation-checkpoint wrappers (their module
    # names would hide the LoRA weights from peft's save_pretrained, which then writes an empty adapter)
    model = load_policy_weights(load_model(module.settings), ckpt)
    if module.settings.lora.r > 0 and not adapter_only:
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    module.tokenizer.save_pretrained(tmp)
    shutil.copy(config_file, tmp / "config.yaml")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(tmp, out)  # a killed export leaves no half folder at OUT_DIR
    return out
