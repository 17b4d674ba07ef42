"""The datamodule: an endless, seeded stream of training PromptBatches and fixed held-out sets.

The training batch for global step ``s`` is a pure function of (seed, s): positions ``s*B .. s*B+B-1``
of an endless sequence of per-epoch permutations of the training prompts. So resuming at step ``s``
only needs the step, which Lightning restores, and a resumed run sees exactly the prompts that an
uninterrupted run would have seen.

``batch_size`` is the global batch. With N data-parallel ranks, rank r trains on ``rank_share``: the
prompts ``r, r+N, r+2N, ...`` of the step's global batch, so the N ranks together see exactly the prompts
one process would (B must divide by N). Held-out sets are split by whole batches the same way, and the
policy gathers their scores (``srtlab.modules.policy``).

With a curriculum (``srtlab.curriculum``), the scheduler registers the levels of a task
(``add_levels``: one task config each, prompts seeded by (seed, task, level)) and hands over a mixture
of levels (``set_mixture``); the batch of step ``s`` is then a pure function of (seed, s, mixture).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from srtlab.data.limits import held_out_problems, limit_problems, prompt_limit, train_problems
from srtlab.data.prompts import PromptBudget, PromptFormat
from srtlab.data.sources import (
    DatasetSource,
    ReasoningGymSource,
    keep_labelled,
    read_labels,
    reads_builtins_only,
    task_problems,
)
from srtlab.models.load import ModelSettings, context_length, load_tokenizer, resolve_model_path
from srtlab.seeds import data_seed, heldout_seed
from srtlab.settings import Annotated, Problem, checked, fail, integer, is_int, mapping, problem, text, within
from srtlab.types import Prompt, PromptBatch

log = logging.getLogger(__name__)


def allocate(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` slots in proportion to ``weights`` (largest remainder; ties go to the earlier entry)."""
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"mixture weights {list(weights)} must be >= 0 with a positive sum")
    exact = [total * w / sum(weights) for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def batch_indices(step: int, batch_size: int, num_prompts: int, seed: int) -> list[int]:
    """Prompt indices of the batch for ``step``: consecutive slots of per-epoch permutations."""
    out, cache = [], {}
    for slot in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(slot, num_prompts)
        if epoch not in cache:
            cache[epoch] = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(cache[epoch][pos]))
    return out


