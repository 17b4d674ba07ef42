"""Reflect, Retry, Reward (Bensal et al. 2025, arXiv 2505.24726) as a rollout program.

When the policy fails a task it writes a self-reflection on its failed attempt, then retries with the
reflection in context; a reflection is rewarded when its retry succeeds, and only the reflection's tokens
receive the advantage. One training batch (:meth:`ReflectRetry.__call__`):

1. first attempts: ``attempts`` samples per prompt;
2. a verdict on each attempt from the failure signal (``signal``, below); per prompt, up to
   ``failures_per_prompt`` failed attempts become cases;
3. G reflections per case (G = ``rollout.n``), sampled after prompt + failed attempt + the reflection
   instruction; the engine gets these as token ids (the sampled attempt is reused, never re-encoded);
4. one retry per reflection, after prompt + attempt + reflection + the retry instruction;
5. a verdict on each retry: the reward of a reflection is 1.0 when its retry succeeds, else 0.0.
   With ``plain_retry`` the program also samples G retries per case with no reflection (the same
   context less the reflection turn), only as a metric: the gain of simply trying twice.

The returned :class:`RolloutBatch` has one group per case. Its prompt is prompt + failed attempt +
reflection instruction (shared by the G reflections, as GRPO's group prompt); each completion is the
whole rest of the episode: reflection, retry instruction, retry; ``loss_mask`` is 1 on the reflection's
tokens (its end-of-turn token included) and 0 on the rest, so the advantage goes to the reflection
alone. Keeping the retry in the completion costs its tokens one forward pass in training (no gradient),
and keeps each trained sample a complete record of its episode (``keep_retry=False`` drops it).
``texts`` are the reflections, ``answers`` the retries' answers.

The failure signal (``signal``) decides both verdicts:
- ``ground_truth``: the gold answer, as in the paper;
- ``vote``: the prompt's self-label, the majority answer of its first attempts (no verifier): an attempt
  fails when it disagrees with the label, a retry succeeds when it agrees. Prompts whose majority is
  backed by fewer than ``min_agreement`` of the attempts (or that have no answer at all) are skipped;
- ``mix``: the run's reward mix, thresholded at 0.5, on the first attempts (in their groups) and on the
  retries (the G retries of a case as a group); meant for per-completion sources such as ``self_judge``.
The run's reward mix always scores the first attempts, so the usual monitors (``gt_accuracy``,
``majority_share``, ``reward/<source>``) describe first attempts.

Simplifications: the paper samples one first attempt per task (ground truth needs only one; the vote
needs several, so both signals use ``attempts``); a step where no attempt fails trains nothing (its
batch carries the first attempts with zero reward and an all-zero mask). 
:func:`srtlab.eval.retry.evaluate_retry` (every evaluation, through :class:`srtlab.eval.retry.RetryEvaluation`)
measures held-out accuracy with and without a retry, always by the gold answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from srtlab.answers.canonical import answers_equivalent
from srtlab.answers.gold import GoldScorer
from srtlab.answers.votes import vote_groups
from srtlab.rollout.engine import RolloutEngine, SamplingSettings
from srtlab.rollout.turns import QUESTION, continue_after, episode, turn_ids
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, boolean, checked, choice, fail, integer, problem, real, text
from srtlab.types import Prompt, RewardOutput, RolloutBatch, question_of

SIGNALS = ("ground_truth", "vote", "mix")


# -- verdicts -----------------------------------------------------------------------------------------
@dataclass
class Case:
    """A failed first attempt to reflect on."""

    prompt: int  # index into the batch's prompts
    attempt: int  # index into the first-attempt batch
    label: str | None = None  # the self-label (vote signal), the answer a retry must agree with


class Verdicts:
    """Success or failure of first attempts and of retries, by the chosen failure signal."""

    def __init__(self, signal: str, min_agreement: float, score, gold: GoldScorer) -> None:
        self.signal, self.min_agreement, self.score, self.gold = signal, min_agreement, score, gold

    def first(self, attempts: RolloutBatch, mixed: RewardOutput) -> tuple[list[bool | None], list[str | None]]:
        """-> success of each attempt (None: no verdict, the prompt is skipped), and each prompt's label."""
        labels: list[str | None] = [None] * len(attempts.prompts)
        if self.signal == "ground_truth":
            ok = self.gold.verdicts(attempts)
            return [None if math.isnan(x) else x > 0.5 for x in ok.tolist()], labels
        if self.signal == "mix":
            return [x > 0.5 for x in mixed.rewards.tolist()], labels
        success: list[bool | None] = []
        for b, vote in enumerate(vote_groups(attempts)):
            if vote.majority is None or vote.share < self.min_agreement:
                success += [None] * len(vote.cluster_ids)
                continue
            labels[b] = vote.answer
            success += [c == vote.majority for c in vote.cluster_ids]
        return success, labels

    def retries(self, retries: RolloutBatch, labels: list[str | None]) -> list[bool]:
        """Success of each retry; ``retries`` has one prompt per case, ``labels`` one label per case."""
        if self.signal == "ground_truth":
            return [x > 0.5 for x in self.gold.verdicts(retries).tolist()]
        if self.signal == "mix":
            return [x > 0.5 for x in self.score(retries).rewards.tolist()]
        success = []
        for prompt, label, group in zip(retries.prompts, labels, retries.groups()):
            for i in group:
                answer = retries.answers[i]
                success.append(answer is not None and label is not None
                               and answers_equivalent(label, answer, prompt.answer_kind))
        return success


