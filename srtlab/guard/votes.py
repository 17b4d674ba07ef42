"""Per-prompt majority histories and the probe's label-free signals: pure functions over votes (no torch).

A prompt's record is its visits, one per time its group was sampled: the majority answer (None when no
sample had a readable answer), its share of the group, and whether it differs from the previous visit's.

- **Flip rate** (TTRL-Guard, arXiv 2605.19444): how often a prompt's majority answer changed between
  consecutive visits. A prompt is *at risk* when its flip rate is above ``max_flip_rate`` (0.3) after at least
  ``min_visits`` (5) visits while its recent majority share is above ``min_share`` (0.7): the policy is
  confident in an answer that keeps changing, which is what self-reward does before it locks onto a wrong one.
- **Agreement with the base model**: the share of prompts whose majority is the base model's majority (over
  the prompts where the base's vote was clear), and the share of samples that give the base model's majority
  answer (``vote_rate``: mean@k scored against the base's own votes instead of gold). Majority voting rewards
  what the policy already says, so a healthy self-rewarded run sharpens onto the base's votes; a run that
  leaves them is drifting.
- **Distinct answers**: how many different majority answers the prompts get, relative to the base's count
  (one answer for every question is the best-known collapse).
- **Cross-rephrasing agreement** (Co-Reward; Self-Harmony): the share of prompts whose
  majority is the same when the question is asked two ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from srtlab.answers.canonical import answers_equivalent, cluster_answers, normalize_text
from srtlab.answers.metrics import majority_vote
from srtlab.settings import Annotated, checked, integer, real


def same_answer(a: str | None, b: str | None, kind: str = "text") -> bool:
    """Whether two majority answers are the same (math-verify for ``math``); None equals only None."""
    if a is None or b is None:
        return a is None and b is None
    return normalize_text(a) == normalize_text(b) or (kind == "math" and answers_equivalent(a, b, kind))


@dataclass(frozen=True)
class Visit:
    """One sampling of a prompt's group: its majority answer, share, and whether it changed since the last visit."""

    step: int
    answer: str | None
    share: float
    flipped: bool = False


def flip_rate(visits: Sequence[Visit]) -> float | None:
    """Share of revisits whose majority differs from the previous visit's; None before a second visit."""
    if len(visits) < 2:
        return None
    return sum(v.flipped for v in visits[1:]) / (len(visits) - 1)


def at_risk(visits: Sequence[Visit], min_visits: int = 5, max_flip_rate: float = 0.3, min_share: float = 0.7,
            recent: int = 3) -> bool:
    """TTRL-Guard's test: at least ``min_visits`` visits, flip rate above ``max_flip_rate``, and the mean majority
    share of the last ``recent`` visits above ``min_share`` (confident, yet the answer keeps changing)."""
    rate = flip_rate(visits)
    if len(visits) < min_visits or rate is None:
        return False
    last = visits[-recent:]
    return rate > max_flip_rate and sum(v.share for v in last) / len(last) > min_share


@dataclass
class PromptVotes:
    """prompt key -> its visits (the last ``keep``), in order. The key is the question's text, so a question drawn
    again under another prompt id (training sets repeat questions) is the same prompt."""

    keep: int = 16
    visits: dict[str, list[Visit]] = field(default_factory=dict)

    def record(self, key: str, step: int, answer: str | None, share: float, kind: str = "text") -> Visit:
        """Append a visit; a second record of ``key`` at the same step replaces the first (a resumed step)."""
        rows = self.visits.setdefault(key, [])
        if rows and rows[-1].step == step:
            rows.pop()
        visit = Visit(step, answer, float(share), bool(rows) and not same_answer(rows[-1].answer, answer, kind))
        rows.append(visit)
        del rows[:-self.keep]
        return visit

    def flip_stats(self, min_visits: int = 5, max_flip_rate: float = 0.3, min_share: float = 0.7,
                   recent: int = 3) -> dict[str, float]:
        """``revisited`` (prompts seen twice or more), ``flip_rate`` (their mean), ``eligible`` (prompts with
        ``min_visits`` visits) and ``at_risk`` (the share of those at risk; 0 while none is eligible)."""
        rates = [r for r in (flip_rate(v) for v in self.visits.values()) if r is not None]
        eligible = [v for v in self.visits.values() if len(v) >= min_visits]
        risky = sum(at_risk(v, min_visits, max_flip_rate, min_share, recent) for v in eligible)
        return {"revisited": float(len(rates)), "flip_rate": sum(rates) / len(rates) if rates else 0.0,
                "eligible": float(len(eligible)), "at_risk": risky / len(eligible) if eligible else 0.0}

    def risky(self, min_visits: int = 5, max_flip_rate: float = 0.3, min_share: float = 0.7,
              recent: int = 3) -> list[str]:
        """The keys of the prompts at risk now."""
        return [k for k, v in self.visits.items() if at_risk(v, min_visits, max_flip_rate, min_share, recent)]

    def clear(self) -> None:
        self.visits = {}

    def state_dict(self) -> dict:
        return {"keep": self.keep, "visits": {k: [[v.step, v.answer, v.share, v.flipped] for v in rows]
                                              for k, rows in self.visits.items()}}

    @classmethod
    def from_state(cls, state: dict) -> PromptVotes:
        return cls(state["keep"], {k: [Visit(int(s), a, float(sh), bool(f)) for s, a, sh, f in rows]
                                   for k, rows in state["visits"].items()})


