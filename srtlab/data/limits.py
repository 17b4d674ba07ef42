"""What fits the model: a prompt and its completion within the model's context, and enough rows for a batch.

A prompt may take ``data.max_prompt_tokens`` tokens, by default the model's context (``max_position_embeddings``
in its config.json, read without loading the model) less the longest completion (``rollout.sampling`` and
``rollout.val_sampling``'s ``max_new_tokens``). Longer prompts, counted as the engine renders them, are left out
and counted in the log, as verl's ``filter_overlong_prompts`` does; a file with none that fits is an error. A
``max_new_tokens`` that leaves no room for a prompt is an error before any model loads (``100000000`` used to be
accepted, and died allocating a 153 GB KV cache).
"""

from __future__ import annotations

from pathlib import Path

from srtlab.settings import Problem, problem

NEW_TOKENS = "rollout.sampling.max_new_tokens"  # what the datamodule's max_new_tokens repeat (configs/data/)


def limit_problems(context: tuple[int, Path] | None, max_prompt_tokens: int | None,
                   new_tokens: dict[str, int]) -> list[Problem]:
    """Each of ``new_tokens`` (field -> max_new_tokens) must leave room for a prompt in the ``context`` (tokens,
    the config.json it is read from; None: unknown, nothing to check), and ``max_prompt_tokens`` beside the longest."""
    if context is None:
        return []
    size, config = context
    found = [problem(field, n, f"an integer below {size}, the model's context (max_position_embeddings in "
                               f"{config}), so that a prompt fits beside the completion")
             for field, n in new_tokens.items() if n >= size]
    longest = max(new_tokens.values(), default=0)
    if not found and max_prompt_tokens is not None and max_prompt_tokens + longest > size:
        found.append(problem("max_prompt_tokens", max_prompt_tokens,
                             f"at most {size - longest}: the model's context, {size} tokens (max_position_embeddings "
                             f"in {config}), less {NEW_TOKENS}, {longest}, or null"))
    return found


def prompt_limit(max_prompt_tokens: int | None, context: tuple[int, Path] | None,
                 new_tokens: dict[str, int]) -> tuple[int, str] | None:
    """(the most tokens a prompt may take, where that number comes from); None when nothing limits it."""
    if max_prompt_tokens is not None:
        return max_prompt_tokens, "data.max_prompt_tokens"
    if context is None:
        return None
    longest = max(new_tokens.values(), default=0)
    return context[0] - longest, f"the model's context, {context[0]}, less {NEW_TOKENS}, {longest}"


def held_out_problems(where: str, drawn: int, val_size: int, overlong: int) -> list[Problem]:
    """A held-out set drawn from the training rows (no ``data.source.val_path``) that took every distinct question
    of ``where`` (``drawn`` < ``val_size``) would leave training none."""
    if drawn >= val_size:
        return []
    fitting = f" that fit ({overlong} longer ones left out)" if overlong else ""
    return [problem("val_size", val_size, f"fewer than the {drawn} distinct questions of {where}{fitting}: the "
                                          "held-out set is drawn from them (no data.source.val_path) and training "
                                          "needs the rest")]


def train_problems(where: str, drawn: int, batch_size: int, held_out: int | None, overlong: int) -> list[Problem]:
    """Fewer training prompts (``drawn``) than one batch takes; ``held_out``: the questions the held-out set took
    from the same rows (None: it has its own file)."""
    if drawn >= batch_size:
        return []
    rest = f" left once {held_out} are held out (data.val_size)" if held_out is not None else ""
    fitting = f", {overlong} longer ones left out" if overlong else ""
    return [problem("batch_size", batch_size, f"at most {drawn}, the training prompts of {where}{rest}{fitting}")]
