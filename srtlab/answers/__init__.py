"""Answers: the base layer every stage reads (no srtlab imports above ``types``).

- ``extract``: the final answer out of a completion, linear in its length;
- ``bounds``, ``canonical``: canonical forms and comparison at a bounded cost (math-verify, text);
- ``votes``: the majority vote within each prompt's group;
- ``gold``: verdicts against gold answers (monitors, the ground-truth reward, evaluation);
- ``metrics``: mean@k, maj@k, pass@k, the top-answer share and the held-out aggregates.
"""
