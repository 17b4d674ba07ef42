import math

import pytest
import torch
from torch.testing import assert_close

from srtlab.algorithms.losses import (
    aggregate,
    kl_k3,
    kl_penalty_loss,
    masked_mean,
    policy_gradient_loss,
)

E_P = math.exp(0.5)  # 1.6487213
E_M = math.exp(-0.5)  # 0.6065307


def ratio_one_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # N=2, T=3; seq 0 has 3 tokens, seq 1 has 1 token; padding holds garbage (incl. NaN in old)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 7.0, 9.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, float("nan"), -100.0]])
    adv = torch.tensor([2.0, -1.0])
    return logprobs, old, adv, mask


def test_ratio_one_aggregations_by_hand() -> None:
    # ratio = 1 -> per-token loss = -A_n: seq0 [-2,-2,-2], seq1 [1]
    # token_mean: (-6 + 1) / 4 = -1.25
    # seq_mean_token_mean: mean(-2, 1) = -0.5
    # seq_mean_token_sum_norm, max_tokens=3: mean(-6/3, 1/3) = -5/6
    logprobs, old, adv, mask = ratio_one_batch()
    expected = {"token_mean": -1.25, "seq_mean_token_mean": -0.5, "seq_mean_token_sum_norm": -5 / 6}
    for agg, value in expected.items():
        loss, metrics = policy_gradient_loss(logprobs, old, adv, mask, agg=agg, max_tokens=3)
        assert loss.item() == pytest.approx(value, abs=1e-6), agg
        assert metrics["clip_fraction"].item() == 0.0
        assert metrics["ratio_mean"].item() == pytest.approx(1.0)


def test_ratio_one_gradient_token_mean() -> None:
    # d loss / d logp = -A_n * ratio / 4 = -A_n / 4 on real tokens: seq0 -0.5, seq1 +0.25; 0 on padding
    logprobs, old, adv, mask = ratio_one_batch()
    old.requires_grad_(True)
    loss, metrics = policy_gradient_loss(logprobs, old, adv, mask)
    loss.backward()
    assert_close(logprobs.grad, torch.tensor([[-0.5, -0.5, -0.5], [0.25, 0.0, 0.0]]))
    assert old.grad is None  # old_logprobs is a constant
    assert not metrics["clip_fraction"].requires_grad and not metrics["ratio_mean"].requires_grad


def clipped_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # log ratios [[+.5, -.5], [+.5, -.5]] -> ratios e^.5 = 1.6487, e^-.5 = 0.6065; A = [+1, -1]
    logprobs = torch.tensor([[0.5, -0.5], [0.5, -0.5]], requires_grad=True)
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)  # float mask
    return logprobs, old, adv, mask


def test_clipped_value_and_fraction() -> None:
    # eps = 0.2, interval [0.8, 1.2]
    # A=+1, r=1.6487: min(1.6487, 1.2) = 1.2 (clip binds)   -> loss -1.2
    # A=+1, r=0.6065: min(0.6065, 0.8) = 0.6065 (unclipped) -> loss -0.6065307
    # A=-1, r=1.6487: min(-1.6487, -1.2) = -1.6487 (unclipped) -> loss +1.6487213
    # A=-1, r=0.6065: min(-0.6065, -0.8) = -0.8 (clip binds) -> loss +0.8
    # token_mean = (-1.2 - 0.6065307 + 1.6487213 + 0.8) / 4 = 0.6421906 / 4 = 0.16054765
    # clip_fraction = 2/4; ratio_mean = (2*1.6487213 + 2*0.6065307)/4 = 1.127626
    logprobs, old, adv, mask = clipped_batch()
    loss, metrics = policy_gradient_loss(logprobs, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 - E_M + E_P + 0.8) / 4, abs=1e-6)
    assert loss.item() == pytest.approx(0.16054765, abs=1e-6)
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    assert metrics["ratio_mean"].item() == pytest.approx(1.127626, abs=1e-5)
    # gradient: clipped tokens 0; unclipped -A*ratio/4: seq0 tok1 -0.6065/4, seq1 tok0 +1.6487/4
    loss.backward()
    assert_close(logprobs.grad, torch.tensor([[0.0, -E_M / 4], [E_P / 4, 0.0]]))


