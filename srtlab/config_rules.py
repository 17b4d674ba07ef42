"""The rule table of the up-front config check: the type and range of every single key (``srtlab.validate``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_ABSENT = object()


# -- the rule table ---------------------------------------------------------------------------------
Check = tuple[Callable[[Any], bool], str]  # (does the value pass, what is accepted)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(low: int | None = None, high: int | None = None, null: bool = False) -> Check:
    """An int (not a bool, not a float) in [low, high]."""
    text = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
    ok = lambda v: is_int(v) and (low is None or v >= low) and (high is None or v <= high)
    return (lambda v: v is None or ok(v), text + " or null") if null else (ok, text)


def real(low: float | None = None, high: float | None = None, open_low: bool = False, open_high: bool = False,
         null: bool = False) -> Check:
    """A finite number in the interval; ``open_*`` excludes that end."""
    lo = "" if low is None else ("(" if open_low else "[") + f"{low}, "
    hi = "" if high is None else f"{high}" + (")" if open_high else "]")
    text = ("a finite number" if low is None and high is None else
            f"a number in {lo}{hi}" if low is not None and high is not None else
            f"a number {'>' if open_low else '>='} {low}" if low is not None else
            f"a number {'<' if open_high else '<='} {high}")
    ok = lambda v: is_real(v) and (low is None or (v > low if open_low else v >= low)) and (
        high is None or (v < high if open_high else v <= high))
    return (lambda v: v is None or ok(v), text + " or null") if null else (ok, text)


def choice(options: Any, null: bool = False) -> Check:
    opts = list(options)
    text = ", ".join(map(str, opts)) + (", or null" if null else "")
    return (lambda v: (null and v is None) or (isinstance(v, str) and v in opts)), text


def boolean() -> Check:
    return (lambda v: isinstance(v, bool)), "true or false"


def text(null: bool = False) -> Check:
    ok = lambda v: isinstance(v, str) and v != ""
    return (lambda v: (null and v is None) or ok(v)), "a non-empty string" + (" or null" if null else "")


def strings() -> Check:
    return (lambda v: isinstance(v, (list, ListConfig)) and all(isinstance(s, str) and s for s in v),
            "a list of non-empty strings")


def unit_pair() -> Check:
    return (lambda v: isinstance(v, (list, ListConfig)) and len(v) == 2 and all(is_real(b) and 0 <= b < 1 for b in v),
            "two numbers in [0, 1)")


def _sampling(prefix: str) -> dict[str, Check]:
    return {f"{prefix}.temperature": real(0), f"{prefix}.top_p": real(0, 1, open_low=True),
            f"{prefix}.top_k": integer(0, null=True), f"{prefix}.max_new_tokens": integer(1),
            f"{prefix}.stop": strings()}


def _rules() -> dict[str, Check]:
    """key -> check; a key absent from the config (a group that does not have it) is skipped."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR

    from srtlab.algorithms.advantages import ADVANTAGE_ESTIMATORS
    from srtlab.algorithms.losses import AGGREGATIONS, IS_CORRECTIONS
    from srtlab.models.load import DTYPES

    return {
        # run
        "name": text(), "seed": integer(0), "resume": boolean(), "eval_before": boolean(), "eval_after": boolean(),
        "checkpoint_every": integer(1), "micro_batch_prompts": integer(1), "threads": integer(1, null=True),
        "ckpt_path": text(null=True), "samples_every": integer(0),
        # model
        "model.path": text(), "model.dtype": choice(DTYPES), "model.trust_remote_code": boolean(),
        "model.activation_checkpointing": boolean(), "model.lora.r": integer(0),
        "model.lora.alpha": real(0, open_low=True), "model.lora.dropout": real(0, 1, open_high=True),
        # rollout and sampling
        "rollout.n": integer(2), "rollout.val_n": integer(1), "rollout.engine.prompts_per_call": integer(1),
        **_sampling("rollout.sampling"), **_sampling("rollout.val_sampling"),  # see check_table
        # data
        "data.task": text(null=True), "data.batch_size": integer(1), "data.train_size": integer(1, null=True),
        "data.val_size": integer(1), "data.val_batch_size": integer(1), "data.seed": integer(0),
        "data.train_ids_from": text(null=True),
        # reward (the weights: see _check_weights)
        "reward.abstain_value": real(),
        # algorithm
        "algorithm.advantage": choice(ADVANTAGE_ESTIMATORS), "algorithm.loss_agg": choice(AGGREGATIONS),
        "algorithm.clip_eps": real(0, 1, open_low=True, open_high=True),
        "algorithm.clip_eps_high": real(0, open_low=True, null=True), "algorithm.kl_coef": real(0),
        "algorithm.max_tokens": integer(1, null=True), "algorithm.ppo_epochs": integer(1),
        "algorithm.mini_batches": integer(1), "algorithm.is_correction": choice(IS_CORRECTIONS),
        "algorithm.is_cap": real(1), "algorithm.dual_clip": real(1, open_low=True, null=True),
        # optim
        "optim.lr": real(0, open_low=True), "optim.weight_decay": real(0), "optim.betas": unit_pair(),
        "optim.warmup_steps": integer(0), "optim.grad_clip": real(0),
        # trainer
        "trainer.max_steps": integer(1), "trainer.val_check_interval": integer(1, null=True),
        "trainer.precision": choice(typing.get_args(_PRECISION_INPUT_STR)), "trainer.log_every_n_steps": integer(1),
        "trainer.num_sanity_val_steps": integer(-1), "trainer.enable_progress_bar": boolean(),
        # label
        "label.out": text(), "label.k": integer(1), "label.min_share": real(0, 1), "label.size": integer(1, null=True),
        "label.prompts_per_call": integer(1),
    }


def _select(cfg: DictConfig, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def _interpolated(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` (or a node above it) takes its value from another key (``data.seed: ${seed}``,
    ``rollout.val_sampling: ${rollout.sampling}``): that key is checked itself, and named once."""
    parts = key.split(".")
    for i in range(len(parts)):
        parent = OmegaConf.select(cfg, ".".join(parts[:i])) if i else cfg
        if not isinstance(parent, DictConfig) or parts[i] not in parent:
            return False
        if OmegaConf.is_interpolation(parent, parts[i]):
            return True
    return False


def bad(key: str, value: Any, accepted: str) -> str:
    """The one-line message for a bad value."""
    return f"{key}={value!r}; accepted: {accepted}"


def check_table(cfg: DictConfig) -> list[str]:
    """Step 1: every key of ``_rules()`` (and the curriculum thresholds) -> one message per bad value."""
    rules = dict(_rules())
    for name in (cfg.get("callbacks") or {}):  # the curriculum's advance rule reads shares in [0, 1]
        rules[f"callbacks.{name}.advance.threshold"] = real(0, 1)
    if "HFEngine" in str(OmegaConf.select(cfg, "rollout.engine._target_", default="")):
        from srtlab.models.load import DTYPES

        rules["rollout.engine.dtype"] = choice(DTYPES, null=True)
    errors = []
    for key, (ok, accepted) in rules.items():
        value = _select(cfg, key)
        if value is not _ABSENT and not ok(value) and not _interpolated(cfg, key):
            errors.append(bad(key, value, accepted))
    return errors
