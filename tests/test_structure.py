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

# The layers of docs/design.md, bottom first; a module may import from its own layer and the ones below only.
# Within one step the stages keep the data-flow order (prompts, rollouts, rewards, advantages and losses), so a
# stage never imports a later one; what steers or judges whole steps sits above them, the wiring on top.
LAYERS = [
    {"", "types", "seeds", "assets", "settings", "answers", "logs", "interrupt"},  # base: no srtlab imports above it
    {"models", "data"},
    {"rollout"},
    {"rewards"},
    {"algorithms"},
    {"curriculum", "eval", "guard"},
    {"modules"},
    {"train", "validate", "label", "export", "report", "plot", "perf", "__main__", "builder"},
]


def _layer(module: str) -> int:
    head = module.removeprefix("srtlab").removeprefix(".").split(".")[0]
    found = [i for i, layer in enumerate(LAYERS) if head in layer]
    assert found, f"{module} is in no layer of tests/test_structure.py: place it"
    return found[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("srtlab"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("srtlab"))
    return found


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = []
    for path in SRC.rglob("*.py"):
        module = ".".join(("srtlab", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
        mine = _layer(module)
        for imported in _imports(path):
            if _layer(imported) > mine:
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
