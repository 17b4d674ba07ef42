"""The datamodule's curriculum levels: held-out sets, exclusion, and batches as a pure function of the mixture."""

import pytest

from srtlab.curriculum.levels import LevelSpec, level_config
from srtlab.data.datamodule import PromptDataModule, allocate
from srtlab.data.prompts import PromptFormat
from srtlab.types import PromptBatch

LEVELS = [level_config("chain_sum", LevelSpec.parse(s)) for s in
          (0, {"attributes": {"num_digits": 1}, "mode": "inclusive"})]  # 2 terms: 1 digit; 1-2 digits


def datamodule(seed=0) -> PromptDataModule:
    dm = PromptDataModule(task="chain_sum", prompt=PromptFormat(), task_config=LEVELS[0], batch_size=8,
                          train_size=300, val_size=8, seed=seed)
    dm.add_levels("chain_sum", LEVELS, val_size=16)
    return dm


@pytest.mark.parametrize("weights,total,expected", [
    ([0.75, 0.125, 0.125], 8, [6, 1, 1]),
    ([1, 1, 1], 8, [3, 3, 2]),  # the remainder goes to the earlier entry on a tie
    ([0.5, 0.5], 3, [2, 1]),
    ([0.0, 1.0], 4, [0, 4]),
])
def test_allocate(weights, total, expected):
    assert allocate(weights, total) == expected


@pytest.mark.parametrize("weights", [[], [-1.0, 2.0], [0.0, 0.0]])
def test_allocate_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="mixture weights"):
        allocate(weights, 8)


def test_batches_follow_the_mixture_and_are_a_function_of_seed_and_step():
    dm, other = datamodule(), datamodule()
    mixture = [("chain_sum", 1, 0.75), ("chain_sum", 0, 0.25)]
    dm.set_mixture(mixture)
    other.set_mixture(mixture)
    batch = dm.mixture_prompts(5)
    assert [p.level for p in batch] == [1] * 6 + [0] * 2
    assert [p.id for p in batch] == [p.id for p in other.mixture_prompts(5)]
    assert [p.id for p in batch] != [p.id for p in dm.mixture_prompts(6)]
    assert batch[0].id.startswith("chain_sum@1/train/") and batch[-1].id.startswith("chain_sum@0/train/")


def test_no_held_out_question_of_any_level_is_trained_on():
    dm = datamodule()
    held_out = dm.val["chain_sum"].questions() | dm.level_val["chain_sum", 0].questions() | \
        dm.level_val["chain_sum", 1].questions()
    for level in (0, 1):
        assert not held_out & dm.level_train("chain_sum", level).questions()
    # level 1 (one or two digits) does contain one-digit questions, so the exclusion is doing work
    assert any(max(len(t) for t in q.split(":")[1].strip(" =").split()) == 1
               for q in dm.level_train("chain_sum", 1).questions())


def test_only_training_batches_are_redrawn():
    dm = datamodule()
    plain = PromptBatch(prompts=[], step=3, source="train")
    assert dm.on_before_batch_transfer(plain, 0).prompts == []  # no mixture: the plain stream's batch stays
    dm.set_mixture([("chain_sum", 1, 1.0)])
    assert [p.level for p in dm.on_before_batch_transfer(plain, 0).prompts] == [1] * 8
    val = PromptBatch(prompts=[], step=0, source="chain_sum")
    assert dm.on_before_batch_transfer(val, 0).prompts == []
