"""A kill -9 in the middle of a checkpoint write leaves the previous checkpoint whole and loadable."""

import os
import signal
import subprocess
import sys
import textwrap

import torch

from srtlab.modules.checkpoint_io import AtomicCheckpointIO

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
