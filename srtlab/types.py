"""The typed objects that pass between the stages of the loop (see docs/design.md).

prompts (data/) -> RolloutBatch (rollout/) -> RewardOutput (rewards/) -> advantages, loss (algorithms/)

B is the number of prompts in a batch, G the number of samples per prompt (``rollout.n``).
Completions are stored group-major: completion ``i`` belongs to prompt ``i // G``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Prompt:
    """One question, as the policy sees it, with its gold answer kept aside for monitoring."""

    id: str  # stable across runs: "<task>/<split>/<index>"
    messages: list[dict[str, str]]  # chat messages, rendered with the tokenizer's chat template
    task: str  # reasoning-gym task name, or the name of a jsonl source
    answer_kind: str = "text"  # "text": reasoning-gym scorer and string normalisation; "math": math-verify
    level: int = 0  # curriculum level (0 when there is no curriculum)
    answer: str | None = None  # gold answer, or None; only ground-truth rewards and monitors read it
    metadata: dict[str, Any] = field(default_factory=dict)  # reasoning-gym: {"entry": <the task's item>}


def question_of(prompt: Prompt) -> str:
    """The question as the policy saw it: the last user message of the prompt."""
    users = [m["content"] for m in prompt.messages if m.get("role") == "user"]
    if not users:
        raise ValueError(f"prompt {prompt.id!r} has no user message")
    return users[-1]


@dataclass
class PromptBatch:
    """What the datamodule yields: the prompts of one step (train) or one held-out batch (val)."""

    prompts: list[Prompt]
    step: int = 0  # the global step this batch was drawn for (train) or the batch index (val)
    source: str = "train"  # "train" or the name of the held-out set the prompts come from

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class RolloutBatch:
    """B*G sampled completions of B prompts, in group-major order."""

    prompts: list[Prompt]  # B
    n: int  # G, samples per prompt
    prompt_ids: list[list[int]]  # B token id lists (chat template applied, no padding)
    completion_ids: list[list[int]]  # B*G token id lists, without padding, eos included if emitted
    texts: list[str]  # B*G decoded completions (special tokens removed)
    answers: list[str | None]  # B*G extracted answers, None when none could be read
    finish_reasons: list[str]  # B*G "stop" or "length"
    sampler_logprobs: list[list[float]] | None = None  # B*G per-token log-probs reported by the engine
    rewards: torch.Tensor | None = None  # [B*G] float, filled by the reward mix
    source_rewards: dict[str, torch.Tensor] = field(default_factory=dict)  # source -> [B*G], NaN: no opinion
    level_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # "<task>/<level>" -> statistics
    majorities: list[tuple[str | None, float]] = field(default_factory=list)  # [B] each group's vote: answer, share
    loss_mask: list[list[int]] | None = None  # B*G per-token 0/1: which completion tokens get the advantage
    metrics: dict[str, float] = field(default_factory=dict)  # per-stage metrics to log

    def __len__(self) -> int:
        return len(self.completion_ids)

    def groups(self) -> list[range]:
        """Completion index ranges, one per prompt."""
        return [range(b * self.n, (b + 1) * self.n) for b in range(len(self.prompts))]


@dataclass
class RewardOutput:
    """What a reward source returns for a whole RolloutBatch."""

    rewards: torch.Tensor  # [B*G] float; NaN means "no opinion" about that completion
    metrics: dict[str, float] = field(default_factory=dict)  # extra source-specific metrics
    by_source: dict[str, torch.Tensor] = field(default_factory=dict)  # the mix only: each source's [B*G]
    by_level: dict[str, dict[str, float]] = field(default_factory=dict)  # the mix only: "<task>/<level>" stats
    majorities: list[tuple[str | None, float]] = field(default_factory=list)  # the mix only: [B] (answer, share)
