"""One check of the composed config, before anything is written or loaded.

``check_config(cfg)`` raises :class:`ConfigError`, one line per bad value, each naming the key the user set, the
value and what is accepted. Every key is checked in one place:

1. the objects own their keys: ``check_config`` builds them (``srtlab.builder``: the module with its model
   settings, rollout stage, reward mix and objective; the datamodule; the callbacks; the label settings), and
   each checks its own values as it is built (``srtlab.settings``). Nothing heavy is loaded: no model; a data
   file (not a built-in set) is read whole and its prompts counted with the model's tokenizer, and the model's
   context is read from its config.json (``srtlab.data.limits``);
2. what no srtlab object owns is checked here: the run's own keys (:data:`RUN`), the nodes that Lightning and
   torch take (``trainer.*``, ``logger.*``, ``optim.*``, ``lr_schedule.*``: built on a stand-in, so their own
   checks run, with srtlab's bounds on top), keys that depend on each other (the global batch and the ranks),
   mandatory values left unset (``???``), and paths (``ckpt_path``, the run folder, ``label.out``).

The command line (``srtlab.__main__``) runs it on a config composed with Hydra's compose API *before*
``hydra.main`` starts, since Hydra creates the run folder (``.hydra/``, the log file) before the task
runs; a failed check writes nothing. Config errors exit with status 2.
"""

from __future__ import annotations

import inspect
import os
import re
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from srtlab.builder import Builder, BuildError, user_key
from srtlab.settings import (
    Rule,
    SettingError,
    any_of,
    boolean,
    check,
    choice,
    integer,
    listing,
    mapping,
    real,
    record,
    scope,
    text,
)

CONFIG_ERROR_EXIT = 2  # the exit status of a config error (argparse's, and Hydra's usage errors')
OWNER = "srtlab.validate"


class ConfigError(ValueError):
    """A bad config value; the message is one line per bad value: key, value, what is accepted."""


def bad(key: str, value: Any, accepted: str) -> str:
    """The one-line message for a bad value."""
    return f"{key}={value!r}; accepted: {accepted}"


# -- the keys no srtlab object takes ------------------------------------------------------------------
OUTPUTS = "outputs"  # where run folders go (configs/fit.yaml: outputs/<name>/<date_time>)


def inside_outputs(path: str) -> bool:
    """Whether a relative ``path`` stays inside outputs/ once its ``..`` are resolved."""
    parts = Path(os.path.normpath(path)).parts
    return not os.path.isabs(path) and len(parts) > 1 and parts[0] == OUTPUTS


RUN: dict[str, Rule] = {
    "name": Rule(lambda v: isinstance(v, str) and bool(v) and inside_outputs(f"{OUTPUTS}/{v}"),
                 f"a name, or a relative path that stays inside {OUTPUTS}/ (the run folder is {OUTPUTS}/<name>/"
                 "<date_time>; an absolute run_dir puts it elsewhere)"),
    "seed": integer(0), "resume": boolean(), "ckpt_path": text(null=True), "run_dir": text(),
    "eval_before": boolean(), "eval_after": boolean(), "checkpoint_every": integer(1), "threads": integer(1, null=True),
    "callbacks": mapping(null=True, what="a mapping of name -> a callback node (with _target_) or null"),
}


def _precisions() -> list[str]:
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR

    return list(typing.get_args(_PRECISION_INPUT_STR))


DEVICES = any_of(integer(1), Rule(lambda v: v == "auto" or v == -1, "auto"),
                 Rule(lambda v: isinstance(v, (list, ListConfig)) and all(isinstance(d, int) for d in v),
                      "a list of device indices"))
SIZE = any_of(integer(1), Rule(lambda v: v == "auto", "auto"))


def check_accelerator(cfg: DictConfig) -> list[str]:
    """``trainer.accelerator=gpu`` (or cuda) on a machine without one is said here, not as Lightning's traceback
    after the data and model have loaded (trainer=fsdp asks for GPUs)."""
    import torch

    accelerator = _select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        return [bad("trainer.accelerator", accelerator, "cpu or auto on this machine (torch sees no GPU; for "
                                                        "FSDP on CPU processes: trainer=fsdp trainer.accelerator=cpu)")]
    return []


def trainer_rules() -> dict[str, Rule]:
    """Lightning Trainer arguments as the configs use them; any other Trainer argument is Lightning's to check."""
    return {
        "accelerator": choice(("cpu", "gpu", "cuda", "mps", "tpu", "auto")), "devices": DEVICES,
        "num_nodes": integer(1), "precision": choice(["auto", *_precisions()]), "max_steps": integer(1),
        "val_check_interval": integer(1, null=True), "check_val_every_n_epoch": integer(1, null=True),
        "num_sanity_val_steps": integer(-1), "log_every_n_steps": integer(1), "enable_progress_bar": boolean(),
        "enable_model_summary": boolean(), "default_root_dir": text(),
        "limit_val_batches": any_of(integer(0), real(0, 1)),
        "plugins": listing(null=True, what="a list of Lightning plugin nodes or null"),
        "strategy": any_of(text(), mapping(what="a strategy node")),
        "strategy.data_parallel_size": SIZE, "strategy.tensor_parallel_size": SIZE,
        "strategy.save_distributed_checkpoint": boolean(),
    }


