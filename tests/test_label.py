"""`python -m srtlab label` and the teacher round trip: label, write, read back as rewards and as the
training set, and train against the fixed labels."""

import json

import pytest

from conftest import ctx_for, make_batch
from srtlab.builder import Builder
from srtlab.label import label
from srtlab.plot import read_metrics
from srtlab.rewards.teacher import Teacher
from srtlab.train import fit


class ScriptedEngine:
    """A stand-in engine with known answers. For the training prompt of index j (its id's last part):
    j % 3 == 0: all k samples give the gold answer (share 1, a right label);
    j % 3 == 1: k-1 samples say "wrong", one the gold answer (share (k-1)/k, a wrong label);
    j % 3 == 2: no sample has an answer (no label)."""

    calls: list[list[str]] = []  # prompt ids of every generate call
    shares_policy = True  # samples "with the policy itself": no weights to sync

    def __init__(self, model=None, tokenizer=None, **settings) -> None:
        pass

    def generate(self, prompts, n, sampling, seed):
        ScriptedEngine.calls.append([p.id for p in prompts])
        answers = []
        for p in prompts:
            j = int(p.id.rsplit("/", 1)[1])
            answers += [[p.answer] * n, ["wrong"] * (n - 1) + [p.answer], [None] * n][j % 3]
        return make_batch(prompts, answers)


SCRIPTED = ["rollout.engine._target_=test_label.ScriptedEngine"]


@pytest.fixture
def scripted_labels(tiny_cfg, tmp_path):
    """Labels of the 40 tiny training prompts, k=4, keeping shares >= 0.8: the prompts with j % 3 == 0."""
    out = tmp_path / "labels.jsonl"
    cfg = tiny_cfg(*SCRIPTED, "label.k=4", "label.min_share=0.8", f"label.out={out}", name="label",
                   run_dir=tmp_path / "label_run")
    return cfg, label(cfg), out


def test_label_summary_file_and_teacher_round_trip(scripted_labels, tmp_path):
    cfg, summary, out = scripted_labels
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    datamodule = Builder(cfg)("data")
    datamodule.setup()
    train = datamodule.train.prompts
    assert [r["id"] for r in rows] == [p.id for p in train] and len(rows) == 40
    r0, r1, r2 = rows[:3]
    assert r0["label"] == train[0].answer and r0["share"] == 1.0 and r0["kept"] and r0["label_correct"] is True
    assert r1["label"] == "wrong" and r1["share"] == 0.75 and not r1["kept"] and r1["label_correct"] is False
    assert r2["label"] is None and r2["share"] == 0.0 and not r2["kept"] and r2["label_correct"] is None
    assert r0["question"] == train[0].messages[-1]["content"] and r0["entry"]["answer"] == train[0].answer
    # 14 prompts (j = 0, 3, ..., 39) have right labels, 13 wrong ones, 13 none; only the right ones are kept
    assert summary["label_accuracy"] == pytest.approx(14 / 27)
    assert summary["kept"] == 14 and summary["kept_fraction"] == pytest.approx(14 / 40)
    assert summary["kept_label_accuracy"] == 1.0
    assert json.loads((tmp_path / "label_run" / "results.json").read_text())["kept"] == 14
    # read back: the teacher rewards its labels, and abstains where a label was not kept
    batch = make_batch([train[0], train[1]], [train[0].answer, "wrong", "wrong", "wrong"])
    assert Teacher(str(out))(batch, ctx_for(batch)).rewards.tolist()[:2] == [1.0, 0.0]
    assert all(x != x for x in Teacher(str(out))(batch, ctx_for(batch)).rewards.tolist()[2:])  # NaN: prompt 1 not kept
    # and the datamodule trains only on the kept prompts
    cfg.data.train_ids_from = str(out)
    kept = Builder(cfg)("data")
    kept.setup()
    assert [p.id for p in kept.train.prompts] == [p.id for p in train[::3]]


def test_fit_against_teacher_labels_trains_only_labelled_prompts(scripted_labels, tiny_cfg, tmp_path):
    _, _, out = scripted_labels
    run = tmp_path / "teacher"
    results = fit(tiny_cfg("experiment=teacher", f"reward.sources.teacher.labels={out}", "eval_before=false",
                           run_dir=run))
    assert results["steps"] == 2
    metrics = read_metrics(run)
    assert metrics["train/teacher/coverage"] == {1: 1.0, 2: 1.0}  # every prompt drawn had a teacher label
    # the tiny random model writes no readable answer, so it never agrees with a label
    assert metrics["train/reward/teacher"] == {1: 0.0, 2: 0.0}


def test_labels_from_other_data_settings_are_refused(tiny_cfg, tmp_path):
    out = tmp_path / "labels.jsonl"
    out.write_text(json.dumps({"id": "letter_counting/train/0", "question": "another question", "label": "2"}) + "\n")
    datamodule = Builder(tiny_cfg(f"data.train_ids_from={out}"))("data")
    with pytest.raises(ValueError, match="other data settings"):
        datamodule.setup()


def test_label_command_on_the_tiny_model(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    summary = label(tiny_cfg("label.k=2", "label.size=3", f"label.out={out}", name="label", run_dir=tmp_path / "r"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"letter_counting/train/{i}" for i in range(3)]
    assert all(len(r["answers"]) == 2 and r["gold"] for r in rows)
    assert all(r["kept"] == (r["label"] is not None) for r in rows)  # min_share 0: kept iff labelled
    assert summary["prompts"] == 3 and summary["k"] == 2
    assert "label accuracy vs gold" in capsys.readouterr().out


def test_repeated_questions_are_sampled_once(tiny_cfg, tmp_path):
    # single-digit products: 40 training prompts drawn from the 96 questions the held-out set leaves
    out = tmp_path / "labels.jsonl"
    ScriptedEngine.calls.clear()
    summary = label(tiny_cfg(*SCRIPTED, "data=products", "data.val_size=4", "label.k=3", f"label.out={out}",
                             name="label", run_dir=tmp_path / "r"))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sampled = [i for call in ScriptedEngine.calls for i in call]
    by_question = {}
    for r in rows:
        by_question.setdefault(r["question"], []).append(r)
    assert len(rows) == 40 and len(sampled) == len(by_question) == summary["distinct_questions"] < 40
    for same in by_question.values():  # every prompt of a question shares the first one's samples
        assert same[0]["id"] in sampled
        assert all((r["answers"], r["label"], r["share"]) == (same[0]["answers"], same[0]["label"], same[0]["share"])
                   for r in same)
