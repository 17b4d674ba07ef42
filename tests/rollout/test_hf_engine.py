import pytest
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


@pytest.mark.parametrize("block", [2, 256])  # 2: three blocks of 2 (one padded), two rounds; 256: one block
def test_sampler_draws_the_tempered_truncated_distribution(block):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    from srtlab.rollout.hf import Sampler

    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.4, 0.25, 0.15, 0.12, 0.08]])).repeat(40_000, 1)  # [rows, V]
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8)]:
        sampler = Sampler(temperature, top_k, top_p, rows=len(logits), block=block)
        tokens, recorded = sampler(logits.clone(), torch.arange(len(logits)))
        expected = logits[:1] / temperature
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p < 1:
            expected = TopPLogitsWarper(top_p)(None, expected)
        probs = torch.softmax(expected, -1)[0]
        freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
        torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)  # 40,000 draws: std <= 0.0025
        assert freq[probs == 0].sum() == 0  # truncated tokens are never drawn
        # the recorded log-prob is the untruncated tempered one, at the drawn token
        logp = torch.log_softmax(logits[:1] / temperature, -1)[0]
        torch.testing.assert_close(recorded, logp[tokens])


def test_sampler_draws_do_not_move_with_rounding_noise():
    """Logits a little apart (a bf16 copy of weights that ranks and one process hold 1e-6 apart) draw the
    same tokens except on near ties, also when the far tail wins (a nearly uniform tiny random model)."""
    from srtlab.rollout.hf import Sampler

    torch.manual_seed(1)
    logits = torch.randn(4096, 1000) * 0.01  # [rows, V]
    moved = logits + 1e-2 * torch.randn_like(logits)  # an inverse CDF over one uniform moves 9% of these draws
    draws = []
    for scores in (logits, moved):
        torch.manual_seed(0)
        draws.append(Sampler(1.0, rows=len(scores), block=32)(scores, torch.arange(len(scores)))[0])
    assert (draws[0] != draws[1]).float().mean() < 0.02


def test_decode_attention_equals_sdpa():
    """The sampling copy's decode attention (srtlab.models.attention) against transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from srtlab.models.attention import decode_attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    q, k, v = torch.randn(4, 9, 1, 16), torch.randn(4, 3, 7, 16), torch.randn(4, 3, 7, 16)  # GQA: 9 heads on 3
    mask = torch.ones(4, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., :3] = False  # left padding
    mask[1, ..., 5:] = False  # the unwritten end of a static cache
    with torch.no_grad():
        for m in (mask, None):
            ours, _ = decode_attention(module, q, k, v, m, scaling=0.25)
            ref, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.25)
            assert ours.shape == ref.shape == (4, 1, 9, 16)
            torch.testing.assert_close(ours, ref)


def test_sampling_copy_generates_as_with_sdpa(tiny_model_and_tokenizer):
    """The bf16 sampling copy decodes with srtlab's attention and draws what SDPA would draw."""
    model, tok = tiny_model_and_tokenizer
    s = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=6, stop=[])
    eng = HFEngine(model, tok, dtype="bfloat16")
    assert eng.model.config._attn_implementation == "srtlab_decode"
    ours = eng.generate(_prompts(), 3, s, seed=0)
    eng.model.set_attn_implementation("sdpa")
    ref = eng.generate(_prompts(), 3, s, seed=0)
    assert ours.completion_ids == ref.completion_ids
    torch.testing.assert_close(torch.tensor(ours.sampler_logprobs), torch.tensor(ref.sampler_logprobs), atol=0.02, rtol=0)


