"""Weight sync without vLLM: LoRA merged out of place, base-model names, the log-prob probe."""

import copy

import pytest
import torch

from srtlab.models.load import LoraSettings, ModelSettings, load_model
from srtlab.rollout.engine import SamplingSettings
from srtlab.rollout.hf import HFEngine
from srtlab.rollout.sync import LogprobProbe, base_name, merged_lora_weight, policy_weights
from srtlab.types import Prompt, RolloutBatch


def _lora_model(path, r=2, alpha=4, dtype="float32"):
    model = load_model(ModelSettings(str(path), dtype, lora=LoraSettings(r=r, alpha=alpha)))
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B is 0 at init, which would merge to W itself
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def test_merged_lora_weight_by_hand():
    from peft import LoraConfig, get_peft_model

    net = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    model = get_peft_model(net, LoraConfig(r=1, lora_alpha=2, target_modules=["0"]))  # scale = alpha / r = 2
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.base_layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, -1.0]]))  # [r=1, in=2]
        layer.lora_B["default"].weight.copy_(torch.tensor([[0.5], [2.0]]))  # [out=2, r=1]
    # B @ A = [[0.5, -0.5], [2, -2]]; W + 2 * B @ A = [[2, 1], [7, 0]]
    torch.testing.assert_close(merged_lora_weight(layer), torch.tensor([[2.0, 1.0], [7.0, 0.0]]), rtol=0, atol=0)
    assert base_name("base_model.model.0.base_layer.weight") == "0.weight"


