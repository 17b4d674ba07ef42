"""The command line as a user runs it (subprocesses)."""

import subprocess
import sys


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "srtlab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_config_error_is_one_clear_line_and_nothing_loads(tmp_path):
    out = _run("fit", "rollout.n=1", f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode != 0
    assert "config error: rollout.n=1; group advantages (and the vote) need at least 2" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_help_and_unknown_command(tmp_path):
    assert "fit" in _run("--help", cwd=tmp_path).stdout
    out = _run("train", cwd=tmp_path)
    assert out.returncode != 0 and "unknown command 'train'" in out.stderr
