"""Every experiment composes and instantiates; bad configuration fails before any model loads; every key of every
composed config is checked, and by one owner only (one home per key)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import CONFIG_DIR
from srtlab.builder import Builder, alias_of
from srtlab.settings import recording
from srtlab.train import build_module, check_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
SPECIAL = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def leaf_keys(node, prefix: str = ""):
    """Every key of a config whose value is not a node: scalars, lists of scalars, empty mappings."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            if k not in SPECIAL and not (prefix == "" and k == "hydra"):
                yield from leaf_keys(v, f"{prefix}{k}.")
    elif isinstance(node, list) and node and any(isinstance(v, (dict, list)) for v in node):
        for i, v in enumerate(node):
            yield from leaf_keys(v, f"{prefix}{i}.")
    else:
        yield prefix.rstrip(".")


def checked_once(cfg) -> None:
    """``check_config`` checks every key of ``cfg``: each leaf is checked by exactly one owner (an object's signature,
    or srtlab.validate for what no object takes), itself or as part of a mapping an owner checks whole
    (``data.task_config``); a key that only repeats another (``data.seed: ${seed}``) is that key, checked there."""
    with recording() as found:
        check_config(cfg)
    owners: dict[str, set[str]] = {}
    for key, owner in found:
        owners.setdefault(key, set()).add(owner)
    twice = {k: sorted(o) for k, o in owners.items() if len(o) > 1}
    assert not twice, f"keys checked in two places: {twice}"
    tree = OmegaConf.to_container(cfg, resolve=False)
    keys = [k for k in leaf_keys(tree) if not any(alias_of(cfg, ".".join(k.split(".")[:i]))
                                                   for i in range(1, len(k.split(".")) + 1))]
    unchecked = [k for k in keys if not any(k == c or k.startswith(c + ".") for c in owners)]
    assert not unchecked, f"keys no one checks: {unchecked}"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tiny_cfg, tmp_path):
    extra = []
    if experiment == "teacher":  # reads a labels file written by `python -m srtlab label`
        labels = tmp_path / "labels.jsonl"
        labels.write_text('{"id": "letter_counting/train/0", "label": "1"}\n')
        extra = [f"reward.sources.teacher.labels={labels}"]
    # the tiny global batch (2) does not split over an experiment's 8 GPUs (check_batch_split): one device here
    cfg = tiny_cfg(f"experiment={experiment}", *extra, "trainer.devices=1", "trainer.accelerator=cpu")
    checked_once(cfg)
    assert cfg.name == experiment
    module, datamodule = build_module(cfg), Builder(cfg)("data")  # what fit builds; nothing heavy loads
    assert module.model is None and datamodule.train is None
    assert "Engine" in repr(module.rollouts.make_engine)  # a partial until the model exists


@pytest.mark.parametrize("group,option", [("algorithm", "grpo"), ("algorithm", "dr_grpo"), ("data", "products"),
                                          ("logger", "wandb"), ("reward", "ground_truth")])
def test_group_options_compose(group, option, tiny_cfg):
    check_config(tiny_cfg(f"{group}={option}"))


def test_eval_and_label_configs_compose_and_every_key_is_checked_once(tiny_cfg, tmp_path):
    checked_once(tiny_cfg(f"label.out={tmp_path / 'labels.jsonl'}", name="label"))
    checked_once(tiny_cfg("guard=rollback", "callbacks.guard.probe={size: 2}", "lr_schedule=warmup", "optim=sgd"))
    cfg = tiny_cfg(name="eval")
    checked_once(cfg)
    assert cfg.name == "eval" and cfg.ckpt_path is None


@pytest.mark.parametrize("override,message", [
    ("data.task=letter_countin", "data.task='letter_countin'; accepted: a Reasoning Gym task"),
    ("rollout.n=1", "rollout.n=1"),
    ("model.path=/no/such/model", "model.path='/no/such/model'; accepted: a built-in model"),
    ("algorithm.advantage=ppo", "algorithm.advantage='ppo'; accepted: rloo, grpo, dr_grpo"),
    ("rollout.sampling.top_p=0", "top_p=0"),
    ("+data.task_config.max_wordz=3", "max_wordz"),
    ("ckpt_path=/no/such.ckpt", "ckpt_path='/no/such.ckpt' does not exist"),
])
def test_bad_config_is_named(override, message, tiny_cfg):
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        check_config(tiny_cfg(override))
    assert message in str(err.value)


def test_unknown_key_is_rejected_by_hydra(tiny_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="rollout.nn"):
        tiny_cfg("rollout.nn=16")


# Every option of every group composes on top of the fit config and passes check_config (experiments are tested
# above). Groups outside fit.yaml's defaults are added where the experiments put them.
GROUP_OPTIONS = sorted((p.parent.name, p.stem) for p in Path(CONFIG_DIR).glob("*/*.yaml")
                       if p.parent.name != "experiment")
ADDED_AS = {"curriculum": "+curriculum@callbacks.curriculum"}


@pytest.mark.parametrize("group,option", GROUP_OPTIONS)
def test_every_group_option_composes(group, option, tiny_cfg, tmp_path):
    extra = []
    if (group, option) == ("reward", "teacher"):  # reads a labels file written by `python -m srtlab label`
        labels = tmp_path / "labels.jsonl"
        labels.write_text('{"id": "letter_counting/train/0", "label": "1"}\n')
        extra = [f"reward.sources.teacher.labels={labels}"]
    if (group, option) == ("data", "file"):  # your own file: its path is mandatory
        rows = tmp_path / "rows.jsonl"
        rows.write_text("".join(f'{{"question": "{i} + 1?", "answer": "{i + 1}"}}\n' for i in range(80)))
        extra = [f"data.source.path={rows}"]
    if group == "hardware":  # the tiny global batch (2) does not split over its 8 GPUs: one device here
        extra.append("trainer.devices=1")
    cfg = tiny_cfg(f"{ADDED_AS.get(group, group)}={option}", *extra, "trainer.accelerator=cpu")  # fsdp asks for GPUs
    checked_once(cfg)


@pytest.mark.parametrize("debug", ["tiny", "fast_dev"])
def test_debug_options_stay_small_on_any_experiment(debug):
    from conftest import compose_config

    cfg = compose_config("fit", ["experiment=rlvr", f"debug={debug}"])
    assert cfg.name == "debug" and cfg.trainer.max_steps <= 2 and cfg.data.batch_size <= 2
    assert cfg.reward == compose_config("fit", ["experiment=rlvr"]).reward  # the experiment's own settings are kept