@pytest.mark.parametrize("checkpointed", [False, True])
def test_lora_sync_is_the_merged_model_and_leaves_the_policy_alone(tiny_model_dir, checkpointed):
    from srtlab.models.parallel import checkpoint_layers

    model = _lora_model(tiny_model_dir)
    if checkpointed:  # wrapped decoder layers: module names gain a wrapper that state_dict leaves out
        checkpoint_layers(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sent = dict(policy_weights(model))
    # the trained model is untouched: same tensors, bit for bit, adapter still separate
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any("lora_B" in k for k in model.state_dict())
    # names and values are those of the merged base model (peft's merge on a copy is the reference)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    plain = load_model(ModelSettings(str(tiny_model_dir))).state_dict()
    assert set(sent) == set(plain)  # base names, the tied lm_head included
    for k, v in sent.items():
        torch.testing.assert_close(v, merged[k], rtol=1e-6, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(sent[q], plain[q])  # the adapter does change the synced weight


def test_bf16_lora_merge_is_out_of_place_in_fp32(tiny_model_dir):
    model = _lora_model(tiny_model_dir, dtype="bfloat16")
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    w = layer.base_layer.weight.detach().clone()
    for _ in range(3):  # repeated syncs leave the bf16 weight bit-identical (an in-place merge/unmerge drifts)
        dict(policy_weights(model))
    assert torch.equal(layer.base_layer.weight, w)
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    expected = (w.float() + layer.scaling["default"] * b @ a).to(torch.bfloat16)  # one rounding, at the end
    assert torch.equal(merged_lora_weight(layer), expected)


def test_hf_sampling_copy_of_a_lora_policy_follows_the_sync(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = HFEngine(model, tok, dtype="bfloat16")
    assert not hasattr(eng.model, "peft_config")  # the copy is a plain model, merged once at creation
    with torch.no_grad():  # "train" the adapter, then sync
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.add_(0.3)
    eng.load_weights(policy_weights(model))
    merged = copy.deepcopy(model).merge_and_unload()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = merged.to(torch.bfloat16)(ids).logits
        torch.testing.assert_close(eng.model(ids).logits, expected, rtol=0, atol=0)


class _ReportingEngine:
    """An HF engine that reports log-probs of ``scorer`` (the engine's own weights) for what it samples."""

    def __init__(self, model, tokenizer, scorer):
        self.hf, self.scorer = HFEngine(model, tokenizer), scorer

    def generate(self, prompts, n, sampling, seed):
        from srtlab.models.forward import token_logprobs

        r: RolloutBatch = self.hf.generate(prompts, n, sampling, seed)
        logp = token_logprobs(self.scorer, r.prompt_ids, r.completion_ids, n, self.hf.tokenizer.pad_token_id,
                              sampling.temperature).logp.detach()
        r.sampler_logprobs = [row[: len(c)].tolist() for row, c in zip(logp, r.completion_ids)]
        return r


def _policy(model_dir):
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models.load import ModelSettings
    from srtlab.modules.policy import PolicyModule

    policy = PolicyModule(ModelSettings(str(model_dir)), AlgorithmSettings(), temperature=0.7)
    policy.configure_model()
    return policy


def _logprobs(policy):
    return lambda p, c, n: policy.token_logprobs(policy.model, p, c, n)


def test_probe_passes_in_sync_and_fails_loudly_out_of_sync(tiny_model_dir):
    policy = _policy(tiny_model_dir)
    prompts = [Prompt(id=str(i), messages=[{"role": "user", "content": f"q{i}"}], task="t") for i in range(3)]
    sampling = SamplingSettings(temperature=0.7, max_new_tokens=4)
    probe = LogprobProbe(prompts=2, tokens=6, max_median_diff=0.02)
    in_sync = _ReportingEngine(policy.model, policy.tokenizer, scorer=policy.model)
    out = probe(_logprobs(policy), in_sync, prompts, sampling, seed=0)
    assert out["sync/max_logprob_diff"] < 1e-4 and out["sync/median_logprob_diff"] <= out["sync/max_logprob_diff"]
    stale = copy.deepcopy(policy.model)
    with torch.no_grad():  # the trainer moved on, the engine did not get the new weights
        for p in policy.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    with pytest.raises(RuntimeError, match="weight sync check failed"):
        probe(_logprobs(policy), _ReportingEngine(stale, policy.tokenizer, scorer=stale), prompts, sampling, seed=0)


def test_hf_engine_reports_sampler_logprobs_that_match_the_trainer(tiny_model_dir):
    policy = _policy(tiny_model_dir)  # temperature 0.7, fp32
    prompts = [Prompt(id=str(i), messages=[{"role": "user", "content": q}], task="t") for i, q in enumerate("ab")]
    sampling = SamplingSettings(temperature=0.7, max_new_tokens=6)
    shared = HFEngine(policy.model, policy.tokenizer)  # samples with the fp32 policy itself: the same numbers
    out = LogprobProbe(prompts=2, tokens=6)(_logprobs(policy), shared, prompts, sampling, seed=0)
    assert out["sync/max_logprob_diff"] < 1e-4
    r = shared.generate(prompts, 3, sampling, seed=1)
    assert [len(lp) for lp in r.sampler_logprobs] == [len(c) for c in r.completion_ids]
    bf16 = HFEngine(policy.model, policy.tokenizer, dtype="bfloat16")  # a bf16 copy: close, not equal
    out = LogprobProbe(prompts=2, tokens=6, max_median_diff=0.1)(_logprobs(policy), bf16, prompts, sampling, seed=0)
    assert 0 < out["sync/median_logprob_diff"] < 0.1


def test_vllm_config_composes_without_vllm(tiny_cfg):
    from hydra.utils import instantiate

    from srtlab.train import check_config

    cfg = tiny_cfg("rollout=vllm")
    check_config(cfg)
    make = instantiate(cfg.rollout.engine)  # a partial: nothing imports vllm until the engine is built
    assert make.func.__name__ == "VLLMEngine" and make.keywords["model_path"] == cfg.model.path
    assert instantiate(cfg.rollout.probe) == LogprobProbe(prompts=2, tokens=8, max_median_diff=0.1)
    assert cfg.rollout.sampling == tiny_cfg("rollout=hf").rollout.sampling  # same sampling as the HF engine


def test_vllm_engine_without_vllm_says_how_to_install(tiny_model_dir):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    from srtlab.rollout.vllm import VLLMEngine

    with pytest.raises(ImportError, match="pip install vllm"):
        VLLMEngine(None, None, str(tiny_model_dir))
