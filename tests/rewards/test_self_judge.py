"""Self-judge: P(correct) read from the judge's next-token distribution, through the real engine path."""

import math

import pytest
import torch

from conftest import ctx_for, make_batch
from srtlab.rewards.mix import RewardMix
from srtlab.rewards.self_judge import SelfJudge
from srtlab.rewards.vote import MajorityVote
from srtlab.rollout.hf import HFEngine
from srtlab.types import Prompt, RewardOutput

NAN = math.nan


def _prompts():
    # questions of different lengths, so the judging rows are left padded to different widths
    return [Prompt(id="p/0", messages=[{"role": "user", "content": "What is 2 * 2?"}], task="t", answer="4"),
            Prompt(id="p/1", messages=[{"role": "user", "content": "What is 3 + 4, the sum of three and four?"}],
                   task="t", answer="7")]


def unpadded_p_yes(model, tok, judge: SelfJudge, question: str, answer: str) -> float:
    """Reference: the judging prompt alone (no padding, no batching), softmax over the two verdicts."""
    text = tok.apply_chat_template(judge.messages(question, answer), add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]  # [V]
    yes, no = tok("Yes", add_special_tokens=False)["input_ids"][0], tok("No", add_special_tokens=False)["input_ids"][0]
    return torch.softmax(logits[[yes, no]], -1)[0].item()


def test_p_correct_through_the_engine_matches_an_unpadded_forward(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    engine = HFEngine(model, tok)
    judge = SelfJudge()
    batch = make_batch(_prompts(), ["4", "4", None, "7", "x", "7"])  # B=2, G=3
    out = judge(batch, ctx_for(batch, engine=engine))
    q0, q1 = "What is 2 * 2?", "What is 3 + 4, the sum of three and four?"
    p4, p7, px = (unpadded_p_yes(model, tok, judge, q, a) for q, a in ((q0, "4"), (q1, "7"), (q1, "x")))
    expected = torch.tensor([p4, p4, NAN, p7, px, p7])
    torch.testing.assert_close(out.rewards, expected, equal_nan=True, rtol=1e-5, atol=1e-6)
    assert 0 < p4 < 1 and len({p4, p7, px}) == 3  # the rows differ, so the comparison means something
    assert out.metrics["judged_rows"] == 3.0  # "4" of prompt 0; "7" and "x" of prompt 1, each once
    # the engine method itself: rows are log-probs over the full vocabulary (not normalised over 2 tokens)
    logp = engine.next_token_logprobs([judge.messages(q0, "4")], judge.verdict_ids(tok))
    assert logp.shape == (1, 2) and logp.dtype == torch.float32 and float(logp.exp().sum()) < 1.0


class FixedJudgeEngine:
    """Stands in for an engine: log p(yes) = log 0.3, log p(no) = log 0.1 for every row."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def next_token_logprobs(self, prompts, token_ids):
        self.calls.append((len(prompts), list(token_ids)))
        return torch.log(torch.tensor([[0.3, 0.1]] * len(prompts)))


def test_probability_and_threshold_by_hand(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    batch = make_batch(_prompts(), ["4", "5", None, "7", "7", "7"])
    engine = FixedJudgeEngine(tok)
    # P(correct) = 0.3 / (0.3 + 0.1) = 0.75 for every judged completion
    out = SelfJudge()(batch, ctx_for(batch, engine=engine))
    torch.testing.assert_close(out.rewards, torch.tensor([0.75, 0.75, NAN, 0.75, 0.75, 0.75]), equal_nan=True)
    yes, no = tok("Y")["input_ids"][0], tok("N")["input_ids"][0]  # the char tokenizer: first letters
    assert engine.calls == [(3, [yes, no])]  # one call; rows "4", "5" and "7"
    hard = SelfJudge(threshold=0.7)(batch, ctx_for(batch, engine=engine)).rewards
    torch.testing.assert_close(hard, torch.tensor([1.0, 1.0, NAN, 1.0, 1.0, 1.0]), equal_nan=True)
    low = SelfJudge(threshold=0.8)(batch, ctx_for(batch, engine=engine)).rewards
    torch.testing.assert_close(low, torch.tensor([0.0, 0.0, NAN, 0.0, 0.0, 0.0]), equal_nan=True)
    # show="completion": one row per distinct completion text ("Answer: 4", "Answer: 5", "Answer: 7")
    SelfJudge(show="completion")(batch, ctx_for(batch, engine=engine))
    assert engine.calls[-1][0] == 3


def test_no_answers_no_call_and_nan(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    engine = FixedJudgeEngine(tok)
    out = SelfJudge()(make_batch(_prompts()[:1], [None, None]), ctx_for(make_batch(_prompts()[:1], [None, None]), engine=engine))
    assert torch.isnan(out.rewards).all() and engine.calls == [] and "p_correct" not in out.metrics


def test_judge_messages_with_shots_and_system():
    judge = SelfJudge(template="Q: {question} A: {answer}?", system="You grade.",
                      shots=[{"question": "1+1", "answer": "3", "verdict": False}])
    assert judge.messages("2*2", "4") == [
        {"role": "system", "content": "You grade."},
        {"role": "user", "content": "Q: 1+1 A: 3?"}, {"role": "assistant", "content": "No"},
        {"role": "user", "content": "Q: 2*2 A: 4?"}]


def test_logged_as_a_monitor_in_the_mix_at_weight_zero(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    mix = RewardMix({"vote": MajorityVote(), "self_judge": SelfJudge()}, {"vote": 1.0, "self_judge": 0.0})
    out = mix(make_batch(_prompts(), ["4", "5", "4", "7", "7", None]), engine=FixedJudgeEngine(tok))
    # judge 0.75 everywhere it has an answer: all count as "says correct"; gold: 1,0,1 and 1,1,(0, no answer)
    assert out.metrics["reward/self_judge"] == pytest.approx(0.75)
    assert out.metrics["agreement/self_judge"] == pytest.approx(4 / 5)  # 5 judged, "5" is wrong
    torch.testing.assert_close(out.rewards, torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 0.0]))  # the vote alone
    assert isinstance(out, RewardOutput)


@pytest.mark.parametrize("kwargs,message", [
    ({"template": "no fields"}, "template='no fields'; accepted: a text with the field {question}"),
    ({"threshold": 1.5}, "threshold=1.5"),
    ({"show": "text"}, "show='text'"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        SelfJudge(**kwargs)


def test_verdicts_must_start_with_different_tokens(tiny_model_and_tokenizer):
    _, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="must start with different tokens"):
        SelfJudge(verdicts=["Nope", "No"]).verdict_ids(tok)
