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


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The repo's wheel, built from a copy (so no stale build/ folder of the repo's own ends up in it)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "outputs", "*.egg-info",
                                                             "__pycache__", "wandb"))
    subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True)
    (built,) = (tmp / "dist").glob("srtlab-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel (no dependencies) installed into a clean ``--target`` folder."""
    site = tmp_path_factory.mktemp("site")
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True)
    return site


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


def test_plain_fit_from_the_installed_wheel_runs_the_up_front_check(installed, tmp_path, tiny_model_dir):
    """No ``--cfg``, no ``--config-dir``: the command line's own check reads the configs the wheel ships (it read the
    repo's configs/ folder, which an installed package does not have), and a bad value still stops it."""
    common = [f"model.path={tiny_model_dir}", *TINY_OVERRIDES, "trainer.max_steps=1", "eval_before=false"]
    out = _srtlab(installed, "fit", "experiment=srt", *common, "eval_after=false", f"run_dir={tmp_path / 'run'}",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 1
    bad = _srtlab(installed, "fit", "experiment=srt", *common, "rollout.n=1", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "config error: rollout.n=1; accepted: an integer >= 2"


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_fits_and_evaluates_from_an_empty_folder(wheel, tmp_path):
    """As a user runs it: the wheel installed into a new virtual environment (its dependencies are this one's,
    read through a .pth file, so nothing is downloaded), then plain ``fit`` and ``eval`` of the built-in model
    from an empty folder, no flags."""
    import site

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                         text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(own) / "dependencies.pth").write_text("\n".join(deps) + "\n")  # not their .pth files: no editable srtlab
    subprocess.run([*PIP, "install", "--no-deps", "--target", own, str(wheel)], check=True, capture_output=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SRTLAB_COMMAND")}
    where = subprocess.run([str(python), "-c", "import srtlab; print(srtlab.__file__)"], capture_output=True,
                           text=True, cwd=empty, env=env, check=True).stdout
    assert where.startswith(own)  # the installed wheel, not the repo
    for command in ("fit", "eval"):
        out = subprocess.run([str(python), "-m", "srtlab", command, "experiment=srt", "debug=fast_dev"],
                             capture_output=True, text=True, cwd=empty, env=env, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "run folder: outputs/" in out.stdout
    runs = sorted((empty / "outputs").rglob("results.json"))
    assert len(runs) == 2 and json.loads(runs[0].read_text())  # fit's and eval's
