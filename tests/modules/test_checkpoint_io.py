"""A kill -9 in the middle of a checkpoint write leaves the previous checkpoint whole and loadable; a write that
fails (disk full, a folder that cannot be written) removes its .tmp, keeps the previous checkpoint and stops
the run with one line naming the path and the bytes it needs."""

import errno
import io
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import PARITY_REWARD
from srtlab.modules import checkpoint_io
from srtlab.modules.checkpoint_io import AtomicCheckpointIO, CheckpointSaveError, checkpoint_bytes

# The child writes a first checkpoint, then starts a second whose pickling kills the process halfway
# through (the temporary file is open, the checkpoint half serialised): where a real kill -9 can strike.
CHILD = textwrap.dedent("""
    import os, signal, sys, torch
    from srtlab.modules.checkpoint_io import AtomicCheckpointIO

    class KillHere:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGKILL)

    io, path = AtomicCheckpointIO(), sys.argv[1]
    io.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1_000_000)}, "global_step": 2, "x": KillHere()}, path)
""")


def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env)
    assert proc.returncode == -signal.SIGKILL
    partial = path.with_name("last.ckpt.tmp")
    assert partial.exists()  # the second write had begun when the kill struck
    ckpt = AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    assert ckpt["global_step"] == 1 and torch.equal(ckpt["state_dict"]["w"], torch.ones(1000))


def test_a_finished_write_replaces_the_file(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "a.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert not path.with_name("a.ckpt.tmp").exists()


class _FillsUp(io.FileIO):
    """A file on a disk with ``room`` bytes left: the write that passes them writes what fits, then fails as a
    full disk does (ENOSPC)."""

    def __init__(self, path, mode: str, room: int) -> None:
        super().__init__(path, mode)
        self.room = room

    def write(self, data) -> int:
        data = bytes(data)
        if len(data) > self.room:
            super().write(data[:self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


def _disk_fills_on_save(monkeypatch, save: int, room: int = 2000) -> None:
    """The ``save``-th checkpoint write (1-based) from now on runs out of disk after ``room`` bytes."""
    opened = []

    def fake_open(path, mode="r", *args, **kwargs):
        opened.append(path)
        return _FillsUp(path, mode, room) if len(opened) == save else io.FileIO(path, mode)

    monkeypatch.setattr(checkpoint_io, "open", fake_open, raising=False)


def test_a_save_that_fills_the_disk_keeps_the_previous_one_and_names_the_bytes(tmp_path, monkeypatch):
    io_, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 1}, path)
    before = path.read_bytes()
    _disk_fills_on_save(monkeypatch, save=1)
    big = {"state_dict": {"w": torch.zeros(100_000)}, "global_step": 2}
    with pytest.raises(CheckpointSaveError) as err:
        io_.save_checkpoint(big, path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"checkpoint {path} not written (No space left on device)")
    assert "(400,000 bytes)" in message and "its previous checkpoint is kept" in message
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    def refused(path, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(checkpoint_io, "open", refused, raising=False)  # as for a read-only folder (root ignores modes)
    path = tmp_path / "locked" / "last.ckpt"
    with pytest.raises(CheckpointSaveError, match=f"checkpoint {path} not written \\(Permission denied\\): it needs "
                                                  "4.0 MB .* there is no earlier checkpoint"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1_000_000)}, path)
    assert list(path.parent.iterdir()) == []


def test_checkpoint_bytes_counts_each_storage_once():
    weight = torch.zeros(10, 4)
    assert checkpoint_bytes({"a": weight, "tied": weight, "opt": [{"m": torch.zeros(3)}], "step": 1}) == 172


def test_fit_stops_with_one_line_when_a_save_fails(tiny_cfg, tmp_path, monkeypatch, capsys):
    """The first checkpoint fills the disk: no .tmp is left, the run stops with one line and exit status 1 (the
    previous checkpoint's survival is the test above)."""
    from srtlab.train import fit

    run = tmp_path / "run"
    _disk_fills_on_save(monkeypatch, save=1)
    with pytest.raises(SystemExit) as stop:
        fit(tiny_cfg(*PARITY_REWARD, "eval_before=false", "eval_after=false", "trainer.max_steps=1",
                     "trainer.val_check_interval=100", "data.train_size=4", run_dir=run))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "checkpoint" in line]  # (the rest: the model's loading bar)
    assert stop.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"checkpoint error: checkpoint {run / 'checkpoints' / 'last.ckpt'} not written (No "
                               "space left on device): it needs ") and "there is no earlier checkpoint" in lines[0]
    assert list((run / "checkpoints").iterdir()) == []
