"""What the code and configs point a reader to exists: every ``:meth:`` / ``:func:`` / ``:class:`` / ``:mod:``
reference in srtlab's docstrings resolves, and every source path named in a config comment is a file or folder."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:meth|func|class|mod|data|attr):`~?([\w.]+)`")
PATH = re.compile(r"\b((?:srtlab|experiments|docs|tests|configs)/[\w./-]*\w)")


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _resolves(module, target: str) -> bool:
    """``target`` from ``module``: a dotted name from srtlab or a module it imports, or a name (or Class.name) in
    the module, or a method of one of its classes."""
    parts = target.split(".")
    starts = []
    if parts[0] == "srtlab":
        for i in range(len(parts), 0, -1):
            try:
                starts.append((importlib.import_module(".".join(parts[:i])), parts[i:]))
                break
            except ModuleNotFoundError:
                continue
    starts.append((module, parts))
    starts += [(cls, parts) for _, cls in inspect.getmembers(module, inspect.isclass)]
    for obj, rest in starts:
        for name in rest:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        else:
            return True
    return False


def test_every_docstring_reference_resolves():
    broken = []
    for path in sorted((REPO / "srtlab").rglob("*.py")):
        text = path.read_text()
        refs = ROLE.findall(text)
        if not refs:
            continue
        module = importlib.import_module(_module_name(path))
        broken += [f"{path.relative_to(REPO)}: {ref}" for ref in refs if not _resolves(module, ref)]
    assert not broken, "references to nothing:\n" + "\n".join(broken)


def test_every_path_named_in_a_config_comment_exists():
    missing = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            comment = line.split("#", 1)[1] if "#" in line else ""
            missing += [f"{path.relative_to(REPO)}: {p}" for p in PATH.findall(comment) if not (REPO / p).exists()]
    assert not missing, "config comments name paths that do not exist:\n" + "\n".join(missing)
