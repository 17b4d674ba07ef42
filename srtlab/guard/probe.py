"""``callbacks.guard.probe``: a small labelled probe, for researchers who can afford a few gold answers.

**It uses labels.** The guard's step rules read label-free signals only; the probe scores ``size``
held-out prompts (the first ones with a gold answer of the run's first held-out set, never trained on)
with ``k`` samples every ``every`` optimizer steps, between the run's own evaluations, and logs
``guard/probe/mean@k``, ``maj@k``, ``pass@k`` and ``top_answer_share``. Its rule (``probe``,
:class:`srtlab.guard.rules.ProbeDrop`) fires when the probe's mean@k falls more than ``max_drop`` below
its best so far. Everything it logs or fires is named ``probe``, so a reader of the metrics or of
``guard/events.jsonl`` sees that labels were read. Off by default::

    python -m srtlab fit experiment=srt guard=rollback callbacks.guard.probe='{size: 32, every: 4, k: 4}'

Cost: ``size`` x ``k`` samples every ``every`` steps (32 x 4 every 4 steps is 1/4 of a default
evaluation per step on the CPU). Every rank scores the same prompts with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L

from srtlab.answers.metrics import named_metrics
from srtlab.eval.heldout import evaluate_prompts
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, checked, integer, real
from srtlab.types import Prompt


@checked
@dataclass
class LabelledProbe:
    size: Annotated[int, integer(1)] = 32
    every: Annotated[int, integer(1)] = 4
    k: Annotated[int, integer(1)] = 4
    max_drop: Annotated[float, real(0, 1, open_low=True)] = 0.1  # the rule fires this far below the best so far

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def prompts(self, trainer: L.Trainer) -> list[Prompt]:
        """The first ``size`` prompts with a gold answer of the datamodule's first held-out set."""
        sets = getattr(trainer.datamodule, "val", None) or {}
        name, prompts = next(iter(sets.items()), (None, []))
        chosen = [p for p in prompts if p.answer is not None][: self.size]
        if not chosen:
            raise ValueError(f"callbacks.guard.probe is set but the held-out set {name!r} has no prompt with a gold "
                             "answer; accepted: data with gold answers, or callbacks.guard.probe=null")
        return chosen

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        """Score the probe with the policy's engine and held-out sampling -> ``guard/probe/*`` values."""
        rollouts = pl_module.rollouts
        metrics, _ = evaluate_prompts(pl_module.engine(), self.prompts(trainer), self.k, rollouts.val_sampling,
                                      seed_for(rollouts.seed, "guard_probe", step), pl_module.gold)
        kept = {key: metrics[key] for key in ("mean", "maj", "pass", "top_answer_share")}
        return named_metrics("probe", self.k, kept, prefix="guard")
