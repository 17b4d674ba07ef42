"""The package as a user installs it: a wheel built from the repo carries its configs, runs from any folder, and
takes the user's own config folder (``--config-dir``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The repo's wheel (no dependencies) installed into a clean ``--target`` folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so no stale build/ folder of the repo's own ends up in the wheel
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "outputs", "*.egg-info",
                                                             "__pycache__", "wandb"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("srtlab-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp / "site"), str(wheel)], check=True,
                   capture_output=True)
    return tmp / "site"


def _srtlab(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m srtlab ARGS`` importing srtlab from ``site`` only (not the repo, not an editable install)."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "srtlab", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_wheel_ships_configs_and_runs_from_another_folder(installed, tmp_path):
    where = subprocess.run([sys.executable, "-c", "import srtlab; print(srtlab.config_dir())"], capture_output=True,
                           text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, check=True)
    assert Path(where.stdout.strip()) == installed / "srtlab" / "configs"
    shipped = installed / "srtlab" / "configs"
    assert {p.relative_to(shipped) for p in shipped.rglob("*.yaml")} == {
        p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml")}
    out = _srtlab(installed, "fit", "experiment=srt", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name: srt" in out.stdout


def test_wheel_fits_with_the_users_config_dir(installed, tmp_path, tiny_model_dir):
    mine = tmp_path / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /algorithm: grpo\nname: mine\n")
    run = tmp_path / "run"
    out = _srtlab(installed, "fit", "--config-dir", str(tmp_path / "my_configs"), "experiment=mine",
                  f"model.path={tiny_model_dir}", f"run_dir={run}", *TINY_OVERRIDES, "trainer.max_steps=1",
                  "eval_before=false", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["steps"] == 1
    config = (run / "config.yaml").read_text()
    assert "name: mine" in config and "advantage: grpo" in config
