"""The collapse guard: a Lightning callback that watches label-free signals and warns, stops or rolls back.

After every training step (``on_train_batch_end``) it appends the step's ``train/*`` values from
``trainer.callback_metrics`` to its history, records each prompt's majority vote (the step's ``votes``: a
per-question history, :mod:`srtlab.guard.votes`), and every ``probe.every`` steps samples its unlabelled probe
(:class:`~srtlab.guard.probe.UnlabelledProbe`: a fixed set of training prompts, no gold read; once before
training too, which gives the base model's votes). After every evaluation (``on_validation_end``) it adds the
``val/*`` values. Then it checks its rules (``srtlab.guard.rules``) and, when one fires outside the cooldown, acts:

- ``warn``: log a warning;
- ``stop``: save ``<run>/guard/stop.ckpt`` (resumable), write the reason to ``<run>/guard/stop.json``, and
  end training cleanly (``trainer.should_stop``);
- ``rollback``: restore the weights of the best checkpoint so far (``best_by``), reset the optimizer's
  moments, apply the :class:`Remedy`, and continue; after ``max_rollbacks`` it stops instead.

With ``skip`` set it also applies TTRL-Guard's per-prompt remedy on every step (:mod:`srtlab.guard.skips`).

**Labels.** Every rule and best-checkpoint criterion declares whether it reads gold answers. With
``label_free: true`` (``guard=warn|stop|rollback``) a rule, criterion, remedy or probe that does is a config
error; ``guard=labelled`` allows them. Whatever reads labels is logged under ``guard/labelled/`` and marked in
``guard/events.jsonl`` (``uses_labels``).

Every event goes to ``<run>/guard/events.jsonl`` with the values that triggered it, and to ``guard/*``
metrics (global rank 0 writes; rank 0's decision is broadcast so all ranks act alike). ``time/guard`` is the
guard's own wall time per step (the probe included). The history, the per-prompt votes, the probe's base
votes, the best checkpoint, the cooldown and the remedies in force are the callback's ``state_dict``, which
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

from srtlab.guard.probe import LabelledProbe, UnlabelledProbe
from srtlab.guard.remedy import BEST_BY, Remedy, best_score, scale_learning_rate
from srtlab.guard.rules import Finding, GuardRule, ProbeDrop
from srtlab.guard.signals import History
from srtlab.guard.skips import UpdateSkips, ids_by_question, skip_map
from srtlab.guard.votes import FlipSettings, PromptVotes
from srtlab.models.load import load_policy_weights
from srtlab.settings import Annotated, Rule, boolean, checked, choice, fail, integer, problem, within
from srtlab.types import question_of

log = logging.getLogger(__name__)

ACTIONS = ("warn", "stop", "rollback")
RULES = Rule(lambda v: hasattr(v, "items") and len(v) > 0 and all(
    hasattr(r, "check") and getattr(r, "when", None) in ("step", "eval") for r in v.values()),
    "a non-empty mapping of name -> a rule from srtlab.guard.rules (see configs/guard/warn.yaml)")


def _part(what: str, cls: type) -> Rule:
    return Rule(lambda v: v is None or isinstance(v, cls) or hasattr(v, "items"), f"null or {what}")


LABEL_FREE = "a guard that reads no gold answer (label_free: true); guard=labelled allows it"


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
        best_by: the rollback target (:data:`srtlab.guard.remedy.BEST_BY`): ``vote_rate`` (label-free: the
            unlabelled probe step whose samples gave the base model's majority answers most often),
            ``top_answer_share`` (label-free: the evaluation with the lowest held-out top-answer share) or
            ``heldout_mean`` (uses labels: the highest held-out mean@k). Until one has scored: the starting weights.
        probe: the unlabelled probe (``{size, every, k, rephrase, kl}``) or null.
        labelled_probe: USES LABELS: ``{size, every, k, max_drop}`` scores held-out gold prompts and adds the rule
            ``labelled_probe``; null by default.
        flips: when a prompt is at risk (TTRL-Guard: flip rate > 0.3 after 5 visits, recent share > 0.7).
        skip: TTRL-Guard's per-prompt update skipping (``{probability: 0.7, sources: [train, probe]}``) or null.
        label_free: refuse any rule, criterion, remedy or probe that reads gold answers.
    """

    def __init__(self, action: Annotated[str, choice(ACTIONS)], rules: Annotated[Mapping[str, GuardRule], RULES],
                 baseline_steps: Annotated[int, integer(1)] = 3, cooldown: Annotated[int, integer(0)] = 5,
                 remedy: Remedy | None = None, max_rollbacks: Annotated[int, integer(0)] = 2,
                 best_by: Annotated[str, choice(BEST_BY)] = "vote_rate",
                 probe: Annotated[UnlabelledProbe | Mapping[str, Any] | None,
                                  _part("{size, every, k, rephrase, kl}", UnlabelledProbe)] = None,
                 labelled_probe: Annotated[LabelledProbe | Mapping[str, Any] | None,
                                           _part("{size, every, k, max_drop}", LabelledProbe)] = None,
                 flips: Annotated[FlipSettings | Mapping[str, Any] | None,
                                  _part("{min_visits, max_flip_rate, min_share, recent, keep}", FlipSettings)] = None,
                 skip: Annotated[UpdateSkips | Mapping[str, Any] | None,
                                 _part("{probability, sources}", UpdateSkips)] = None,
                 label_free: Annotated[bool, boolean()] = True) -> None:
        self.action, self.rules, self.baseline_steps, self.cooldown = action, dict(rules), baseline_steps, cooldown
        self.remedy, self.max_rollbacks, self.best_by, self.label_free = remedy or Remedy(), max_rollbacks, best_by, \
            label_free
        self.probe = _build(UnlabelledProbe, probe, "probe")
        self.labelled_probe = _build(LabelledProbe, labelled_probe, "labelled_probe")
        self.flips = _build(FlipSettings, flips, "flips") or FlipSettings()
        self.skip = _build(UpdateSkips, skip, "skip")
        if label_free:
            fail(type(self), self._labelled_parts())
        if self.labelled_probe is not None:  # the labelled probe's rule, named so
            self.rules.setdefault("labelled_probe", ProbeDrop(max_drop=self.labelled_probe.max_drop))
        if BEST_BY[best_by].when == "probe" and self.probe is None and action == "rollback":
            fail(type(self), [problem("best_by", best_by, "top_answer_share (or heldout_mean with label_free: false) "
                                                          "when probe is null: vote_rate scores the unlabelled probe")])
        self.history = History()
        self.train_votes = PromptVotes(self.flips.keep)  # question -> visits in training
        self.probe_votes = PromptVotes(self.flips.keep)  # question -> visits at the unlabelled probe
        self.quiet_until = -1  # no action before this step
        self.events = 0
        self.rollbacks = 0
        self.best: dict[str, Any] | None = None  # {"path", "score", "step"}
        self.gold_until = -1  # the gold mix (the module's "guard" reward override) is in force until this step
        self.kl_coef: float | None = None  # the KL coefficient a rollback set (re-applied on resume)
        self._prompts: dict[str, tuple[str, str]] | None = None  # training prompt id -> (question, answer kind)
        self._ids: dict[str, list[str]] = {}  # question -> training prompt ids

    def _labelled_parts(self) -> list[tuple[str, Any, str]]:
        """What in this guard reads gold answers: (key, value, why refused)."""
        found = [(f"rules.{name}", type(rule).__name__, LABEL_FREE) for name, rule in self.rules.items()
                 if getattr(rule, "labels", False)]
        if BEST_BY[self.best_by].labels:
            found.append(("best_by", self.best_by, f"vote_rate or top_answer_share in {LABEL_FREE}"))
        if self.labelled_probe is not None:
            found.append(("labelled_probe", "set", f"null in {LABEL_FREE}"))
        if self.remedy.gold_mix is not None:
            found.append(("remedy.gold_mix", dict(self.remedy.gold_mix), f"null in {LABEL_FREE}"))
        return found

    # -- set-up and resume ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Fail before training if a configured remedy has no hook in this module or these callbacks."""
        if stage != "fit":
            return
        if self.skip is not None and not hasattr(pl_module, "set_update_skips"):
            raise ValueError(f"callbacks.guard.skip needs {type(pl_module).__name__}.set_update_skips, which it lacks; "
                             "set callbacks.guard.skip=null")
        if self.action != "rollback":
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
        if self.probe is not None and self.probe.base is None:  # the base model's votes, before any update
            t0 = time.perf_counter()
            values = self._run_probe(trainer, pl_module, trainer.global_step)
            self._log_direct(trainer, {**values, "time/guard_base_probe": time.perf_counter() - t0})
        if self.action == "rollback" and self.best is None:  # the starting weights: a target until one scores
            start = self.history.firsts.get("guard/probe/vote_rate") if BEST_BY[self.best_by].when == "probe" else None
            self._save_best(trainer, float("-inf") if start is None else start)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict(), "quiet_until": self.quiet_until, "events": self.events,
                "rollbacks": self.rollbacks, "best": self.best, "gold_until": self.gold_until, "kl_coef": self.kl_coef,
                "train_votes": self.train_votes.state_dict(), "probe_votes": self.probe_votes.state_dict(),
                "probe_base": self.probe.state_dict() if self.probe is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = History.from_state(state["history"])
        self.quiet_until, self.events, self.rollbacks = state["quiet_until"], state["events"], state["rollbacks"]
        self.best, self.gold_until = state["best"], state["gold_until"]
        self.kl_coef = state["kl_coef"]
        if "train_votes" in state:
            self.train_votes = PromptVotes.from_state(state["train_votes"])
            self.probe_votes = PromptVotes.from_state(state["probe_votes"])
        if self.probe is not None:
            self.probe.load_state_dict(state.get("probe_base"))

    # -- watching ---------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        t0 = time.perf_counter()
        step = trainer.global_step
        self.history.add(step, _metrics(trainer, "train/"))
        flips = self._record_votes(trainer, step, (outputs or {}).get("votes") or [])  # guard/train/*
        self.history.add(step, flips)
        direct: dict[str, float] = {}
        if self.probe is not None and self.probe.due(step):
            direct.update(self._run_probe(trainer, pl_module, step))
        if self.labelled_probe is not None and self.labelled_probe.due(step):
            labelled = self.labelled_probe.run(trainer, pl_module, step)  # guard/labelled/probe/*
            self.history.add(step, labelled)
            direct.update(labelled)
        self.history.freeze_baselines(self.baseline_steps)
        if 0 <= self.gold_until <= step:
            self._end_gold_mix(pl_module)
        if self.skip is not None:
            direct["guard/skip/prompts"] = float(self._update_skips(trainer, pl_module))
        values = {**flips, **self._check(trainer, pl_module, "step")}
        values["time/guard"] = time.perf_counter() - t0
        self._log_direct(trainer, direct)  # straight to the loggers: logged through the module, Lightning would
        pl_module.log_dict(values, on_step=True,  # repeat a probe's last value at every later step
                           batch_size=len(batch) if hasattr(batch, "__len__") else 1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = _metrics(trainer, "val/")
        if not metrics:
            return
        self.history.add(trainer.global_step, metrics)
        if self.action == "rollback" and BEST_BY[self.best_by].when == "eval":
            self._update_best(trainer, metrics)
        values = self._check(trainer, pl_module, "eval")
        self._log_direct(trainer, values)  # at this evaluation's row: optimizer steps taken (HeldoutLoop's "step")

    def _record_votes(self, trainer: L.Trainer, step: int, votes: list) -> dict[str, float]:
        """Each trained prompt's majority into its question's history -> ``guard/train/*`` flip statistics."""
        for prompt_id, answer, share in votes:
            question, kind = self._prompt_index(trainer).get(prompt_id, (prompt_id, "text"))
            self.train_votes.record(question, step, answer, share, kind)
        stats = self.train_votes.flip_stats(**self.flips.test())
        return {f"guard/train/{k}": v for k, v in stats.items()}

    def _run_probe(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict[str, float]:
        """Sample the unlabelled probe, record its votes -> the ``guard/probe/*`` values (also into the history)."""
        values, votes = self.probe.run(trainer, pl_module, step)
        if trainer.is_global_zero:  # every probe's votes, for reading the signals again offline
            with open(_guard_dir(trainer) / "probe.jsonl", "a") as f:
                f.write(json.dumps(self.probe.last) + "\n")
        for question, answer, share, kind in votes:
            self.probe_votes.record(question, step, answer, share, kind)
        stats = self.probe_votes.flip_stats(**self.flips.test())
        values.update({f"guard/probe/{k}": stats[k] for k in ("flip_rate", "at_risk", "eligible")})
        self.history.add(step, values)
        if self.action == "rollback" and BEST_BY[self.best_by].when == "probe" and step > 0:
            self._update_best(trainer, values)
        return values

    def _prompt_index(self, trainer: L.Trainer) -> dict[str, tuple[str, str]]:
        """Training prompt id -> (question, answer kind), built once (questions recur under several ids)."""
        if self._prompts is None:
            prompts = getattr(getattr(getattr(trainer, "datamodule", None), "train", None), "prompts", None) or []
            self._prompts = {p.id: (question_of(p), p.answer_kind) for p in prompts}
            self._ids = ids_by_question(prompts)
        return self._prompts

    def _update_skips(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """TTRL-Guard: the at-risk prompts' ids to the module with the skip probability -> how many ids."""
        self._prompt_index(trainer)
        risky = set()
        for source, votes in (("train", self.train_votes), ("probe", self.probe_votes)):
            if source in self.skip.sources:
                risky.update(votes.risky(**self.flips.test()))
        skips = skip_map(sorted(risky), self._ids, self.skip.probability)
        pl_module.set_update_skips("guard", skips or None)
        return len(skips)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> dict[str, float]:
        """Run the rules checked at ``when``; act on the fired ones; -> the values to log."""
        findings = {name: f for name, rule in self.rules.items() if rule.when == when
                    for f in [rule.check(self.history)] if f is not None}
        fired = sorted(name for name, f in findings.items() if f.fired)
        fired = trainer.strategy.broadcast(fired, src=0)  # every rank acts on rank 0's decision
        acting = fired and trainer.state.fn == TrainerFn.FITTING and trainer.global_step >= self.quiet_until
        if acting:
            self._act(trainer, pl_module, fired, findings)
        values = {}
        for name, f in findings.items():
            prefix = self._prefix(name)
            values.update({f"{prefix}/{k}": v for k, v in f.values.items()})
            values[f"{prefix}/fired"] = float(f.fired)
        values.update({"guard/events": float(self.events), "guard/rollbacks": float(self.rollbacks)})
        return values

    def _prefix(self, name: str) -> str:
        """``guard/<rule>``, or ``guard/labelled/<rule>`` for a rule that reads gold answers."""
        return f"guard/labelled/{name}" if getattr(self.rules.get(name), "labels", False) else f"guard/{name}"

    # -- acting -----------------------------------------------------------------------------------
    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule, fired: list[str],
             findings: dict[str, Finding]) -> None:
        step = trainer.global_step
        action = self.action
        if action == "rollback" and self.rollbacks >= self.max_rollbacks:
            action = "stop"  # the remedies did not hold
        labelled = [name for name in fired if getattr(self.rules[name], "labels", False)]
        event: dict[str, Any] = {"step": step, "time": time.time(), "action": action, "rules": fired,
                                 "values": {name: findings[name].values for name in fired},
                                 "reads": {name: list(getattr(self.rules[name], "reads", ())) for name in fired},
                                 "uses_labels": bool(labelled), "labelled_rules": labelled}
        reason = f"guard: {', '.join(fired)} fired at step {step} {event['values']}"
        self.events += 1
        self.quiet_until = step + self.cooldown
        if action == "warn":
            log.warning(reason)
        elif action == "stop":
            event["checkpoint"] = str(self._stop(trainer, reason, event))
        else:
            event.update(self._rollback(trainer, pl_module))
            event["uses_labels"] = event["uses_labels"] or BEST_BY[self.best_by].labels
            log.warning(f"{reason}; rolled back to step {event['restored_step']} with {event['remedy']}")
        self._write_event(trainer, event)

    def _stop(self, trainer: L.Trainer, reason: str, event: dict[str, Any]) -> Path:
        folder = _guard_dir(trainer)
        path = folder / "stop.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # collective: every rank calls it
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
        self.train_votes.clear()
        self.probe_votes.clear()
        return {"restored_step": self.best["step"], "restored_from": self.best["path"], "remedy": remedy,
                "best_by": self.best_by, "best_score": self.best["score"]}
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

    def _log_direct(self, trainer: L.Trainer, values: dict[str, float]) -> None:
        """Write ``values`` at the current step straight to the loggers (rank 0)."""
        if values and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

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


def _build(cls: type, value: Any, key: str) -> Any:
    """A part given as a mapping (``probe: {size: 8}``) built under its key, so its errors name it."""
    if not isinstance(value, Mapping):
        return value
    with within(key):
        return cls(**value)


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
