"""Checkpoint files that a kill cannot corrupt, and a failed save that says why.

Lightning's default writes through an fsspec transaction whose temporary file lives in the system's
temp folder; when that is another file system the final move is a copy, and a ``kill -9`` during the
copy leaves a truncated checkpoint under the real name. Here the checkpoint is written to
``<name>.tmp`` beside the target, flushed and fsynced, then renamed over the target with ``os.replace``
(atomic on POSIX within one file system): at any instant the path holds either the previous
checkpoint or the new one, whole.

A write that fails (disk full, a folder that cannot be written) removes its ``.tmp``, leaves the previous
checkpoint as it was, and raises :class:`CheckpointSaveError`, one line naming the path and the bytes it
needs; ``srtlab.train.fit`` stops the run on it rather than training on without checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the previous one at its path is kept. The message is one line."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an atomic write; loading is the parent's (``weights_only`` as Lightning asks)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except (OSError, RuntimeError) as err:
            cause = os_error(err)
            if cause is None:  # not the file system: a bug to see whole
                raise
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise CheckpointSaveError(save_failure(target, checkpoint_bytes(checkpoint), cause)) from err
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)


def os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write as a RuntimeError whose context it is."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def checkpoint_bytes(checkpoint: Any) -> int:
    """The bytes of the tensors in ``checkpoint``, each storage once (tied weights share one), as torch.save
    writes them; the rest of a checkpoint is a few kilobytes."""
    storages: dict[int, int] = {}
    stack = [checkpoint]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sum(storages.values())


def save_failure(target: Path, needed: int, cause: OSError) -> str:
    """One line: which checkpoint was not written, why, the bytes it needs and those free where it goes."""
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    kept = "its previous checkpoint is kept" if target.exists() else "there is no earlier checkpoint"
    return (f"checkpoint {target} not written ({cause.strerror or cause}): it needs {_size(needed)} ({needed:,} "
            f"bytes), {folder} has {_size(free)} free; {kept}")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def save_stop_checkpoint(trainer) -> Path:
    """Write ``<run>/checkpoints/last.ckpt`` now (a stop request, ``srtlab.interrupt``), as the run's checkpoint
    callback would: that callback records it as its last checkpoint, so the resumed run rewrites the same file
    (otherwise it would keep it and write ``last-v1.ckpt`` beside it)."""
    path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "save_last", False):
            callback.last_model_path = str(path)
    trainer.save_checkpoint(path, weights_only=False)  # the full state (optimizer, loops, callbacks)
    return path
