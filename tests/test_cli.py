"""The command line as a user runs it (subprocesses of this checkout's code)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout, not whichever srtlab is installed
    env.pop("SRTLAB_COMMAND", None)
    return subprocess.run([sys.executable, "-m", "srtlab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env=env, check=False)


def test_config_error_is_one_clear_line_and_nothing_loads(tmp_path):
    out = _run("fit", "rollout.n=1", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == "config error: rollout.n=1; accepted: an integer >= 2\n"
    assert list(tmp_path.iterdir()) == []  # no run folder, no .hydra/, no log


def test_help_and_unknown_command(tmp_path):
    assert "fit" in _run("--help", cwd=tmp_path).stdout
    out = _run("train", cwd=tmp_path)
    assert out.returncode != 0 and "unknown command 'train'" in out.stderr