def test_min_new_tokens_holds_eos_back(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer  # shared with other tests: its eos is put back
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, 5  # one it draws often
    try:
        eng = HFEngine(model, tok)
        free = eng.generate(_prompts(), 4, SamplingSettings(temperature=1.0, max_new_tokens=12), seed=0)
        held = eng.generate(_prompts(), 4, SamplingSettings(temperature=1.0, max_new_tokens=12, min_new_tokens=12),
                            seed=0)
    finally:
        model.generation_config.eos_token_id = eos
    assert any(len(c) < 12 for c in free.completion_ids)  # eos stops some rows early ...
    assert all(len(c) == 12 and 5 not in c for c in held.completion_ids)  # ... not before min_new_tokens


class _GenerateSampler:
    """The engine's sampler as a logits processor of ``transformers``' ``generate``: what the engine ran before its
    own decode loop, kept here as the reference."""

    def __init__(self, sampler):
        self.sampler, self.steps = sampler, []

    def __call__(self, input_ids, scores):
        token, logp = self.sampler(scores, torch.arange(scores.shape[0]))
        self.steps.append(logp)
        return torch.full_like(scores, float("-inf")).scatter_(-1, token[:, None], 0.0)


def _generate_reference(engine, prompts, n, s, seed):
    """Tokens and log-probs by ``generate`` on a static batch (every row computed until the longest ends)."""
    from transformers import LogitsProcessorList, StaticCache

    from srtlab.models.forward import CACHE, left_pad
    from srtlab.rollout.engine import render_prompts
    from srtlab.rollout.hf import Sampler, _trim

    torch.manual_seed(__import__("srtlab.seeds", fromlist=["seed_for"]).seed_for(seed, "chunk", 0))
    ids, mask = left_pad(render_prompts(engine.tokenizer, prompts), engine.tokenizer.pad_token_id)
    ids_n, mask_n = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    proc = _GenerateSampler(Sampler(s.temperature, s.top_k, s.top_p, rows=len(ids_n)))
    out = engine.model.generate(
        input_ids=ids_n, attention_mask=mask_n, do_sample=False, temperature=None, top_p=None, top_k=None,
        max_new_tokens=s.max_new_tokens, min_new_tokens=s.min_new_tokens or None, eos_token_id=engine.eos,
        pad_token_id=engine.tokenizer.pad_token_id, stop_strings=s.stop or None,
        tokenizer=engine.tokenizer if s.stop else None, logits_processor=LogitsProcessorList([proc]),
        **{CACHE: StaticCache(config=engine.model.config, max_cache_len=ids.shape[1] + s.max_new_tokens)})
    new = out[:, ids.shape[1]:]
    logps = torch.stack(proc.steps[:new.shape[1]], 1)
    tokens = [_trim(row.tolist(), set(engine.eos)) for row in new]
    return tokens, [lp[:len(c)].tolist() for lp, c in zip(logps, tokens)]


@pytest.mark.parametrize("settings", [
    {"temperature": 1.0}, {"temperature": 0.7, "top_k": 5}, {"temperature": 1.0, "top_p": 0.9},
    {"temperature": 0.0}, {"temperature": 1.0, "min_new_tokens": 4}, {"temperature": 1.0, "stop": ["e"]}])
@pytest.mark.parametrize("share_prefill", [True, False])
def test_decode_loop_draws_what_generate_draws(tiny_model_and_tokenizer, settings, share_prefill):
    """Finished rows leave the decode batch, and the draws and recorded log-probs stay those of ``generate`` on the
    whole static batch: identical tokens, log-probs to 1e-6 (fp32)."""
    model, tok = tiny_model_and_tokenizer
    eos = model.generation_config.eos_token_id
    if not settings.get("stop"):  # a token it draws often: rows end at different steps (a stop string does that
        model.generation_config.eos_token_id = 5  # with the pad token as eos: generate pads finished rows with it)
    try:
        engine = HFEngine(model, tok, share_prefill=share_prefill)
        s = SamplingSettings(max_new_tokens=16, **settings)
        got = engine.generate(_prompts(), 4, s, seed=3)
        tokens, logps = _generate_reference(engine, _prompts(), 4, s, seed=3)
    finally:
        model.generation_config.eos_token_id = eos
    assert got.completion_ids == tokens
    if settings == {"temperature": 1.0}:
        assert len({len(c) for c in tokens}) > 1  # rows did finish apart (and left the decode batch)
    for a, b in zip(got.sampler_logprobs, logps):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-6)
