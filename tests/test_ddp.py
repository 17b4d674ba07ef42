"""Data parallel that divides the work: rank shares, per-rank seeds, reductions, and two gloo processes
ending a step as one process does (weights, held-out scores and samples, the curriculum's statistics)."""

import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import PARITY_REWARD, TINY_OVERRIDES
from srtlab.data.datamodule import PromptStream, val_share
from srtlab.modules.ranks import mean_metrics, merge_level_stats
from srtlab.rollout.hf import HFEngine
from srtlab.seeds import seed_for, train_seed
from srtlab.types import Prompt, PromptBatch, RolloutBatch


# -- pure functions ------------------------------------------------------------------------------------
def _prompts(k):
    return [Prompt(id=f"p{i}", messages=[{"role": "user", "content": str(i)}], task="t") for i in range(k)]


def test_ranks_split_the_global_batch():
    prompts = _prompts(10)
    for step in (0, 3, 7):  # steps 3 and 7 cross an epoch boundary (10 prompts, batch 4)
        one = next(iter(PromptStream(prompts, 4, seed=1, start_step=step)))
        shares = [next(iter(PromptStream(prompts, 4, seed=1, start_step=step, rank=r, world_size=2))) for r in (0, 1)]
        ids = [[p.id for p in s.prompts] for s in shares]
        assert [len(x) for x in ids] == [2, 2] and all(s.step == step for s in shares)
        assert sorted(ids[0] + ids[1]) == sorted(p.id for p in one.prompts)  # together: one process's batch
        assert ids[0] == [p.id for p in one.prompts][0::2] and ids[1] == [p.id for p in one.prompts][1::2]
    with pytest.raises(ValueError, match=r"data.batch_size=3 with 2 ranks"):
        PromptStream(prompts, 3, seed=1, rank=0, world_size=2)


