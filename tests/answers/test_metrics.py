"""pass@k against its closed form and brute force; majority vote ties; per-prompt and aggregate scores."""

import itertools
from math import comb

import pytest

from srtlab.answers.metrics import aggregate_scores, group_scores, majority_vote, pass_at_k


def test_pass_at_k_closed_form() -> None:
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # n - c < k: every pair holds a correct sample
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 is the fraction correct
    assert pass_at_k(100, 10, 50) == pytest.approx(1 - comb(90, 50) / comb(100, 50))


@pytest.mark.parametrize(("n", "c", "k"), [(4, 1, 2), (5, 2, 3), (6, 3, 2), (6, 0, 4), (7, 2, 5)])
def test_pass_at_k_matches_subset_enumeration(n: int, c: int, k: int) -> None:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_share_counts_missing_answers() -> None:
    assert majority_vote([0, 1, 1, None]) == (1, 0.5)


def test_majority_vote_tie_goes_to_smallest_id() -> None:
    assert majority_vote([1, 0, 1, 0, None]) == (0, 0.4)
    assert majority_vote([2, 1, 1, 2]) == (1, 0.5)


def test_majority_vote_without_answers() -> None:
    assert majority_vote([None, None]) == (None, 0.0)
    assert majority_vote([]) == (None, 0.0)


def test_group_scores_by_hand() -> None:
    # clusters 0,0,1,1,None: tie -> cluster 0, whose first member (index 0) is wrong
    correct = [False, False, True, True, False]
    scores = group_scores(correct, [0, 0, 1, 1, None], k=2)
    assert scores == pytest.approx({"mean": 0.4, "maj": 0.0, "pass": 0.7})
    # k defaults to n: any correct sample makes pass@n 1
    assert group_scores(correct, [1, 1, 0, 0, None])["maj"] == 1.0
    assert group_scores(correct, [1, 1, 0, 0, None])["pass"] == 1.0
    assert group_scores([False, False], [None, None]) == {"mean": 0.0, "maj": 0.0, "pass": 0.0}


def test_group_scores_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        group_scores([True], [0, 0])


def test_aggregate_scores_means() -> None:
    rows = [{"mean": 0.5, "maj": 1.0}, {"mean": 0.25, "maj": 0.0}]
    assert aggregate_scores(rows) == {"mean": 0.375, "maj": 0.5}
    assert aggregate_scores([]) == {}
