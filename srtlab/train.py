"""The tasks behind the command line: ``fit`` and ``eval``; the config is read here and in ``label``.

``prepare_run`` checks every value (``srtlab.validate``) before anything is written or loaded, so a typo
fails in a second with a message naming the key. ``build`` makes the module, datamodule and trainer from their
``_target_``s (``srtlab.builder``: the one builder, shared with label, export, the benchmarks and the GPU check).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srtlab import interrupt
from srtlab.builder import Builder
from srtlab.models.precision import trainer_precision
from srtlab.modules.checkpoint_io import CheckpointSaveError
from srtlab.modules.policy import NonFiniteUpdates
from srtlab.validate import CONFIG_ERROR_EXIT, ConfigError, check_config

log = logging.getLogger(__name__)
CHECKPOINT_ERROR_EXIT = 1  # a checkpoint could not be written, or updates kept failing: one line says why


# -- run folders ------------------------------------------------------------------------------------
def run_dir_resolver(base: str, resume: Any, ckpt_path: Any) -> str:
    """``run_dir``: the checkpoint's run (ckpt_path), the newest resumable run (resume=true), or a new one.

    The other ranks that Lightning's launcher starts take the first rank's folder (``SRTLAB_RUN_DIR``);
    under torchrun or SLURM every rank resolves its own, so pass ``run_dir=`` there.
    """
    if os.environ.get("SRTLAB_RUN_DIR") and os.environ.get("LOCAL_RANK", "0") != "0":
        return os.environ["SRTLAB_RUN_DIR"]
    if ckpt_path not in (None, "null", "None", ""):
        ckpt = Path(str(ckpt_path))
        return str(ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent)
    if str(resume).lower() == "true":
        runs = sorted(p.parent.parent for p in Path(base).glob("*/checkpoints/last.ckpt"))
        if not runs:
            raise FileNotFoundError(f"resume=true but no run under {base}/ has checkpoints/last.ckpt; "
                                    "start a run without resume, or pass ckpt_path=<file>")
        return str(runs[-1])
    return str(Path(base) / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("srtlab_run_dir"):
        OmegaConf.register_new_resolver("srtlab_run_dir", run_dir_resolver, use_cache=True)


# -- building ---------------------------------------------------------------------------------------
def build_module(cfg: DictConfig, builder: Builder | None = None):
    """The policy module of ``cfg`` (``instantiate(cfg.module)``, each node checked under its key); nothing is
    loaded until ``configure_model()``. ``fit``, ``eval``, ``label``, ``export``, the benchmarks and the GPU check
    all build it here."""
    if "module" not in cfg:
        raise ConfigError("this config has no `module` node (a run written by an older srtlab?); compose it with "
                          "this version's configs")
    return (builder or Builder(cfg))("module")


def build(cfg: DictConfig, with_checkpoints: bool = True):
    """-> (module, datamodule, trainer) from the config."""
    _quiet_lightning()
    builder = Builder(cfg)
    module = build_module(cfg, builder)
    datamodule = builder("data")
    callbacks: list[L.Callback] = []
    # more callbacks by config (the curriculum, ...): `callbacks.<name>: {_target_: ...}`, null removes one
    callbacks += [builder(f"callbacks.{name}") for name, node in (cfg.get("callbacks") or {}).items()
                  if node is not None]
    if with_checkpoints:
        from lightning.pytorch.callbacks import ModelCheckpoint

        # one file, last.ckpt, rewritten every checkpoint_every steps (atomically: AtomicCheckpointIO); a
        # separate step<N>.ckpt beside it doubled the bytes written (1.6 GB each for SmolLM2 with Adam)
        callbacks.append(ModelCheckpoint(dirpath=Path(cfg.run_dir) / "checkpoints",
                                         every_n_train_steps=cfg.checkpoint_every, save_top_k=0, save_last=True))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(_progress_bar())
    precision = trainer_precision(cfg.trainer.precision, cfg.trainer.get("accelerator"))  # auto: what pays here
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate(cfg.logger), precision=precision)
    return module, datamodule, trainer


# Lightning notes that are expected here: the run folder exists (it holds the config), the
# module moves its own batches, and the prompt stream is endless by design.
_QUIET = ["Experiment logs directory .* exists", "You have overridden `transfer_batch_to_device`",
          ".*LeafSpec.*", "Using ModelCheckpoint with manual optimization", ".*does not have many workers.*",
          "Your `IterableDataset` has `__len__` defined"]


class _NoTips(logging.Filter):
    """Drops Lightning's advertisement of its cloud logger, printed on every run (``💡 Tip: ... litlogger``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def _quiet_lightning() -> None:
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTips())


