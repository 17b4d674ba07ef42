"""Bounds on the cost of comparing model-written math: pre-checks and a time limit that works in any thread.

Why both. sympy evaluates integer powers and factorials in C (``2**(2**30)``, ``factorial(10**10)``),
and nothing can interrupt a C call: math-verify's own ``SIGALRM`` timeout (main thread only) and the
time limit below both fire only once that call returns, which can be never. So answers that would make
sympy build huge numbers are refused *before* sympy sees them (:func:`latex_problem` on the text,
:func:`expression_problem` on the unevaluated parse), and :func:`bounded` bounds the remaining,
pure-Python slow paths (deep parser backtracking, ``simplify``).

:func:`bounded` raises :class:`ScoreTimeout` in the calling thread from a watchdog thread
(``PyThreadState_SetAsyncExc``), so it works in the main thread, in data-loader or callback threads,
and needs no process. We measured the alternative, a worker process that is killed on overrun: it is
the only hard bound on C calls, but it costs a process start (seconds: sympy's import) and a round trip
per comparison, and breaks the one-process default that keeps a debugger usable; with the pre-checks
it is not needed.
"""

from __future__ import annotations

import ctypes
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sympy import Basic, Float, Integer, Number, Pow, Rational
from sympy.concrete.products import Product
from sympy.concrete.summations import Sum
from sympy.core.function import Derivative
from sympy.functions.combinatorial.factorials import (
    binomial,
    factorial,
    factorial2,
    subfactorial,
)
from sympy.functions.elementary.exponential import exp
from sympy.functions.special.gamma_functions import gamma
from sympy.integrals.integrals import Integral
from sympy.matrices import MatrixBase
from sympy.series.limits import Limit

T = TypeVar("T")
MAX_MATH_CHARS = 256  # a longer answer is no answer: MATH answers are a few dozen characters
MAX_BRACKET_DEPTH = 4  # nested ( and [: the LaTeX parser's cost grows steeply with it
MAX_BRACE_DEPTH = 8  # nested { (\frac{\sqrt{\frac{..}}}): cheap to parse, but deeper is not an answer
MAX_LOG10 = 10_000  # numbers sympy would build may have at most this many digits
MAX_NODES = 300  # sympy nodes in one parsed answer
_GROWING = (factorial, factorial2, subfactorial, gamma, binomial)  # about n! for argument n
_UNEVALUATED = (Sum, Product, Integral, Limit, Derivative)  # not answers; doit() may not terminate
_WATCHDOG_SHOTS = 20  # re-raise this many times at most (a handler may swallow one)
_WATCHDOG_REPEAT_S = 0.05  # re-raise this often in case library code swallowed the exception
_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc


class ScoreTimeout(BaseException):
    """Raised by :func:`bounded`'s watchdog (a BaseException so that library ``except Exception`` does not eat it)."""


