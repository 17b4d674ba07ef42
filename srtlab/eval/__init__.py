"""Evaluation drivers: held-out sampling and scoring (``heldout``) and the reflect-and-retry evaluation
(``retry``). The answer-level primitives they score with live in ``srtlab.answers``."""
