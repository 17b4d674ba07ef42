"""Fixed teacher labels and the per-prompt gold/vote hybrid, worked out by hand."""

import json
import math

import pytest
import torch

from conftest import ctx_for, make_batch
from srtlab.rewards.hybrid import Hybrid, unit_hash
from srtlab.rewards.teacher import Teacher
from srtlab.types import Prompt

NAN = math.nan


def write_labels(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_teacher_rewards_agreement_with_fixed_labels(tmp_path):
    labels = write_labels(tmp_path / "labels.jsonl", [
        {"id": "t/0", "question": "q0", "label": "3", "share": 0.75, "kept": True},
        {"id": "m/0", "question": "q1", "label": "0.5", "share": 0.5, "kept": True},
        {"id": "t/1", "question": "q2", "label": "9", "share": 0.25, "kept": False},  # below min_share
        {"id": "t/2", "question": "q3", "label": None, "share": 0.0, "kept": False},
    ])
    prompts = [Prompt(id="t/0", messages=[], task="t", answer="4"),  # the gold answer is never read
               Prompt(id="m/0", messages=[], task="m", answer_kind="math"),
               Prompt(id="t/1", messages=[], task="t"), Prompt(id="t/9", messages=[], task="t")]
    batch = make_batch(prompts, ["3", " 3.", "4", None,  # text: "3" and " 3." normalise alike
                                 r"\frac{1}{2}", "1/2", "2", "0.50",  # math: all but "2" equal 0.5
                                 "9", "9", "9", "9",  # label not kept: abstains
                                 "1", "1", "1", "1"])  # not in the file: abstains
    out = Teacher(labels)(batch, ctx_for(batch))
    expected = [1, 1, 0, 0, 1, 1, 0, 1] + [NAN] * 8
    torch.testing.assert_close(out.rewards, torch.tensor(expected, dtype=torch.float32), equal_nan=True)
    assert out.metrics == {"coverage": 0.5}


def test_teacher_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m srtlab label"):
        Teacher(str(tmp_path / "nope.jsonl"))


def test_unit_hash_is_deterministic_and_uniform_enough():
    values = [unit_hash(f"labelled:p/{i}") for i in range(2000)]
    assert values[:3] == [unit_hash(f"labelled:p/{i}") for i in range(3)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(v < 0.5 for v in values) / 2000 < 0.55


def test_hybrid_takes_gold_on_labelled_prompts_and_the_vote_elsewhere():
    prompts = [Prompt(id=f"p/{i}", messages=[], task="t", answer="5") for i in range(40)]
    prompts.append(Prompt(id="nogold", messages=[], task="t"))  # never labelled
    answers = ["4", "4", "5"] * 41  # majority "4" (vote 1,1,0), gold "5" (gold 0,0,1): the two disagree
    batch = make_batch(prompts, answers)
    hybrid = Hybrid(labelled_fraction=0.5)
    out = hybrid(batch, ctx_for(batch))
    labelled = [unit_hash(f"labelled:p/{i}") < 0.5 for i in range(40)] + [False]
    assert 0 < sum(labelled) < 40  # both kinds occur
    for b, is_labelled in enumerate(labelled):
        want = [0.0, 0.0, 1.0] if is_labelled else [1.0, 1.0, 0.0]
        assert out.rewards[3 * b:3 * b + 3].tolist() == want, b
    assert out.metrics["labelled_share"] == pytest.approx(sum(labelled) / 41)
    # the extremes: all gold (where gold exists), all vote
    assert Hybrid(labelled_fraction=1.0)(batch, ctx_for(batch)).rewards[:3].tolist() == [0.0, 0.0, 1.0]
    assert Hybrid(labelled_fraction=1.0)(batch, ctx_for(batch)).rewards[-3:].tolist() == [1.0, 1.0, 0.0]  # no gold: vote
    assert Hybrid(labelled_fraction=0.0)(batch, ctx_for(batch)).rewards.tolist() == [1.0, 1.0, 0.0] * 41
    with pytest.raises(ValueError, match="labelled_fraction=1.5"):
        Hybrid(labelled_fraction=1.5)


def test_hybrid_config_builds_and_validates(tiny_cfg):
    from hydra.utils import instantiate

    from srtlab.train import check_config

    cfg = tiny_cfg("reward=hybrid", "reward.sources.hybrid.labelled_fraction=0.5")
    check_config(cfg)
    mix = instantiate(cfg.reward, _convert_="all")
    assert mix.sources["hybrid"].labelled_fraction == 0.5 and mix.weights == {"hybrid": 1.0, "vote": 0.0}
    with pytest.raises(ValueError, match="labelled_fraction=2"):
        check_config(tiny_cfg("reward=hybrid", "reward.sources.hybrid.labelled_fraction=2"))
