"""The chunked head (srtlab.models.forward): log-probs, entropy and gradients equal those of the plain path (each
completion after its prompt as one sequence, the model's full logits, log-softmax over them), in fp32 to 1e-6 (of the
gradient's scale), for any chunk size, with LoRA, with shared prompts and with unequal numbers of completions per
prompt."""

from __future__ import annotations

import pytest
import torch

from srtlab.models import forward
from srtlab.models.forward import chunked_head, default_chunk, token_stats
from srtlab.models.load import LoraSettings, ModelSettings, load_model

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
COMPLETIONS = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [31, 32, 33], [34]]
COUNTS = [2, 3, 1]  # completions per prompt, in order
T = 0.7


def plain(model, prompts, completions, counts, temperature=T):
    """The reference: each completion after its prompt as one sequence, the model's full logits, log-softmax."""
    owners = [b for b, c in enumerate(counts) for _ in range(c)]
    logp, entropy, mean = [], [], []
    for prompt_row, completion in zip(owners, completions):
        prompt = prompts[prompt_row]
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / temperature  # [c, V]
        all_logp = torch.log_softmax(logits, -1)
        logp.append(all_logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1))
        entropy.append(-(all_logp.exp() * all_logp).sum(-1).detach())
        mean.append(all_logp.mean(-1).detach())
    return logp, entropy, mean


def _model(path, lora: bool = False):
    model = load_model(ModelSettings(str(path), lora=LoraSettings(r=4, alpha=8) if lora else LoraSettings()))
    if lora:
        torch.manual_seed(1)
        with torch.no_grad():  # a trained-looking adapter (B is 0 at init)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    return model.train()


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("keep", [True, False])  # the softmax kept for backward (short passes), or made again
@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_chunked_equals_the_plain_path(tiny_model_dir, chunk, lora, keep, monkeypatch):
    monkeypatch.setattr(forward, "KEEP_LOGITS", 2**40 if keep else 0)
    model = _model(tiny_model_dir, lora)
    weights = torch.linspace(-1, 1, sum(map(len, COMPLETIONS)))  # a loss that weighs every token differently
    logp, entropy, mean = plain(model, PROMPTS, COMPLETIONS, COUNTS)
    want = _grads(model, (torch.cat(logp) * weights).sum())
    stats = token_stats(model, PROMPTS, COMPLETIONS, COUNTS, pad_id=0, temperature=T, chunk=chunk)
    got_logp = stats.logp[stats.mask]
    got = _grads(model, (got_logp * weights).sum())
    torch.testing.assert_close(got_logp, torch.cat(logp).detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(stats.entropy[stats.mask], torch.cat(entropy), rtol=0, atol=1e-5)
    torch.testing.assert_close(stats.mean_logp[stats.mask], torch.cat(mean), rtol=0, atol=1e-5)
    assert got.keys() == want.keys() and want
    for name in want:  # 1e-6 of the gradient's scale: fp32 sums in another order (a norm of ~4 is off by ~1e-6)
        scale = max(1.0, float(want[name].abs().max()))
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("keep", [True, False])
def test_linear_head_gradients_equal_autograd_through_full_logits(keep):
    """The fused backward on its own: hidden and head weights (and a bias) against autograd of the plain formula."""
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=True)
    targets = torch.randint(0, 50, (37,))
    g = torch.randn(37)
    logp = torch.log_softmax(head(hidden) / 1.3, -1).gather(-1, targets[:, None]).squeeze(-1)
    want = torch.autograd.grad((logp * g).sum(), [hidden, head.weight, head.bias])
    got_logp, _, _ = chunked_head(hidden, targets, head, 1.3, chunk=5, keep=keep)
    got = torch.autograd.grad((got_logp * g).sum(), [hidden, head.weight, head.bias])
    again = chunked_head(hidden, targets, head, 1.3, chunk=5, keep=not keep)[0]  # kept and made again: the same bits
    assert torch.equal(torch.autograd.grad((again * g).sum(), [hidden])[0], got[0])
    torch.testing.assert_close(got_logp, logp, rtol=0, atol=1e-6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6 * max(1.0, float(b.abs().max())))


def test_no_grad_pass_and_default_chunk():
    assert default_chunk(49152) == 256 and default_chunk(151936) == 64 and default_chunk(100) == 1024
    head = torch.nn.Linear(8, 30)
    with torch.no_grad():
        logp, entropy, mean = chunked_head(torch.randn(5, 8), torch.randint(0, 30, (5,)), head)
    assert logp.shape == entropy.shape == mean.shape == (5,) and not logp.requires_grad
    assert bool((entropy > 0).all()) and bool((mean < logp.max()).all())