def test_batch_not_divisible_by_ranks_is_a_config_error(tiny_cfg):
    from srtlab.train import check_config
    from srtlab.validate import ConfigError

    check_config(tiny_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"))
    with pytest.raises(ConfigError, match=r"data.batch_size=3; accepted: a multiple of the number of ranks.* = 2"):
        check_config(tiny_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=3"))
    with pytest.raises(ConfigError, match=r"= 4"):
        check_config(tiny_cfg("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_nodes=2", "data.batch_size=6"))


def test_each_rank_has_its_own_sampling_seed():
    assert train_seed(0, 5) == train_seed(0, 5, rank=0) == seed_for(0, "train", 5)  # one process unchanged
    seeds = {train_seed(0, 5, rank=r) for r in range(8)}
    assert len(seeds) == 8 and train_seed(0, 5, 3) == train_seed(0, 5, 3) != train_seed(0, 6, 3)


def test_held_out_batches_split_whole_and_padded_to_the_same_count():
    batches = [PromptBatch(prompts=_prompts(2), step=i, source="v") for i in range(3)]
    shares = [val_share(batches, r, 2) for r in (0, 1)]
    assert [[b.step for b in s] for s in shares] == [[0, 2], [1, -1]]  # -1: a repeat whose scores are dropped
    assert [b.step for b in val_share(batches, 0, 1)] == [0, 1, 2]


def test_level_stats_merge_weighted_by_groups():
    # rank 0: 3 groups of level 1 with majority share 0.5; rank 1: 1 group with 0.9 and one of level 2.
    # One process: (3 * 0.5 + 1 * 0.9) / 4 = 0.6 for level 1; level 2 only from rank 1.
    merged = merge_level_stats([{"t/1": {"groups": 3.0, "majority_share": 0.5}},
                                {"t/1": {"groups": 1.0, "majority_share": 0.9}, "t/2": {"groups": 1.0,
                                                                                       "majority_share": 0.2}}])
    assert merged["t/1"]["groups"] == 4.0 and math.isclose(merged["t/1"]["majority_share"], 0.6)
    assert merged["t/2"] == {"groups": 1.0, "majority_share": 0.2}
    m = mean_metrics([{"a": 1.0, "tps": 10.0, "n": math.nan}, {"a": 3.0, "tps": 5.0, "n": 2.0, "b": 4.0}],
                     sums=("tps",))
    assert m == {"a": 2.0, "tps": 15.0, "n": 2.0, "b": 4.0}


# -- two processes, `python -m srtlab fit` --------------------------------------------------------------
class PerPromptEngine(HFEngine):
    """A test engine: samples each prompt on its own with a seed from its id, so a prompt's samples do not
    depend on which rank, or which batch, drew it; the comparison below then isolates the training math.
    It records each call's prompts and the seed the rank passed (``engine_rank<r>.jsonl``)."""

    def generate(self, prompts, n, sampling, seed, prompt_ids=None):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(Path(os.environ["SRTLAB_TEST_DUMP"]) / f"engine_rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"seed": seed, "ids": [p.id for p in prompts]}) + "\n")
        parts = [super(PerPromptEngine, self).generate([p], n, sampling, seed=zlib.crc32(p.id.encode()))
                 for p in prompts]
        return RolloutBatch(prompts=list(prompts), n=n, prompt_ids=[i for r in parts for i in r.prompt_ids],
                            completion_ids=[c for r in parts for c in r.completion_ids],
                            texts=[t for r in parts for t in r.texts], answers=[a for r in parts for a in r.answers],
                            finish_reasons=[x for r in parts for x in r.finish_reasons],
                            sampler_logprobs=[x for r in parts for x in r.sampler_logprobs])


class DumpStep(L.Callback):
    """Every rank writes its prompts, the step's level statistics and gradient norm each step, and its weights
    at the end. The gradient norm is what tests the normaliser: Adam's update hardly changes when every
    gradient is scaled by the same factor, so equal weights alone would not."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad for p in pl_module.model.parameters() if p.grad is not None]
        full = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads]  # collective under FSDP
        self.grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in full)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        path = Path(trainer.default_root_dir) / f"steps_rank{trainer.global_rank}.jsonl"
        with open(path, "a") as f:
            f.write(json.dumps({"step": batch.step, "ids": [p.id for p in batch.prompts],
                                "level_stats": outputs["level_stats"], "loss": outputs["metrics"]["train/loss"],
                                "grad_norm": self.grad_norm})
                    + "\n")

    def on_train_end(self, trainer, pl_module):
        from srtlab.rollout.sync import policy_weights

        weights = {k: v.clone() for k, v in policy_weights(pl_module.model)}  # collective under FSDP
        torch.save(weights, Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")


RUN = [*PARITY_REWARD, "optim.lr=1e-3", "module.grad_clip=0", "rollout.sampling.temperature=1.0", "trainer.max_steps=2",
       "data.batch_size=4", "data.val_size=3", "data.val_batch_size=1", "trainer.val_check_interval=2",
       "rollout.engine._target_=test_ddp.PerPromptEngine", "+callbacks.dump._target_=test_ddp.DumpStep"]
TWO = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]


def _fit(model_dir, run_dir, *extra):
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "srtlab", "fit", f"model.path={model_dir}", f"run_dir={run_dir}", *TINY_OVERRIDES,
           *RUN, *extra]
    here = os.path.dirname(os.path.abspath(__file__))  # the tests, and this checkout's srtlab (not an installed one)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here)]), "SRTLAB_TEST_DUMP": str(run_dir),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("one") / "run"
    _fit(tiny_model_dir, run)
    return run


ADAM_ATOL = 1e-5  # see _assert_same_as_one_process


@pytest.fixture(scope="module")
def two_ddp(tiny_model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("two") / "run"
    _fit(tiny_model_dir, run, "trainer=ddp", *TWO)
    return run


def _assert_same_as_one_process(one, two, model_dir):
    # each rank trained on its own half of every step's global batch; together, one process's batch
    steps = {r: _lines(two / f"steps_rank{r}.jsonl") for r in (0, 1)}
    for s, ref in enumerate(_lines(one / "steps_rank0.jsonl")):
        a, b = steps[0][s], steps[1][s]
        assert a["ids"] == ref["ids"][0::2] and b["ids"] == ref["ids"][1::2] and not set(a["ids"]) & set(b["ids"])
        # the curriculum's statistics (and the global loss) are the same on every rank, and one process's
        assert a["level_stats"] == b["level_stats"] and a["loss"] == b["loss"]
        for key, stats in ref["level_stats"].items():
            for name, value in stats.items():
                assert math.isclose(a["level_stats"][key][name], value, rel_tol=1e-9), (key, name)
        assert math.isclose(a["loss"], ref["loss"], rel_tol=1e-4, abs_tol=1e-7)
        assert a["grad_norm"] == b["grad_norm"] and math.isclose(a["grad_norm"], ref["grad_norm"], rel_tol=1e-4)
        assert ref["grad_norm"] > 0
    # the ranks passed different sampling seeds to their engines at each training step
    calls = {r: [c for c in _lines(two / f"engine_rank{r}.jsonl") if len(c["ids"]) == 2] for r in (0, 1)}
    assert len(calls[0]) == len(calls[1]) == 2 and all(x["seed"] != y["seed"] for x, y in zip(calls[0], calls[1]))
    # same weights after the step: fp32, so the only difference is the order of additions. Adam scales each
    # element's update to about lr (1e-3) whatever its gradient, so an element whose gradient is near
    # rounding level can end a few 1e-6 apart (1.2e-6 and 3.4e-6 seen, 1 element of 8,192): ADAM_ATOL
    a, b = torch.load(one / "rank0.pt", weights_only=True), torch.load(two / "rank0.pt", weights_only=True)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=ADAM_ATOL)
    other = torch.load(two / "rank1.pt", weights_only=True)
    assert all(torch.equal(other[k], b[k]) for k in b)
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)  # training moved the weights
    # gathered validation (3 held-out batches over 2 ranks: one padded) equals one process's, written once
    for name in ("letter_counting_step0.jsonl", "letter_counting_step2.jsonl"):
        assert (two / "samples" / name).read_text() == (one / "samples" / name).read_text()
        assert len((one / "samples" / name).read_text().splitlines()) == 3
    from srtlab.plot import read_metrics

    m1, m2 = read_metrics(one), read_metrics(two)
    val = [k for k in m1 if k.startswith("val/")]
    assert val and all(m2[k] == m1[k] for k in val)


@pytest.mark.parametrize("trainer", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])  # ~30 s each here
def test_two_ranks_with_half_the_prompts_equal_one_process(trainer, one_process, request, tiny_model_dir, tmp_path):
    if trainer == "ddp":
        two = request.getfixturevalue("two_ddp")  # shared with the resume test below
    else:
        two = tmp_path / "two"
        _fit(tiny_model_dir, two, f"trainer={trainer}", *TWO)
    _assert_same_as_one_process(one_process, two, tiny_model_dir)


@pytest.mark.slow  # two more two-process runs
def test_two_ranks_resume_where_they_stopped(one_process, two_ddp, tiny_model_dir, tmp_path):
    """Stop two DDP ranks after step 1, resume to step 2: the same prompts per rank and the same weights."""
    run = tmp_path / "resumed"
    _fit(tiny_model_dir, run, "trainer=ddp", *TWO, "trainer.max_steps=1")
    _fit(tiny_model_dir, run, "trainer=ddp", *TWO, "resume=true")
    for r in (0, 1):
        rows = _lines(run / f"steps_rank{r}.jsonl")
        assert [x["step"] for x in rows] == [0, 1]
        ref = _lines(one_process / "steps_rank0.jsonl")
        assert [x["ids"] for x in rows] == [x["ids"][r::2] for x in ref]
    # against one process: the order of additions differs, so Adam's tolerance above (ADAM_ATOL); against the
    # same two ranks run without a stop: the same additions in the same order, so the same bits
    a, b = torch.load(one_process / "rank0.pt", weights_only=True), torch.load(run / "rank0.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=ADAM_ATOL)
    whole = torch.load(two_ddp / "rank0.pt", weights_only=True)
    assert all(torch.equal(b[k], whole[k]) for k in whole)


# -- the loss pass with several ranks, simulated in one process ---------------------------------------
def test_ranks_agree_on_passes_and_scale_by_the_global_normaliser(monkeypatch):
    """Rank 0 of 2 holds 2 groups of 2 samples: one unanimous (skipped), one active with 1 and 3 tokens; 8
    tokens in all. The other rank (simulated through the reductions) has 12 tokens and 3 active
    micro-batches. So rank 0 runs 3 backward passes, its one real pass weighted by 4 of the 20 global tokens
    x N=2, and two zero-weight repeats; then 1 entropy pass for its unanimous group."""
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models.forward import TokenLogprobs
    from srtlab.modules import loss_pass as lp
    from srtlab.modules import ranks

    other_rank = {"sum": [12.0, 4.0, 2.0, 2.0], "max": [3.0, 3.0, 1.0]}  # tokens, rows, active, groups | max len, passes

    def fake_all_reduce(values, op, device="cpu"):
        if len(values) == len(other_rank[op]):
            return [a + b if op == "sum" else max(a, b) for a, b in zip(values, other_rank[op])]
        return list(values)  # the metric sums: this rank's only

    monkeypatch.setattr(ranks, "world_size", lambda: 2)
    monkeypatch.setattr(ranks, "all_reduce", fake_all_reduce)
    r = RolloutBatch(prompts=_prompts(2), n=2, prompt_ids=[[1], [2]], completion_ids=[[5, 6, 7], [5], [5], [5, 6, 7]],
                     texts=[""] * 4, answers=[None] * 4, finish_reasons=["stop"] * 4)
    adv = torch.tensor([0.0, 0.0, 1.0, -1.0])  # group 0 unanimous, group 1 active
    w = torch.zeros((), requires_grad=True)
    calls = []

    def logprobs(p_ids, c_ids, n):
        calls.append(len(c_ids))
        width = max(len(c) for c in c_ids)
        mask = torch.tensor([[t < len(c) for t in range(width)] for c in c_ids])
        return TokenLogprobs(w * torch.ones(len(c_ids), width), mask, torch.zeros(len(c_ids), width))

    backward_scales = []
    lp.loss_pass(r, adv, logprobs, None, AlgorithmSettings(advantage="rloo", loss_agg="token_mean"), 7,  # a group a pass
                 lambda loss: (backward_scales.append(loss), loss.backward()))
    assert len(backward_scales) == 3  # 1 real + 2 zero-weight passes, the busiest rank's count
    assert len(calls) == 4  # and 1 entropy pass for the unanimous group
    # d/dw of the real pass: the token-mean policy loss of group 1 is -(1 * 1 + (-1) * 3) / 4 = 0.5 per unit of
    # the ratio's slope (1 at w=0); weighted by its 4 of 20 global tokens and x2 ranks: 0.5 * 4/20 * 2 = 0.2
    assert math.isclose(float(w.grad), 0.2, rel_tol=1e-6)
