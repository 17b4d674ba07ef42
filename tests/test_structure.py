"""The shape of the code: data flows one way between stages, seed streams never collide, callbacks do not
depend on the order they are listed in, and a step writes its training samples."""

import ast
import json
from pathlib import Path

import pytest
import torch

from conftest import PARITY_REWARD
from srtlab.seeds import STREAMS, seed_for

SRC = Path(__file__).resolve().parents[1] / "srtlab"

# The stages in data-flow order. A stage may import its own and earlier stages only. The answer-level
# primitives of eval/ (extraction, canonical forms, votes, gold verdicts, metrics) and the shared types
# sit below every stage; evaluation, the curriculum, the guard and the tasks sit on top and are imported
# by no stage.
BASE = {"types", "seeds", "assets", "models", "eval.extract", "eval.bounds", "eval.canonical", "eval.metrics", "eval.votes",
        "eval.gold"}
STAGES = ["data", "rollout", "rewards", "algorithms", "modules"]
PLACED = {"eval.heldout": "rollout"}  # scores engine samples by gold: the policy's validation loop uses it


def _rank(module: str) -> int | None:
    """0 for the base, 1.. for the stages in order, None for the layers on top."""
    name = module.removeprefix("srtlab.")
    if any(name == b or name.startswith(b + ".") for b in BASE):
        return 0
    if name in PLACED:
        return STAGES.index(PLACED[name]) + 1
    head = name.split(".")[0]
    return STAGES.index(head) + 1 if head in STAGES else None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srtlab"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("srtlab"))
    return found


def test_no_stage_imports_from_a_later_stage_or_from_the_layers_on_top():
    wrong = []
    for path in SRC.rglob("*.py"):
        module = ".".join(("srtlab", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        mine = _rank(module)
        if mine is None:
            continue
        for imported in _imports(path):
            theirs = _rank(imported)
            if theirs is None or theirs > mine:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(sorted(wrong))


def test_seed_streams_do_not_collide():
    seeds = [seed_for(run, stream, key) for run in range(4) for stream in STREAMS for key in range(300)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**31 for s in seeds)
    assert seed_for(3, "train", 7) == seed_for(3, "train", 7)  # a pure function
    assert seed_for(0, "climb_eval", "chain_sum", 1) != seed_for(0, "climb_eval", "chain_sum", 2)


def test_unknown_seed_stream_is_named():
    with pytest.raises(ValueError, match="unknown seed stream 'trian'"):
        seed_for(0, "trian", 1)


CLIMB = ["experiment=curriculum", *PARITY_REWARD, "callbacks.curriculum.tasks.chain_sum.levels=[0,1]",
         "callbacks.curriculum.advance.steps=1", "callbacks.curriculum.eval_size=1", "data.prompt.shots=[]",
         "optim.lr=1e-3", "rollout.sampling.temperature=1.0", "trainer.max_steps=2", "eval_after=true",
         "trainer.limit_val_batches=1", "+callbacks.retry_eval._target_=srtlab.eval.retry.RetryEvaluation", "+callbacks.retry_eval.k=1",
         "+callbacks.retry_eval.program._target_=srtlab.rollout.reflect.ReflectRetry",
         "+callbacks.retry_eval.sampling._target_=srtlab.rollout.engine.SamplingSettings",
         "+callbacks.retry_eval.sampling.max_new_tokens=4"]


def test_result_does_not_depend_on_the_order_of_callbacks(tiny_cfg, tmp_path):
    from omegaconf import OmegaConf

    from srtlab.train import fit

    weights, results = [], []
    for order in ("listed", "reversed"):
        cfg = tiny_cfg(*CLIMB, run_dir=tmp_path / order)
        if order == "reversed":
            items = list(OmegaConf.to_container(cfg.callbacks).items())[::-1]
            cfg.callbacks = OmegaConf.create(dict(items))
        results.append(fit(cfg))
        ckpt = torch.load(tmp_path / order / "checkpoints" / "last.ckpt", weights_only=True)
        weights.append(ckpt["state_dict"])
    assert list(results[0]["after"]) == list(results[1]["after"])  # the retry evaluation's metrics are there
    assert any("r3_first" in k for k in results[0]["after"])
    assert results[0]["after"] == results[1]["after"]
    assert (tmp_path / "listed" / "curriculum" / "levels.csv").read_text() == \
        (tmp_path / "reversed" / "curriculum" / "levels.csv").read_text()
    for k, v in weights[0].items():
        torch.testing.assert_close(weights[1][k], v, rtol=0, atol=0)


def test_a_step_writes_its_training_samples_and_entropy_covers_every_sample(tiny_cfg, tmp_path):
    from srtlab.plot import read_metrics
    from srtlab.train import fit

    run = tmp_path / "run"
    fit(tiny_cfg(*PARITY_REWARD, "trainer.max_steps=1", "eval_before=false", "eval_after=false", run_dir=run))
    rows = [json.loads(line) for line in (run / "samples" / "train_step1.jsonl").read_text().splitlines()]  # step 1
    assert len(rows) == 2 * 4  # TINY_OVERRIDES: 2 prompts x 4 samples
    assert set(rows[0]) >= {"id", "answer", "text", "reward", "advantage", "rewards"}
    assert set(rows[0]["rewards"]) == {"parity", "ground_truth"}
    assert sum(r["advantage"] for r in rows) == pytest.approx(0.0, abs=1e-6)  # RLOO: zero-sum per group
    metrics = read_metrics(run)
    assert metrics["train/entropy"][1] > 0 and "train/answer_concentration" in metrics


def test_data_seeds_keep_the_values_every_measured_table_was_drawn_with():
    import zlib

    from srtlab.seeds import data_seed, heldout_seed

    assert data_seed(3) == 3 and heldout_seed(3) == 3 + 1_000_003
    assert data_seed(3, "chain_sum", 1) == (3 * 1_000_003 + zlib.crc32(b"chain_sum/1")) % 2**31
    assert heldout_seed(3, "chain_sum", 1) == data_seed(3 + 1_000_003, "chain_sum", 1)
