"""Every random stream of a run, derived in one place from (run seed, stream name, keys).

A run is a pure function of its config and seed: each consumer asks for its own stream
(``seed_for(run_seed, "train", step)``) instead of adding magic offsets, so two streams never collide
by accident and a resumed run draws exactly what an uninterrupted run would have drawn. The keys are
whatever identifies one draw within the stream (the step, a task and level, a batch index).
"""

from __future__ import annotations

import hashlib
import zlib

# The named streams, and what each one seeds.
STREAMS = {
    "train": "training samples of a step (keys: step; with several ranks also \"rank\", rank > 0: train_seed)",
    "val": "held-out samples of an evaluation (keys: set index, batch index)",
    "probe": "the weight-sync probe's samples (keys: step)",
    "guard_probe": "the guard's labelled probe (keys: step)",
    "guard_watch": "the guard's unlabelled probe (keys: original | rephrased; the same at every probe)",
    "retry_eval": "held-out reflect-and-retry evaluation (keys: set index)",
    "climb_eval": "the curriculum's per-level evaluations (keys: task, level)",
    "label": "frozen-teacher labelling samples (keys: batch start)",
    "data": "training prompts (keys: task, level)",
    "data_val": "held-out prompts (keys: task, level)",
    "program": "the turns of a multi-call rollout program (keys: call index)",
    "chunk": "one generate call's chunk of prompts (keys: chunk start)",
    "request": "one engine request (keys: prompt index)",
    "skip": "whether an at-risk prompt's update is skipped (keys: step, prompt id)",
}

SEED_BITS = 31  # torch, numpy, random and vLLM all accept seeds below 2**31


def seed_for(run_seed: int, stream: str, *keys: int | str) -> int:
    """A seed in [0, 2**31) for one draw of ``stream`` (see STREAMS), a hash of (run seed, stream, keys)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; known: {', '.join(STREAMS)}")
    digest = hashlib.blake2b(repr((int(run_seed), stream, tuple(keys))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 2**SEED_BITS


def train_seed(run_seed: int, step: int, rank: int = 0) -> int:
    """The sampling seed of ``rank``'s share of step ``step``. Rank 0 keeps the one-process seed, so a
    one-process run is unchanged; every other rank draws its own, so the ranks' samples differ and the
    step's samples over all ranks are a pure function of (seed, step, number of ranks)."""
    return seed_for(run_seed, "train", step) if rank == 0 else seed_for(run_seed, "train", step, "rank", rank)


# The data streams keep the formulas every measured table in docs/ was drawn with (a new hash would change
# which questions are held out, and so every before/after figure); they live here so no other module
# carries a seed formula.
HELD_OUT_OFFSET = 1_000_003  # held-out prompts: seed + this, so they differ from the training prompts


def data_seed(run_seed: int, task: str = "", level: int | None = None) -> int:
    """The seed of a task's training prompts (of one curriculum level when ``level`` is given)."""
    if level is None:
        return run_seed
    return (run_seed * 1_000_003 + zlib.crc32(f"{task}/{level}".encode())) % 2**31


def heldout_seed(run_seed: int, task: str = "", level: int | None = None) -> int:
    """The seed of a task's held-out prompts (of one curriculum level when ``level`` is given)."""
    return data_seed(run_seed + HELD_OUT_OFFSET, task, level)
