import torch

from srtlab.algorithms.advantages import rloo
from srtlab.algorithms.settings import AlgorithmSettings, OptimSettings
from srtlab.models.forward import completion_logits
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


def test_shared_prompt_forward_gives_the_same_logprobs_and_gradients(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    model.zero_grad()
    logits, ids, mask = completion_logits(model, PROMPTS, COMPLETIONS, 4, tok.pad_token_id)
    shared = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)  # [8, T]
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
    module = PolicyModule(str(tiny_model_dir), AlgorithmSettings(advantage="rloo"), OptimSettings(),
                          micro_batch_prompts=1)
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
