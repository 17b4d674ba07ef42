"""Reflect, Retry, Reward: the token pieces and masks by hand, the program on a scripted engine, the
program on the tiny model with the HF engine, and a tiny end-to-end fit."""

import csv
import json

import pytest
import torch

from conftest import PARITY_REWARD, make_tokenizer
from srtlab.answers.extract import extract_answer
from srtlab.eval.retry import evaluate_retry
from srtlab.rewards.ground_truth import GroundTruth
from srtlab.rollout.engine import SamplingSettings, render_prompts
from srtlab.rollout.hf import HFEngine
from srtlab.rollout.reflect import ReflectRetry
from srtlab.rollout.turns import continue_after, episode, turn_ids, turn_text
from srtlab.types import Prompt, RewardOutput, RolloutBatch

TOK = make_tokenizer()
EOS = TOK.eos_token_id
SAMPLING = SamplingSettings(temperature=0.7, max_new_tokens=16)


def _prompt(question: str, gold: str | None, pid: str = "p") -> Prompt:
    return Prompt(id=pid, messages=[{"role": "user", "content": question}], task="t", answer=gold)


class ScriptedEngine:
    """Returns scripted texts, call by call (one list per generate call, one text per completion row);
    a text ending in "|" is cut there without an eos (a truncated completion). Records every call."""

    def __init__(self, script: list[list[str]]) -> None:
        self.script, self.tokenizer, self.calls = list(script), TOK, []

    def generate(self, prompts, n, sampling, seed, prompt_ids=None) -> RolloutBatch:
        ids = render_prompts(TOK, prompts) if prompt_ids is None else [list(p) for p in prompt_ids]
        texts = self.script.pop(0)
        assert len(texts) == len(prompts) * n, (len(texts), len(prompts), n)
        self.calls.append({"prompt_ids": ids, "n": n, "seed": seed, "max_new_tokens": sampling.max_new_tokens})
        done = [not t.endswith("|") for t in texts]
        texts = [t.rstrip("|") for t in texts]
        completions = [TOK(t, add_special_tokens=False)["input_ids"] + ([EOS] if d else []) for t, d in zip(texts, done)]
        return RolloutBatch(prompts=list(prompts), n=n, prompt_ids=ids, completion_ids=completions, texts=texts,
                            answers=[extract_answer(t, "answer_line") for t in texts],
                            finish_reasons=["stop" if d else "length" for d in done])


def _ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def _gold_score(rollouts: RolloutBatch) -> RewardOutput:
    return RewardOutput(rewards=GroundTruth().verdicts(rollouts), metrics={"seen": float(len(rollouts))})


# -- token pieces, by hand ----------------------------------------------------------------------------
def test_turn_text_is_read_off_the_chat_template():
    assert turn_text(TOK, "Why?") == "<|im_end|>\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
    # the char tokenizer: one id per character, the two specials as one id each
    ids = turn_ids(TOK, "Why?")
    assert ids[0] == EOS and len(ids) == 1 + 1 + 1 + len("user\n") + 4 + 1 + 1 + 1 + len("assistant\n")


def test_episode_masks_by_hand():
    turn = [EOS, 50, 51]  # closes the reflection's turn, opens the retry's
    # a finished reflection [10, 11, eos]: its eos is replaced by the turn's own closing token, and trained
    ids, mask = episode([10, 11, EOS], True, turn, [60, EOS])
    assert ids == [10, 11, EOS, 50, 51, 60, EOS]
    assert mask == [1, 1, 1, 0, 0, 0, 0]
    # a truncated reflection [10, 11]: the turn closes it, and that closing token is not the model's
    ids, mask = episode([10, 11], False, turn, [60, EOS])
    assert ids == [10, 11, EOS, 50, 51, 60, EOS]
    assert mask == [1, 1, 0, 0, 0, 0, 0]
    # an empty retry (nothing sampled) leaves the instruction turn untrained too
    assert episode([10, EOS], True, turn, []) == ([10, EOS, 50, 51], [1, 1, 0, 0])
    assert continue_after([], True, turn) == turn


