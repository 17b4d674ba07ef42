import torch

from srtlab.rollout.engine import SamplingSettings
from srtlab.rollout.hf import HFEngine
from srtlab.types import Prompt


def _prompts():
    return [Prompt(id="a", messages=[{"role": "user", "content": "How many r in red car?"}], task="t"),
            Prompt(id="b", messages=[{"role": "user", "content": "x"}], task="t")]  # different lengths: padding


def test_shared_prefill_matches_plain_generate_greedy(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    greedy = SamplingSettings(temperature=0, max_new_tokens=6)
    shared = HFEngine(model, tok, share_prefill=True).generate(_prompts(), 3, greedy, seed=0)
    plain = HFEngine(model, tok, share_prefill=False).generate(_prompts(), 3, greedy, seed=0)
    assert shared.completion_ids == plain.completion_ids
    assert len(shared) == 6 and shared.n == 3 and len(shared.prompt_ids) == 2


def test_sampling_is_reproducible_from_the_seed(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    s = SamplingSettings(temperature=1.0, max_new_tokens=8)
    eng = HFEngine(model, tok)
    a, b = eng.generate(_prompts(), 4, s, seed=5), eng.generate(_prompts(), 4, s, seed=5)
    c = eng.generate(_prompts(), 4, s, seed=6)
    assert a.completion_ids == b.completion_ids
    assert a.completion_ids != c.completion_ids
    assert all(len(x) <= 8 for x in a.completion_ids)
    assert all(r in ("stop", "length") for r in a.finish_reasons)
    # a completion ends with eos exactly when its finish reason is "stop"
    for ids, reason in zip(a.completion_ids, a.finish_reasons):
        assert (ids[-1] == tok.eos_token_id) == (reason == "stop")


def test_bf16_sampling_copy_is_synced_tensor_by_tensor(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    eng = HFEngine(model, tok, dtype="bfloat16")
    assert not eng.shares_policy and next(eng.model.parameters()).dtype == torch.bfloat16
    new = {k: v + 0.5 for k, v in model.state_dict().items()}
    eng.load_weights(new.items())
    for k, v in eng.model.state_dict().items():
        torch.testing.assert_close(v, new[k].to(torch.bfloat16))
    assert HFEngine(model, tok).shares_policy  # no copy without a dtype
