"""Config values: each key's type, range and default live in one place, the signature of what takes it.

A constructor (or dataclass) decorated with :func:`checked` states each option's rule in its annotation,
beside its default::

    @checked
    @dataclass
    class SamplingSettings:
        max_new_tokens: Annotated[int, integer(1)] = 128

Building the object checks every annotated value; a bad one raises :class:`SettingError`, one line per
problem, ``KEY=VALUE; accepted: WHAT``. ``KEY`` is the value's config key when the object is built from a
config (``srtlab.builder`` sets the node's key with :func:`scope`: ``rollout.sampling.max_new_tokens=0;
accepted: an integer >= 1``), else ``Class.field``. ``Class.check_values(**values)`` checks values without
building (a ``_partial_`` node: the engine, a data source), with the same rules. So the up-front check of a
config (``srtlab.validate``) is building its objects, and adding a config key is one edit in the YAML and
one in the signature.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import typing
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any

__all__ = ["Annotated", "Rule", "SettingError", "boolean", "checked", "choice", "integer", "mapping", "real",
           "scope", "strings", "text", "within", "problem", "is_real", "is_int", "listing", "any_of", "fail", "node"]


@dataclass(frozen=True)
class Rule:
    """Whether a value is accepted (``ok``), and the words for what is (``accepted``)."""

    ok: Callable[[Any], bool]
    accepted: str


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _or_null(rule: Rule, null: bool) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), rule.accepted + " or null") if null else rule


def integer(low: int | None = None, high: int | None = None, null: bool = False) -> Rule:
    """An int (not a bool, not a float) in [low, high]."""
    words = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    if low is not None and high is not None:
        words = f"an integer in [{low}, {high}]"
    return _or_null(Rule(lambda v: is_int(v) and (low is None or v >= low) and (high is None or v <= high), words),
                    null)


def real(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False,
         null: bool = False, why: str = "") -> Rule:
    """A finite number in the interval; ``open_*`` excludes that end; ``why`` says why it is bounded."""
    lo = "" if low is None else ("(" if open_low else "[") + f"{low:g}, "
    hi = "" if high is None else f"{high:g}" + (")" if open_high else "]")
    words = ("a finite number" if low is None and high is None else
             f"a number in {lo}{hi}" if low is not None and high is not None else
             f"a number {'>' if open_low else '>='} {low:g}" if low is not None else
             f"a number {'<' if open_high else '<='} {high:g}")
    ok = lambda v: is_real(v) and (low is None or (v > low if open_low else v >= low)) and (
        high is None or (v < high if open_high else v <= high))
    return _or_null(Rule(ok, words + (f" ({why})" if why else "")), null)


def choice(options: Any, null: bool = False) -> Rule:
    opts = list(options)
    return Rule(lambda v: (null and v is None) or (isinstance(v, str) and v in opts),
                ", ".join(map(str, opts)) + (", or null" if null else ""))


def boolean(null: bool = False) -> Rule:
    return _or_null(Rule(lambda v: isinstance(v, bool), "true or false"), null)


def text(null: bool = False, empty: bool = False) -> Rule:
    words = "a string" if empty else "a non-empty string"
    return _or_null(Rule(lambda v: isinstance(v, str) and (empty or v != ""), words), null)


def _is_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig"


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict) or type(v).__name__ == "DictConfig"


def strings(null: bool = False, nonempty: bool = False) -> Rule:
    """A list of non-empty strings (at least one with ``nonempty``)."""
    words = "a list of non-empty strings" if not nonempty else "a non-empty list of non-empty strings"
    return _or_null(Rule(lambda v: _is_list(v) and (len(v) > 0 or not nonempty)
                         and all(isinstance(s, str) and s for s in v), words), null)


def mapping(null: bool = False, what: str = "a mapping") -> Rule:
    """A mapping with string keys; what its values must be is checked by the code that reads them."""
    return _or_null(Rule(lambda v: _is_dict(v) and all(isinstance(k, str) for k in v), what), null)


def listing(null: bool = False, what: str = "a list") -> Rule:
    """A list; what its items must be is checked by the code that reads them."""
    return _or_null(Rule(_is_list, what), null)


def node(what: str, null: bool = True) -> Rule:
    """A built object (a config node with ``_target_``), or null: what it must be, its own class checks."""
    return Rule(lambda v: (null and v is None) or (v is not None and not isinstance(v, (str, int, float, bool))),
                f"{what} (a config node with _target_)" + (" or null" if null else ""))


def any_of(*rules: Rule) -> Rule:
    return Rule(lambda v: any(r.ok(v) for r in rules), " or ".join(r.accepted for r in rules))


# -- errors ------------------------------------------------------------------------------------------
Problem = tuple[str, Any, str]  # (field, value, what is accepted)


def problem(field: str, value: Any, accepted: str) -> Problem:
    return (field, value, accepted)


class SettingError(ValueError):
    """Bad values: one line per problem, ``KEY=VALUE; accepted: WHAT``, the key in full where it is known."""

    def __init__(self, problems: list[Problem], prefix: str = "") -> None:
        self.problems = [(f"{prefix}{f}", v, a) for f, v, a in problems]
        super().__init__("\n".join(f"{f}={_show(v)}; accepted: {a}" for f, v, a in self.problems))


def _show(value: Any) -> str:
    if _is_dict(value) or _is_list(value):
        try:
            from omegaconf import OmegaConf

            value = OmegaConf.to_container(value) if not isinstance(value, (dict, list, tuple)) else value
        except Exception:  # noqa: BLE001 - shown as it is
            pass
    return repr(value)


# -- where a value sits in the config ----------------------------------------------------------------
_SCOPE: ContextVar[str | None] = ContextVar("srtlab_setting_scope", default=None)
_ALIASES: ContextVar[frozenset[str]] = ContextVar("srtlab_setting_aliases", default=frozenset())
_RECORD: ContextVar[list[tuple[str, str]] | None] = ContextVar("srtlab_setting_record", default=None)


@contextlib.contextmanager
def scope(key: str, aliases: frozenset[str] = frozenset()) -> Iterator[None]:
    """Values checked inside are named ``key.<field>`` (the config node being built). ``aliases``: fields whose
    config value only repeats another key (``seed: ${seed}``); that key is checked where it is set, so they are
    not checked again here (one home per key, one message naming the key the user set)."""
    token, names = _SCOPE.set(key), _ALIASES.set(frozenset(aliases))
    try:
        yield
    finally:
        _SCOPE.reset(token)
        _ALIASES.reset(names)


@contextlib.contextmanager
def within(field: str) -> Iterator[None]:
    """Inside a constructor: a part built from a plain mapping (``advance``, ``tasks.chain_sum``) is named
    under its field (``callbacks.curriculum.advance.window``), as a node with its own ``_target_`` would be."""
    outer = _SCOPE.get()
    with scope(f"{outer}.{field}" if outer else field):  # a part built in code repeats nothing
        yield


@contextlib.contextmanager
def recording() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(key, owner)`` for every value checked inside (the one-home-per-key test reads it)."""
    found: list[tuple[str, str]] = []
    token = _RECORD.set(found)
    try:
        yield found
    finally:
        _RECORD.reset(token)


