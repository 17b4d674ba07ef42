"""Collapse rules: small dataclasses over a :class:`~srtlab.guard.signals.History`.

Each rule reads a few signals and returns a :class:`Finding` (the values it measured and whether it
fires) or None while it has too little history. ``when`` says if it is checked after every training
step (``"step"``) or after every evaluation (``"eval"``). Every rule declares what it reads: ``reads`` (the
metric names or globs) and ``labels`` (True when one of them comes from gold answers: such a rule is refused
by the label-free presets, and its values and events are named ``labelled``). The docstring of each says why
it indicates collapse; docs/guard.md has the same in prose, and docs/collapse.md the study behind the
shipped thresholds. A task whose gold answers are themselves concentrated needs a higher concentration
threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from srtlab.guard.signals import History, fresh, relative_change, self_reward_name, slope, window
from srtlab.settings import Annotated, Rule, boolean, checked, choice, integer, real

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
    reads: ClassVar[tuple[str, ...]] = ("train/majority_share", "train/entropy")
    labels: ClassVar[bool] = False

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
    """``train/answer_concentration`` >= ``threshold`` on each of the last ``window`` steps, and at least ``min_rise``
    above its baseline (the mean of the first ``baseline_steps`` steps).

    Why: different prompts have different answers. When one answer takes most of a step's samples
    across prompts, the policy gives one answer for every question (e.g. "1"), which the vote rewards
    because every group agrees with itself. ``min_rise`` makes the rule relative to the task as the base model
    answers it: where one answer is already most of the base model's answers (letter_counting's "1"), or a task
    simply has a common answer, concentration alone is not a collapse (it fired on improving runs).
    """

    threshold: Annotated[float, real(0, 1)] = 0.5
    window: Annotated[int, integer(1)] = 3
    min_rise: Annotated[float, real(0, 1)] = 0.25
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("train/answer_concentration",)
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        values = window(h.values("train/answer_concentration"), self.window)
        base = h.baseline.get("train/answer_concentration")
        if values is None or base is None:
            return None
        return Finding(min(values) >= self.threshold and min(values) - base >= self.min_rise,
                       {"min_concentration": min(values), "baseline": base})


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
    reads: ClassVar[tuple[str, ...]] = ("train/entropy",)
    labels: ClassVar[bool] = False

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
    reads: ClassVar[tuple[str, ...]] = ("train/response_length",)
    labels: ClassVar[bool] = False

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
    reads: ClassVar[tuple[str, ...]] = ("train/answer_rate",)
    labels: ClassVar[bool] = False

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
    the model is getting better at agreeing with itself and not at the task. USES LABELS: held-out mean@k is
    scored against gold answers (the run's own evaluation, never a training signal), so the rule is only in
    ``guard=labelled``.
    """

    window: Annotated[int, integer(2)] = 5
    min_rise: Annotated[float, real()] = 0.005
    evals: Annotated[int, integer(2)] = 3
    tolerance: Annotated[float, real()] = 0.0
    heldout: Annotated[str, HELDOUT] = "val/*/mean@*"
    when = "eval"
    reads: ClassVar[tuple[str, ...]] = ("train/reward/vote", "train/reward/mixed", "val/*/mean@*")
    labels: ClassVar[bool] = True

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
    """At the latest evaluation some held-out set's ``top_answer_share`` >= ``threshold`` and at least ``min_rise``
    above that set's first evaluation (the base model's, before training).

    Why: held-out prompts are independent questions; when one answer is most of all their samples the
    policy answers every question the same way, whatever the training reward says. Relative to the base
    model's own share, so a task whose answers are concentrated to begin with is not flagged for it. Reads the
    held-out answers only, never their gold.
    """

    threshold: Annotated[float, real(0, 1)] = 0.5
    min_rise: Annotated[float, real(0, 1)] = 0.25
    when = "eval"
    reads: ClassVar[tuple[str, ...]] = ("val/*/top_answer_share",)
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        names = h.names("val/*/top_answer_share")
        if not names:
            return None
        rises = {n: h.values(n)[-1] - (h.first(n) or 0.0) for n in names}
        latest = {n: h.values(n)[-1] for n in names}
        fired = any(latest[n] >= self.threshold and rises[n] >= self.min_rise for n in names)
        return Finding(fired, {"top_answer_share": max(latest.values()), "rise": max(rises.values())})


@checked
@dataclass
class ProbeDrop:
    """USES LABELS (``callbacks.guard.labelled_probe``, :mod:`srtlab.guard.probe`): the labelled probe's mean@k is
    more than ``max_drop`` below its best so far (since the start or the last rollback).

    Why: a probe with gold answers measures what the label-free rules can only infer. Added by the guard when a
    labelled probe is configured, under the name ``labelled_probe``.
    """

    max_drop: Annotated[float, real(0, 1)] = 0.1
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/labelled/probe/mean@*",)
    labels: ClassVar[bool] = True

    def check(self, h: History) -> Finding | None:
        names = h.names("guard/labelled/probe/mean@*")
        values = fresh(h, names[0]) if names else None
        if not values:  # checked at the steps the probe ran
            return None
        return Finding(max(values) - values[-1] > self.max_drop, {"probe_mean": values[-1], "probe_best": max(values)})


