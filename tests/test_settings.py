"""srtlab.settings: a value's rule lives in the signature that takes it; building checks it, named by its key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from srtlab.settings import (
    Annotated,
    SettingError,
    checked,
    choice,
    fail,
    integer,
    problem,
    real,
    recording,
    scope,
    strings,
    within,
)


@checked
@dataclass
class Sampling:
    temperature: Annotated[float, real(0, 100)] = 1.0
    max_new_tokens: Annotated[int, integer(1)] = 128
    stop: Annotated[list[str], strings()] = field(default_factory=list)
    note: str = ""  # no rule: not a config value

    def __post_init__(self) -> None:
        if self.max_new_tokens > 1000 and self.temperature == 0:
            fail(type(self), [problem("max_new_tokens", self.max_new_tokens, "at most 1000 when greedy")])


@checked
class Stage:
    def __init__(self, model, n: Annotated[int, integer(2)] = 8, kind: Annotated[str, choice(("a", "b"))] = "a",
                 advance: dict | None = None) -> None:
        self.n, self.kind = n, kind
        with within("advance"):
            self.advance = Sampling(**(advance or {}))


def test_defaults_pass_and_every_bad_value_is_one_line():
    assert Sampling().max_new_tokens == 128
    with pytest.raises(SettingError) as err:
        Sampling(temperature=float("inf"), max_new_tokens=0, stop=["", "x"])
    assert str(err.value).splitlines() == [
        "Sampling.temperature=inf; accepted: a number in [0, 100]",
        "Sampling.max_new_tokens=0; accepted: an integer >= 1",
        "Sampling.stop=['', 'x']; accepted: a list of non-empty strings"]


def test_a_bool_is_not_an_integer_and_a_float_is_not_either():
    for value in (True, 2.0, "2"):
        with pytest.raises(SettingError, match="Stage.n="):
            Stage(None, n=value)


def test_cross_field_problems_are_named_like_field_problems():
    with pytest.raises(SettingError, match=r"^Sampling.max_new_tokens=2000; accepted: at most 1000 when greedy$"):
        Sampling(temperature=0, max_new_tokens=2000)


def test_the_config_key_names_the_value_when_built_from_a_config():
    with scope("rollout"), pytest.raises(SettingError, match=r"^rollout.kind='c'; accepted: a, b$"):
        Stage(None, kind="c")
    with scope("rollout"), pytest.raises(SettingError, match=r"^rollout.advance.max_new_tokens=0; accepted"):
        Stage(None, advance={"max_new_tokens": 0})  # a part built in code is named under its field


def test_check_values_checks_a_partial_without_building_it():
    with scope("rollout.engine"), pytest.raises(SettingError, match=r"^rollout.engine.n=1; accepted: an integer >= 2"):
        Stage.check_values(n=1)
    Stage.check_values(n=3, model="anything: no rule, not checked")


def test_values_that_repeat_another_key_are_checked_where_that_key_is_set():
    with scope("data", aliases=frozenset({"n"})):
        Stage(None, n=-1)  # data.n: ${seed} -> seed is checked at its own key, once
    with recording() as found, scope("data"):
        Stage(None, n=4)
    assert ("data.n", "Stage") in found and ("data.kind", "Stage") in found
    assert ("data.advance.temperature", "Sampling") in found


def test_every_class_with_rules_checks_them_when_built():
    """A class whose constructor annotates rules is ``@checked`` (its rules run when it is built), and only such a
    class is: a decorator moved onto the wrong class by an edit above it would leave keys unchecked."""
    import importlib
    import inspect
    import pkgutil

    import srtlab
    from srtlab.settings import rules_of

    unchecked, pointless = [], []
    for info in pkgutil.walk_packages(srtlab.__path__, "srtlab."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, cls in vars(module).items():
            if not inspect.isclass(cls) or cls.__module__ != info.name:
                continue
            own_check = "__wrapped_init__" in cls.__dict__
            has_rules = "__init__" in cls.__dict__ and bool(rules_of(cls))
            if has_rules and not own_check:
                unchecked.append(f"{info.name}.{name}")
            if own_check and not has_rules:
                pointless.append(f"{info.name}.{name}")
    assert unchecked == [] and pointless == []