# -- the program on a scripted engine -----------------------------------------------------------------
def test_ground_truth_program_by_hand():
    p0, p1 = _prompt("3*4?", "12", "p0"), _prompt("2*3?", "6", "p1")
    engine = ScriptedEngine([
        ["Answer: 12", "Answer: 3", "Answer: 6", "Answer: 6"],  # first attempts: only p0's second fails
        ["I mixed up the numbers.", "I sh|"],  # 2 reflections on it, the second truncated
        ["Answer: 12", "Answer: 5"],  # one retry per reflection: the first right, the second wrong
        ["Answer: 3", "Answer: 12"],  # plain retries (no reflection)
    ])
    program = ReflectRetry(signal="ground_truth", attempts=2, reflect_instruction="Why?",
                           retry_instruction="Again: {question}", reflect_max_new_tokens=5)
    batch = program(engine, [p0, p1], 2, SAMPLING, seed=3, score=_gold_score)

    attempts_call, reflect_call, retry_call, plain_call = engine.calls
    prompt0 = render_prompts(TOK, [p0])[0]
    attempt = _ids("Answer: 3")  # p0's failed attempt, its eos dropped (the turn closes it)
    reflect_turn, retry_turn = turn_ids(TOK, "Why?"), turn_ids(TOK, "Again: 3*4?")
    context = prompt0 + attempt + reflect_turn
    assert reflect_call["prompt_ids"] == [context] and reflect_call["n"] == 2 and reflect_call["max_new_tokens"] == 5
    refl0, refl1 = _ids("I mixed up the numbers.") + [EOS], _ids("I sh")
    assert retry_call["prompt_ids"] == [context + refl0[:-1] + retry_turn, context + refl1 + retry_turn]
    assert plain_call["prompt_ids"] == [prompt0 + attempt + retry_turn] and plain_call["n"] == 2
    assert len({c["seed"] for c in engine.calls}) == 4  # every stage samples with its own seed

    # one group: the failed attempt's context, two completions = reflection + retry turn + retry
    assert batch.prompts == [p0] and batch.n == 2 and batch.prompt_ids == [context]
    retry0, retry1 = _ids("Answer: 12") + [EOS], _ids("Answer: 5") + [EOS]
    assert batch.completion_ids == [refl0[:-1] + retry_turn + retry0, refl1 + retry_turn + retry1]
    assert batch.loss_mask == [[1] * len(refl0) + [0] * (len(retry_turn) + len(retry0) - 1),
                               [1] * len(refl1) + [0] * (len(retry_turn) + len(retry1))]
    # what is trained is exactly what was sampled: context + completion prefix = the retry's context
    assert context + batch.completion_ids[0][: len(refl0) - 1 + len(retry_turn)] == retry_call["prompt_ids"][0]
    assert batch.rewards.tolist() == [1.0, 0.0] and batch.answers == ["12", "5"]
    assert batch.texts == ["I mixed up the numbers.", "I sh"]
    m = batch.metrics
    assert m["r3/signal/ground_truth"] == 1.0 and m["seen"] == 4.0  # the mix's metrics on first attempts
    assert m["r3/first_success"] == 0.75 and m["r3/first_accuracy"] == 0.75 and m["r3/cases"] == 1.0
    assert m["r3/retry_success"] == 0.5 and m["r3/retry_accuracy"] == 0.5 and m["r3/fixed_any"] == 1.0
    assert m["r3/plain_retry_success"] == 0.5 and m["r3/plain_retry_accuracy"] == 0.5
    assert m["r3/retry_same_answer"] == 0.0  # neither retry repeated the failed "3"
    assert m["r3/reflection_length"] == (len(refl0) + len(refl1)) / 2 and m["r3/reflection_truncated"] == 0.5
    assert m["r3/reflection_length_rewarded"] == len(refl0)  # only reflection 0's retry succeeded


