"""The one builder: config nodes -> objects, each built under its own config key.

``build(cfg, key)`` instantiates the node at ``key`` bottom-up: every child node first (each under its own key),
then the node's target with the built children, through Hydra's ``instantiate`` (its target policy applies).
Each object checks its own values when it is built (``srtlab.settings``), and because the builder sets the key
of the node being built, a bad value is named by its full key (``rollout.sampling.top_p=0; accepted: ...``).
A ``_partial_`` node (the engine, a data source, the optimizer) is not called until the model exists; the
builder checks its values with the target's ``check_values`` instead. A node that only repeats another
(``val_sampling: ${rollout.sampling}``, ``module.rollouts: ${rollout}``) is that node, built and checked once,
and named by the key the user set.

``fit``, ``eval``, ``label``, ``export``, the benchmarks and the GPU check all build through here
(``srtlab.train.build`` and ``build_module``), and ``srtlab.validate`` checks a config by building its objects,
before any model loads.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from srtlab.settings import SettingError, scope

SPECIAL = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")
_ALIAS = re.compile(r"^\$\{([\w.]+)\}$")


class BuildError(ValueError):
    """A node's constructor failed for a reason other than a bad value (one line, naming the key)."""


def alias_of(cfg: DictConfig, key: str) -> str | None:
    """The key that ``key`` repeats, when its value is exactly ``${other.key}``; else None."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent or not OmegaConf.is_interpolation(parent, leaf):
        return None
    found = _ALIAS.match(str(parent._get_node(leaf)._value()))
    return found.group(1) if found else None


def user_key(cfg: DictConfig, key: str) -> str:
    """The key a user sets for ``key``: every prefix that only repeats another node is replaced by that node."""
    parts = key.split(".")
    for i in range(len(parts), 0, -1):
        source = alias_of(cfg, ".".join(parts[:i]))
        if source is not None:
            return user_key(cfg, ".".join([source, *parts[i:]]))
    return key


class Builder:
    """Builds nodes of one config, each once (a node repeated elsewhere is the same object)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.built: dict[str, Any] = {}

    def __call__(self, key: str) -> Any:
        key = user_key(self.cfg, key)
        if key not in self.built:
            self.built[key] = self._build(key)
        return self.built[key]

    def _build(self, key: str) -> Any:
        node = OmegaConf.select(self.cfg, key, throw_on_missing=True)
        if isinstance(node, DictConfig):
            if "_target_" in node:
                return self._instantiate(key, node)
            return {k: self(f"{key}.{k}") for k in node}
        if isinstance(node, ListConfig):
            return [self(f"{key}.{i}") for i in range(len(node))]
        return node

    def _instantiate(self, key: str, node: DictConfig) -> Any:
        target = node["_target_"]
        partial = bool(node.get("_partial_", False))
        kwargs, problems = {}, []
        for k in node:  # every child, so that one bad value does not hide the next
            if k not in SPECIAL:
                try:
                    kwargs[k] = self(f"{key}.{k}")
                except (SettingError, BuildError) as err:
                    problems.append(err)
        aliases = frozenset(k for k in kwargs if alias_of(self.cfg, f"{key}.{k}") is not None)
        with scope(key, aliases):
            if problems:  # this node cannot be built; its own values are still checked
                made = instantiate({"_target_": target, "_partial_": True})
                check = getattr(made.func, "check_values", None)
                try:
                    if check is not None:
                        check(**kwargs)
                except SettingError as err:
                    problems.append(err)
                raise _combined(problems)
            try:
                # the target through Hydra (its target policy applies), called here: built objects passed as
                # arguments never become config nodes
                made = instantiate({"_target_": target, "_partial_": True})
                if partial:
                    check = getattr(made.func, "check_values", None)
                    if check is not None:
                        check(**kwargs)
                    return functools.partial(made, **kwargs)
                return made(**kwargs)
            except InstantiationException as err:
                raise _reason(key, err.__cause__ or err) from None
            except SettingError:
                raise
            except (ValueError, TypeError, KeyError, FileNotFoundError) as err:
                raise _reason(key, err) from None


def _combined(errors: list[Exception]) -> Exception:
    """Several children's errors as one (each line once, in order)."""
    lines = list(dict.fromkeys(line for err in errors for line in str(err).splitlines()))
    return BuildError("\n".join(lines)) if len(errors) > 1 or not isinstance(errors[0], SettingError) else errors[0]


def _reason(key: str, err: BaseException) -> Exception:
    """A constructor's error as one line: a SettingError as it is, anything else named by the node's key."""
    if isinstance(err, SettingError):
        return err
    message = " ".join(str(err).split()) or type(err).__name__
    if re.match(r"^[\w.\[\]]+ ?=", message):  # it names its key already (``data.task='x' is not ...``)
        return BuildError(message)
    return BuildError(f"{key}: {message}")


def build(cfg: DictConfig, key: str) -> Any:
    """The object (or value) of the node at ``key``, its children built first, each checked under its key."""
    return Builder(cfg)(key)
