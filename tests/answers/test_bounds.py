"""Bounds on scoring cost: the pre-checks and the time limit, in the main thread and in other threads."""

import threading
import time

import pytest
from math_verify import parse

from srtlab.answers.bounds import (
    ScoreTimeout,
    bounded,
    expression_problem,
    latex_problem,
)


def _parsed(latex: str) -> object:
    return parse("$" + latex + "$", parsing_timeout=None)[0]


@pytest.mark.parametrize(
    ("latex", "reason"),
    [
        ("\\frac{" * 5000, "longer than"),
        ("(" * 5 + "1" + ")" * 5, "brackets nested"),
        ("{" * 9 + "1" + "}" * 9, "braces nested"),
    ],
)
def test_latex_problem_refuses(latex: str, reason: str) -> None:
    assert reason in latex_problem(latex)


@pytest.mark.parametrize(
    "latex",
    [r"2^{2^{2^{30}}}", r"10^{10^{10^{10}}}", "9!!!!!!!!!!!!", r"3^{10^{9}}", r"3^{100000}", "99999!",
     r"\sum_{i=1}^{10^{10}} i", r"\binom{10^{10}}{10^9}", r"e^{10^{10}}"],
)
def test_expression_problem_refuses_huge_numbers(latex: str) -> None:
    assert latex_problem(latex) is None  # short and shallow: only the parse shows the danger
    assert expression_problem(_parsed(latex)) is not None


@pytest.mark.parametrize(
    "latex",
    [r"\frac{1}{2}", r"2^{100}", r"x^{1000}", "10!", r"\binom{100}{50}", r"\left( 1, \frac{\sqrt{3}}{2} \right)",
     r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}", r"[1, 3)", r"\pi r^2", "0.5", r"3\sqrt{2}+1"],
)
def test_ordinary_answers_pass(latex: str) -> None:
    assert latex_problem(latex) is None
    assert expression_problem(_parsed(latex)) is None


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.parametrize("in_thread", [False, True])
def test_bounded_interrupts_in_any_thread(in_thread: bool) -> None:
    outcome: dict[str, object] = {}

    def work() -> None:
        outcome["result"] = bounded(0.05, _spin, 5.0)

    if in_thread:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    else:
        work()
    assert outcome["result"] == (False, None)  # the 5 s spin was interrupted (it would have finished otherwise)


def test_bounded_is_silent_when_the_call_finishes() -> None:
    assert bounded(0.05, sum, range(100)) == (True, 4950)
    _spin(0.2)  # nothing must be raised later


def test_nothing_is_raised_after_bounded_returns_even_at_its_deadline() -> None:
    """Calls that end right at their deadline, where a shot can land as the call returns: none may reach the
    code after it. (A ``with``-block time limit did: a shot landing in the context manager's exit left its
    watchdog firing into pytest's own reporting, on a loaded machine.)"""
    leaked = 0
    for i in range(300):  # spins from 0 to 4x the deadline: wherever the watchdog's wake-up lands on this machine
        bounded(0.002, _spin, 0.008 * (i % 50) / 50)
        try:
            _spin(0.004)  # past the watchdog's next re-fire (every 50 ms: 0.004 x 300 covers many)
        except ScoreTimeout:
            leaked += 1
    assert leaked == 0


def test_bounded_is_not_swallowed_by_except_exception() -> None:
    def swallowing() -> None:
        end = time.perf_counter() + 5.0
        while time.perf_counter() < end:
            try:
                _spin(0.01)
            except Exception:  # noqa: BLE001, S110 - what library code does; ScoreTimeout is a BaseException
                pass

    assert bounded(0.05, swallowing) == (False, None)  # swallowed, it would have run its 5 s and returned True