# srtlab's bounds on the optimizer's own arguments: values a user may well type, that no run can use
OPTIM: dict[str, Rule] = {
    "lr": real(0, 1, open_low=True, why="a larger step diverges at once"),
    "weight_decay": real(0, 1, why="the weights would shrink by more than themselves"),
    "betas": Rule(lambda v: isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
}


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, key, default=default, throw_on_missing=False)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _check_keys(cfg: DictConfig, prefix: str, rules: dict[str, Rule]) -> list[str]:
    """Check the keys of ``rules`` present under ``prefix`` (interpolated keys: where they point, once)."""
    from srtlab.builder import alias_of

    values = {}
    for key in rules:
        full = f"{prefix}.{key}" if prefix else key
        parent, _, leaf = full.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node or alias_of(cfg, full) is not None:
            continue
        values[key] = _select(cfg, full)
    try:
        with scope(prefix):
            check(_Validate, rules, values)
    except SettingError as err:
        return str(err).splitlines()
    return []


class _Validate:  # the owner named for the keys checked here
    __qualname__ = OWNER


def _mention(message: str, keys: list[str]) -> list[str]:
    """The keys a library's error message is about: every word of the key in it (``start_factor``: "Starting
    multiplicative factor"), or its usual name (``lr``: "learning rate")."""
    low = message.lower()
    words = {"lr": "learning rate", "betas": "beta", "eps": "epsilon", "T_max": "t_max"}
    return [k for k in keys if all(w in low for w in k.lower().split("_")) or (k in words and words[k] in low)]


def check_library_node(cfg: DictConfig, key: str, build, ours: dict[str, Rule] | None = None) -> list[str]:
    """A node that Lightning or torch takes (``optim``, ``lr_schedule``, ``logger``): build it on a stand-in so the
    library's own checks run; its error is named by the keys it mentions. ``ours``: the keys srtlab bounds itself
    (checked in :func:`check_libraries`, their one home here)."""
    from hydra.errors import InstantiationException

    node = OmegaConf.select(cfg, key)
    if node is None:
        return []
    owner = str(node.get("_target_", key)) if isinstance(node, DictConfig) else key
    names = [k for k in node if not str(k).startswith("_")] if isinstance(node, DictConfig) else []
    for name in names:
        if name not in (ours or {}):
            record(f"{key}.{name}", owner)
    try:
        build(node)
    except (InstantiationException, TypeError, ValueError, IndexError, KeyError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        message = " ".join(str(cause).split())
        named = _mention(message, names)
        return [bad(f"{key}.{n}", _select(cfg, f"{key}.{n}"), f"what {owner} accepts ({message})") for n in named] \
            or [f"{key}: {message}"]
    return []


def check_libraries(cfg: DictConfig) -> list[str]:
    """``trainer.*`` (a table: Lightning checks the rest when the run starts), ``optim.*`` and ``lr_schedule.*``
    (built on a stand-in parameter; srtlab's bounds on top), ``logger.*`` (built)."""
    import torch
    from hydra.utils import instantiate

    errors = _check_keys(cfg, "trainer", trainer_rules())
    errors += check_accelerator(cfg) if not errors else []
    trainer = OmegaConf.select(cfg, "trainer")
    if isinstance(trainer, DictConfig):
        import lightning

        accepted = set(inspect.signature(lightning.Trainer.__init__).parameters)
        for name in trainer:
            if name.startswith("_"):
                continue
            record(f"trainer.{name}", OWNER)
            if name not in accepted:
                errors.append(bad(f"trainer.{name}", _select(cfg, f"trainer.{name}"),
                                  "an argument of lightning.Trainer"))
    errors += _check_keys(cfg, "optim", OPTIM)
    stand_in = [torch.nn.Parameter(torch.zeros(1))]
    made: dict[str, Any] = {}

    def optimizer(node: DictConfig) -> None:
        made["optim"] = instantiate(node, _convert_="all")(stand_in)

    errors += check_library_node(cfg, "optim", optimizer, OPTIM) if not errors else []
    if "optim" in made:
        errors += check_library_node(cfg, "lr_schedule", lambda node: instantiate(node, _convert_="all")(made["optim"]))
    errors += check_library_node(cfg, "logger", lambda node: instantiate(node))
    return errors


def check_batch_split(cfg: DictConfig) -> list[str]:
    """data.batch_size is the global batch: it must divide by the number of ranks (devices x nodes), when the
    config names it (an int ``trainer.devices``; "auto" is checked at setup, by the datamodule)."""
    size, devices, nodes = (_select(cfg, k) for k in ("data.batch_size", "trainer.devices", "trainer.num_nodes"))
    nodes = 1 if nodes is None else nodes
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (size, devices, nodes)):
        return []
    if size % (devices * nodes):
        return [bad("data.batch_size", size, f"a multiple of the number of ranks, trainer.devices x trainer.num_nodes "
                                             f"= {devices * nodes} (it is the global batch)")]
    return []


