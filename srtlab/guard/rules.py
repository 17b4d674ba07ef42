"""Collapse rules: small dataclasses over a :class:`~srtlab.guard.signals.History`.

Each rule reads a few signals and returns a :class:`Finding` (the values it measured and whether it
fires) or None while it has too little history. ``when`` says if it is checked after every training
step (``"step"``) or after every evaluation (``"eval"``). The docstring of each says why it indicates
collapse; docs/guard.md has the same in prose. Thresholds are starting points, not universal constants:
a task whose gold answers are themselves concentrated needs a higher concentration threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from srtlab.guard.signals import History, relative_change, self_reward_name, slope, window
from srtlab.settings import Annotated, Rule, boolean, checked, integer, real

HELDOUT = Rule(lambda v: isinstance(v, str) and v.startswith("val/"), "a val/ metric name or glob (val/*/mean@*)")


@dataclass
class Finding:
    """What a rule measured (logged as ``guard/<rule>/<key>``) and whether it fires."""

    fired: bool
    values: dict[str, float] = field(default_factory=dict)


@checked
@dataclass
class MajorityCollapse:
    """``train/majority_share`` >= ``threshold`` on each of the last ``window`` steps, with entropy falling.

    Why: when nearly every group is unanimous the vote rewards whatever the policy already says and
    RLOO has no advantage left; if entropy is still falling the policy is sharpening onto its own
    consensus, right or wrong (the SRT paper's collapse). Entropy must be logged for the window unless
    ``require_falling_entropy`` is false.
    """

    threshold: Annotated[float, real(0, 1)] = 0.95
    window: Annotated[int, integer(2)] = 5
    require_falling_entropy: Annotated[bool, boolean()] = True
    when = "step"


    def check(self, h: History) -> Finding | None:
        shares = window(h.values("train/majority_share"), self.window)
        if shares is None:
            return None
        entropy = window(h.values("train/entropy"), self.window)
        values = {"min_majority_share": min(shares)}
        falling = True
        if self.require_falling_entropy:
            if entropy is None:
                return Finding(False, values)
            values["entropy_slope"] = slope(entropy)
            falling = values["entropy_slope"] < 0
        return Finding(min(shares) >= self.threshold and falling, values)


@checked
@dataclass
class AnswerConcentration:
    """``train/answer_concentration`` >= ``threshold`` on each of the last ``window`` steps.

    Why: different prompts have different answers. When one answer takes most of a step's samples
    across prompts, the policy gives one answer for every question (e.g. "1"), which the vote rewards
    because every group agrees with itself. Set the threshold above the share of the most common gold
    answer of the task.
    """

    threshold: Annotated[float, real(0, 1)] = 0.5
    window: Annotated[int, integer(1)] = 3
    when = "step"


    def check(self, h: History) -> Finding | None:
        values = window(h.values("train/answer_concentration"), self.window)
        if values is None:
            return None
        return Finding(min(values) >= self.threshold, {"min_concentration": min(values)})


@checked
@dataclass
class EntropyCollapse:
    """Mean ``train/entropy`` of the last ``window`` steps below ``ratio`` x its early baseline, and falling.

    Why: the vote and the group advantage compare samples; once the policy's per-token entropy has
    fallen to a small part of where it started, the G samples are near copies, nothing new is explored
    and the self-reward only confirms the current answer.
    """

    ratio: Annotated[float, real(0, 1)] = 0.3
    window: Annotated[int, integer(2)] = 5
    when = "step"


    def check(self, h: History) -> Finding | None:
        recent = window(h.values("train/entropy"), self.window)
        base = h.baseline.get("train/entropy")
        if recent is None or base is None or base <= 0:
            return None
        ratio, trend = sum(recent) / len(recent) / base, slope(recent)
        return Finding(ratio < self.ratio and trend < 0, {"entropy_ratio": ratio, "entropy_slope": trend})


@checked
@dataclass
class LengthDrift:
    """Mean ``train/response_length`` of the last ``window`` steps moved more than ``max_change`` (relative)
    from its early baseline, either way.

    Why: a collapsed policy often drops its reasoning and writes only the agreed answer (length falls),
    or games the format (length runs to the limit); a healthy run changes length slowly.
    """

    max_change: Annotated[float, real(0, open_low=True)] = 0.5
    window: Annotated[int, integer(1)] = 5
    when = "step"


    def check(self, h: History) -> Finding | None:
        recent = window(h.values("train/response_length"), self.window)
        base = h.baseline.get("train/response_length")
        if recent is None or base is None:
            return None
        change = relative_change(sum(recent) / len(recent), base)
        return Finding(abs(change) > self.max_change, {"length_change": change})


@checked
@dataclass
class AnswerRateDrop:
    """Mean ``train/answer_rate`` of the last ``window`` steps fell more than ``max_drop`` below its baseline.

    Why: samples without a readable answer never agree with a majority; a falling answer rate means the
    policy is drifting away from the task format (often together with a length drift), and the vote's
    label then rests on a few samples.
    """

    max_drop: Annotated[float, real(0, 1)] = 0.3
    window: Annotated[int, integer(1)] = 5
    when = "step"


    def check(self, h: History) -> Finding | None:
        recent = window(h.values("train/answer_rate"), self.window)
        base = h.baseline.get("train/answer_rate")
        if recent is None or base is None:
            return None
        drop = base - sum(recent) / len(recent)
        return Finding(drop > self.max_drop, {"answer_rate_drop": drop})


@checked
@dataclass
class RewardDivergence:
    """The self-reward rises while held-out accuracy over the last ``evals`` evaluations is flat or falling.

    Self-reward: ``train/reward/vote`` (else ``train/reward/mixed``); its least-squares slope per step over
    the last ``window`` steps must exceed ``min_rise``. Held-out: ``heldout`` (a glob, default every
    set's ``mean@k``); its slope per evaluation must be <= ``tolerance`` for some set.
    Why: this is the definition of reward hacking (the SRT paper; the URLVR study's "rise then fall"):
    the model is getting better at agreeing with itself and not at the task. The held-out sets carry gold
    answers, but they are the run's own evaluation, never a training signal.
    """

    window: Annotated[int, integer(2)] = 5
    min_rise: Annotated[float, real()] = 0.005
    evals: Annotated[int, integer(2)] = 3
    tolerance: Annotated[float, real()] = 0.0
    heldout: Annotated[str, HELDOUT] = "val/*/mean@*"
    when = "eval"


    def check(self, h: History) -> Finding | None:
        name = self_reward_name(h)
        rewards = window(h.values(name), self.window) if name else None
        sets = [window(h.values(n), self.evals) for n in h.names(self.heldout)]
        sets = [s for s in sets if s is not None]
        if rewards is None or not sets:
            return None
        rise, heldout = slope(rewards), min(slope(s) for s in sets)
        return Finding(rise > self.min_rise and heldout <= self.tolerance,
                       {"reward_slope": rise, "heldout_slope": heldout})


@checked
@dataclass
class TopAnswerShare:
    """At the latest evaluation some held-out set's ``top_answer_share`` >= ``threshold``.

    Why: held-out prompts are independent questions; when one answer is most of all their samples the
    policy answers every question the same way, whatever the training reward says.
    """

    threshold: Annotated[float, real(0, 1)] = 0.5
    when = "eval"


    def check(self, h: History) -> Finding | None:
        latest = [h.values(n)[-1] for n in h.names("val/*/top_answer_share")]
        if not latest:
            return None
        return Finding(max(latest) >= self.threshold, {"top_answer_share": max(latest)})


@checked
@dataclass
class ProbeDrop:
    """USES LABELS (``callbacks.guard.probe``, :mod:`srtlab.guard.probe`): the labelled probe's mean@k is more
    than ``max_drop`` below its best so far (since the start or the last rollback).

    Why: a probe with gold answers measures what every label-free rule can only infer; the collapse study
    (docs/collapse.md) had the policy converge on wrong answers that stayed varied, which no label-free
    signal saw in time. Added by the guard when a probe is configured, under the name ``probe``.
    """

    max_drop: Annotated[float, real(0, 1)] = 0.1
    when = "step"


    def check(self, h: History) -> Finding | None:
        names = h.names("guard/probe/mean@*")
        rows = h.series[names[0]] if names else []
        newest = max((series[-1][0] for series in h.series.values() if series), default=None)
        if not rows or rows[-1][0] != newest:  # checked at the steps the probe ran
            return None
        values = [v for _, v in rows]
        return Finding(max(values) - values[-1] > self.max_drop, {"probe_mean": values[-1], "probe_best": max(values)})


GuardRule = MajorityCollapse | AnswerConcentration | EntropyCollapse | LengthDrift | AnswerRateDrop | RewardDivergence \
    | TopAnswerShare | ProbeDrop
