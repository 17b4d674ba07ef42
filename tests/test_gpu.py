"""CUDA checks (``pytest -m gpu``; run by experiments/gpu_check.py): the HF engine, weight sync, FSDP2 on
one device, bf16 autocast. Plain pytest deselects them; they need one CUDA device and the tiny model only."""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu

CUDA = "cuda"


@pytest.fixture
def policy(tiny_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models.load import ModelSettings
    from srtlab.modules.policy import PolicyModule

    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings(), temperature=1.0)
    module.configure_model()
    module.model.to(CUDA)
    return module


def _prompts(k):
    from srtlab.types import Prompt

    return [Prompt(id=f"p{i}", messages=[{"role": "user", "content": f"question {i}"}], task="t") for i in range(k)]


def test_engine_samples_on_the_gpu_and_its_logprobs_match_the_trainer(policy):
    """The bf16 sampling copy's per-token log-probs equal the fp32 trainer's within bf16 tolerance."""
    from srtlab.rollout.engine import SamplingSettings
    from srtlab.rollout.hf import HFEngine

    engine = HFEngine(policy.model, policy.tokenizer, dtype="bfloat16")
    assert next(engine.model.parameters()).device.type == "cuda"
    r = engine.generate(_prompts(3), 4, SamplingSettings(temperature=1.0, max_new_tokens=12), seed=0)
    assert len(r) == 12 and all(len(c) > 0 for c in r.completion_ids)
    with torch.no_grad():
        logp, mask, _ = policy.token_logprobs(policy.model, r.prompt_ids, r.completion_ids, r.n)
    diffs = [abs(logp[i, t].item() - r.sampler_logprobs[i][t]) for i in range(len(r))
             for t in range(int(mask[i].sum()))]
    assert sorted(diffs)[len(diffs) // 2] < 0.05 and max(diffs) < 1.0  # median, largest (bf16 spikes), nats


def test_weight_sync_reaches_the_bf16_copy(policy):
    from srtlab.rollout.hf import HFEngine
    from srtlab.rollout.sync import policy_weights

    engine = HFEngine(policy.model, policy.tokenizer, dtype="bfloat16")
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.01)
    engine.load_weights(policy_weights(policy.model))
    own = engine.model.state_dict()
    for name, tensor in policy.model.state_dict().items():
        torch.testing.assert_close(own[name], tensor.to(torch.bfloat16))


def test_bf16_autocast_logprobs_close_to_fp32_and_gradients_finite(policy):
    p_ids, c_ids = [[5, 6, 7], [8, 9]], [[10, 11], [12], [13, 14], [15]]
    fp32 = policy.token_logprobs(policy.model, p_ids, c_ids, 2).logp.detach()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logp, mask, _ = policy.token_logprobs(policy.model, p_ids, c_ids, 2)
    assert (logp - fp32)[mask].abs().max() < 0.1
    (logp * mask).sum().backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_fsdp2_on_one_device_trains_and_gathers(policy):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from srtlab.models.parallel import shard_model
    from srtlab.rollout.sync import policy_weights

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        full = {k: v.clone() for k, v in policy.model.state_dict().items()}
        shard_model(policy.model, init_device_mesh("cuda", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel")))
        assert any(type(p).__name__ == "DTensor" for p in policy.model.parameters())
        gathered = dict(policy_weights(policy.model))
        for k, v in full.items():
            if k in gathered:
                torch.testing.assert_close(gathered[k], v)
        logp, mask, _ = policy.token_logprobs(policy.model, [[5, 6, 7]], [[10, 11], [12]], 2)
        (logp * mask).sum().backward()
        assert all(p.grad is not None for p in policy.model.parameters() if p.requires_grad)
    finally:
        dist.destroy_process_group()