def check_micro_batch(cfg: DictConfig) -> list[str]:
    """One prompt and its completion must fit one pass: module.micro_batch_tokens at least
    rollout.sampling.max_new_tokens plus data.max_prompt_tokens (when set; else plus one token; a longer rendered
    prompt then fails at its step, naming the same key)."""
    budget, new, prompt = (_select(cfg, k) for k in ("module.micro_batch_tokens", "rollout.sampling.max_new_tokens",
                                                      "data.max_prompt_tokens"))
    ints = [v for v in (budget, new, prompt) if v is not None]
    if budget is None or new is None or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ints):
        return []  # a wrong type is reported where it is set
    need = new + (prompt if prompt is not None else 1)
    if budget >= need:
        return []
    longest = (f"data.max_prompt_tokens ({prompt})" if prompt is not None else "the longest prompt, at least 1")
    return [bad("module.micro_batch_tokens", budget, f"at least {need}: one prompt and its completion fit one pass "
                                                     f"(rollout.sampling.max_new_tokens ({new}) + {longest})")]


# -- the objects --------------------------------------------------------------------------------------
def object_keys(cfg: DictConfig) -> list[str]:
    """The nodes built as srtlab objects: the module (and through it the model, rollout, reward, algorithm
    groups), the datamodule, every callback, the label settings."""
    keys = ["module", "data"]
    keys += [f"callbacks.{name}" for name, node in (cfg.get("callbacks") or {}).items() if node is not None]
    return keys + (["label"] if "label" in cfg else [])


def check_objects(cfg: DictConfig) -> list[str]:
    """Build every srtlab object of the config (nothing heavy loads); -> their problems, one line each, each named
    by the key the user set (a constructor's check of a field that repeats another key, ``data.max_new_tokens:
    ${rollout.sampling.max_new_tokens}``, names the key it repeats)."""
    builder = Builder(cfg)
    errors: list[str] = []
    for key in object_keys(cfg):
        try:
            builder(key)
        except (SettingError, BuildError) as err:
            lines = [_as_set(cfg, line) for line in str(err).splitlines()]
            errors += [line for line in lines if line not in errors]
    return errors


def _as_set(cfg: DictConfig, line: str) -> str:
    """``line`` (``KEY=VALUE; accepted: ...``) with KEY replaced by the key the user set for it."""
    key, sep, rest = line.partition("=")
    return f"{user_key(cfg, key)}{sep}{rest}" if sep and re.fullmatch(r"[\w.]+", key) else line


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


def check_run_dir(cfg: DictConfig) -> list[str]:
    """The run folder resolves: its resolver derives it from ``ckpt_path`` (which must then exist) or, with
    ``resume=true``, finds the newest run of this name (there must be one). A ``run_dir`` the user gives is
    absolute, or stays inside outputs/ (``name`` is checked to keep the resolver's folder there)."""
    ckpt = cfg.get("ckpt_path")
    if isinstance(ckpt, str) and ckpt:
        errors = check_checkpoint(ckpt, needs_file="label" in cfg)
        if errors:
            return errors
    try:
        run_dir = str(cfg.run_dir)
    except (OmegaConfBaseException, FileNotFoundError) as err:  # resume=true with no run to resume
        reason = str(err).split("resolving interpolation: ", 1)[-1].split(";", 1)[0]
        return [bad("resume", cfg.get("resume"), f"true only when there is a run to continue ({_one_line(reason)})")]
    given = not str(cfg._get_node("run_dir")._value()).startswith("${srtlab_run_dir:")
    if given and not (os.path.isabs(run_dir) or inside_outputs(run_dir)):
        return [bad("run_dir", run_dir, f"an absolute path, or a relative path that stays inside {OUTPUTS}/ "
                                        "(this one leaves it)")]
    return []


def check_paths(cfg: DictConfig) -> list[str]:
    """The run folder and label.out can be written."""
    errors = [e for e in [writable_location("run_dir", Path(str(cfg.run_dir)), "folder")] if e]
    out = _select(cfg, "label.out")
    if isinstance(out, str) and out:
        errors += [e for e in [writable_location("label.out", Path(out), "file")] if e]
    return errors


def _one_line(message: str) -> str:
    return " ".join(message.split())


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
        errors = check_run_dir(cfg)  # resolved first: other keys repeat it (trainer.default_root_dir, logger)
        if not errors:
            errors = _check_keys(cfg, "", RUN) + check_libraries(cfg) + check_batch_split(cfg)
            errors += check_objects(cfg)
        if not errors:  # reads the lengths the objects checked (a length past the model's context is said there)
            errors = check_micro_batch(cfg)
        if not errors:
            errors = check_paths(cfg)
    except OmegaConfBaseException as err:  # a broken interpolation, a missing mandatory value
        errors = [_one_line(str(err))]
    if errors:
        raise ConfigError("\n".join(dict.fromkeys(errors)))


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

