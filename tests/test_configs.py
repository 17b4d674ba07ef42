"""Every experiment composes and instantiates; bad configuration fails before any model loads."""

from pathlib import Path

import pytest
from hydra.utils import instantiate

from conftest import CONFIG_DIR
from srtlab.train import check_config

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tiny_cfg, tmp_path):
    extra = []
    if experiment == "teacher":  # reads a labels file written by `python -m srtlab label`
        labels = tmp_path / "labels.jsonl"
        labels.write_text('{"id": "letter_counting/train/0", "label": "1"}\n')
        extra = [f"reward.sources.teacher.labels={labels}"]
    # the tiny global batch (2) does not split over an experiment's 8 GPUs (check_batch_split): one device here
    cfg = tiny_cfg(f"experiment={experiment}", *extra, "trainer.devices=1")
    check_config(cfg)
    assert cfg.name == experiment
    instantiate(cfg.reward, _convert_="all")
    instantiate(cfg.algorithm).validate()
    instantiate(cfg.data, _convert_="all")
    instantiate(cfg.rollout.engine)  # a partial: the callback supplies model and tokenizer
    instantiate(cfg.rollout.sampling).validate()


@pytest.mark.parametrize("group,option", [("algorithm", "grpo"), ("algorithm", "dr_grpo"), ("data", "products"),
                                          ("logger", "wandb"), ("reward", "ground_truth")])
def test_group_options_compose(group, option, tiny_cfg):
    check_config(tiny_cfg(f"{group}={option}"))


def test_eval_config_composes(tiny_cfg):
    cfg = tiny_cfg(name="eval")
    check_config(cfg)
    assert cfg.name == "eval" and cfg.ckpt_path is None


@pytest.mark.parametrize("override,message", [
    ("data.task=letter_countin", "data.task='letter_countin' is not a Reasoning Gym task"),
    ("rollout.n=1", "rollout.n=1"),
    ("model.path=/no/such/model", "model.path='/no/such/model' is neither a built-in model"),
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
    cfg = tiny_cfg(f"{ADDED_AS.get(group, group)}={option}", *extra)
    check_config(cfg)


@pytest.mark.parametrize("debug", ["tiny", "fast_dev"])
def test_debug_options_stay_small_on_any_experiment(debug):
    from conftest import compose_config

    cfg = compose_config("fit", ["experiment=rlvr", f"debug={debug}"])
    assert cfg.name == "debug" and cfg.trainer.max_steps <= 2 and cfg.data.batch_size <= 2
    assert cfg.reward == compose_config("fit", ["experiment=rlvr"]).reward  # the experiment's own settings are kept
