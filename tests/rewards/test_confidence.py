"""Confidence rewards: self-certainty, negative entropy and sequence log-prob against hand-worked values,
group normalisation, and the real scoring path (shared prompt pass, micro-batches) on the tiny model."""

import math

import pytest
import torch

from conftest import ctx_for
from srtlab.algorithms.settings import AlgorithmSettings
from srtlab.models.forward import TokenStats
from srtlab.models.load import ModelSettings
from srtlab.modules.policy import PolicyModule
from srtlab.rewards.confidence import Confidence, normalize_in_groups, sequence_confidence, token_values
from srtlab.rewards.mix import RewardMix
from srtlab.rewards.vote import MajorityVote
from srtlab.types import Prompt, RolloutBatch

NAN = math.nan

# One sequence of two tokens over a vocabulary of V = 3:
#   t=0: logits [0, 0, 0]       -> p = [1/3, 1/3, 1/3] (uniform)
#   t=1: logits [log 4, 0, 0]   -> p = [4/6, 1/6, 1/6] = [2/3, 1/6, 1/6]
# Tokens y = [0, 0].
LOGITS = torch.tensor([[[0.0, 0.0, 0.0], [math.log(4), 0.0, 0.0]]])  # [1, 2, 3]
IDS = torch.tensor([[0, 0]])
# KL(U || p) = -log V - (1/V) sum_v log p_v:  t=0: -log 3 + log 3 = 0
KL1 = -math.log(3) - (math.log(2 / 3) + 2 * math.log(1 / 6)) / 3  # t=1: 0.231049...
# H(p) = -sum_v p_v log p_v:  t=0: log 3 = 1.098612; t=1: 0.867563...
H1 = -(2 / 3 * math.log(2 / 3) + 2 * (1 / 6) * math.log(1 / 6))


