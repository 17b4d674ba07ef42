import pytest
import torch

from srtlab.algorithms.advantages import rloo
from srtlab.algorithms.settings import AlgorithmSettings
from srtlab.models.forward import token_logprobs
from srtlab.models.load import ModelSettings
from srtlab.modules.policy import PolicyModule
from srtlab.types import Prompt, RolloutBatch

PROMPTS = [[1, 40, 41, 42, 43, 44], [1, 50, 51]]  # two prompts of different lengths (left padding)
COMPLETIONS = [[60, 61, 2], [62], [63, 64, 65, 66], [67, 2],  # prompt 0, G=4
               [70, 2], [71, 72, 73], [74], [75, 76, 2]]  # prompt 1


def full_sequence_logprobs(model, prompts, completions, n):
    """Reference: each prompt+completion run separately, unpadded, no cache sharing."""
    out = []
    for i, c in enumerate(completions):
        ids = torch.tensor([prompts[i // n] + c])
        logits = model(input_ids=ids).logits[0, len(prompts[i // n]) - 1:-1]  # [len(c), V]
        out.append(torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1))
    return out


@pytest.mark.parametrize("math_max_len", [192, 0])  # short sequences: the math kernel; 0: torch's choice (long ones)
def test_shared_prompt_forward_gives_the_same_logprobs_and_gradients(tiny_model_and_tokenizer, math_max_len,
                                                                     monkeypatch):
    monkeypatch.setattr("srtlab.models.forward.MATH_ATTENTION_MAX_LEN", math_max_len)
    model, tok = tiny_model_and_tokenizer
    model.zero_grad()
    shared, mask, _ = token_logprobs(model, PROMPTS, COMPLETIONS, 4, tok.pad_token_id)  # [8, T]
    ref = full_sequence_logprobs(model, PROMPTS, COMPLETIONS, 4)
    for i, r in enumerate(ref):
        torch.testing.assert_close(shared[i, : len(r)], r, rtol=1e-5, atol=1e-5)
    assert mask.sum() == sum(len(c) for c in COMPLETIONS)
    # gradients of the summed log-probs agree too (the prompt pass keeps its graph)
    shared[mask].sum().backward()
    g_shared = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.stack([r.sum() for r in ref]).sum().backward()
    for a, p in zip(g_shared, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)
    model.zero_grad()


def test_skipping_unanimous_groups_keeps_the_batch_gradient(tiny_model_dir):
    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings(advantage="rloo"),
                          micro_batch_tokens=22)  # one group per pass
    module.configure_model()
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])  # group 0 unanimous: zero advantage
    batch = RolloutBatch(prompts=[Prompt(id=str(i), messages=[], task="t") for i in range(2)], n=4,
                         prompt_ids=PROMPTS, completion_ids=COMPLETIONS, texts=[""] * 8, answers=[None] * 8,
                         finish_reasons=["stop"] * 8, rewards=rewards)
    adv = rloo(rewards, 4)  # [0,0,0,0, 2/3,-2/3,-2/3,2/3]
    stats = module.accumulate_gradients(batch, adv, lambda loss: loss.backward())
    assert stats["train/active_groups"] == 0.5
    grads = [p.grad.clone() for p in module.model.parameters()]
    # Reference: token-mean policy-gradient loss over all 8 completions at ratio 1:
    # loss = -sum_i A_i * sum_t logp_it / total_tokens
    module.model.zero_grad()
    ref = full_sequence_logprobs(module.model, PROMPTS, COMPLETIONS, 4)
    total = sum(len(c) for c in COMPLETIONS)
    (-sum(a * r.sum() for a, r in zip(adv, ref)) / total).backward()
    for g, p in zip(grads, module.model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)


def _batch(rewards, loss_mask=None):
    return RolloutBatch(prompts=[Prompt(id=str(i), messages=[], task="t") for i in range(2)], n=4,
                        prompt_ids=PROMPTS, completion_ids=COMPLETIONS, texts=[""] * 8, answers=[None] * 8,
                        finish_reasons=["stop"] * 8, rewards=rewards, loss_mask=loss_mask)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_split_keeps_the_gradient_for_every_aggregation_with_a_loss_mask(tiny_model_dir, agg):
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    mask = [[1] * len(c) for c in COMPLETIONS]
    mask[0][1] = mask[2][0] = mask[2][3] = 0  # some tokens are not trained (as a reflection's retry)
    grads = []
    for budget in (10, 22, 1000):  # groups split over passes, a group a pass, one pass (tokens: pass_tokens)
        module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings(loss_agg=agg, max_tokens=5),
                              micro_batch_tokens=budget)
        module.configure_model()
        module.accumulate_gradients(_batch(rewards, mask), rloo(rewards, 4), lambda loss: loss.backward())
        grads.append([p.grad.clone() for p in module.model.parameters()])
    # the reference: the whole batch's loss at ratio 1, written out per aggregation
    ref = full_sequence_logprobs(module.model, PROMPTS, COMPLETIONS, 4)
    adv = rloo(rewards, 4)
    m = [torch.tensor(row, dtype=torch.float) for row in mask]
    terms = [-(a * (r * w).sum()) for a, r, w in zip(adv, ref, m)]  # per sequence: -A * sum of masked logp
    if agg == "token_mean":
        loss = sum(terms) / sum(w.sum() for w in m)
    elif agg == "seq_mean_token_mean":
        loss = sum(t / w.sum() for t, w in zip(terms, m)) / len(terms)
    else:
        loss = sum(t / 5 for t in terms) / len(terms)
    module.model.zero_grad()
    loss.backward()
    for a, b, p in zip(grads[0], grads[1], module.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


def test_kl_term_moves_the_loss_and_its_gradient(tiny_model_dir):
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings(kl_coef=0.5), micro_batch_tokens=1000)
    module.configure_model()
    with torch.no_grad():  # the policy moves away from the frozen reference (a real step would)
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stats = module.accumulate_gradients(_batch(rewards), rloo(rewards, 4), lambda loss: loss.backward())
    with_kl = [p.grad.clone() for p in module.model.parameters()]
    assert stats["train/kl"] > 1e-4
    # the reference: PG loss + 0.5 * token_mean(k3), k3 = exp(ref - logp) - (ref - logp) - 1
    module.model.zero_grad()
    pol = full_sequence_logprobs(module.model, PROMPTS, COMPLETIONS, 4)
    with torch.no_grad():
        refs = full_sequence_logprobs(module.reference, PROMPTS, COMPLETIONS, 4)
    total = sum(len(c) for c in COMPLETIONS)
    adv = rloo(rewards, 4)
    pg = -sum(a * r.sum() for a, r in zip(adv, pol)) / total
    kl = sum(((q - p).exp() - (q - p) - 1).sum() for p, q in zip(pol, refs)) / total
    (pg + 0.5 * kl).backward()
    for g, p in zip(with_kl, module.model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    assert stats["train/kl"] == pytest.approx(float(kl), rel=1e-4)


def test_heldout_metrics_by_hand():
    from conftest import make_batch
    from srtlab.answers.gold import GoldScorer
    from srtlab.answers.metrics import heldout_metrics, named_metrics, score_groups

    prompts = [Prompt(id="a", messages=[], task="t", answer="7"), Prompt(id="b", messages=[], task="t", answer="9")]
    r = make_batch(prompts, ["7", "7", "8", None, "5", "5", "5", "9"])
    scores, samples = score_groups(r, GoldScorer().verdicts(r))
    metrics = named_metrics("set", 4, heldout_metrics(scores, samples))
    # a: 2/4 right, majority "7" right, pass@4 1, 3/4 answered; b: 1/4 right, majority "5" wrong, pass@4 1
    assert metrics == pytest.approx({"val/set/mean@4": (0.5 + 0.25) / 2, "val/set/maj@4": 0.5,
                                     "val/set/pass@4": 1.0, "val/set/answer_rate": (0.75 + 1.0) / 2,
                                     "val/set/top_answer_share": 3 / 8})  # "5" three times of eight answers


def test_ppo_epochs_make_the_clip_act_and_tis_logs_importance_weights(tiny_cfg, tmp_path):
    from conftest import PARITY_REWARD
    from srtlab.plot import read_metrics
    from srtlab.train import fit

    run = tmp_path / "run"
    fit(tiny_cfg(*PARITY_REWARD, "algorithm.ppo_epochs=2", "algorithm.mini_batches=2", "algorithm.is_correction=tis",
                 "rollout.engine.dtype=bfloat16", "optim.lr=5e-2", "module.grad_clip=0", "eval_before=false",
                 "eval_after=false", "trainer.max_steps=2", "rollout.sampling.temperature=1.0", run_dir=run))
    m = read_metrics(run)
    assert sorted(m["train/updates"].values()) == [4.0, 4.0]  # 2 epochs x 2 mini-batches, one global step each
    assert max(m["train/clip_fraction"].values()) > 0  # later updates left the band [0.8, 1.2]
    assert all(v > 0 for v in m["train/is_weight_mean"].values()) and "train/sampler_kl" in m
    assert max(m["train/is_weight_max"].values()) != 1.0  # a bf16 sampler is not the fp32 trainer
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2


def test_update_skips_zero_the_chosen_groups_with_their_probability(tiny_model_dir):
    from conftest import make_batch

    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings())
    prompts = [Prompt(id=f"p/{i}", messages=[{"role": "user", "content": "q"}], task="t") for i in range(40)]
    batch = make_batch(prompts, ["1", "2"] * 40)
    adv = torch.ones(80)
    assert module.skip_groups(batch, adv, step=1) == 0 and bool((adv == 1).all())  # nothing asked: nothing skipped
    module.set_update_skips("guard", {"p/0": 1.0, "p/1": 0.0, **{f"p/{i}": 0.5 for i in range(2, 40)}})
    skipped = module.skip_groups(batch, adv, step=1)
    assert adv[0:2].tolist() == [0.0, 0.0] and adv[2:4].tolist() == [1.0, 1.0]  # certain, never
    assert 10 <= skipped - 1 <= 28  # about half of the 38 at 0.5
    again = torch.ones(80)
    module.skip_groups(batch, again, step=1)
    assert torch.equal(again, adv)  # a seeded coin per (step, prompt): the same draws again
    module.set_update_skips("guard", None)
    assert module.skip_groups(batch, torch.ones(80), step=1) == 0
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        module.set_update_skips("guard", {"p/0": 2.0})