def test_vote_signal_needs_no_gold_and_skips_weak_majorities():
    # p0's majority "12" (2 of 4) is its self-label; its gold answer says 99 and is never read.
    # p1 has no majority of at least half (four different answers): no verdict, no case.
    p0, p1 = _prompt("3*4?", "99", "p0"), _prompt("2*3?", None, "p1")
    engine = ScriptedEngine([
        ["Answer: 12", "Answer: 3", "Answer: 12", "no answer", "Answer: 1", "Answer: 2", "Answer: 3", "Answer: 4"],
        ["r1", "r2", "r3"],  # three reflections on p0's first failure (the "3")
        ["Answer: 12", "Answer: 99", "Answer: 3"],  # their retries: only the first agrees with the label
    ])
    program = ReflectRetry(signal="vote", attempts=4, min_agreement=0.5, plain_retry=False)
    batch = program(engine, [p0, p1], 3, SAMPLING, seed=0, score=_gold_score)
    assert len(engine.calls) == 3  # no plain retries
    assert batch.prompt_ids[0][-len(turn_ids(TOK, program.reflect_instruction)):] == turn_ids(
        TOK, program.reflect_instruction)
    assert engine.calls[1]["prompt_ids"][0][:-len(turn_ids(TOK, program.reflect_instruction))] == (
        render_prompts(TOK, [p0])[0] + _ids("Answer: 3"))
    assert batch.rewards.tolist() == [1.0, 0.0, 0.0]
    m = batch.metrics
    assert m["r3/signal/vote"] == 1.0 and m["r3/judged"] == 0.5 and m["r3/cases"] == 1.0
    assert m["r3/first_success"] == 0.5  # 2 of p0's 4 attempts agree with its label
    assert m["r3/retry_success"] == pytest.approx(1 / 3) and m["r3/retry_same_answer"] == pytest.approx(1 / 3)
    assert m["r3/retry_accuracy"] == pytest.approx(1 / 3)  # by gold: the "99" retry is right


def test_mix_signal_scores_first_attempts_and_retries_with_the_reward_mix():
    calls = []

    def says_seven(rollouts):  # a scripted reward: 1 for the answer "7"
        calls.append(len(rollouts))
        return RewardOutput(rewards=torch.tensor([float(a == "7") for a in rollouts.answers]))

    p = _prompt("q", None)
    engine = ScriptedEngine([["Answer: 7", "Answer: 1"], ["r", "s"], ["Answer: 7", "Answer: 7"]])
    batch = ReflectRetry(signal="mix", attempts=2, plain_retry=False)(engine, [p], 2, SAMPLING, 0, says_seven)
    assert calls == [2, 2] and batch.rewards.tolist() == [1.0, 1.0]
    assert "r3/first_accuracy" not in batch.metrics  # no gold answer to monitor


def test_nothing_to_reflect_on_trains_nothing():
    engine = ScriptedEngine([["Answer: 6", "Answer: 6"]])
    batch = ReflectRetry(attempts=2)(engine, [_prompt("2*3?", "6")], 4, SAMPLING, 0, _gold_score)
    assert len(engine.calls) == 1 and batch.metrics["r3/cases"] == 0.0
    assert batch.rewards.tolist() == [0.0, 0.0]
    assert [sum(m) for m in batch.loss_mask] == [0, 0] and [len(m) for m in batch.loss_mask] == [10, 10]


def test_evaluate_with_and_without_a_retry_by_hand():
    # 2 prompts x 2 attempts: 1 of 4 right. The 3 failures get one reflection + retry and one plain retry:
    # reflection fixes 2 of 3, plain retry fixes 1 of 3.
    p0, p1 = _prompt("3*4?", "12", "p0"), _prompt("2*3?", "6", "p1")
    engine = ScriptedEngine([
        ["Answer: 12", "Answer: 3", "Answer: 5", "Answer: 1"],
        ["a", "b", "c"], ["Answer: 12", "Answer: 6", "Answer: 0"], ["Answer: 12", "Answer: 0", "Answer: 1"],
    ])
    metrics, rows = evaluate_retry(ReflectRetry(), engine, [p0, p1], 2, SAMPLING, seed=0)
    assert metrics == pytest.approx({"first": 0.25, "reflect": 0.75, "plain": 0.5, "fixed": 2 / 3,
                                     "plain_fixed": 1 / 3, "reflection_length": 2.0})
    assert [c["n"] for c in engine.calls] == [2, 1, 1, 1]
    assert rows[0]["attempts"][0] == {"text": "Answer: 12", "answer": "12", "correct": True}
    assert rows[1]["attempts"][0]["reflection"] == "b" and rows[1]["attempts"][0]["retry_correct"] is True


