"""The datamodule: an endless, seeded stream of training PromptBatches and fixed held-out sets.

The training batch for global step ``s`` is a pure function of (seed, s): positions ``s*B .. s*B+B-1``
of an endless sequence of per-epoch permutations of the training prompts. So resuming at step ``s``
only needs the step, which Lightning restores, and a resumed run sees exactly the prompts that an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from srtlab.data.prompts import PromptFormat
from srtlab.data.sources import ReasoningGymSource, check_task
from srtlab.types import Prompt, PromptBatch

HELD_OUT_SEED_OFFSET = 1_000_003  # held-out prompts use seed + this, so they differ from training


def batch_indices(step: int, batch_size: int, num_prompts: int, seed: int) -> list[int]:
    """Prompt indices of the batch for ``step``: consecutive slots of per-epoch permutations."""
    out, cache = [], {}
    for slot in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(slot, num_prompts)
        if epoch not in cache:
            cache[epoch] = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(cache[epoch][pos]))
    return out


class PromptStream(IterableDataset):
    """Yields the PromptBatch of every step from ``start_step`` on, forever."""

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int, start_step: int = 0) -> None:
        self.prompts, self.batch_size, self.seed, self.start_step = prompts, batch_size, seed, start_step

    def __iter__(self) -> Iterator[PromptBatch]:
        step = self.start_step
        while True:
            idx = batch_indices(step, self.batch_size, len(self.prompts), self.seed)
            yield PromptBatch(prompts=[self.prompts[i] for i in idx], step=step, source="train")
            step += 1


def _identity(x: Any) -> Any:
    return x


class PromptDataModule(L.LightningDataModule):
    """Training prompts from one Reasoning Gym task, a held-out set of it, and optional extra sets.

    Args:
        task, task_config: the Reasoning Gym task and its config (e.g. ``min_words``); a None config
            takes ``presets[task]``, or reasoning-gym's defaults when the task has no preset.
        prompt: how questions become chat messages.
        batch_size: prompts per training step (B).
        train_size, val_size: number of training / held-out prompts.
        val_batch_size: prompts per generate call during evaluation.
        seed: data seed; held-out prompts use ``seed + 1_000_003``, have distinct questions, and
            training prompts leave those questions out.
        extra_val: more held-out sets by name, each a zero-argument factory (e.g. MATH-500).
    """

    def __init__(self, task: str, prompt: PromptFormat, task_config: dict | None = None, batch_size: int = 8,
                 train_size: int = 2000, val_size: int = 64, val_batch_size: int = 16, seed: int = 0,
                 extra_val: dict[str, Callable[[], Sequence[Prompt]]] | None = None,
                 presets: dict[str, dict] | None = None) -> None:
        super().__init__()
        if task_config is None:
            task_config = (presets or {}).get(task, {})
        check_task(task, dict(task_config))  # fail now, before any model loads
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size}; must be >= 1")
        self.task, self.task_config, self.prompt = task, dict(task_config or {}), prompt
        self.batch_size, self.train_size, self.val_size = batch_size, train_size, val_size
        self.val_batch_size, self.seed = val_batch_size, seed
        self.extra_val = dict(extra_val or {})
        self.train: ReasoningGymSource | None = None
        self.val: dict[str, Sequence[Prompt]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        held_out = ReasoningGymSource(self.task, self.task_config, self.val_size, self.seed + HELD_OUT_SEED_OFFSET,
                                      "val", self.prompt, distinct=True)
        self.train = ReasoningGymSource(self.task, self.task_config, self.train_size, self.seed, "train", self.prompt,
                                        exclude_questions=held_out.questions())
        self.val = {self.task: held_out}
        for name, make in self.extra_val.items():
            self.val[name] = make()

    @property
    def val_names(self) -> list[str]:
        return list(self.val)

    def train_dataloader(self) -> DataLoader:
        # The trainer's global step is restored before dataloaders are built, so a resumed run
        # continues the stream where it stopped.
        start = self.trainer.global_step if self.trainer is not None else 0
        stream = PromptStream(self.train.prompts, self.batch_size, self.seed, start_step=start)
        return DataLoader(stream, batch_size=None, collate_fn=_identity)

    def val_dataloader(self) -> list[DataLoader]:
        loaders = []
        for name, prompts in self.val.items():
            batches = [PromptBatch(prompts=list(prompts[i:i + self.val_batch_size]), step=i // self.val_batch_size,
                                   source=name) for i in range(0, len(prompts), self.val_batch_size)]
            loaders.append(DataLoader(batches, batch_size=None, collate_fn=_identity))
        return loaders