@checked
@dataclass
class FlipRisk:
    """The share of prompts at risk (TTRL-Guard, arXiv 2605.19444) is at least ``threshold``.

    A prompt is at risk when its majority answer flipped on more than 30% of its revisits (after at least 5
    visits) while its recent majority share is above 0.7 (:mod:`srtlab.guard.votes`; the callback's
    ``flips`` settings). ``source``: ``probe`` (the unlabelled probe's fixed prompts, every probe) or ``train``
    (training questions that recur; few do in a short run on a large task).
    Why: a healthy self-rewarded run settles on one answer per prompt; confident answers that keep changing
    mean the vote's labels follow the policy's drift rather than the task.
    """

    threshold: Annotated[float, real(0, 1, open_low=True)] = 0.25
    source: Annotated[str, choice(("probe", "train"))] = "probe"
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/probe/at_risk", "guard/train/at_risk")
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        risk = fresh(h, f"guard/{self.source}/at_risk")
        eligible = fresh(h, f"guard/{self.source}/eligible")
        if risk is None or not eligible or eligible[-1] < 1:
            return None
        return Finding(risk[-1] >= self.threshold, {"at_risk": risk[-1], "eligible": eligible[-1]})


@checked
@dataclass
class BaseDrift:
    """On each of the last ``window`` probes, at most ``min_agreement`` of the probe prompts keep the base model's
    clear majority answer (``guard/probe/base_agreement``: over the prompts where the base's majority share was
    above 0.5), while the probe's mean majority share is below ``max_majority_share`` (null: whatever it is).

    Why: the vote rewards what the policy already says, so healthy self-rewarded training sharpens onto the base
    model's own votes; a policy whose majorities have left most of them is drifting. A run that moved its answers
    because it learned them (its own self-labels improving, or a verifier's reward) holds its new answers
    confidently; majorities that moved and stay split are noise the vote is amplifying.
    """

    min_agreement: Annotated[float, real(0, 1)] = 0.5
    window: Annotated[int, integer(1)] = 1
    max_majority_share: Annotated[float | None, real(0, 1, null=True)] = None
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/probe/base_agreement", "guard/probe/majority_share")
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        values = window(fresh(h, "guard/probe/base_agreement") or [], self.window)
        if values is None:
            return None
        shares = window(h.values("guard/probe/majority_share"), self.window) or [0.0]
        split = self.max_majority_share is None or max(shares) < self.max_majority_share
        return Finding(max(values) <= self.min_agreement and split,
                       {"base_agreement": values[-1], "majority_share": shares[-1]})


@checked
@dataclass
class VoteRateDrop:
    """The probe's ``vote_rate`` (the share of samples giving the base model's majority answer) is more than
    ``max_drop`` below its best so far (since the start or the last rollback).

    Why: mean@k scored against the base model's own votes rises while self-reward sharpens the policy onto
    them (SRT's gain) and falls once the policy leaves them: the rise-then-fall that held-out accuracy shows,
    read without a gold answer. A label-free stand-in for the labelled probe's ``ProbeDrop``.
    """

    max_drop: Annotated[float, real(0, 1, open_low=True)] = 0.15
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/probe/vote_rate",)
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        values = fresh(h, "guard/probe/vote_rate")
        if not values:
            return None
        best = max(values)
        return Finding(best - values[-1] > self.max_drop, {"vote_rate": values[-1], "vote_rate_best": best})


@checked
@dataclass
class AnswerDiversity:
    """The probe prompts' distinct majority answers fell to at most ``min_ratio`` x the base model's count.

    Why: different questions have different answers; a policy that gives fewer and fewer distinct answers
    across them is on the way to one answer for everything, and the base model's count is the task's own
    scale (no gold needed).
    """

    min_ratio: Annotated[float, real(0, 1)] = 0.5
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/probe/distinct_ratio",)
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        values = fresh(h, "guard/probe/distinct_ratio")
        if not values:
            return None
        return Finding(values[-1] <= self.min_ratio, {"distinct_ratio": values[-1]})


@checked
@dataclass
class KLJump:
    """KL(base || policy) on the base model's probe samples is above ``max_kl`` nats per sequence, or rose by
    more than ``max_jump`` since the previous probe.

    Why: collapse concentrates the policy's mass on a few outputs, so the base model's own samples become
    improbable under it: the KL to the reference jumps (the peer surveys' fourth early signal).
    """

    max_kl: Annotated[float | None, real(0, open_low=True, null=True)] = 2.0
    max_jump: Annotated[float | None, real(0, open_low=True, null=True)] = None
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/probe/kl",)
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        values = fresh(h, "guard/probe/kl")
        if not values:
            return None
        jump = values[-1] - values[-2] if len(values) > 1 else 0.0
        fired = (self.max_kl is not None and values[-1] > self.max_kl) or (
            self.max_jump is not None and jump > self.max_jump)
        return Finding(fired, {"kl": values[-1], "kl_jump": jump})


@checked
@dataclass
class RephraseDrop:
    """The share of probe prompts whose majority is the same when the question is asked two ways fell more than
    ``max_drop`` below the base model's (``guard/probe/rephrase_agreement``; tasks that can be rephrased).

    Why: a policy that learned the task answers a question the same however it is asked (Co-Reward; Self-Harmony);
    one that locked onto answers for the training wording does not.
    """

    max_drop: Annotated[float, real(0, 1, open_low=True)] = 0.25
    when = "step"
    reads: ClassVar[tuple[str, ...]] = ("guard/probe/rephrase_agreement",)
    labels: ClassVar[bool] = False

    def check(self, h: History) -> Finding | None:
        values = fresh(h, "guard/probe/rephrase_agreement")
        base = h.first("guard/probe/rephrase_agreement")
        if not values or base is None:
            return None
        return Finding(base - values[-1] > self.max_drop, {"rephrase_agreement": values[-1], "rephrase_base": base})


GuardRule = MajorityCollapse | AnswerConcentration | EntropyCollapse | LengthDrift | AnswerRateDrop | RewardDivergence \
    | TopAnswerShare | ProbeDrop | FlipRisk | BaseDrift | VoteRateDrop | AnswerDiversity | KLJump | RephraseDrop
