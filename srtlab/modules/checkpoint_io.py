"""Checkpoint files that a kill cannot corrupt.

Lightning's default writes through an fsspec transaction whose temporary file lives in the system's
temp folder; when that is another file system the final move is a copy, and a ``kill -9`` during the
copy leaves a truncated checkpoint under the real name. Here the checkpoint is written to
``<name>.tmp`` beside the target, flushed and fsynced, then renamed over the target with ``os.replace``
(atomic on POSIX within one file system): at any instant the path holds either the previous
checkpoint or the new one, whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an atomic write; loading is the parent's (``weights_only`` as Lightning asks)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)
