"""One validation pass over the composed config, before anything is written or loaded.

``check_config(cfg)`` raises :class:`ConfigError`, one line per bad value, each naming the key, the
value and what is accepted. It runs in four steps, cheapest first:

1. the table ``RULES``: types and ranges of single keys (``rollout.n`` an integer >= 2, ...);
2. cross-key rules: reward weights (finite, >= 0, positive sum), the task config through
   reasoning-gym's own ``validate()``;
3. the objects that validate themselves (datamodule, reward mix, algorithm, sampling, LoRA, label
   settings, extra callbacks such as the curriculum) are built (no model, no data yet) and asked;
4. paths: the model folder, ``ckpt_path``, the run folder and ``label.out`` (exist, right kind, writable).

The command line (``srtlab.__main__``) runs it on a config composed with Hydra's compose API *before*
``hydra.main`` starts, since Hydra creates the run folder (``.hydra/``, the log file) before the task
runs; a failed check writes nothing. Config errors exit with status 2.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from srtlab.config_rules import _ABSENT, _select, bad, check_table, is_real

CONFIG_ERROR_EXIT = 2  # the exit status of a config error (argparse's, and Hydra's usage errors')
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


class ConfigError(ValueError):
    """A bad config value; the message is one line per bad value: key, value, what is accepted."""


# -- cross-key rules --------------------------------------------------------------------------------
def check_weights(weights: dict[str, Any]) -> list[str]:
    """Reward weights: finite and >= 0, with a positive sum.

    Negative weights are refused: every source reports "higher is better" in [0, 1] (or a rank), and a
    negative weight would silently train away from it; a penalty belongs in a source of its own.
    """
    if not isinstance(weights, dict):
        return [bad("reward.weights", weights, "a mapping from source name to weight")]
    errors = [bad(f"reward.weights.{k}", w, "a finite number >= 0") for k, w in weights.items()
              if not (is_real(w) and w >= 0)]
    if not errors and sum(weights.values()) <= 0:
        errors.append(bad("reward.weights", weights, "weights with a positive sum (at least one source > 0)"))
    return errors


def check_task_config(task: str, config: dict[str, Any]) -> list[str]:
    """The task config through reasoning-gym's own ``validate()`` (a bare AssertionError there)."""
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        return []  # named by the datamodule's own check (with close task names)
    config_cls = DATASETS[task][1]
    try:
        config_cls(**config).validate()
    except (AssertionError, TypeError, ValueError) as err:
        named = [f for f in config if re.search(rf"\b{re.escape(f)}\b", str(err))] or sorted(config)
        values = ", ".join(f"data.task_config.{f}={config[f]!r}" for f in named)
        reason = str(err) or type(err).__name__
        accepted = f"what reasoning-gym {config_cls.__name__} allows ({reason})"
        return [f"{values or 'data.task_config={}'}; accepted: {accepted}"]
    return []


def effective_task_config(cfg: DictConfig) -> dict[str, Any]:
    """``data.task_config``, or the preset for the task (as the datamodule picks it)."""
    config = _select(cfg, "data.task_config")
    if config in (None, _ABSENT):
        config = (_select(cfg, "data.presets") or {}).get(_select(cfg, "data.task"), {})
    return dict(config or {})


def check_batch_split(cfg: DictConfig) -> list[str]:
    """data.batch_size is the global batch: it must divide by the number of ranks (devices x nodes), when the
    config names it (an int ``trainer.devices``; "auto" is checked at setup, by the datamodule)."""
    size, devices, nodes = (_select(cfg, k) for k in ("data.batch_size", "trainer.devices", "trainer.num_nodes"))
    nodes = 1 if nodes in (_ABSENT, None) else nodes
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size, devices, nodes)):
        return []
    if size % (devices * nodes):
        return [bad("data.batch_size", size, f"a multiple of the number of ranks, trainer.devices x trainer.num_nodes "
                                             f"= {devices * nodes} (it is the global batch)")]
    return []


