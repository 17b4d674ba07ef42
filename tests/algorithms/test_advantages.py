import math

import pytest
import torch
from torch.testing import assert_close

from srtlab.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    dr_grpo,
    grpo,
    rloo,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


def test_rloo_g4_two_groups() -> None:
    # group 0 [1,0,0,1]: sum 2; A_i = r_i - (2 - r_i)/3 -> 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    # group 1 [1,1,1,1]: constant -> 0
    adv = rloo(t(1, 0, 0, 1, 1, 1, 1, 1), 4)
    assert_close(adv, t(2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0))


def test_rloo_g2_three_groups() -> None:
    # G=2: A_i = r_i - r_other: [1,0] -> [1,-1]; [.5,.5] -> [0,0]; [3,1] -> [2,-2]
    adv = rloo(t(1, 0, 0.5, 0.5, 3, 1), 2)
    assert_close(adv, t(1, -1, 0, 0, 2, -2))


def test_rloo_equals_scaled_centered() -> None:
    # identity A = G/(G-1) * (r - mean); [0,3,6]: mean 3 -> 3/2 * [-3,0,3] = [-4.5,0,4.5]
    adv = rloo(t(0, 3, 6), 3)
    assert_close(adv, t(-4.5, 0, 4.5))


def test_grpo_by_hand() -> None:
    # [1,0,0,1]: mean .5, unbiased var = 4*.25/3 = 1/3, std = 0.57735 -> A = +-0.5/(0.57735+1e-6)
    # [0,3,6]: mean 3, unbiased var = (9+0+9)/2 = 9, std 3 -> A = [-1,0,1] (eps negligible)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert_close(grpo(t(1, 0, 0, 1), 4), t(a, -a, -a, a))
    assert_close(grpo(t(0, 3, 6, 1, 1, 1), 3), t(-1, 0, 1, 0, 0, 0), atol=1e-5, rtol=0)
    assert abs(a - math.sqrt(3) / 2) < 1e-5  # sanity: 0.5 * sqrt(3) = 0.8660


def test_dr_grpo_by_hand() -> None:
    # r - mean, no std: [1,0,0,1] -> +-0.5 ; [0,3,6] -> [-3,0,3]
    assert_close(dr_grpo(t(1, 0, 0, 1), 4), t(0.5, -0.5, -0.5, 0.5))
    assert_close(dr_grpo(t(0, 3, 6, 2, 2, 2), 3), t(-3, 0, 3, 0, 0, 0))


@pytest.mark.parametrize("name", ["rloo", "grpo", "dr_grpo"])
def test_constant_group_is_exactly_zero(name: str) -> None:
    # 0.1 is not representable: a plain r - mean could leave a rounding residue; must be exact 0
    rewards = t(0.1, 0.1, 0.1, 0.7, 0.7, 0.7)
    adv = compute_advantages(name, rewards, 3)
    assert torch.equal(adv, torch.zeros(6))


def test_grpo_group_of_one_is_zero_not_nan() -> None:
    # G=1: torch.std of one element is NaN; a single-sample group is constant -> 0
    assert torch.equal(grpo(t(1, 0), 1), torch.zeros(2))


def test_rloo_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="got 1"):
        rloo(t(1, 0), 1)


@pytest.mark.parametrize("name", ["rloo", "grpo", "dr_grpo"])
def test_indivisible_numel(name: str) -> None:
    with pytest.raises(ValueError, match=r"5.*2"):
        compute_advantages(name, t(1, 0, 1, 0, 1), 2)


@pytest.mark.parametrize("name", ["rloo", "grpo", "dr_grpo"])
def test_nan_rewards_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="NaN"):
        compute_advantages(name, t(1, float("nan")), 2)


@pytest.mark.parametrize("name", ["rloo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_rewards_rejected(name: str, bad: float) -> None:
    # without the check: rloo gives inf - inf = NaN advantages for the whole group
    with pytest.raises(ValueError, match=r"inf at completions \[3\].*finite"):
        compute_advantages(name, t(1, 0, 1, bad), 2)


def test_unknown_estimator_name() -> None:
    with pytest.raises(ValueError, match="ppo_gae") as info:
        compute_advantages("ppo_gae", t(1, 0), 2)
    assert "rloo" in str(info.value) and "dr_grpo" in str(info.value)


def test_registry_and_dispatch() -> None:
    assert ADVANTAGE_ESTIMATORS == {"rloo": rloo, "grpo": grpo, "dr_grpo": dr_grpo}
    # dispatch reaches the right function: dr_grpo of [2,0] is [1,-1], rloo would give [2,-2]
    assert_close(compute_advantages("dr_grpo", t(2, 0), 2), t(1, -1))
    assert_close(compute_advantages("rloo", t(2, 0), 2), t(2, -2))
