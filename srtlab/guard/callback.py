"""The collapse guard: a Lightning callback that watches label-free signals and warns, stops or rolls back.

After every training step (``on_train_batch_end``) it appends the step's ``train/*`` values from
``trainer.callback_metrics`` to its history, and after every evaluation (``on_validation_end``) the
``val/*`` values; both are logged before these hooks by the module (and the callbacks), so the guard
does not depend on where it is listed among the callbacks. Then it checks its rules (``srtlab.guard.rules``)
and, when one fires outside the cooldown, acts:

- ``warn``: log a warning;
- ``stop``: save ``<run>/guard/stop.ckpt`` (resumable), write the reason to ``<run>/guard/stop.json``, and
  end training cleanly (``trainer.should_stop``);
- ``rollback``: restore the weights of the best checkpoint so far (see :class:`CollapseGuard` for the
  criterion), reset the optimizer's moments, apply the :class:`Remedy`, and continue; after
  ``max_rollbacks`` it stops instead.

With ``probe`` set (:mod:`srtlab.guard.probe`, off by default) it also scores a few held-out prompts with
gold answers every few steps and adds the one rule that reads labels, ``probe``.

Every event goes to ``<run>/guard/events.jsonl`` with the values that triggered it, and to ``guard/*``
metrics (global rank 0 writes; rank 0's decision is broadcast so all ranks act alike). The history, the
best checkpoint, the cooldown and the remedies in force are the callback's ``state_dict``, which
Lightning saves in every checkpoint, so a resumed run guards exactly as the uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from srtlab.guard.probe import LabelledProbe
from srtlab.guard.remedy import Remedy, best_score, scale_learning_rate
from srtlab.guard.rules import Finding, GuardRule, ProbeDrop
from srtlab.guard.signals import History
from srtlab.models.load import load_policy_weights
from srtlab.settings import Annotated, Rule, checked, choice, integer, within

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop", "rollback")
BEST_BY = ("top_answer_share", "heldout_mean")
RULES = Rule(lambda v: hasattr(v, "items") and len(v) > 0 and all(
    hasattr(r, "check") and getattr(r, "when", None) in ("step", "eval") for r in v.values()),
    "a non-empty mapping of name -> a rule from srtlab.guard.rules (see configs/guard/warn.yaml)")
PROBE = Rule(lambda v: v is None or isinstance(v, LabelledProbe) or hasattr(v, "items"),
             "null or {size, every, k, max_drop}")


@checked
class CollapseGuard(L.Callback):
    """Watches the run for collapse and acts (see the module docstring).

    Args:
        action: ``warn`` | ``stop`` | ``rollback``.
        rules: name -> rule (``srtlab.guard.rules``); the name prefixes its logged values.
        baseline_steps: the first N training steps give each signal's baseline (for relative rules).
        cooldown: steps after an event during which no rule acts (its values are still logged).
        remedy: what a rollback changes.
        max_rollbacks: after this many rollbacks the next event stops the run.
        best_by: the rollback target, chosen among the evaluations of this run: ``top_answer_share``
            (label-free, default: the lowest held-out top-answer share, the latest on ties) or
            ``heldout_mean`` (the highest held-out mean@k: uses the held-out gold answers).
    """

    def __init__(self, action: Annotated[str, choice(ACTIONS)], rules: Annotated[Mapping[str, GuardRule], RULES],
                 baseline_steps: Annotated[int, integer(1)] = 3, cooldown: Annotated[int, integer(0)] = 5,
                 remedy: Remedy | None = None, max_rollbacks: Annotated[int, integer(0)] = 2,
                 best_by: Annotated[str, choice(BEST_BY)] = "top_answer_share",
                 probe: Annotated[LabelledProbe | Mapping[str, Any] | None, PROBE] = None) -> None:
        self.action, self.rules, self.baseline_steps, self.cooldown = action, dict(rules), baseline_steps, cooldown
        self.remedy, self.max_rollbacks, self.best_by = remedy or Remedy(), max_rollbacks, best_by
        with within("probe"):
            self.probe = LabelledProbe(**probe) if isinstance(probe, Mapping) else probe
        if self.probe is not None:  # the one rule that reads labels, named so: "probe"
            self.rules.setdefault("probe", ProbeDrop(max_drop=self.probe.max_drop))
        self.history = History()
        self.quiet_until = -1  # no action before this step
        self.events = 0
        self.rollbacks = 0
        self.best: dict[str, Any] | None = None  # {"path", "score", "step"}
        self.gold_until = -1  # the gold mix (the module's "guard" reward override) is in force until this step
        self.kl_coef: float | None = None  # the KL coefficient a rollback set (re-applied on resume)

    # -- set-up and resume ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training if a configured remedy has no hook in this module or these callbacks."""
        if stage != "fit" or self.action != "rollback":
            return
        if self.remedy.kl_coef is not None and not hasattr(pl_module, "set_kl_coef"):
            raise ValueError(f"callbacks.guard.remedy.kl_coef={self.remedy.kl_coef} needs {type(pl_module).__name__}"
                             ".set_kl_coef, which it lacks; set callbacks.guard.remedy.kl_coef=null")
        if self.remedy.gold_mix is not None and not hasattr(pl_module, "override_reward_weights"):
            raise ValueError(f"callbacks.guard.remedy.gold_mix={self.remedy.gold_mix} needs {type(pl_module).__name__}"
                             ".override_reward_weights, which it lacks; set callbacks.guard.remedy.gold_mix=null")
        if self.remedy.curriculum_back and not _step_back_callbacks(trainer):
            raise ValueError("callbacks.guard.remedy.curriculum_back=true but no callback has step_back() "
                             "(add a curriculum, e.g. experiment=curriculum, or set it to false)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.kl_coef is not None:  # remedies in force when the run was saved
            pl_module.set_kl_coef(self.kl_coef)
        if self.action == "rollback" and self.best is None:  # the starting weights: a target until an evaluation
            self._save_best(trainer, float("-inf"))

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict(), "quiet_until": self.quiet_until, "events": self.events,
                "rollbacks": self.rollbacks, "best": self.best, "gold_until": self.gold_until, "kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = History.from_state(state["history"])
        self.quiet_until, self.events, self.rollbacks = state["quiet_until"], state["events"], state["rollbacks"]
        self.best, self.gold_until = state["best"], state["gold_until"]
        self.kl_coef = state["kl_coef"]

    # -- watching ---------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        self.history.add(step, _metrics(trainer, "train/"))
        probe = self.probe.run(trainer, pl_module, step) if self.probe is not None and self.probe.due(step) else {}
        self.history.add(step, probe)  # labelled: guard/probe/*
        self.history.freeze_baselines(self.baseline_steps)
        if 0 <= self.gold_until <= step:
            self._end_gold_mix(pl_module)
        if probe and trainer.is_global_zero:  # straight to the loggers: logged through the module, Lightning
            for logger in trainer.loggers:  # would repeat the last value at every later step
                logger.log_metrics(probe, step=step)
        values = self._check(trainer, pl_module, "step")
        pl_module.log_dict(values, on_step=True, batch_size=len(batch) if hasattr(batch, "__len__") else 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _metrics(trainer, "val/")
        if not metrics:
            return
        self.history.add(trainer.global_step, metrics)
        if self.action == "rollback":
            self._update_best(trainer, metrics)
        values = self._check(trainer, pl_module, "eval")
        if trainer.is_global_zero:  # at this evaluation's row: optimizer steps taken (HeldoutLoop's "step")
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> dict[str, float]:
        """Run the rules checked at ``when``; act on the fired ones; -> the values to log."""
        findings = {name: f for name, rule in self.rules.items() if rule.when == when
                    for f in [rule.check(self.history)] if f is not None}
        fired = sorted(name for name, f in findings.items() if f.fired)
        fired = trainer.strategy.broadcast(fired, src=0)  # every rank acts on rank 0's decision
        acting = fired and trainer.state.fn == TrainerFn.FITTING and trainer.global_step >= self.quiet_until
        if acting:
            self._act(trainer, pl_module, fired, findings)
        values = {f"guard/{name}/{k}": v for name, f in findings.items() for k, v in f.values.items()}
        values.update({f"guard/{name}/fired": float(f.fired) for name, f in findings.items()})
        values.update({"guard/events": float(self.events), "guard/rollbacks": float(self.rollbacks)})
        return values

    # -- acting -----------------------------------------------------------------------------------
    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule, fired: list[str],
             findings: dict[str, Finding]) -> None:
        step = trainer.global_step
        action = self.action
        if action == "rollback" and self.rollbacks >= self.max_rollbacks:
            action = "stop"  # the remedies did not hold
        event: dict[str, Any] = {"step": step, "time": time.time(), "action": action, "rules": fired,
                                 "values": {name: findings[name].values for name in fired}}
        reason = f"guard: {', '.join(fired)} fired at step {step} {event['values']}"
        self.events += 1
        self.quiet_until = step + self.cooldown
        if action == "warn":
            log.warning(reason)
        elif action == "stop":
            event["checkpoint"] = str(self._stop(trainer, reason, event))
        else:
            event.update(self._rollback(trainer, pl_module))
            log.warning(f"{reason}; rolled back to step {event['restored_step']} with {event['remedy']}")
        self._write_event(trainer, event)

    def _stop(self, trainer: L.Trainer, reason: str, event: dict[str, Any]) -> Path:
        folder = _guard_dir(trainer)
        path = folder / "stop.ckpt"
        trainer.save_checkpoint(path)  # collective: every rank calls it
        if trainer.is_global_zero:
            (folder / "stop.json").write_text(json.dumps({**event, "reason": reason, "checkpoint": str(path)},
                                                         indent=2))
        log.warning(f"{reason}; stopping (checkpoint {path})")
        trainer.should_stop = True
        return path

    def _rollback(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Best weights back, optimizer moments reset, the remedy applied, the engines re-synced."""
        assert self.best is not None  # saved at train start
        load_policy_weights(pl_module.model, self.best["path"])
        for opt in trainer.optimizers:
            opt.state.clear()  # Adam's moments point along the path that collapsed
        remedy = self._apply_remedy(trainer, pl_module)
        _sync_engines(trainer, pl_module)
        self.rollbacks += 1
        self.history.clear_windows()  # the windows describe the weights just abandoned; baselines stay
        return {"restored_step": self.best["step"], "restored_from": self.best["path"], "remedy": remedy}

    def _apply_remedy(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        r, done = self.remedy, {}
        if r.lr_factor is not None and r.lr_factor != 1:
            done["lr"] = scale_learning_rate(trainer, r.lr_factor)
        if r.kl_coef is not None:
            pl_module.set_kl_coef(r.kl_coef)
            self.kl_coef = done["kl_coef"] = r.kl_coef
        if r.gold_mix is not None:
            pl_module.override_reward_weights("guard", dict(r.gold_mix))  # its own override: ended at gold_until
            self.gold_until = trainer.global_step + r.gold_mix_steps
            done["gold_mix"] = {"weights": dict(r.gold_mix), "until_step": self.gold_until}
        if r.curriculum_back:
            for callback in _step_back_callbacks(trainer):
                callback.step_back(pl_module)
            done["curriculum_back"] = True
        return done

    def _end_gold_mix(self, pl_module: L.LightningModule) -> None:
        pl_module.override_reward_weights("guard", None)  # whatever else overrides the weights stays in force
        self.gold_until = -1

    # -- the rollback target ----------------------------------------------------------------------
    def _update_best(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        score = best_score(metrics, self.best_by)
        better = score is not None and (self.best is None or score >= self.best["score"])
        if trainer.strategy.broadcast(better, src=0):  # saving is collective: every rank follows rank 0
            self._save_best(trainer, trainer.strategy.broadcast(score, src=0))

    def _save_best(self, trainer: L.Trainer, score: float) -> None:
        path = _guard_dir(trainer) / "best.ckpt"
        trainer.save_checkpoint(path, weights_only=True)
        self.best = {"path": str(path), "score": score, "step": trainer.global_step}

    def _write_event(self, trainer: L.Trainer, event: dict[str, Any]) -> None:
        if trainer.is_global_zero:
            with open(_guard_dir(trainer) / "events.jsonl", "a") as f:
                f.write(json.dumps(event) + "\n")


def _metrics(trainer: L.Trainer, prefix: str) -> dict[str, float]:
    """This step's scalar metrics under ``prefix`` (``train/`` or ``val/``) as floats."""
    out = {}
    for name, value in trainer.callback_metrics.items():
        if name.startswith(prefix) and (not torch.is_tensor(value) or value.numel() == 1):
            out[name] = float(value)
    return out


def _guard_dir(trainer: L.Trainer) -> Path:
    folder = Path(trainer.default_root_dir) / "guard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _step_back_callbacks(trainer: L.Trainer) -> list[L.Callback]:
    return [cb for cb in trainer.callbacks if callable(getattr(cb, "step_back", None))]


def _sync_engines(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Send the restored weights to the rollout engine (a no-op when it shares the policy)."""
    if callable(getattr(pl_module, "sync_engine", None)):
        pl_module.sync_engine()