# -- objects that validate themselves ---------------------------------------------------------------
def check_objects(cfg: DictConfig) -> list[str]:
    """Step 3: build each settings object / datamodule / reward mix (cheap: no model, no data) and validate it."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from srtlab.rollout.engine import SamplingSettings

    keys = ["data", "reward", "algorithm", "optim", "rollout.sampling", "rollout.val_sampling", "model.lora",
            "rollout.program", "label", *[f"callbacks.{n}" for n in (cfg.get("callbacks") or {})]]
    errors = []
    for key in keys:
        node = OmegaConf.select(cfg, key, default=None)
        if node is None:
            continue
        try:
            built = instantiate(node, _convert_="all")
            if isinstance(built, SamplingSettings):
                built.validate(key)
            elif hasattr(built, "validate"):
                built.validate()
        except InstantiationException as err:
            cause = err.__cause__ or err
            errors.append(_one_line(f"{key}: {cause}" if not _names_a_key(cause) else str(cause)))
        except (ValueError, FileNotFoundError, TypeError, KeyError) as err:
            errors.append(_one_line(str(err) if _names_a_key(err) else f"{key}: {err}"))
    return errors


def _names_a_key(err: BaseException) -> bool:
    return bool(re.match(r"^[\w.\[\]]+ ?=", str(err)))


def _one_line(message: str) -> str:
    return " ".join(message.split())


# -- paths --------------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_location(key: str, path: Path, kind: str) -> str | None:
    """None if ``path`` can be created (or written) as a ``kind`` ("folder" / "file"), else the message."""
    if path.exists():
        if kind == "folder" and not path.is_dir():
            return bad(key, str(path), "a folder (this is a file)")
        if kind == "file" and path.is_dir():
            return bad(key, str(path), "a file path (this is a folder)")
        return None if os.access(path, os.W_OK) else bad(key, str(path), f"a writable {kind}")
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        return bad(key, str(path), f"a {kind} path; {base} is a file, so nothing can be made under it")
    if not os.access(base, os.W_OK | os.X_OK):
        return bad(key, str(path), f"a {kind} path under a writable folder ({base} is not writable)")
    return None


def check_model_folder(path: str) -> list[str]:
    from srtlab.models.load import BUILTIN_MODELS, check_model_path

    try:
        check_model_path(path)
    except FileNotFoundError as err:
        return [str(err)]
    folder = Path(path).expanduser()
    if path not in BUILTIN_MODELS and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return [bad("model.path", path, f"a model folder with tokenizer files ({', '.join(TOKENIZER_FILES)})")]
    return []


def check_checkpoint(path: str, needs_file: bool) -> list[str]:
    """``ckpt_path``: a checkpoint file written by fit (torch.save's zip), or, for fit/eval, a sharded folder."""
    p = Path(path)
    accepted = "a checkpoint file written by fit" + ("" if needs_file else " (or FSDP's sharded checkpoint folder)")
    if not p.exists():
        return [f"ckpt_path={path!r} does not exist; accepted: {accepted}"]
    if p.is_dir():
        return [bad("ckpt_path", path, accepted + "; this is a folder")] if needs_file else []
    if not zipfile.is_zipfile(p):
        return [bad("ckpt_path", path, accepted + "; this file is not one (not a torch.save zip)")]
    return []


def check_paths(cfg: DictConfig) -> list[str]:
    """Step 4: model folder, checkpoint, run folder, label.out. The run folder is resolved last:
    its resolver derives it from ``ckpt_path`` (or finds the newest run for ``resume=true``)."""
    errors = check_model_folder(cfg.model.path)
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        errors += check_checkpoint(ckpt, needs_file="label" in cfg)
    if errors:
        return errors
    try:
        run_dir = Path(str(cfg.run_dir))
    except (OmegaConfBaseException, FileNotFoundError) as err:  # resume=true with no run to resume
        reason = str(err).split("resolving interpolation: ", 1)[-1].split(";", 1)[0]
        return [bad("resume", cfg.get("resume"), f"true only when there is a run to continue ({_one_line(reason)})")]
    errors += [e for e in [writable_location("run_dir", run_dir, "folder")] if e]
    out = _select(cfg, "label.out")
    if isinstance(out, str) and out:
        errors += [e for e in [writable_location("label.out", Path(out), "file")] if e]
    return errors


# -- the pass -----------------------------------------------------------------------------------------
def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys whose value is Hydra's mandatory marker ``???`` (read unresolved: no resolver runs)."""
    if isinstance(node, dict):
        return [k for key, v in node.items() if key != "hydra" for k in _missing_keys(v, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _missing_keys(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError (one line per bad value) unless every value of ``cfg`` is usable."""
    try:
        missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
        if missing:
            raise ConfigError("\n".join(f"{k}=???; accepted: a value (this config has no default for it)"
                                        for k in missing))
        weights = _select(cfg, "reward.weights")
        errors = check_table(cfg) + check_weights({} if weights is _ABSENT or weights is None else weights)
        errors += check_batch_split(cfg)
        if not errors:
            errors = check_task_config(cfg.data.task, effective_task_config(cfg))
        if not errors:
            errors = check_objects(cfg)
        if not errors:
            errors = check_paths(cfg)
    except OmegaConfBaseException as err:  # a broken interpolation, a missing mandatory value
        errors = [_one_line(str(err))]
    if errors:
        raise ConfigError("\n".join(errors))


def compose(config_dir: str, config_name: str, overrides: list[str]) -> DictConfig:
    """The config ``hydra.main`` would run with (Hydra's compose API: nothing is written)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


def check_command_line(config_dir: str, config_name: str, args: list[str]) -> str | None:
    """Check the config(s) a Hydra command line would run, before Hydra starts; -> the error, or None.

    Hydra's flags are parsed as Hydra parses them; ``-m`` sweeps are expanded into their jobs and
    every job is checked. ``--cfg``, ``--info``, ``--help`` and ``--config-dir`` runs are left to Hydra.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed, unknown = get_args_parser().parse_known_args(args)
    if unknown or parsed.cfg or parsed.info or parsed.help or parsed.hydra_help or parsed.config_dir \
            or parsed.shell_completion or parsed.experimental_rerun:
        return None
    name = parsed.config_name or config_name
    try:
        jobs = [parsed.overrides]
        if parsed.multirun:
            batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(parsed.overrides), None)
            jobs = [job for batch in batches for job in batch]
        for job in jobs:
            check_config(compose(config_dir, name, job))
    except ConfigError as err:
        return str(err)
    except (HydraException, OmegaConfBaseException) as err:  # an unknown key, a missing config group option
        return _one_line(str(err))
    return None