def test_clip_higher() -> None:
    # clip_eps_high = 1.0 -> interval [0.8, 2.0]: A=+1, r=1.6487 is no longer clipped (loss -1.6487)
    # token_mean = (-1.6487213 - 0.6065307 + 1.6487213 + 0.8) / 4 = 0.1934693 / 4 = 0.04836733
    # clip_fraction = 1/4 (only A=-1, r=0.6065 < 0.8 remains)
    logprobs, old, adv, mask = clipped_batch()
    loss, metrics = policy_gradient_loss(logprobs, old, adv, mask, clip_eps=0.2, clip_eps_high=1.0)
    assert loss.item() == pytest.approx(0.04836733, abs=1e-6)
    assert metrics["clip_fraction"].item() == pytest.approx(0.25)


def test_dr_grpo_aggregation() -> None:
    # row sums over real tokens: 1+2+3 = 6, 4 -> 6/5, 4/5 -> mean = 1.0
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(per_token, mask, "seq_mean_token_sum_norm", max_tokens=5).item() == pytest.approx(1.0)
    # same tensor, other modes: token_mean 10/4 = 2.5; seq_mean_token_mean mean(2, 4) = 3
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx(2.5)
    assert aggregate(per_token, mask, "seq_mean_token_mean").item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate(per_token, mask, "seq_mean_token_sum_norm")


def test_unknown_aggregation() -> None:
    with pytest.raises(ValueError, match="seq_sum") as info:
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "seq_sum")
    assert "token_mean" in str(info.value)


def test_zero_token_sequence() -> None:
    # seq1 has no real token (and NaN in its padding): skipped by seq means, counts as 0 for sum_norm
    # token_mean (1+2)/2 = 1.5; seq_mean_token_mean = 1.5 (only seq0); sum_norm max 4: (3/4 + 0)/2 = 0.375
    per_token = torch.tensor([[1.0, 2.0], [float("nan"), 7.0]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx(1.5)
    assert aggregate(per_token, mask, "seq_mean_token_mean").item() == pytest.approx(1.5)
    out = aggregate(per_token, mask, "seq_mean_token_sum_norm", max_tokens=4)
    assert out.item() == pytest.approx(0.375)
    out.backward()
    assert_close(per_token.grad, torch.tensor([[0.125, 0.125], [0.0, 0.0]]))


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_no_tokens_at_all_is_zero_and_connected(agg: str) -> None:
    per_token = torch.tensor([[3.0, float("nan")]], requires_grad=True)
    out = aggregate(per_token, torch.zeros(1, 2, dtype=torch.bool), agg, max_tokens=2)
    assert out.item() == 0.0
    out.backward()  # graph stays connected, gradient is zero
    assert torch.equal(per_token.grad, torch.zeros(1, 2))


def test_masked_mean() -> None:
    # (1 + 3) / 2 = 2 ; per row: [1, 0 (empty row)]
    x = torch.tensor([[1.0, 5.0], [3.0, 8.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert_close(masked_mean(x, torch.tensor([[1, 0], [0, 0]]), dim=-1), torch.tensor([1.0, 0.0]))


def test_kl_k3_by_hand() -> None:
    # logp=log .5, ref=log .25: log r = -log 2 -> k3 = 0.5 + log 2 - 1 = 0.1931472
    # logp=log .25, ref=log .5: log r = +log 2 -> k3 = 2 - log 2 - 1 = 0.3068528
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.5]])).requires_grad_(True)
    k3 = kl_k3(logp, ref)
    assert_close(k3, torch.tensor([[0.5 + math.log(2) - 1, 1 - math.log(2)]]))
    assert k3[0, 0].item() == pytest.approx(0.1931472, abs=1e-6)
    # d k3 / d logp = 1 - r: 1 - 0.5 = 0.5, 1 - 2 = -1; ref is a constant
    k3.sum().backward()
    assert_close(logp.grad, torch.tensor([[0.5, -1.0]]))
    assert ref.grad is None


def test_kl_k3_zero_nonneg_and_clamped() -> None:
    x = torch.randn(64, 16)
    assert torch.equal(kl_k3(x, x), torch.zeros(64, 16))
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 16, generator=g) * 3, torch.randn(64, 16, generator=g) * 3
    assert (kl_k3(a, b) >= 0).all()
    # log r = -100 clamped to -20: k3 = e^-20 + 20 - 1 = 19.000000002, then clamped to 10 as in verl
    out = kl_k3(torch.tensor([[0.0]]), torch.tensor([[-100.0]]))
    assert out.item() == 10.0
    # log r = +100: e^20 - 20 - 1 would be 4.85e8; clamped to 10, finite
    assert kl_k3(torch.tensor([[-100.0]]), torch.tensor([[0.0]])).item() == 10.0