def record(key: str, owner: str) -> None:
    """Note that ``owner`` checked ``key`` (a full key); a no-op unless :func:`recording`."""
    found = _RECORD.get()
    if found is not None:
        found.append((key, owner))


def _key(owner: type, field: str) -> str:
    """The full key of ``field``: under the node being built, at the top (scope ""), or ``Class.field``."""
    where = _SCOPE.get()
    if where is None:
        return f"{owner.__name__}.{field}"
    return f"{where}.{field}" if where else field


def check(owner: type, rules: dict[str, Rule], values: dict[str, Any]) -> None:
    """Check each of ``values`` that has a rule; raise one SettingError listing every bad one."""
    problems = []
    aliases = _ALIASES.get()
    for name, value in values.items():
        rule = rules.get(name)
        if rule is None or name in aliases:
            continue
        key = _key(owner, name)
        record(key, owner.__qualname__)
        if not rule.ok(value):
            problems.append((key, value, rule.accepted))
    if problems:
        raise SettingError(problems)


def fail(owner: type, problems: list[Problem]) -> None:
    """Raise the cross-field problems found by a constructor (fields named as :func:`check` names them)."""
    if problems:
        raise SettingError([(_key(owner, f), v, a) for f, v, a in problems])


# -- the decorator -----------------------------------------------------------------------------------
def rules_of(cls: type) -> dict[str, Rule]:
    """The rules in the annotations of ``cls.__init__``'s parameters (``Annotated[type, rule]``)."""
    cached = cls.__dict__.get("_setting_rules")
    if cached is not None:
        return cached
    init = getattr(cls, "__wrapped_init__", cls.__init__)
    module = inspect.getmodule(init) or inspect.getmodule(cls)
    names = {**vars(typing), **vars(module)} if module else dict(vars(typing))
    rules = {}
    for name, annotation in getattr(init, "__annotations__", {}).items():
        if isinstance(annotation, str):
            if "Annotated[" not in annotation:
                continue
            annotation = eval(annotation, names)  # noqa: S307 - our own source's annotations, not user input
        if typing.get_origin(annotation) is Annotated:
            found = [m for m in annotation.__metadata__ if isinstance(m, Rule)]
            if found:
                rules[name] = found[0]
    cls._setting_rules = rules
    return rules


def _plain_default(p: inspect.Parameter) -> bool:
    """A default value to check (not a dataclass ``default_factory``, whose value only exists once built)."""
    return p.default is not p.empty and type(p.default).__name__ != "_HAS_DEFAULT_FACTORY_CLASS"


def checked(cls: type) -> type:
    """Check every annotated argument when ``cls`` is built; add ``cls.check_values(**values)``."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = signature.bind(self, *args, **kwargs).arguments
        values = {name: given[name] if name in given else p.default for name, p in signature.parameters.items()
                  if name != "self" and (name in given or _plain_default(p))}
        check(cls, rules_of(cls), values)
        init(self, *args, **kwargs)

    cls.__wrapped_init__ = init
    cls.__init__ = __init__

    def check_values(klass: type, **values: Any) -> None:
        """Check ``values`` against this class's rules without building it (a ``_partial_`` config node)."""
        check(klass, rules_of(klass), values)

    cls.check_values = classmethod(check_values)
    return cls