def bounded(seconds: float, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
    """``fn(*args)`` stopped after ``seconds``: -> (True, its value), or (False, None) when it ran out of time.

    Interrupts Python code between bytecodes (as a signal would), in any thread, by raising :class:`ScoreTimeout`
    in it from a watchdog thread. A single C call (big-integer arithmetic) runs to its end first: keep those out
    with the pre-checks. Nothing is raised before ``fn`` starts or after this returns, which is why this is a
    function and not a ``with`` block: a context manager's exit is Python code, where a shot can land before it
    disarms the watchdog, which then goes on firing into whatever the thread runs next (pytest's own reporting,
    on a loaded machine). Here the watchdog fires only while it holds ``gate``, and the thread holds the gate
    except while ``fn`` runs: it releases it just before ``fn`` and takes it back just after, both C calls (no
    bytecode in between where a shot could land), so a shot is raised inside the ``try`` or dropped.
    """
    gate, left = threading.Lock(), threading.Event()
    gate.acquire()  # held until fn starts
    thread_id = ctypes.c_ulong(threading.get_ident())
    threading.Thread(target=_watch, args=(gate, left, thread_id, seconds), name="srtlab-score-time-limit",
                     daemon=True).start()
    try:
        try:
            gate.release()  # C: the watchdog may fire from here
            return True, fn(*args)
        finally:
            gate.acquire()  # C: and not from here on
            _ASYNC_EXC(thread_id, None)  # C: a shot set but not yet raised is dropped
            left.set()  # the watchdog stops
    except ScoreTimeout:
        return False, None


def _watch(gate: threading.Lock, left: threading.Event, thread_id: ctypes.c_ulong, seconds: float) -> None:
    if left.wait(seconds):
        return
    for _ in range(_WATCHDOG_SHOTS):  # bounded; fires only while holding the gate, so only into fn
        if gate.acquire(timeout=_WATCHDOG_REPEAT_S):
            try:
                if left.is_set():
                    return
                _ASYNC_EXC(thread_id, ctypes.py_object(ScoreTimeout))
            finally:
                gate.release()
        if left.wait(_WATCHDOG_REPEAT_S):
            return


def latex_problem(text: str) -> str | None:
    """Why ``text`` must not be parsed (too long, brackets or braces nested too deep), or None. O(len)."""
    if len(text) > MAX_MATH_CHARS:
        return f"longer than {MAX_MATH_CHARS} characters"
    brackets = braces = 0
    for char in text:
        if char in "([":
            brackets += 1
            if brackets > MAX_BRACKET_DEPTH:
                return f"brackets nested deeper than {MAX_BRACKET_DEPTH}"
        elif char in ")]":
            brackets = max(brackets - 1, 0)
        elif char == "{":
            braces += 1
            if braces > MAX_BRACE_DEPTH:
                return f"braces nested deeper than {MAX_BRACE_DEPTH}"
        elif char == "}":
            braces = max(braces - 1, 0)
    return None


def expression_problem(parsed: object) -> str | None:
    """Why comparing the unevaluated ``parsed`` could explode, or None.

    Refuses unevaluated sums, products, integrals, limits and derivatives, more than ``MAX_NODES``
    nodes, and any number sympy would build with more than ``MAX_LOG10`` digits (towers such as
    ``2^{2^{30}}``, factorial chains such as ``9!!!``), estimated from the tree without evaluating it.
    """
    if not isinstance(parsed, (Basic, MatrixBase)):
        return None  # math-verify's string fallbacks are compared as strings
    nodes = [0]
    try:
        size = _log10_bound(parsed, nodes)
    except _Refused as refused:
        return str(refused)
    if size > MAX_LOG10:
        return f"numbers of more than {MAX_LOG10} digits"
    return None


class _Refused(Exception):
    """Raised inside the tree walk to stop at the first refused node."""


def _log10_bound(expr: object, nodes: list[int]) -> float:
    """An upper bound on log10 of the largest number evaluating ``expr`` builds (symbols count as 10)."""
    nodes[0] += 1
    if nodes[0] > MAX_NODES:
        raise _Refused(f"more than {MAX_NODES} nodes")
    if isinstance(expr, MatrixBase) and not isinstance(expr, Basic):
        return sum(_log10_bound(entry, nodes) for entry in expr)
    if not isinstance(expr, Basic):
        return 0.0
    if isinstance(expr, _UNEVALUATED):
        raise _Refused(f"an unevaluated {type(expr).__name__}")
    if isinstance(expr, Number):
        return _number_log10(expr)
    if not expr.args:
        return 1.0  # a symbol or a constant such as pi
    if isinstance(expr, Pow):
        base, exponent = (_log10_bound(arg, nodes) for arg in expr.args)
        return _times_power_of_ten(max(base, 1.0), exponent)
    args = [_log10_bound(arg, nodes) for arg in expr.args]
    if isinstance(expr, exp):  # e**x, as Pow
        return _times_power_of_ten(1.0, args[0])
    if isinstance(expr, _GROWING):
        largest = max(args)  # log10(n!) <= n * log10(n), n <= 10**largest
        return _times_power_of_ten(max(largest, 1.0), largest)
    return sum(args)


def _times_power_of_ten(factor: float, log10_power: float) -> float:
    """``factor * 10**log10_power``, refusing what is too large to represent or to build."""
    if log10_power > math.log10(MAX_LOG10) + 1:
        raise _Refused(f"numbers of more than {MAX_LOG10} digits")
    return factor * 10.0**log10_power


def _number_log10(number: Number) -> float:
    """log10 of the larger of a number's numerator, denominator or magnitude (0 for small numbers)."""
    if isinstance(number, (Integer, Rational)):
        bits = max(int(number.p).bit_length(), int(number.q).bit_length())
        return bits * math.log10(2)
    if isinstance(number, Float):
        _, mantissa, exponent, _ = number._mpf_  # value = mantissa * 2**exponent
        return abs(exponent + int(mantissa).bit_length()) * math.log10(2)
    return 1.0
