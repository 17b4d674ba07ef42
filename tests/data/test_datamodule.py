import pytest

from srtlab.data.datamodule import PromptDataModule, PromptStream, batch_indices
from srtlab.data.prompts import PromptFormat
from srtlab.data.sources import ReasoningGymSource, check_task


def test_batch_indices_are_a_permutation_per_epoch_and_deterministic():
    # 10 prompts, batches of 4: steps 0..4 cover two epochs (slots 0..19)
    slots = [i for s in range(5) for i in batch_indices(s, 4, 10, seed=3)]
    assert sorted(slots[:10]) == list(range(10))
    assert sorted(slots[10:20]) == list(range(10))
    assert slots[:10] != slots[10:20]  # each epoch has its own permutation
    assert batch_indices(2, 4, 10, seed=3) == slots[8:12]
    assert batch_indices(2, 4, 10, seed=4) != slots[8:12]


def test_stream_started_at_a_step_continues_the_uninterrupted_stream():
    prompts = list(range(7))
    full = iter(PromptStream(prompts, 3, seed=0))
    batches = [next(full) for _ in range(5)]
    resumed = next(iter(PromptStream(prompts, 3, seed=0, start_step=3)))
    assert resumed.step == 3
    assert resumed.prompts == batches[3].prompts


def test_training_set_leaves_out_held_out_questions_even_for_small_tasks():
    # single-digit products of two terms: only 100 distinct questions
    dm = PromptDataModule("products", PromptFormat(), {"min_digits": 1, "max_digits": 1, "min_terms": 2,
                                                         "max_terms": 2}, train_size=500, val_size=30, seed=0)
    dm.setup()
    val_q = [p.metadata["entry"]["question"] for p in dm.val["products"]]
    assert len(val_q) == len(set(val_q)) == 30
    train_q = dm.train.questions()
    assert 0 < len(train_q) <= 70 and not train_q & set(val_q)


def test_held_out_set_excludes_training_questions():
    dm = PromptDataModule("letter_counting", PromptFormat(), {"min_words": 1, "max_words": 3},
                          train_size=300, val_size=50, seed=0)
    dm.setup()
    train_q = dm.train.questions()
    val = dm.val["letter_counting"]
    assert len(val) == 50
    assert not train_q & {p.metadata["entry"]["question"] for p in val}
    assert val[0].id == "letter_counting/val/0" and val[0].answer is not None


def test_preset_is_used_when_task_config_is_null():
    dm = PromptDataModule("products", PromptFormat(), None, batch_size=2, train_size=5, val_size=2,
                          presets={"products": {"min_digits": 1, "max_digits": 1}})
    assert dm.task_config == {"min_digits": 1, "max_digits": 1}


def test_unknown_task_and_unknown_task_key_are_named():
    with pytest.raises(ValueError, match="task='letter_countin'; accepted: a Reasoning Gym task"):
        check_task("letter_countin", {})
    with pytest.raises(ValueError, match=r"task_config.max_wordz=3; accepted: a key task 'letter_counting' takes"):
        check_task("letter_counting", {"max_wordz": 3})


def test_same_seed_same_prompts():
    a = ReasoningGymSource("letter_counting", {"min_words": 1, "max_words": 3}, size=5, seed=11)
    b = ReasoningGymSource("letter_counting", {"min_words": 1, "max_words": 3}, size=5, seed=11)
    assert [p.messages for p in a.prompts] == [p.messages for p in b.prompts]