@pytest.mark.parametrize("kwargs,message", [
    ({"signal": "judge"}, "ReflectRetry.signal='judge'; accepted: ground_truth, vote, mix"),
    ({"signal": "vote", "attempts": 1}, "ReflectRetry.attempts=1; accepted: at least 2 with signal='vote'"),
    ({"attempts": 2, "failures_per_prompt": 3}, "failures_per_prompt=3"),
    ({"reflect_max_new_tokens": 0}, "reflect_max_new_tokens=0"),
])
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        ReflectRetry(**kwargs)


# -- the HF engine and the tiny model -------------------------------------------------------------------
def test_hf_engine_continues_from_given_token_ids(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    prompts = [_prompt("How many r in red car?", None), _prompt("x", None)]
    greedy = SamplingSettings(temperature=0, max_new_tokens=6)
    engine = HFEngine(model, tok)
    ids = render_prompts(tok, prompts)
    assert engine.generate(prompts, 2, greedy, 0).completion_ids == engine.generate(
        prompts, 2, greedy, 0, prompt_ids=ids).completion_ids
    longer = engine.generate(prompts, 1, greedy, 0, prompt_ids=[ids[0] + ids[1], ids[1]])
    assert longer.prompt_ids == [ids[0] + ids[1], ids[1]]
    with pytest.raises(ValueError, match="1 prompt_ids lists for 2 prompts"):
        engine.generate(prompts, 1, greedy, 0, prompt_ids=[ids[0]])


def test_program_on_the_tiny_model_keeps_masks_and_contexts_consistent(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    engine = HFEngine(model, tok)
    parity = lambda r: RewardOutput(rewards=torch.tensor([float(sum(c) % 2 == 0) for c in r.completion_ids]))
    program = ReflectRetry(signal="mix", attempts=3, failures_per_prompt=2, reflect_max_new_tokens=6)
    prompts = [_prompt("3*4?", "12", "a"), _prompt("2*3?", "6", "b")]
    batch = program(engine, prompts, 2, SamplingSettings(temperature=1.0, max_new_tokens=5), seed=1, score=parity)
    cases = int(batch.metrics["r3/cases"])
    assert cases >= 1 and len(batch.prompts) == cases and len(batch) == 2 * cases
    for b in range(cases):  # each group's context ends with the reflection instruction turn
        assert batch.prompt_ids[b][-len(program.turns(tok, batch.prompts[b])[0]):] == program.turns(
            tok, batch.prompts[b])[0]
    for ids, mask, reason in zip(batch.completion_ids, batch.loss_mask, batch.finish_reasons):
        assert len(mask) == len(ids) and mask == sorted(mask, reverse=True) and 1 <= sum(mask) <= 6
        assert (ids[sum(mask) - 1] == tok.eos_token_id) == (reason == "stop")  # the trained part ends its turn
    assert set(batch.rewards.tolist()) <= {0.0, 1.0}


def test_masked_episode_trains_exactly_the_reflection(tiny_model_dir):
    """The gradient of reflection + retry with the reflection mask equals that of the reflection alone
    (keep_retry=False): the retry tokens get no advantage and do not count in the normaliser."""
    from srtlab.algorithms.advantages import compute_advantages
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models.load import ModelSettings
    from srtlab.modules.policy import PolicyModule

    module = PolicyModule(ModelSettings(str(tiny_model_dir)), AlgorithmSettings(advantage="grpo"))
    module.configure_model()
    p0, p1 = _prompt("3*4?", "12", "p0"), _prompt("2*3?", "6", "p1")
    script = [["Answer: 3", "Answer: 12", "Answer: 5", "Answer: 6"], ["ab", "cde|", "f", "gh"],
              ["Answer: 12", "Answer: 4", "Answer: 6", "Answer: 7"]]
    grads = []
    for keep_retry in (True, False):
        program = ReflectRetry(attempts=2, plain_retry=False, keep_retry=keep_retry)
        batch = program(ScriptedEngine(script), [p0, p1], 2, SAMPLING, 0, _gold_score)
        assert batch.rewards.tolist() == [1.0, 0.0, 1.0, 0.0]
        module.model.zero_grad()
        adv = compute_advantages("grpo", batch.rewards, 2)
        module.accumulate_gradients(batch, adv, lambda loss: loss.backward())
        grads.append([q.grad.clone() for q in module.model.parameters()])
    assert sum(len(c) for c in batch.completion_ids) == 3 + 3 + 2 + 3  # reflections alone: "ab", "f", "gh" with eos, "cde" cut
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads[0])


@pytest.mark.vllm
def test_program_on_the_vllm_engine(tmp_path):
    """The same program on vLLM (CPU build): contexts given as token ids, masks consistent."""
    from conftest import make_tiny_model
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models.load import ModelSettings
    from srtlab.modules.policy import PolicyModule
    from srtlab.rollout.vllm import VLLMEngine

    model_dir = make_tiny_model(tmp_path / "tiny-llama-128", hidden=128, heads=2)  # vLLM CPU: heads of 64+
    policy = PolicyModule(ModelSettings(str(model_dir)), AlgorithmSettings(), temperature=1.0)
    policy.configure_model()
    engine = VLLMEngine(policy.model, policy.tokenizer, str(model_dir), dtype="float32", kv_cache_gib=1,
                        enforce_eager=True, max_model_len=512)
    tok = policy.tokenizer
    parity = lambda r: RewardOutput(rewards=torch.tensor([float(sum(c) % 2 == 0) for c in r.completion_ids]))
    program = ReflectRetry(signal="mix", attempts=3, failures_per_prompt=2, reflect_instruction="Why?",
                           retry_instruction="Again: {question}", reflect_max_new_tokens=6)
    prompts = [_prompt("3*4?", "12", "a"), _prompt("2*3?", "6", "b")]
    batch = program(engine, prompts, 2, SamplingSettings(temperature=1.0, max_new_tokens=5), seed=1, score=parity)
    cases = int(batch.metrics["r3/cases"])
    assert cases >= 1 and len(batch) == 2 * cases
    rendered = dict(zip(("a", "b"), render_prompts(tok, prompts)))
    for b, p in enumerate(batch.prompts):  # prompt + a sampled attempt + the reflection turn, as ids
        context, reflect_turn = batch.prompt_ids[b], turn_ids(tok, "Why?")
        assert context[: len(rendered[p.id])] == rendered[p.id] and context[-len(reflect_turn):] == reflect_turn
    for ids, mask in zip(batch.completion_ids, batch.loss_mask):
        assert len(mask) == len(ids) and mask == sorted(mask, reverse=True) and 1 <= sum(mask) <= 6
    # the policy can score the trained batch (the shapes line up with the mask)
    with torch.no_grad():
        logp, valid, _ = policy.token_logprobs(policy.model, batch.prompt_ids, batch.completion_ids, batch.n)
    assert valid.sum() == sum(len(c) for c in batch.completion_ids) and torch.isfinite(logp[valid]).all()


# -- end to end ----------------------------------------------------------------------------------------
def test_fit_with_reflect_retry(tiny_cfg, tmp_path):
    from srtlab.train import evaluate, fit

    run = tmp_path / "run"
    results = fit(tiny_cfg("experiment=reflect_retry", *PARITY_REWARD, "rollout.program.signal=mix",
                           "rollout.program.attempts=2", "rollout.program.reflect_max_new_tokens=6",
                           "callbacks.retry_eval.k=1", "optim.lr=1e-3", run_dir=run))
    assert results["steps"] == 2
    for when in ("before", "after"):  # the tiny model writes no answers: everything fails, nothing is fixed
        assert results[when]["val/products/r3_first"] == 0.0 and results[when]["val/products/r3_fixed"] == 0.0
        assert {"val/products/r3_reflect", "val/products/r3_plain", "val/products/mean@2"} <= set(results[when])
    with open(run / "logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/r3/cases")]
    assert len(rows) == 2 and all(r["train/r3/signal/mix"] == "1.0" for r in rows)
    assert {"train/r3/retry_success", "train/r3/plain_retry_success", "train/r3/reflection_length"} <= set(rows[0])
    samples = [json.loads(x) for x in (run / "samples" / "products_r3_step2.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and "reflection" in samples[0]["attempts"][0]
    # `python -m srtlab eval experiment=reflect_retry ckpt_path=...`: the three-way evaluation of a checkpoint
    metrics = evaluate(tiny_cfg("experiment=reflect_retry", "callbacks.retry_eval.k=1",
                                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", name="eval", run_dir=tmp_path / "eval"))
    assert {"val/products/r3_first", "val/products/r3_reflect", "val/products/r3_plain"} <= set(metrics)
