"""The policy's held-out evaluation: Lightning's validation loop, as a part of
:class:`srtlab.modules.policy.PolicyModule`.

Each validation batch is sampled with the rollout stage and scored by gold (``srtlab.answers.metrics``);
at the end of the evaluation every rank's batches are gathered in the one-process order, so N ranks
report what one process would, and rank 0 writes the samples.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.trainer.states import TrainerFn

from srtlab import interrupt
from srtlab.answers.metrics import heldout_metrics, named_metrics, score_groups
from srtlab.logs import at_step, write_samples
from srtlab.modules import ranks
from srtlab.modules.checkpoint_io import save_stop_checkpoint
from srtlab.types import PromptBatch


class HeldoutLoop:
    """Mixin of the policy module: needs ``rollouts``, ``engine()``, ``gold`` and Lightning's logging."""

    _val_k = 0  # samples per prompt in the last evaluation
    last_val_step = -1  # global step of the last evaluation
    _val_batches: list[tuple[str, int, list[dict[str, float]], list[dict]]] = []  # this rank's, this evaluation
    _val_scores: dict[str, list[dict[str, float]]] = {}  # gathered, per held-out set
    _val_samples: dict[str, list[dict]] = {}

    def on_validation_epoch_start(self) -> None:
        self._val_batches: list[tuple[str, int, list[dict[str, float]], list[dict]]] = []

    def validation_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.rollouts is None:
            raise RuntimeError("evaluation needs the rollout stage (PolicyModule rollouts)")
        try:
            r = self.rollouts.val_batch(self.engine(), batch.prompts, dataloader_idx, batch.step)
        except interrupt.Interrupted:  # stopped during an evaluation inside fit: keep the steps done (the
            if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:  # resumed run goes on
                save_stop_checkpoint(self.trainer)
            raise  # from the next step; this evaluation is not repeated)
        self._val_k = r.n
        if batch.step < 0:  # a repeat that keeps the ranks' generate calls in step (datamodule.val_share)
            return
        scores, samples = score_groups(r, self.gold.verdicts(r))
        self._val_batches.append((batch.source, batch.step, scores, samples))

    def _gather_val(self) -> None:
        """Every rank's held-out batches, in the one-process order (set, batch index), into scores and samples."""
        batches = [b for part in ranks.gather(self._val_batches) for b in part]
        order = {name: i for i, name in enumerate(dict.fromkeys(b[0] for b in batches))}  # the loaders' order
        self._val_scores, self._val_samples = {}, {}
        for name, _, scores, samples in sorted(batches, key=lambda b: (order[b[0]], b[1])):
            self._val_scores.setdefault(name, []).extend(scores)
            self._val_samples.setdefault(name, []).extend(samples)

    def on_validation_epoch_end(self) -> None:
        self._gather_val()
        metrics = {}
        for name, scores in self._val_scores.items():
            if scores:
                metrics.update(named_metrics(name, self._val_k, heldout_metrics(scores, self._val_samples[name])))
        self.last_val_step = self.global_step
        if self._trainer is not None and self.trainer.is_global_zero:
            folder = Path(self.trainer.default_root_dir) / "samples"
            for name, rows in self._val_samples.items():
                write_samples(rows, folder / f"{name}_step{self.global_step}.jsonl")
        if metrics:
            self.log_dict(at_step(self.global_step, metrics), add_dataloader_idx=False)
