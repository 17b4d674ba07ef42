"""Per-level Reasoning Gym configurations from reasoning-gym's curricula, and the explicit fallback."""

import pytest

from srtlab.curriculum.levels import LevelSpec, level_config

# chain_sum's curriculum: num_terms levels [2, 3, 4, ...], num_digits levels [1, 2, 3, ...], neither an
# "interval" attribute, so upper_bound at level n gives [v_n, v_n] and inclusive gives [v_0, v_n].
CHAIN_SUM = [
    (LevelSpec(global_level=0), dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)),
    (LevelSpec(global_level=2), dict(min_terms=4, max_terms=4, min_digits=3, max_digits=3)),
    (LevelSpec(attributes={"num_digits": 1}, mode="inclusive"),
     dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2)),
    (LevelSpec(global_level=1, mode="inclusive"), dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2)),
    (LevelSpec(global_level=1, attributes={"num_terms": 0}),
     dict(min_terms=2, max_terms=2, min_digits=2, max_digits=2)),
]


@pytest.mark.parametrize("spec,expected", CHAIN_SUM)
def test_chain_sum_levels(spec, expected):
    config = level_config("chain_sum", spec)
    assert {k: config[k] for k in expected} == expected


def test_interval_attribute_upper_bound():
    # letter_counting "words" levels [5, 7, 9, ...] with ensure_interval: level n spans [v_n, v_(n+1)]
    assert level_config("letter_counting", LevelSpec.parse(0)) == {"min_words": 5, "max_words": 7}
    assert level_config("letter_counting", LevelSpec.parse(2)) == {"min_words": 9, "max_words": 11}


def test_explicit_config_goes_on_top_and_defaults_fill_in():
    spec = LevelSpec.parse({"global_level": 0, "config": {"max_digits": 2}})
    config = level_config("chain_sum", spec, defaults={"allow_negation": True})
    assert (config["min_digits"], config["max_digits"], config["allow_negation"]) == (1, 2, True)


def test_task_without_curriculum_takes_explicit_configs():
    assert level_config("gsm_symbolic", LevelSpec(config={"difficulty": 1.0})) == {"difficulty": 1.0}
    with pytest.raises(ValueError, match="'gsm_symbolic' has no reasoning-gym curriculum"):
        level_config("gsm_symbolic", LevelSpec(global_level=0))


@pytest.mark.parametrize("spec,message", [
    (LevelSpec(attributes={"num_letters": 1}), "'num_letters' does not exist for task 'chain_sum'"),
    (LevelSpec(attributes={"num_terms": 99}), "Invalid level: 99"),
    (LevelSpec(global_level=0, mode="last_k"), "mode='last_k'; accepted: upper_bound, inclusive"),
    (LevelSpec(config={"max_digitz": 2}), "max_digitz"),
    (LevelSpec(), "names neither a curriculum level"),
])
def test_bad_levels_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        level_config("chain_sum", spec)


def test_parse():
    assert LevelSpec.parse(3) == LevelSpec(global_level=3)
    assert LevelSpec.parse({"attributes": {"num_terms": 1}, "name": "x"}).name == "x"
    with pytest.raises(ValueError, match="unknown keys \\['levels'\\]"):
        LevelSpec.parse({"levels": {"num_terms": 1}})
    with pytest.raises(ValueError, match="expected a global level"):
        LevelSpec.parse("1")