def rank_share(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s share of a global batch: items ``rank, rank + N, ...`` (nanochat's split)."""
    return list(items[rank::world_size])


def check_divides(batch_size: int, world_size: int) -> None:
    """One-line error unless the global batch splits evenly over the ranks."""
    if batch_size % world_size:
        raise ValueError(f"data.batch_size={batch_size} with {world_size} ranks; the global batch must be a "
                         f"multiple of the number of ranks (devices x nodes)")


class PromptStream(IterableDataset):
    """Yields this rank's PromptBatch of every step from ``start_step`` on, forever (``batch_size`` is global)."""

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        check_divides(batch_size, world_size)
        self.prompts, self.batch_size, self.seed, self.start_step = prompts, batch_size, seed, start_step
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[PromptBatch]:
        step = self.start_step
        while True:
            idx = rank_share(batch_indices(step, self.batch_size, len(self.prompts), self.seed), self.rank,
                             self.world_size)
            yield PromptBatch(prompts=[self.prompts[i] for i in idx], step=step, source="train")
            step += 1


class FixedBatches(IterableDataset):
    """A fixed list of batches. Iterable, so Lightning adds no DistributedSampler (which would split, and pad
    with repeats, a second time)."""

    def __init__(self, batches: Sequence[PromptBatch]) -> None:
        self.batches = list(batches)

    def __iter__(self) -> Iterator[PromptBatch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def val_share(batches: Sequence[PromptBatch], rank: int, world_size: int) -> list[PromptBatch]:
    """Rank ``rank``'s held-out batches: whole batches ``rank, rank + N, ...``, each keeping its global index
    (its sampling seed), padded to the same count on every rank with a repeat marked ``step=-1`` (its
    scores are dropped): under FSDP every generate call is collective, so every rank must make as many."""
    share = rank_share(batches, rank, world_size)
    rounds = -(-len(batches) // world_size)
    while batches and len(share) < rounds:
        share.append(PromptBatch(prompts=list(batches[0].prompts), step=-1, source=batches[0].source))
    return share


def _identity(x: Any) -> Any:
    return x


@checked
class PromptDataModule(L.LightningDataModule):
    """Training prompts from one Reasoning Gym task or one file / data set, a held-out set of it, and
    optional extra sets.

    Args:
        task, task_config: the Reasoning Gym task and its config (e.g. ``min_words``); a None config
            takes ``presets[task]``, or reasoning-gym's defaults when the task has no preset. With
            ``source``: the data set's name (None: the file's stem) and a row filter (``{level: 3}``).
        source: a file or data set instead of a task: a ``DatasetSource`` partial (Hydra ``_partial_``)
            naming at least ``path`` (see ``configs/data/file.yaml``); the datamodule fills in the rest.
        prompt: how questions become chat messages.
        batch_size: prompts per training step over all ranks (the global B; each of N ranks trains B/N).
        train_size, val_size: number of training / held-out prompts.
        val_batch_size: prompts per generate call during evaluation.
        seed: data seed; held-out prompts use ``seeds.heldout_seed(seed)``, have distinct questions, and
            training prompts leave those questions out.
        extra_val: more held-out sets by name, each a zero-argument factory (e.g. MATH-500).
        train_ids_from: a teacher labels file (``python -m srtlab label``): train only on its kept
            prompts (``reward=teacher``); the file's questions must be this training set's.
        max_prompt_tokens: prompts longer than this many tokens (as the engine renders them) are left out and
            counted in the log; None: the model's context less the longest ``max_new_tokens``
            (``srtlab.data.limits``).
        model: the policy's settings (the config's ``model``): its tokenizer counts prompt tokens, its config.json
            gives the context; None: prompts are not counted.
        max_new_tokens, val_max_new_tokens: the completions' room in the context (repeat
            ``rollout.sampling.max_new_tokens`` and ``rollout.val_sampling``'s).

    A file (not a built-in set) is read whole when the datamodule is built, before any model loads: an empty
    file, a line that is not a JSON object, a question that is not a non-empty string, too few rows for
    ``val_size`` or ``batch_size``, or no prompt that fits, is a config error naming the file and the line.
    """

    def __init__(self, task: Annotated[str | None, text(null=True)], prompt: PromptFormat,
                 task_config: Annotated[dict | None, mapping(null=True)] = None,
                 batch_size: Annotated[int, integer(1)] = 8,
                 train_size: Annotated[int | None, integer(1, null=True)] = 2000,
                 val_size: Annotated[int, integer(1)] = 64, val_batch_size: Annotated[int, integer(1)] = 16,
                 seed: Annotated[int, integer(0)] = 0,
                 extra_val: Annotated[dict[str, Callable[[], Sequence[Prompt]]] | None, mapping(null=True)] = None,
                 presets: Annotated[dict[str, dict] | None, mapping(null=True)] = None,
                 train_ids_from: Annotated[str | None, text(null=True)] = None,
                 source: Callable[..., DatasetSource] | None = None,
                 max_prompt_tokens: Annotated[int | None, integer(1, null=True)] = None,
                 model: ModelSettings | None = None,
                 max_new_tokens: Annotated[int | None, integer(1, null=True)] = None,
                 val_max_new_tokens: Annotated[int | None, integer(1, null=True)] = None) -> None:
        super().__init__()
        if task_config is None:
            task_config = (presets or {}).get(task, {}) if source is None else {}
        self.source, self.task, self.task_config, self.prompt = source, task, dict(task_config or {}), prompt
        self.batch_size, self.train_size, self.val_size = batch_size, train_size, val_size
        self.val_batch_size, self.seed = val_batch_size, seed
        self.extra_val = dict(extra_val or {})
        self.train_ids_from = train_ids_from
        self.model, self.max_prompt_tokens = model, max_prompt_tokens
        # repeated from rollout.*: a wrong type is reported there, where it is set
        self.new_tokens = {k: v for k, v in (("max_new_tokens", max_new_tokens),
                                             ("val_max_new_tokens", val_max_new_tokens)) if is_int(v) and v > 0}
        if train_size is not None and batch_size > train_size:
            fail(type(self), [problem("batch_size", batch_size, f"at most data.train_size ({train_size}), the "
                                                                "training prompts a batch is drawn from")])
        fail(type(self), self._limit_problems())  # before any model loads: the context is read from config.json
        self.budget: PromptBudget | None = None
        self._drawn: tuple[DatasetSource, DatasetSource] | None = None
        if source is None:
            fail(type(self), task_problems(task, self.task_config))  # fail now, before any model loads
        elif not reads_builtins_only(source):  # read the file now: a bad path, row, field or filter, or too few
            self.budget = self._budget()        # rows, fails before any model loads
            self._drawn = self._draw()
            self.task = self._drawn[0].name
        else:  # built-in sets are known to read; they are fetched at setup, so composing a config stays offline
            self.task = task or source.keywords["path"]
        if train_ids_from is not None:
            read_labels(train_ids_from)  # fail now if the file is missing
        self.train: ReasoningGymSource | DatasetSource | None = None
        self.val: dict[str, Sequence[Prompt]] = {}
        # curriculum levels (see ``add_levels``): configs, held-out sets, training sources built on first use
        self.level_configs: dict[str, list[dict]] = {}
        self.level_prompt: dict[str, PromptFormat] = {}
        self.level_val: dict[tuple[str, int], ReasoningGymSource | DatasetSource] = {}
        self._level_train: dict[tuple[str, int], ReasoningGymSource | DatasetSource] = {}
        self.mixture: list[tuple[str, int, float]] | None = None  # (task, level, weight) of training batches

    def setup(self, stage: str | None = None) -> None:
        check_divides(self.batch_size, self._rank()[1])  # before the model loads (Lightning's order)
        if self.train is not None:
            return
        if self.model is not None and self.budget is None:  # the tokenizer (not the model); a built-in model is
            resolve_model_path(self.model.path)             # prepared first, so its context is known
            fail(type(self), self._limit_problems())
            self.budget = self._budget()
            if self.budget is not None:  # a file read before the context was known: read again, counted
                self._drawn = None
        held_out, self.train = self._drawn or self._draw()
        self._drawn = None
        if self.train_ids_from is not None:  # only the prompts a teacher labelled
            self.train.prompts = keep_labelled(self.train.prompts, read_labels(self.train_ids_from),
                                               self.train_ids_from)
        self.val = {self.task: self._left_out(held_out)}
        self._left_out(self.train)
        if getattr(self.train, "duplicates", 0):  # a file's rows
            log.warning("data: %d rows of %s repeat an earlier row's question; they are kept, so such a question is "
                        "trained on as often as it appears (a held-out question is held out once, never trained "
                        "on)", self.train.duplicates, self.task)
        for name, make in self.extra_val.items():
            self.val[name] = self._fitting(make(), name)

    # -- what fits the model ----------------------------------------------------------------------
    def _limit_problems(self) -> list[Problem]:
        return limit_problems(context_length(self.model), self.max_prompt_tokens, self.new_tokens) \
            if self.model is not None else []

    def _budget(self) -> PromptBudget | None:
        """The prompts' token budget (``srtlab.data.limits``), counted with the model's tokenizer; None without a
        model, or while its context is unknown (a built-in not prepared yet)."""
        limit = None if self.model is None else prompt_limit(self.max_prompt_tokens, context_length(self.model),
                                                             self.new_tokens)
        return None if limit is None else PromptBudget(load_tokenizer(self.model), *limit)

    def _draw(self) -> tuple[ReasoningGymSource | DatasetSource, ReasoningGymSource | DatasetSource]:
        """The held-out set, drawn first, and the training set without its questions. A file with too few rows
        for ``val_size`` (held out from the training rows) or ``batch_size`` fails naming that key."""
        make = self.source_of(self.task)
        with within("source"):
            held_out = make(config=self.task_config, size=self.val_size, seed=heldout_seed(self.seed),
                            split="val", prompt=self.prompt, distinct=True)
        shared = self.source is not None and self.source.keywords.get("val_path") is None
        where = repr(self.source.keywords["path"]) if self.source is not None else ""
        if shared:
            fail(type(self), held_out_problems(where, len(held_out), self.val_size, held_out.overlong))
        with within("source"):
            train = make(config=self.task_config, size=self.train_size, seed=self.seed, split="train",
                         prompt=self.prompt, exclude_questions=held_out.questions())
        if self.source is not None:
            fail(type(self), train_problems(where, len(train), self.batch_size, len(held_out) if shared else None,
                                            train.overlong))
        return held_out, train

    def _fitting(self, prompts: Sequence[Prompt], name: str) -> Sequence[Prompt]:
        """An extra held-out set without the prompts that do not fit (counted in the log)."""
        if self.budget is None:
            return prompts
        kept = [p for p in prompts if self.budget.fits(p.messages)]
        if len(kept) < len(prompts):
            log.warning("data: %d of %d held-out prompts of %s left out: longer than %d tokens (%s)",
                        len(prompts) - len(kept), len(prompts), name, self.budget.max_tokens, self.budget.why)
        return kept

    def _left_out(self, source: ReasoningGymSource | DatasetSource) -> ReasoningGymSource | DatasetSource:
        """``source``, after logging how many of its prompts were left out as too long."""
        if source.overlong:
            log.warning("data: %d %s prompts of %s left out: longer than %d tokens (%s)", source.overlong,
                        source.split, source.name, self.budget.max_tokens, self.budget.why)
        return source

    def source_of(self, task: str) -> Callable[..., ReasoningGymSource | DatasetSource]:
        """What builds ``task``'s prompts from (config, size, seed, split, prompt, ...): the file source for
        the datamodule's own data set, Reasoning Gym for any other task (a curriculum may add tasks)."""
        if self.source is not None and task == self.task:
            return functools.partial(self.source, name=task, budget=self.budget)
        return functools.partial(ReasoningGymSource, task, budget=self.budget)

    @property
    def val_names(self) -> list[str]:
        return list(self.val)

    def train_dataloader(self) -> DataLoader:
        # The trainer's global step is restored before dataloaders are built, so a resumed run
        # continues the stream where it stopped.
        start = self.trainer.global_step if self.trainer is not None else 0
        rank, world = self._rank()
        stream = PromptStream(self.train.prompts, self.batch_size, self.seed, start_step=start, rank=rank,
                              world_size=world)
        return DataLoader(stream, batch_size=None, collate_fn=_identity)

    def val_dataloader(self) -> list[DataLoader]:
        loaders = []
        rank, world = self._rank()
        for name, prompts in self.val.items():
            batches = [PromptBatch(prompts=list(prompts[i:i + self.val_batch_size]), step=i // self.val_batch_size,
                                   source=name) for i in range(0, len(prompts), self.val_batch_size)]
            loaders.append(DataLoader(FixedBatches(val_share(batches, rank, world)), batch_size=None,
                                      collate_fn=_identity))
        return loaders

    def _rank(self) -> tuple[int, int]:
        """(this rank, number of ranks) of the trainer; (0, 1) without one."""
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    # -- curriculum levels ------------------------------------------------------------------------
    def add_levels(self, task: str, configs: Sequence[dict], val_size: int, prompt: PromptFormat | None = None) -> None:
        """Register a task's difficulty levels (one task config each) and build their held-out sets.

        Level ``l`` draws its prompts with seed ``seeds.data_seed(seed, task, l)`` (held-out:
        ``seeds.heldout_seed(seed, task, l)``). Every level's training prompts leave out the held-out
        questions of all levels of the task, and of the datamodule's own held-out set, since levels may overlap.
        """
        self.setup()
        self.level_configs[task] = [dict(c) for c in configs]
        self.level_prompt[task] = prompt or self.prompt
        for level, config in enumerate(self.level_configs[task]):
            self.level_val[task, level] = self._left_out(self.source_of(task)(
                config=config, size=val_size, seed=heldout_seed(self.seed, task, level),
                split="val", prompt=self.level_prompt[task], distinct=True, level=level))

    def level_train(self, task: str, level: int) -> ReasoningGymSource | DatasetSource:
        """The training prompts of one registered level (built on first use)."""
        if (task, level) not in self._level_train:
            if (task, level) not in self.level_val:
                raise KeyError(f"level {level} of task {task!r} is not registered (add_levels)")
            held_out = set(self.val[self.task].questions()) if self.task == task else set()
            for (t, _), source in self.level_val.items():
                if t == task:
                    held_out |= source.questions()
            self._level_train[task, level] = self._left_out(self.source_of(task)(
                config=self.level_configs[task][level], size=self.train_size, seed=data_seed(self.seed, task, level),
                split="train", prompt=self.level_prompt[task], exclude_questions=frozenset(held_out), level=level))
        return self._level_train[task, level]

    def set_mixture(self, mixture: Sequence[tuple[str, int, float]] | None) -> None:
        """Train on a weighted blend of registered levels from the next batch on (None: the plain stream)."""
        if mixture is not None:
            allocate([w for _, _, w in mixture], self.batch_size)  # validates the weights
            for task, level, _ in mixture:
                self.level_train(task, level)
        self.mixture = None if mixture is None else list(mixture)

    def mixture_prompts(self, step: int) -> list[Prompt]:
        """This rank's training prompts of ``step`` under the current mixture: a pure function of (seed, step,
        mixture, rank, number of ranks); the global batch is split as the plain stream's is.

        Each level gets its share of the batch (``allocate``) and takes it from its own endless stream of
        per-epoch permutations at that step, as the plain stream does.
        """
        counts = allocate([w for _, _, w in self.mixture], self.batch_size)
        prompts: list[Prompt] = []
        for (task, level, _), count in zip(self.mixture, counts):
            if count:
                source = self.level_train(task, level)
                idx = batch_indices(step, count, len(source), data_seed(self.seed, task, level))
                prompts += [source[i] for i in idx]
        return rank_share(prompts, *self._rank())

    def on_before_batch_transfer(self, batch: PromptBatch, dataloader_idx: int) -> PromptBatch:
        # Lightning fetches the next batch one step ahead; it calls this hook just before the step, after
        # the previous step's callbacks, so a level change at the end of step s-1 applies to step s.
        if self.mixture is not None and batch.source == "train":
            batch.prompts = self.mixture_prompts(batch.step)
        return batch