def stats_of(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> TokenStats:
    """The per-token statistics the model's chunked head gives (srtlab.models.forward.token_stats), from logits."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [N, T, V]
    mask = torch.ones(ids.shape, dtype=torch.bool) if mask is None else mask.bool()
    return TokenStats(logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1), mask, -(logp.exp() * logp).sum(-1),
                      logp.mean(-1), logits.shape[-1])


def test_per_token_statistics_by_hand():
    stats = stats_of(LOGITS, IDS)
    torch.testing.assert_close(token_values(stats, "self_certainty"), torch.tensor([[0.0, KL1]]))
    torch.testing.assert_close(token_values(stats, "neg_entropy"), torch.tensor([[-math.log(3), -H1]]))
    torch.testing.assert_close(token_values(stats, "seq_logprob"), torch.tensor([[math.log(1 / 3), math.log(2 / 3)]]))
    assert KL1 == pytest.approx(0.231049, abs=1e-6) and H1 == pytest.approx(0.867563, abs=1e-6)


def test_sequence_values_by_hand_with_mask_and_empty_sequence():
    logits = LOGITS.repeat(3, 1, 1)  # [3, 2, 3]
    ids = IDS.repeat(3, 1)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]])  # both tokens; the first only; no token
    stats = stats_of(logits, ids, mask)
    sc = sequence_confidence(stats, "self_certainty")
    torch.testing.assert_close(sc, torch.tensor([KL1 / 2, 0.0, NAN]), equal_nan=True)  # token mean
    ne = sequence_confidence(stats, "neg_entropy")
    torch.testing.assert_close(ne, torch.tensor([-(math.log(3) + H1) / 2, -math.log(3), NAN]), equal_nan=True)
    lp = sequence_confidence(stats, "seq_logprob")  # a sum: log p(y | x)
    torch.testing.assert_close(lp, torch.tensor([math.log(1 / 3 * 2 / 3), math.log(1 / 3), NAN]), equal_nan=True)


def test_rank_and_zscore_within_groups_by_hand():
    values = torch.tensor([3.0, 1.0, 2.0, 2.0, NAN, 5.0, 5.0, 1.0])  # two groups of 4
    # group 0: 3 is above all three others -> 3/3; 1 -> 0; each 2 has one below and one tie -> 1.5/3
    # group 1: NaN stays NaN; among [5, 5, 1]: each 5 has one below, one tie -> 1.5/2; 1 -> 0
    torch.testing.assert_close(normalize_in_groups(values, 4, "rank"),
                               torch.tensor([1.0, 0.0, 0.5, 0.5, NAN, 0.75, 0.75, 0.0]), equal_nan=True)
    # z-score of [1, 3]: mean 2, std 1 -> [-1, 1]; a lone value gets rank 0.5
    torch.testing.assert_close(normalize_in_groups(torch.tensor([1.0, 3.0]), 2, "zscore"), torch.tensor([-1.0, 1.0]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(normalize_in_groups(torch.tensor([NAN, 4.0]), 2, "rank"), torch.tensor([NAN, 0.5]),
                               equal_nan=True)


PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50, 51]]  # different lengths: left padding in the shared prompt pass
COMPLETIONS = [[60, 61, 2], [62], [63, 64, 65, 66],
               [70, 2], [71, 72, 73], []]  # the last one is empty: NaN


def _batch() -> RolloutBatch:
    return RolloutBatch(prompts=[Prompt(id=str(i), messages=[], task="t") for i in range(2)], n=3,
                        prompt_ids=PROMPTS, completion_ids=COMPLETIONS, texts=[""] * 6, answers=[None] * 6,
                        finish_reasons=["stop"] * 6)


def reference(model, kind: str) -> list[float]:
    """Each prompt+completion alone, unpadded, and the statistic written out over the vocabulary."""
    out = []
    for i, c in enumerate(COMPLETIONS):
        if not c:
            out.append(NAN)
            continue
        p = PROMPTS[i // 3]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:-1].float(), -1)
        probs, vocab = logp.exp(), logp.shape[-1]
        per_token = {"self_certainty": [(-math.log(vocab) - logp[t].sum() / vocab).item() for t in range(len(c))],
                     "neg_entropy": [(probs[t] * logp[t]).sum().item() for t in range(len(c))],
                     "seq_logprob": [logp[t, c[t]].item() for t in range(len(c))]}[kind]
        out.append(sum(per_token) if kind == "seq_logprob" else sum(per_token) / len(c))
    return out


@pytest.mark.parametrize("kind", ["self_certainty", "neg_entropy", "seq_logprob"])
def test_raw_values_through_the_policy_match_separate_forward_passes(kind, tiny_model_dir):
    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings(), micro_batch_tokens=16)
    module.configure_model()  # in train mode, as during fit; the source scores in eval mode and restores it
    batch = _batch()
    out = Confidence(kind=kind, normalize="none")(batch, ctx_for(batch, token_stats=module.scoring_stats, micro_batch_tokens=16))
    torch.testing.assert_close(out.rewards, torch.tensor(reference(module.model, kind)), equal_nan=True,
                               rtol=1e-4, atol=1e-5)
    assert module.model.training
    ranked = Confidence(kind=kind)(batch, ctx_for(batch, token_stats=module.scoring_stats)).rewards
    assert sorted(ranked[:3].tolist()) == [0.0, 0.5, 1.0] and ranked[3:5].tolist() in ([0.0, 1.0], [1.0, 0.0])


def test_mix_logs_confidence_even_at_weight_zero(tiny_model_dir):
    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings())
    module.configure_model()
    mix = RewardMix({"vote": MajorityVote(), "confidence": Confidence()}, {"vote": 1.0, "confidence": 0.0})
    batch = _batch()
    batch.prompts = [Prompt(id="a", messages=[], task="t", answer="1"), Prompt(id="b", messages=[], task="t")]
    batch.answers = ["1", "1", "2", None, None, None]
    out = mix(batch, token_stats=module.scoring_stats)
    # ranks in group 0 are a permutation of 0, 0.5, 1 -> mean 0.5; group 1: two ranked (0, 1), one NaN
    assert out.metrics["reward/confidence"] == pytest.approx(0.5)
    assert "agreement/confidence" in out.metrics and "confidence/raw_self_certainty" in out.metrics


@pytest.mark.parametrize("kwargs,message", [({"kind": "entropy"}, "kind='entropy'"),
                                            ({"normalize": "minmax"}, "normalize='minmax'"),
                                            ({"temperature": 0}, "temperature=0")])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Confidence(**kwargs)
