"""The rollout engine interface: G samples per prompt, and the weights kept in step with the policy."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from srtlab.data.prompts import render_messages  # the one rendering: data counts prompts with it
from srtlab.settings import Annotated, checked, fail, integer, problem, real, strings
from srtlab.types import Prompt, RolloutBatch


@checked
@dataclass
class SamplingSettings:
    """How completions are sampled (``rollout.sampling``, ``rollout.val_sampling``). ``temperature=0``: greedy."""

    temperature: Annotated[float, real(0, 100, why="0 is greedy; logits / T beyond 100 are noise")] = 1.0
    top_p: Annotated[float, real(0, 1, open_low=True)] = 1.0
    top_k: Annotated[int | None, integer(0, null=True)] = 0  # 0 or None: off
    max_new_tokens: Annotated[int, integer(1)] = 128
    stop: Annotated[list[str], strings()] = field(default_factory=list)  # extra stop strings besides the eos
    min_new_tokens: Annotated[int, integer(0)] = 0  # no eos before this many tokens (fixed-length benchmarks)

    def __post_init__(self) -> None:
        if self.top_k is None:  # both mean "off"; engines take an int
            self.top_k = 0
        self.stop = list(self.stop)
        if self.min_new_tokens > self.max_new_tokens:
            fail(type(self), [problem("min_new_tokens", self.min_new_tokens,
                                      f"at most max_new_tokens ({self.max_new_tokens})")])


class RolloutEngine(Protocol):
    """Generates completions; ``hf`` shares the policy in process, ``vllm`` gets weights pushed to it."""

    tokenizer: Any  # the policy's tokenizer (rollout programs encode their extra turns with it)

    def generate(self, prompts: list[Prompt], n: int, sampling: SamplingSettings, seed: int,
                 prompt_ids: list[list[int]] | None = None) -> RolloutBatch:
        """B prompts -> a RolloutBatch of B*n completions, group-major; reproducible from ``seed``.

        ``prompt_ids``: optional, B token-id lists to continue from instead of the chat-templated
        ``prompts`` (no template applied, no special tokens added, used exactly as given). Multi-turn
        programs (``srtlab.rollout.reflect``) pass prompt + sampled attempt + next user turn as ids, so
        the prefix is reused, never decoded and re-encoded. The batch's ``prompt_ids`` are then these
        lists, and ``prompts`` are kept only for scoring (gold answers, task). vLLM: pass
        ``TokensPrompt(prompt_token_ids=ids)`` instead of the rendered text.
        """
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Receive new policy weights (tensor by tensor) after an optimizer step."""
        ...

    def next_token_logprobs(self, prompts: list[list[dict[str, str]]], token_ids: list[int]) -> torch.Tensor:
        """Log-probs of candidate next tokens after each chat prompt, with the current weights.

        ``prompts``: N chat-message lists, each rendered with the tokenizer's chat template and the
        generation prompt added (as ``generate`` renders a ``Prompt``). ``token_ids``: K candidate token
        ids. Returns a float32 CPU tensor ``[N, K]``: ``log softmax(logits)`` at temperature 1 over the
        full vocabulary, at the position after the prompt, taken at each candidate id (so a row need
        not sum to 1). Deterministic, no sampling. Used by the self-judge reward
        (``srtlab.rewards.self_judge``): one batched scoring call, no generation.
        """
        ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...


# -- prompt rendering, shared by every engine ----------------------------------------------------------
def render_prompts(tokenizer, prompts: list[Prompt]) -> list[list[int]]:
    """Chat-template each prompt and tokenize it (no padding)."""
    return render_messages(tokenizer, [p.messages for p in prompts])


def resolve_prompt_ids(tokenizer, prompts: list[Prompt], prompt_ids: list[list[int]] | None) -> list[list[int]]:
    """The token ids to continue from: ``prompt_ids`` as given (one list per prompt), or the rendered prompts."""
    if prompt_ids is None:
        return render_prompts(tokenizer, prompts)
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids lists for {len(prompts)} prompts; give one per prompt")
    return [list(ids) for ids in prompt_ids]  # a multi-turn program's prefix, used as given


def eos_ids(model, tokenizer) -> list[int]:
    """The tokens that end a completion: the model's generation config's eos ids, else the tokenizer's eos."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