def agreement(a: Sequence[str | None], b: Sequence[str | None], kind: str = "text") -> float:
    """Share of positions where two lists of majority answers agree (same prompts, same order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"agreement needs two equally long, non-empty lists; got {len(a)} and {len(b)}")
    return sum(same_answer(x, y, kind) for x, y in zip(a, b)) / len(a)


def clear_agreement(a: Sequence[str | None], base: Sequence[str | None], base_shares: Sequence[float],
                    kind: str = "text", min_share: float = 0.5) -> float:
    """:func:`agreement` with the base model's majorities over the prompts where the base's vote was clear (its
    majority share above ``min_share``; all prompts when none was): a base majority of 3 in 8 is a coin the
    first update may flip, a clear one is what the base model knows."""
    keep = [i for i, share in enumerate(base_shares) if share > min_share] or list(range(len(base)))
    return agreement([a[i] for i in keep], [base[i] for i in keep], kind)


def vote_rate(samples: Sequence[Sequence[str | None]], labels: Sequence[str | None], kind: str = "text") -> float:
    """Share of all samples that give their prompt's label (here: the base model's majority answer), i.e. mean@k
    against the base's votes instead of gold. A prompt whose label is None (no base majority) counts as wrong."""
    if len(samples) != len(labels) or not samples:
        raise ValueError(f"vote_rate needs one label per prompt; got {len(samples)} prompts and {len(labels)} labels")
    hits = total = 0
    for answers, label in zip(samples, labels):
        total += len(answers)
        if label is not None:
            hits += sum(a is not None and same_answer(a, label, kind) for a in answers)
    return hits / total if total else 0.0


def distinct(answers: Sequence[str | None]) -> int:
    """Number of different answers (text-normalised) among ``answers``, None left out."""
    return len({normalize_text(a) for a in answers if a is not None})


def majorities(samples: Sequence[Sequence[str | None]], kind: str = "text") -> list[tuple[str | None, float]]:
    """Each prompt's majority answer and its share of the prompt's samples (ties: the first to appear)."""
    out = []
    for answers in samples:
        ids = cluster_answers(list(answers), kind)
        majority, share = majority_vote(ids)
        out.append((None if majority is None else answers[ids.index(majority)], share))
    return out


@checked
@dataclass
class FlipSettings:
    """``callbacks.guard.flips``: when a prompt is at risk (TTRL-Guard's values by default) and how many visits
    each prompt's history keeps."""

    min_visits: Annotated[int, integer(2)] = 5
    max_flip_rate: Annotated[float, real(0, 1)] = 0.3
    min_share: Annotated[float, real(0, 1)] = 0.7
    recent: Annotated[int, integer(1)] = 3
    keep: Annotated[int, integer(2)] = 16

    def test(self) -> dict[str, float | int]:
        """The keyword arguments of :func:`at_risk` and :meth:`PromptVotes.flip_stats`."""
        return {"min_visits": self.min_visits, "max_flip_rate": self.max_flip_rate, "min_share": self.min_share,
                "recent": self.recent}