def _progress_bar() -> L.Callback:
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        """Labelled by optimizer steps: the prompt stream is endless, so there are no epochs to count."""

        def _get_train_description(self, current_epoch: int) -> str:
            return f"SRT step (max {self.trainer.max_steps})"

    return StepProgressBar()


def check_or_exit(cfg: DictConfig) -> None:
    """``check_config``; a config mistake prints its one-line messages (not a traceback) and exits with 2."""
    try:
        check_config(cfg)
    except ConfigError as err:
        print("\n".join(f"config error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT) from None


def prepare_run(cfg: DictConfig) -> Path:
    """Check the config (exit 2 with one-line messages when it is wrong), then set threads and seeds and create
    the run folder with the resolved ``config.yaml``; -> the run folder. Every task starts here."""
    _quiet_lightning()
    check_or_exit(cfg)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.run_dir)
    os.environ["SRTLAB_RUN_DIR"] = str(run_dir)  # processes launched for other ranks write here too
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def val_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last evaluation's ``val/*`` metrics, whoever logged them (the policy, the retry evaluation)."""
    return {k: float(v) for k, v in sorted(trainer.callback_metrics.items()) if k.startswith("val/")}


def format_table(before: dict[str, float], after: dict[str, float]) -> str:
    keys = sorted(set(before) | set(after))
    width = max([len(k) for k in keys] + [6])
    lines = [f"{'metric'.ljust(width)}  before   after   change", "-" * (width + 26)]
    for k in keys:
        b, a = before.get(k), after.get(k)
        fmt = lambda x: "   -  " if x is None else f"{x:6.3f}"
        delta = "" if a is None or b is None else f"{a - b:+7.3f}"
        lines.append(f"{k.ljust(width)}  {fmt(b)}  {fmt(a)}  {delta}")
    return "\n".join(lines)


# -- tasks ------------------------------------------------------------------------------------------
def fit(cfg: DictConfig) -> dict[str, Any]:
    """Train with self-reward; evaluate before and after; print and save the before/after table.

    A SIGTERM or SIGINT stops it within one decode step or one training pass (``srtlab.interrupt``), with a
    checkpoint that ``resume=true`` continues exactly; a failed checkpoint save or repeated non-finite updates stop
    it too. Each ends with one line on stderr and a non-zero exit status.
    """
    run_dir = prepare_run(cfg)
    ckpt = cfg.ckpt_path or (str(run_dir / "checkpoints" / "last.ckpt") if cfg.resume else None)
    module, datamodule, trainer = build(cfg)
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if ckpt and results_file.exists() else {}
    start = time.time()
    try:
        with interrupt.handlers():
            if cfg.eval_before and "before" not in results:
                trainer.validate(module, datamodule=datamodule, verbose=False)
                results["before"] = val_metrics(trainer)
                results_file.write_text(json.dumps(results, indent=2))
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
            if cfg.eval_after:
                if module.last_val_step != trainer.global_step:  # the last step may have evaluated already
                    trainer.validate(module, datamodule=datamodule, verbose=False)
                results["after"] = val_metrics(trainer)
    except interrupt.Interrupted as stop:
        saved = run_dir / "checkpoints" / "last.ckpt"
        where = (f"checkpoint {saved} holds step {trainer.global_step}; continue with resume=true" if saved.exists()
                 else "no checkpoint yet (nothing trained): run it again")
        print(f"interrupted: {stop} at step {trainer.global_step}; {where}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except CheckpointSaveError as err:  # disk full, folder not writable: stop, rather than train on unsaved
        print(f"checkpoint error: {err}", file=sys.stderr)
        raise SystemExit(CHECKPOINT_ERROR_EXIT) from None
    except NonFiniteUpdates as err:
        print(f"training error: {err}", file=sys.stderr)
        raise SystemExit(CHECKPOINT_ERROR_EXIT) from None
    results["steps"] = trainer.global_step
    results["wall_s_this_process"] = round(time.time() - start, 1)
    results_file.write_text(json.dumps(results, indent=2))
    table = format_table(results.get("before", {}), results.get("after", {})) if results.get("after") else ""
    print(f"\nrun folder: {run_dir}\n{table}")
    return results


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``model.path`` or a fit checkpoint (``ckpt_path``) on the held-out sets."""
    run_dir = prepare_run(cfg)
    module, datamodule, trainer = build(cfg, with_checkpoints=False)
    trainer.validate(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, verbose=False)
    metrics = val_metrics(trainer)
    (run_dir / "results.json").write_text(json.dumps(metrics, indent=2))
    print(f"\nrun folder: {run_dir}\n" + "\n".join(f"{k:32s} {v:.3f}" for k, v in sorted(metrics.items())))
    return metrics