def mean_or_nan(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# -- the program ---------------------------------------------------------------------------------------
@checked
class ReflectRetry:
    """The reflect-and-retry rollout program (see the module docstring); config key ``rollout.program``.

    Args:
        signal: the failure signal, ``ground_truth`` | ``vote`` | ``mix``.
        attempts: first attempts per prompt (>= 2 for ``vote``).
        failures_per_prompt: failed attempts per prompt that get G reflections each.
        reflect_instruction: the user turn asking for a reflection on the failed attempt.
        retry_instruction: the user turn asking for a new answer.
        reflect_max_new_tokens: the reflection's token budget (retries use the run's sampling settings).
        min_agreement: ``vote`` only: a label must be backed by at least this share of the attempts.
        plain_retry: also sample G retries with no reflection per case (a metric, not trained).
        keep_retry: keep the retry in the trained completion (mask 0), or train on the reflection alone.
    """

    def __init__(self, signal: Annotated[str, choice(SIGNALS)] = "ground_truth",
                 attempts: Annotated[int, integer(1)] = 4, failures_per_prompt: Annotated[int, integer(1)] = 1,
                 reflect_instruction: Annotated[str, text()] =
                 "Your answer is wrong. In one or two sentences, say what went wrong.",
                 retry_instruction: Annotated[str, text()] = "Try again.",
                 reflect_max_new_tokens: Annotated[int, integer(1)] = 64,
                 min_agreement: Annotated[float, real(0, 1)] = 0.5, plain_retry: Annotated[bool, boolean()] = True,
                 keep_retry: Annotated[bool, boolean()] = True) -> None:
        fail(type(self), [problem("attempts", attempts, f"at least 2 with signal={signal!r} (a vote needs two)")]
             if signal == "vote" and attempts < 2 else [])
        fail(type(self), [problem("failures_per_prompt", failures_per_prompt, f"at most attempts ({attempts})")]
             if failures_per_prompt > attempts else [])
        self.signal, self.attempts, self.failures_per_prompt = signal, attempts, failures_per_prompt
        self.reflect_instruction, self.retry_instruction = reflect_instruction, retry_instruction
        self.reflect_max_new_tokens, self.min_agreement = reflect_max_new_tokens, min_agreement
        self.plain_retry, self.keep_retry = plain_retry, keep_retry
        self._turns: dict[tuple[int, str], tuple[list[int], list[int]]] = {}  # -> (reflect, retry) turn ids
        self.gold = GoldScorer()  # the monitor (and the ground_truth signal); keeps its task scorers

    def turns(self, tokenizer, prompt: Prompt) -> tuple[list[int], list[int]]:
        """The reflection and retry instruction turns of ``prompt`` as token ids (``{question}`` filled in)."""
        question = question_of(prompt)
        key = (id(tokenizer), question if QUESTION in self.reflect_instruction + self.retry_instruction else "")
        if key not in self._turns:
            self._turns[key] = (turn_ids(tokenizer, self.reflect_instruction.replace(QUESTION, question)),
                                turn_ids(tokenizer, self.retry_instruction.replace(QUESTION, question)))
        return self._turns[key]

    def ends_turn(self, tokenizer):
        """-> whether sampled ids end their turn: the last id is the eos or the template's closing token
        (not the finish reason: an engine may report a stop string as "stop")."""
        end_ids = {tokenizer.eos_token_id, turn_ids(tokenizer, "")[0]}
        return lambda ids: bool(ids) and ids[-1] in end_ids

    # 3-5: reflections, retries, plain retries of some failed attempts
    def reflect_and_retry(self, engine: RolloutEngine, prompts: list[Prompt], attempts: RolloutBatch,
                          cases: list[Case], n: int, sampling: SamplingSettings, seed: int, plain_retry: bool
                          ) -> tuple[RolloutBatch, RolloutBatch, RolloutBatch | None]:
        """-> reflections (n per case), retries (one per reflection, n per case), plain retries (n per case,
        or None without ``plain_retry``).

        Each batch has one prompt per case (the case's original prompt, for scoring) and continues from
        token ids: the attempt's prompt ids and sampled tokens are reused as they are.
        """
        case_prompts = [prompts[c.prompt] for c in cases]
        turns = [self.turns(engine.tokenizer, p) for p in case_prompts]  # [C] (reflect turn, retry turn)
        ended = self.ends_turn(engine.tokenizer)
        before = [attempts.prompt_ids[c.prompt] + continue_after(
            attempts.completion_ids[c.attempt], ended(attempts.completion_ids[c.attempt]), []) for c in cases]
        reflect_ctx = [b + t[0] for b, t in zip(before, turns)]  # [C] prompt + attempt + instruction
        reflect_sampling = replace(sampling, max_new_tokens=self.reflect_max_new_tokens)
        reflections = engine.generate(case_prompts, n, reflect_sampling, seed=seed_for(seed, "program", 1),
                                      prompt_ids=reflect_ctx)
        retry_ctx = [reflect_ctx[i // n] + continue_after(r, ended(r), turns[i // n][1])
                     for i, r in enumerate(reflections.completion_ids)]
        retries = engine.generate([case_prompts[i // n] for i in range(len(retry_ctx))], 1, sampling,
                                  seed=seed_for(seed, "program", 2), prompt_ids=retry_ctx)  # [C*n], one per reflection
        retries = regroup(retries, case_prompts, n)
        plain = None
        if plain_retry:
            plain_ctx = [b + t[1] for b, t in zip(before, turns)]
            plain = engine.generate(case_prompts, n, sampling, seed=seed_for(seed, "program", 3), prompt_ids=plain_ctx)
        return reflections, retries, plain

    def __call__(self, engine: RolloutEngine, prompts: list[Prompt], n: int, sampling: SamplingSettings,
                 seed: int, score) -> RolloutBatch:
        verdicts = Verdicts(self.signal, self.min_agreement, score, self.gold)
        # 1. first attempts, scored by the run's mix (the monitors), 2. the verdicts and the cases
        attempts = engine.generate(prompts, self.attempts, sampling, seed=seed_for(seed, "program", 0))
        mixed = score(attempts)
        success, labels = verdicts.first(attempts, mixed)
        cases = []
        for b, group in enumerate(attempts.groups()):
            failed = [i for i in group if success[i] is False]
            cases += [Case(b, i, labels[b]) for i in failed[: self.failures_per_prompt]]
        judged = [s for s in success if s is not None]
        metrics = dict(mixed.metrics)
        metrics.update({f"r3/signal/{self.signal}": 1.0, "r3/first_success": mean_or_nan([float(s) for s in judged]),
                        "r3/judged": len(judged) / len(success), "r3/cases": float(len(cases))})
        gold = self._gold_rate(attempts)
        if gold is not None:
            metrics["r3/first_accuracy"] = gold
        if not cases:  # nothing failed: nothing to reflect on, nothing trained
            attempts.rewards = torch.zeros(len(attempts))
            attempts.loss_mask = [[0] * len(c) for c in attempts.completion_ids]
            attempts.metrics, attempts.level_stats = metrics, dict(mixed.by_level)
            return attempts

        # 3-5. reflections, retries and their verdicts: a reflection's reward is its retry's success
        reflections, retries, plain = self.reflect_and_retry(engine, prompts, attempts, cases, n, sampling, seed,
                                                             self.plain_retry)
        case_labels = [c.label for c in cases]
        ok = verdicts.retries(retries, case_labels)  # [C*n]
        batch = self._training_batch(engine.tokenizer, reflections, retries, ok)
        metrics.update(self._retry_metrics(attempts, cases, reflections, retries, ok))
        if plain is not None:
            plain_ok = verdicts.retries(plain, case_labels)
            metrics["r3/plain_retry_success"] = mean_or_nan([float(x) for x in plain_ok])
            gold = self._gold_rate(plain)
            if gold is not None:
                metrics["r3/plain_retry_accuracy"] = gold
        batch.metrics, batch.level_stats = metrics, dict(mixed.by_level)  # curriculum: first attempts
        return batch

    def _training_batch(self, tokenizer, reflections: RolloutBatch, retries: RolloutBatch,
                        ok: list[bool]) -> RolloutBatch:
        """One group per case: prompt + attempt + instruction -> n completions (reflection [+ retry])."""
        completions, masks, ended = [], [], self.ends_turn(tokenizer)
        for i, (refl, retry) in enumerate(zip(reflections.completion_ids, retries.completion_ids)):
            if self.keep_retry:
                retry_turn = self.turns(tokenizer, reflections.prompts[i // reflections.n])[1]
                ids, mask = episode(refl, ended(refl), retry_turn, retry)
            else:
                ids, mask = list(refl), [1] * len(refl)
            completions.append(ids)
            masks.append(mask)
        return replace(reflections, completion_ids=completions, loss_mask=masks, answers=list(retries.answers),
                       rewards=torch.tensor([float(x) for x in ok]), sampler_logprobs=None, metrics={})

    def _retry_metrics(self, attempts: RolloutBatch, cases: list[Case], reflections: RolloutBatch,
                       retries: RolloutBatch, ok: list[bool]) -> dict[str, float]:
        n = reflections.n
        same = [retries.answers[i] is not None and retries.answers[i] == attempts.answers[cases[i // n].attempt]
                for i in range(len(retries))]
        metrics = {"r3/retry_success": mean_or_nan([float(x) for x in ok]),
                   "r3/fixed_any": mean_or_nan([float(any(ok[c * n:(c + 1) * n])) for c in range(len(cases))]),
                   "r3/retry_same_answer": mean_or_nan([float(x) for x in same]),
                   "r3/reflection_length": mean_or_nan([float(len(c)) for c in reflections.completion_ids]),
                   "r3/reflection_truncated": reflections.finish_reasons.count("length") / len(reflections)}
        rewarded = [float(len(c)) for c, good in zip(reflections.completion_ids, ok) if good]
        if rewarded:  # against r3/reflection_length: is length itself being rewarded?
            metrics["r3/reflection_length_rewarded"] = mean_or_nan(rewarded)
        gold = self._gold_rate(retries)
        if gold is not None:
            metrics["r3/retry_accuracy"] = gold
        return metrics

    def _gold_rate(self, rollouts: RolloutBatch) -> float | None:
        """Share of completions correct by the gold answer (prompts without one left out), or None."""
        ok = self.gold.verdicts(rollouts)
        ok = ok[~torch.isnan(ok)]
        return float(ok.mean()) if len(ok) else None

def regroup(rollouts: RolloutBatch, prompts: list[Prompt], n: int) -> RolloutBatch:
    """A batch of C*n one-sample groups as C groups of n (group c is rows c*n .. c*n+n-1), for scoring.

    The rows had contexts of their own; group c keeps the first one's ``prompt_ids``, so the result is
    for verdicts and metrics only, never for training.
    """
    return replace(rollouts, prompts=list(prompts), n=n,
                   prompt_ids=[rollouts.prompt_ids[c * n] for c in range(len(prompts))])