def test_kl_k3_clamp_boundary_and_gradient() -> None:
    # log r = -12: k3 = e^-12 + 12 - 1 = 11.000006 > 10 -> 10, gradient 0 (the clamp binds);
    # log r = -5: k3 = e^-5 + 5 - 1 = 4.0067379 < 10 -> kept, d k3 / d logp = 1 - r = 1 - e^-5 = 0.9932621
    logp = torch.tensor([[12.0, 5.0]], requires_grad=True)
    k3 = kl_k3(logp, torch.zeros(1, 2))
    assert k3[0, 0].item() == 10.0 and k3[0, 1].item() == pytest.approx(4.0067379, abs=1e-6)
    k3.sum().backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 1].item() == pytest.approx(0.9932621, abs=1e-6)


def test_kl_penalty_loss() -> None:
    # k3 on real tokens: 0.1931472, 0.3068528, 0 (equal) -> sum 0.5 (log 2 cancels); token_mean 0.5/3
    # coef 0.1 -> 0.0166667; padding holds a NaN ref and is ignored
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    ref = torch.tensor([[math.log(0.25), math.log(0.5)], [math.log(0.5), float("nan")]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert kl_penalty_loss(logp, ref, mask, coef=0.1).item() == pytest.approx(0.5 / 3 * 0.1, abs=1e-7)
    # seq_mean_token_mean: mean(0.5/2, 0) = 0.125 -> * 0.1 = 0.0125
    out = kl_penalty_loss(logp, ref, mask, coef=0.1, agg="seq_mean_token_mean")
    assert out.item() == pytest.approx(0.0125, abs=1e-7)


# -- importance correction and dual clip (hand-worked) ------------------------------------------------
def test_importance_weights_by_hand() -> None:
    from srtlab.algorithms.losses import importance_weights

    # log(old) - log(sampler) = [ln 0.5, ln 3, ln 1.5 | ln 4, (padding)] -> w = [0.5, 3, 1.5 | 4, -]
    old = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    sampler = old - torch.log(torch.tensor([[0.5, 3.0, 1.5], [4.0, 1.0, 1.0]]))
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    w, keep = importance_weights(old, sampler, mask, "tis", cap=2.0)
    assert_close(w[mask], torch.tensor([0.5, 2.0, 1.5, 2.0]))  # truncated at C = 2
    assert keep.tolist() == mask.tolist()
    w, keep = importance_weights(old, sampler, mask, "mis", cap=2.0)
    assert_close(w, torch.ones_like(w))
    assert keep.tolist() == [[True, False, True], [False, False, False]]  # ratios 3 and 4 masked out
    w, keep = importance_weights(old, sampler, mask, "none", cap=2.0)
    assert_close(w, torch.ones_like(w)) and keep.tolist() == mask.tolist()
    with pytest.raises(ValueError, match="is_correction='foo'"):
        importance_weights(old, sampler, mask, "foo", cap=2.0)


def test_token_weights_scale_the_loss_and_its_gradient() -> None:
    logprobs, old, adv, mask = ratio_one_batch()
    weights = torch.tensor([[0.5, 2.0, 1.0], [3.0, 9.0, 9.0]])
    loss, _ = policy_gradient_loss(logprobs, old, adv, mask, token_weights=weights)
    # per-token -A * w: seq0 [-1, -4, -2], seq1 [3] -> token_mean (-7 + 3) / 4 = -1
    assert loss.item() == pytest.approx(-1.0)
    loss.backward()
    assert_close(logprobs.grad, torch.tensor([[-0.25, -1.0, -0.5], [0.75, 0.0, 0.0]]))


def test_dual_clip_bounds_negative_advantage_losses() -> None:
    # ratio e^2 = 7.39 with A = -1: PPO's loss is max(7.39, clip(7.39)=1.2) * 1 = 7.39; dual clip c=3 -> 3
    logprobs = torch.tensor([[2.0, 0.0]], requires_grad=True)
    old, adv, mask = torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2, dtype=torch.bool)
    plain, _ = policy_gradient_loss(logprobs, old, adv, mask)
    dual, m = policy_gradient_loss(logprobs, old, adv, mask, dual_clip=3.0)
    assert plain.item() == pytest.approx((math.exp(2.0) + 1.0) / 2)
    assert dual.item() == pytest.approx((3.0 + 1.0) / 2)
    assert m["dual_clip_fraction"].item() == pytest.approx(0.5)
    dual.backward()
    assert logprobs.grad[0, 0].item() == 0.0  # the bounded token carries no gradient
