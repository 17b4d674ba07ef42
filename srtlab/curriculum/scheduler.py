"""The curriculum scheduler: a Lightning callback that climbs Reasoning Gym tasks through difficulty levels.

It owns the current level of each task and hands the datamodule the training mixture for it
(``PromptDataModule.set_mixture``): the current level, or with ``earlier_share > 0`` a blend of the current
and earlier levels (to limit forgetting). After every step it reads that step's statistics of the current
level's prompts from the step's outputs (majority share, gold accuracy, answer rate: the reward mix's
``level_stats``, measured on the samples of the step, before it trains on them) and asks the advance rule
(``srtlab.curriculum.rules``) whether to move up. When a task moves up, the model keeps training from where
it is (the SRT paper's multi-level climb), optionally after ``gt_warmup_steps`` steps of ground-truth reward
on the previous level (``curriculum/gt_warmup`` is 1 on those steps; off by default).

At the start, at every level change and at the end it evaluates mean@k / maj@k on held-out prompts of every
level seen so far and the next one (every level at start and end), and keeps them in
``<run>/curriculum/levels.csv`` and ``climb.png`` (the samples in ``curriculum/samples/``).

Resume is exact: the levels, the rule's history and the evaluation rows are the callback's ``state_dict``,
saved in checkpoints by Lightning; the batch of step s is a pure function of (seed, s, mixture) and the
mixture a function of that state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from srtlab.answers.gold import GoldScorer
from srtlab.curriculum.evaluate import format_before_after, plot_climb, write_table
from srtlab.curriculum.levels import LevelSpec, describe, level_config
from srtlab.curriculum.rules import AdvanceRule
from srtlab.data.prompts import PromptFormat
from srtlab.eval.heldout import evaluate_prompts
from srtlab.logs import write_samples
from srtlab.rewards.ground_truth import GOLD
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, boolean, checked, fail, integer, listing, mapping, problem, real, within
from srtlab.types import PromptBatch


@checked
@dataclass
class CurriculumTask:
    """One task's levels (each a LevelSpec, an int global level, or a mapping), easiest first.

    ``defaults``: task config keys the curriculum does not set; ``prompt``: this task's prompt format
    (default: the datamodule's); ``start``: the level a fresh run starts at (e.g. 2 with three levels
    trains on the hardest level only, the no-curriculum control, still evaluated on every level).
    """

    levels: Annotated[list[Any], listing(what="a non-empty list of levels (an int or a mapping each)")]
    defaults: Annotated[dict[str, Any], mapping()] = field(default_factory=dict)
    prompt: PromptFormat | None = None
    start: Annotated[int, integer(0)] = 0


@checked
class CurriculumScheduler(L.Callback):
    """Climbs each task through its levels (see the module docstring).

    Args:
        tasks: task name -> CurriculumTask (or a mapping with its fields).
        advance: the rule that moves a task up (an AdvanceRule or a mapping with its fields).
        earlier_share: share of each batch drawn from the task's earlier levels (split evenly); 0: none.
        gt_warmup_steps: steps of ground-truth reward on the previous level after each move up; 0: none.
        eval_size: held-out prompts per level; evaluate: False skips the climb evaluations.
        eval_batch_size: prompts per generate call in evaluations.
    """

    def __init__(self, tasks: Annotated[dict[str, Any], mapping(what="a mapping of task name -> its levels")],
                 advance: AdvanceRule | dict | None = None,
                 earlier_share: Annotated[float, real(0, 1, open_high=True)] = 0.0,
                 gt_warmup_steps: Annotated[int, integer(0)] = 0, eval_size: Annotated[int, integer(1)] = 32,
                 eval_batch_size: Annotated[int, integer(1)] = 8,
                 evaluate: Annotated[bool, boolean()] = True) -> None:
        fail(type(self), [] if tasks else [problem("tasks", tasks, "at least one task with its levels")])
        self.tasks = {}
        for name, spec in tasks.items():
            with within(f"tasks.{name}"):
                self.tasks[name] = spec if isinstance(spec, CurriculumTask) else CurriculumTask(**spec)
        with within("advance"):
            self.advance = advance if isinstance(advance, AdvanceRule) else AdvanceRule(**(advance or {}))
        self.earlier_share, self.gt_warmup_steps = earlier_share, gt_warmup_steps
        self.eval_size, self.eval_batch_size, self.evaluate = eval_size, eval_batch_size, evaluate
        # the config of every level, resolved now so a bad level fails before any model loads
        self.specs = {name: [LevelSpec.parse(s) for s in t.levels] for name, t in self.tasks.items()}
        self.configs = {name: [level_config(name, s, t.defaults) for s in self.specs[name]]
                        for name, t in self.tasks.items()}
        for name, configs in self.configs.items():
            fail(type(self), [problem(f"tasks.{name}.levels", [], "at least one level")] if not configs else [])
            start = self.tasks[name].start
            fail(type(self), [problem(f"tasks.{name}.start", start, f"a level of the task, 0..{len(configs) - 1}")]
                 if start >= len(configs) else [])
        self.gold = GoldScorer()
        # -- the state saved in checkpoints --
        self.level = {name: t.start for name, t in self.tasks.items()}
        self.history: dict[str, list[float]] = {name: [] for name in self.tasks}  # rule metric at this level
        self.warmup_left = {name: 0 for name in self.tasks}
        self.changes: list[dict] = []  # {"step", "task", "level", "gt_warmup"}
        self.records: list[dict] = []  # evaluation rows (see srtlab.curriculum.evaluate.COLUMNS)
        # -- per run --
        self._datamodule = None

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"level": dict(self.level), "history": {k: list(v) for k, v in self.history.items()},
                "warmup_left": dict(self.warmup_left), "changes": list(self.changes), "records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["level"]) - set(self.tasks)
        if unknown:
            raise ValueError(f"checkpoint has curriculum tasks {sorted(unknown)} this config lacks: "
                             f"{sorted(self.tasks)}")
        self.level.update(state["level"])
        self.history.update({k: list(v) for k, v in state["history"].items()})
        self.warmup_left.update(state["warmup_left"])
        self.changes, self.records = list(state["changes"]), list(state["records"])

    def level_name(self, task: str, level: int) -> str:
        return self.specs[task][level].name or f"L{level}"

    def mixture(self) -> list[tuple[str, int, float]]:
        """(task, level, weight) of the training batches in the current state; tasks weigh equally."""
        out = []
        for task, level in self.level.items():
            if self.warmup_left[task] > 0:  # ground-truth warm-up on the previous level
                out.append((task, level - 1, 1.0))
            elif level == 0 or self.earlier_share == 0:
                out.append((task, level, 1.0))
            else:
                out.append((task, level, 1.0 - self.earlier_share))
                out += [(task, earlier, self.earlier_share / level) for earlier in range(level)]
        return out

    # -- hooks ----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "add_levels"):
            raise RuntimeError("the curriculum needs a datamodule with add_levels "
                               "(srtlab.data.datamodule.PromptDataModule)")
        for task, configs in self.configs.items():
            dm.add_levels(task, configs, self.eval_size, self.tasks[task].prompt)
        self._datamodule = dm

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)
        if not self.records:  # a fresh run (a resumed one has its start evaluation already)
            self._evaluate(trainer, pl_module, "start", everything=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: PromptBatch,
                           batch_idx: int) -> None:
        # the step's per-(task, level) statistics, computed by the reward mix on the step's own samples
        level_stats = (outputs or {}).get("level_stats", {})
        stats, logs = {}, {"curriculum/gt_warmup": float(any(v > 0 for v in self.warmup_left.values()))}
        for task, level in self.level.items():
            logs[f"curriculum/{task}/level"] = float(level)
            found = level_stats.get(f"{task}/{level}")
            if self.warmup_left[task] == 0 and found is not None:
                stats[task] = found
                logs.update({f"curriculum/{task}/{k}": v for k, v in found.items() if k != "groups"})
        pl_module.log_dict(logs, on_step=True, batch_size=len(batch))
        moved, warmup_over = self.observe(trainer.global_step, stats)
        if moved or warmup_over:
            self._apply(pl_module)
        if moved:
            self._evaluate(trainer, pl_module, "level_up")

    def observe(self, step: int, stats: dict[str, dict[str, float]]) -> tuple[list[str], bool]:
        """Take one finished step's statistics per task; move tasks up by the rule.

        ``step`` is the number of steps done. Returns the tasks that moved up and whether a ground-truth
        warm-up ended; both change the mixture. Warm-up steps do not count towards the rule.
        """
        moved, warmup_over = [], False
        for task in self.tasks:
            if self.warmup_left[task] > 0:
                self.warmup_left[task] -= 1
                warmup_over |= self.warmup_left[task] == 0
                continue
            if task not in stats:
                continue
            self.history[task].append(stats[task][self.advance.metric])
            top = len(self.configs[task]) - 1
            if self.level[task] < top and self.advance(self.history[task]):
                self.level[task] += 1
                self.history[task] = []
                self.warmup_left[task] = self.gt_warmup_steps
                moved.append(task)
                self.changes.append({"step": step, "task": task, "level": self.level[task],
                                     "gt_warmup": self.gt_warmup_steps})
        return moved, warmup_over

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not any(r["step"] == trainer.global_step and r["event"] == "end" for r in self.records):
            self._evaluate(trainer, pl_module, "end", everything=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.records and trainer.is_global_zero:
            k = self.records[-1]["k"]
            print(f"\ncurriculum climb ({self._folder(trainer)}):\n" + format_before_after(self.records, k))

    # -- helpers --------------------------------------------------------------------------------
    def step_back(self, pl_module: L.LightningModule) -> list[str]:
        """Move every task one level down and apply the new mixture (a guard's remedy); -> the tasks moved."""
        moved = []
        for name in self.level:
            if self.level[name] > 0:
                self.level[name] -= 1
                self.history[name], self.warmup_left[name] = [], 0
                moved.append(name)
        self._apply(pl_module)
        return moved

    def _apply(self, pl_module: L.LightningModule) -> None:
        """Hand the datamodule the mixture, and the policy the reward weights, of the current state."""
        self._datamodule.set_mixture(self.mixture())
        warming = any(v > 0 for v in self.warmup_left.values())
        pl_module.override_reward_weights("curriculum", {GOLD: 1.0} if warming else None)

    def _folder(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / "curriculum"

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, event: str, everything: bool = False) -> None:
        """Held-out mean@k / maj@k of every level seen and the next one (all levels when ``everything``)."""
        if not self.evaluate:
            return
        rollout, engine = pl_module.rollouts, pl_module.engine()
        for task, current in self.level.items():
            top = len(self.configs[task]) - 1
            for level in range(top + 1 if everything else min(current + 1, top) + 1):
                seed = seed_for(rollout.seed, "climb_eval", task, level)  # the same at every evaluation
                scores, samples = evaluate_prompts(engine, self._datamodule.level_val[task, level].prompts,
                                                   rollout.val_n, rollout.val_sampling, seed, self.gold,
                                                   self.eval_batch_size)
                if trainer.is_global_zero:
                    name = f"{task}_L{level}_step{trainer.global_step}.jsonl"
                    write_samples(samples, self._folder(trainer) / "samples" / name)
                self.records.append({"step": trainer.global_step, "event": event, "task": task, "level": level,
                                     "name": self.level_name(task, level), "current_level": current,
                                     "prompts": len(self._datamodule.level_val[task, level]), "k": rollout.val_n,
                                     "mean": scores["mean"], "maj": scores["maj"], "pass": scores["pass"],
                                     "answer_rate": scores["answer_rate"],
                                     "top_answer_share": scores["top_answer_share"],
                                     "config": describe(self.configs[task][level])})
        if trainer.is_global_zero:
            folder = self._folder(trainer)
            write_table(self.records, folder / "levels.csv")
            plot_climb(self.records, self.changes, folder / "climb.png")
