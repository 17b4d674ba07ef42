"""Bad input, as a new user would type it: every case stops in the up-front check with one line naming
the key and the value, exit status 2, and nothing written (no run folder, no .hydra/, no log file).

The table runs through the real command line entry (``srtlab.__main__.main``) in process; a few cases
run as subprocesses for the exit status. Crafted checkpoint files must not run code.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from srtlab.__main__ import main

REPO = Path(__file__).resolve().parents[1]

# (command, overrides, what the one line must contain); every config key group, a wrong type and an
# out-of-range value each
TABLE = [
    # run
    ("fit", ["module.micro_batch_tokens=0"], "module.micro_batch_tokens=0; accepted: an integer >= 1"),
    ("fit", ["module.micro_batch_tokens=1.5"], "module.micro_batch_tokens=1.5; accepted: an integer >= 1"),
    *([("fit", ["trainer=fsdp"], "trainer.accelerator='gpu'; accepted: cpu or auto on this machine (torch sees no GPU")]
      if not torch.cuda.is_available() else []),  # said before the data and model load, not as Lightning's traceback
    ("fit", ["module.micro_batch_tokens=100", "rollout.sampling.max_new_tokens=100"],
     "module.micro_batch_tokens=100; accepted: at least 101: one prompt and its completion fit one pass"),
    ("fit", ["module.micro_batch_tokens=600", "rollout.sampling.max_new_tokens=200", "data.max_prompt_tokens=500"],
     "module.micro_batch_tokens=600; accepted: at least 700: one prompt and its completion fit one pass "
     "(rollout.sampling.max_new_tokens (200) + data.max_prompt_tokens (500))"),
    ("fit", ["seed=-1"], "seed=-1; accepted: an integer >= 0"),
    ("fit", ["seed=abc"], "seed='abc'"),
    ("fit", ["checkpoint_every=0"], "checkpoint_every=0"),
    ("fit", ["threads=0"], "threads=0; accepted: an integer >= 1 or null"),
    ("fit", ["resume=maybe"], "resume='maybe'; accepted: true or false"),
    ("fit", ["name=../../escape"], "name='../../escape'; accepted: a name, or a relative path that stays inside "
                                   "outputs/ (the run folder is outputs/<name>/<date_time>; an absolute run_dir "
                                   "puts it elsewhere)"),
    ("fit", ["name=runs/../.."], "name='runs/../..'; accepted: a name, or a relative path that stays inside"),
    ("fit", ["run_dir=../escape"], "run_dir='../escape'; accepted: an absolute path, or a relative path that stays "
                                   "inside outputs/ (this one leaves it)"),
    # model
    ("fit", ["model.dtype=fp8"], "model.dtype='fp8'; accepted: float32, bfloat16, float16"),
    ("fit", ["model.dtype=16"], "model.dtype=16; accepted: float32, bfloat16, float16"),
    ("fit", ["model.trust_remote_code=yes"], "model.trust_remote_code='yes'; accepted: true or false"),
    ("fit", ["model.lora.r=-1"], "model.lora.r=-1; accepted: an integer >= 0"),
    ("fit", ["model.lora.dropout=1.5"], "model.lora.dropout=1.5; accepted: a number in [0, 1)"),
    ("fit", ["model.lora.alpha=1e300"], "model.lora.alpha=1e+300; accepted: a number in (0, 4096] (the update is "
                                        "scaled by alpha / r; alpha is usually 1-4 x r, and an r past 1024 is no "
                                        "longer low-rank)"),
    # rollout
    ("fit", ["rollout.n=abc"], "rollout.n='abc'; accepted: an integer >= 2"),
    ("fit", ["rollout.n=1"], "rollout.n=1; accepted: an integer >= 2"),
    ("fit", ["rollout.n=4.0"], "rollout.n=4.0; accepted: an integer >= 2"),
    ("fit", ["rollout.val_n=0"], "rollout.val_n=0; accepted: an integer >= 1"),
    ("fit", ["rollout.engine.dtype=half"], "rollout.engine.dtype='half'; accepted: float32, bfloat16, float16, auto, or null"),
    # sampling
    ("fit", ["rollout.sampling.temperature=hot"], "rollout.sampling.temperature='hot'; accepted: a number in [0, 100]"),
    ("fit", ["rollout.sampling.temperature=-1"], "rollout.sampling.temperature=-1"),
    ("fit", ["rollout.sampling.top_k=-1"], "rollout.sampling.top_k=-1; accepted: an integer >= 0 or null"),
    ("fit", ["rollout.sampling.top_k=2.5"], "rollout.sampling.top_k=2.5"),
    ("fit", ["rollout.sampling.top_p=0"], "rollout.sampling.top_p=0; accepted: a number in (0, 1]"),
    ("fit", ["rollout.sampling.max_new_tokens=0"], "rollout.sampling.max_new_tokens=0"),
    ("fit", ["rollout.sampling.max_new_tokens=100000000"],  # the model's context (the tiny model's: 1024) and it
     "rollout.sampling.max_new_tokens=100000000; accepted: an integer below 1024, the model's context "
     "(max_position_embeddings in "),
    ("fit", ["rollout.sampling.stop=Answer"], "rollout.sampling.stop='Answer'; accepted: a list of non-empty strings"),
    ("fit", ["rollout.sampling.min_new_tokens=40"],  # the key set, not rollout.val_sampling (which repeats it)
     "rollout.sampling.min_new_tokens=40; accepted: at most max_new_tokens (32)"),
    # data
    ("fit", ["data.val_size=0"], "data.val_size=0; accepted: an integer >= 1"),
    ("fit", ["data.batch_size=two"], "data.batch_size='two'"),
    ("fit", ["data.batch_size=100000"], "data.batch_size=100000; accepted: at most data.train_size (2000), the "
                                        "training prompts a batch is drawn from"),
    ("fit", ["data.max_prompt_tokens=0"], "data.max_prompt_tokens=0; accepted: an integer >= 1 or null"),
    ("fit", ["data.task=letter_countin"], "data.task='letter_countin'; accepted: a Reasoning Gym task"),
    ("fit", ["data=chain_sum", "data.task_config.min_digits=50"], "data.task_config={'min_digits': 50, 'max_digits': 1}; accepted: what reasoning-gym ChainSumConfig allows (max_digits must be >= min_digits)"),
    ("fit", ["+data.task_config.max_wordz=3"], "max_wordz"),
    ("fit", ["data.train_ids_from=/no/such/labels.jsonl"], "/no/such/labels.jsonl"),
    # reward
    ("fit", ["reward.weights.vote=-1"], "reward.weights.vote=-1; accepted: a number in [0, 100]"),
    ("fit", ["reward.weights.vote=1e300"], "reward.weights.vote=1e+300; accepted: a number in [0, 100] (sources score "
                                           "in [0, 1], so a weight 100 times another's already drowns it; larger "
                                           "values only overflow the float32 reward)"),
    ("fit", ["reward.weights.vote=0"], "reward.weights={'vote': 0}; accepted: weights with a positive sum"),
    ("fit", ["reward.weights.vote=inf"], "reward.weights.vote=inf"),
    ("fit", ["reward.weights.vote=high"], "reward.weights.vote='high'"),
    ("fit", ["reward.abstain_value=nan"], "reward.abstain_value=nan; accepted: a number in [-100, 100]"),
    ("fit", ["reward.abstain_value=1e300"], "reward.abstain_value=1e+300; accepted: a number in [-100, 100] (on the "
                                            "scale of the mix: scores in [0, 1] times weights of at most 100)"),
    # algorithm
    ("fit", ["algorithm.clip_eps=-0.1"], "algorithm.clip_eps=-0.1; accepted: a number in (0, 1)"),
    ("fit", ["algorithm.clip_eps=wide"], "algorithm.clip_eps='wide'"),
    ("fit", ["algorithm.max_tokens=-5"], "algorithm.max_tokens=-5; accepted: an integer >= 1 or null"),
    ("fit", ["algorithm.ppo_epochs=0"], "algorithm.ppo_epochs=0; accepted: an integer in [1, 64]"),
    ("fit", ["algorithm.is_correction=clip"], "algorithm.is_correction='clip'; accepted: none, tis, mis"),
    ("fit", ["algorithm.is_cap=0.5"], "algorithm.is_cap=0.5; accepted: a number in [1, 1000]"),
    ("fit", ["algorithm.dual_clip=1"], "algorithm.dual_clip=1; accepted: a number in (1, 100] or null"),
    ("fit", ["data=file"], "data.source.path=???; accepted: a value"),
    ("fit", ["algorithm.kl_coef=-1"], "algorithm.kl_coef=-1; accepted: a number in [0, 10]"),
    ("fit", ["algorithm.kl_coef=1e300"], "algorithm.kl_coef=1e+300; accepted: a number in [0, 10] (a KL term 10x"),
    ("fit", ["algorithm.advantage=ppo"], "algorithm.advantage='ppo'; accepted: rloo, grpo, dr_grpo"),
    ("fit", ["algorithm.loss_agg=1"], "algorithm.loss_agg=1"),
    # optim
    ("fit", ["optim.lr=-1e-5"], "optim.lr=-1e-05; accepted: a number in (0, 1]"),
    ("fit", ["optim.lr=fast"], "optim.lr='fast'"),
    ("fit", ["optim.lr=1e308"], "optim.lr=1e+308; accepted: a number in (0, 1] (a larger step diverges at once)"),
    ("fit", ["optim.betas=[0.9]"], "optim.betas=[0.9]; accepted: two numbers in [0, 1)"),
    ("fit", ["lr_schedule=warmup", "lr_schedule.start_factor=2"], "lr_schedule.start_factor=2; accepted: what torch.optim.lr_scheduler.LinearLR accepts"),
    ("fit", ["optim=sgd", "optim.momentum=-1"], "optim.momentum=-1; accepted: what torch.optim.SGD accepts"),
    # trainer
    ("fit", ["trainer.max_steps=0"], "trainer.max_steps=0; accepted: an integer >= 1"),
    ("fit", ["trainer.max_steps=ten"], "trainer.max_steps='ten'"),
    ("fit", ["trainer.precision=bf16"], "trainer.precision='bf16'; accepted: "),
    ("fit", ["trainer.val_check_interval=0"], "trainer.val_check_interval=0"),
    # curriculum
    ("fit", ["experiment=curriculum", "callbacks.curriculum.advance.threshold=1.5"],
     "callbacks.curriculum.advance.threshold=1.5; accepted: a number in [0, 1]"),
    ("fit", ["experiment=curriculum", "callbacks.curriculum.advance.threshold=high"],
     "callbacks.curriculum.advance.threshold='high'"),
    ("fit", ["experiment=curriculum", "callbacks.curriculum.advance.min_delta=1e300"],
     "callbacks.curriculum.advance.min_delta=1e+300; accepted: a number in [-1, 1] (the change of a share in [0, 1])"),
    # label
    ("label", ["label.k=0"], "label.k=0; accepted: an integer >= 1"),
    ("label", ["label.k=many"], "label.k='many'"),
    ("label", ["label.min_share=2"], "label.min_share=2; accepted: a number in [0, 1]"),
    # eval
    ("eval", ["rollout.val_n=-3"], "rollout.val_n=-3"),
    # an unknown key: Hydra's own message, on one line
    ("fit", ["rollout.nn=16"], "Could not override 'rollout.nn'"),
]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, tiny_model_dir):
    """Run ``python -m srtlab ARGS`` in process from an empty folder; -> (exit status, stderr lines, folder)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    def run(command: str, *overrides: str, model: bool = True) -> tuple[int, list[str], Path]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["srtlab"])
        monkeypatch.delenv("SRTLAB_COMMAND", raising=False)
        args = [command, *([f"model.path={tiny_model_dir}"] if model else []), *overrides]
        with pytest.raises(SystemExit) as stop:
            main(args)
        return stop.value.code, capsys.readouterr().err.splitlines(), cwd

    return run


def _assert_one_line(status: int, lines: list[str], expected: str) -> None:
    assert status == 2, (status, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("config error: ") and expected in lines[0], lines


@pytest.mark.parametrize("command,overrides,expected", TABLE, ids=[" ".join(o) for _, o, _ in TABLE])
def test_bad_value_is_one_line_and_writes_nothing(cli, command, overrides, expected):
    status, lines, cwd = cli(command, *overrides)
    _assert_one_line(status, lines, expected)
    assert list(cwd.iterdir()) == []  # no outputs/<name>/<date>/, no .hydra/, no log


# -- data files: checked like config values, before any model loads ---------------------------------
def _rows(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                   for i in range(start, start + n))


# (what the file holds, overrides, what the one line says after "data.source.path='<file>'; accepted: "): the
# defaults of data=file draw 64 held-out prompts and batches of 8; the tiny model's context is 1024 tokens
DATA_FILES = [
    ("empty", "", [], "a file with at least one row (this one has none)"),
    ("malformed_line", _rows(3) + '{"question": "b" "answer": "2"}\n' + _rows(80, 3), [],
     "one JSON object per line (line 4 is not JSON: Expecting ',' delimiter at column 18)"),
    ("not_an_object", _rows(80) + "[1, 2]\n", [], "one JSON object per line (line 81 is a JSON list, not an object)"),
    ("integer_question", _rows(80) + '{"question": 7, "answer": "8"}\n{"question": 9, "answer": "10"}\n', [],
     "rows whose question is a non-empty string (line 81: question is 7; 2 rows in all)"),
    ("empty_question", _rows(80) + '{"question": "", "answer": "1"}\n', [],
     "rows whose question is a non-empty string (line 81: no question / problem / prompt)"),
    ("list_answer", _rows(80) + '{"question": "x?", "answer": ["4"]}\n', [],
     "rows whose gold answer is a non-empty string, a number or null (line 81: answer is ['4'])"),
    ("empty_answer", _rows(80) + '{"question": "x?", "answer": " "}\n', [],
     "rows whose gold answer is a non-empty string, a number or null (line 81: answer is ' ')"),
    ("5mb_question", json.dumps({"question": "x" * 5_000_000, "answer": "1"}) + "\n", [],
     "rows whose prompt fits in 992 tokens (the model's context, 1024, less rollout.sampling.max_new_tokens, 32); "
     "its one row is longer"),
    ("longer_than_max_prompt_tokens", _rows(80), ["data.max_prompt_tokens=5"],
     "rows whose prompt fits in 5 tokens (data.max_prompt_tokens); all 80 rows are longer"),
]
# the same files, named by another key
DATA_KEYS = [
    ("few_rows", _rows(20), [], "data.val_size=64; accepted: fewer than the 20 distinct questions of '{path}': the "
                                "held-out set is drawn from them (no data.source.val_path) and training needs the rest"),
    ("batch_larger_than_the_file", _rows(200), ["data.batch_size=100000"],
     "data.batch_size=100000; accepted: at most 136, the training prompts of '{path}' left once 64 are held out "
     "(data.val_size)"),
    ("max_prompt_tokens_past_the_context", _rows(80), ["data.max_prompt_tokens=2000"],
     "data.max_prompt_tokens=2000; accepted: at most 992: the model's context, 1024 tokens (max_position_embeddings "
     "in "),
    ("malformed_val_path", _rows(80), ["data.source.val_path={bad}"],
     "data.source.val_path='{bad}'; accepted: one JSON object per line (line 1 is not JSON: Expecting value at "
     "column 1)"),
]


@pytest.mark.parametrize("name,content,overrides,expected", DATA_FILES, ids=[c[0] for c in DATA_FILES])
def test_bad_data_file_is_one_line_naming_the_file_and_line(cli, tmp_path, name, content, overrides, expected):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(content)
    status, lines, cwd = cli("fit", "data=file", f"data.source.path={path}", *overrides)
    _assert_one_line(status, lines, f"data.source.path='{path}'; accepted: {expected}")
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("name,content,overrides,expected", DATA_KEYS, ids=[c[0] for c in DATA_KEYS])
def test_data_file_too_small_for_the_config_names_the_key(cli, tmp_path, name, content, overrides, expected):
    path, bad = tmp_path / f"{name}.jsonl", tmp_path / "bad.jsonl"
    path.write_text(content)
    bad.write_text("not json\n")
    filled = [o.format(bad=bad) for o in overrides]
    status, lines, cwd = cli("fit", "data=file", f"data.source.path={path}", *filled)
    _assert_one_line(status, lines, expected.format(path=path, bad=bad))
    assert list(cwd.iterdir()) == []


# -- files and paths ---------------------------------------------------------------------------------
def test_missing_checkpoint_writes_nothing_where_the_run_folder_would_be(cli, tmp_path):
    where = tmp_path / "elsewhere"  # the run folder derived from ckpt_path would be this folder
    status, lines, cwd = cli("fit", f"ckpt_path={where / 'nonexistent.ckpt'}")
    _assert_one_line(status, lines, f"ckpt_path='{where / 'nonexistent.ckpt'}' does not exist")
    assert not where.exists() and list(cwd.iterdir()) == []


def test_text_file_as_checkpoint_is_refused_and_nothing_written_beside_it(cli, tmp_path):
    notes = tmp_path / "notes" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("not a checkpoint\n")
    status, lines, _ = cli("fit", f"ckpt_path={notes}")
    _assert_one_line(status, lines, "not a torch.save zip")
    assert list(notes.parent.iterdir()) == [notes]  # no config.yaml, logs/ or .hydra/ beside it


def test_label_checkpoint_must_be_a_file(cli, tmp_path):
    status, lines, _ = cli("label", f"ckpt_path={tmp_path}")
    _assert_one_line(status, lines, "ckpt_path=")
    assert "this is a folder" in lines[0]


def test_run_folder_outside_outputs_writes_nothing_above_it(cli, tmp_path):
    """``name=../../escape`` would be outputs/../../escape: two levels above outputs/, beside the working folder."""
    for override in ("name=../../escape", "run_dir=../escape"):
        status, lines, cwd = cli("fit", override)
        _assert_one_line(status, lines, override.split("=")[0] + "='../")
        assert list(cwd.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]


def test_resume_without_a_run(cli):
    status, lines, cwd = cli("fit", "resume=true")
    _assert_one_line(status, lines, "resume=True; accepted: true only when there is a run to continue")
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("key", ["run_dir", "label.out"])
def test_output_path_under_a_file(cli, tmp_path, key):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    status, lines, _ = cli("label", f"{key}={blocker / 'sub' / 'out'}")
    _assert_one_line(status, lines, f"{key}='{blocker / 'sub' / 'out'}'")
    assert "is a file" in lines[0] and blocker.read_text() == "x"


def test_label_out_that_is_a_folder(cli, tmp_path):
    status, lines, _ = cli("label", f"label.out={tmp_path}")
    _assert_one_line(status, lines, "label.out=")
    assert "this is a folder" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_label_out(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    status, lines, _ = cli("label", f"label.out={locked / 'labels.jsonl'}")
    _assert_one_line(status, lines, "not writable")


def test_model_folder_without_tokenizer(cli, tmp_path, tiny_model_dir):
    folder = tmp_path / "weights_only_model"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    status, lines, _ = cli("fit", f"model.path={folder}", model=False)
    _assert_one_line(status, lines, f"model.path='{folder}'; accepted: a built-in model")


def test_model_path_that_does_not_exist(cli):
    status, lines, _ = cli("fit", "model.path=/no/such/model", model=False)
    _assert_one_line(status, lines, "model.path='/no/such/model'; accepted: a built-in model")


def test_label_writes_its_output_only_through_a_partial_file(tmp_path):
    from srtlab.label import open_beside

    out = tmp_path / "labels.jsonl"
    out.write_text("previous labels\n")
    with pytest.raises(RuntimeError), open_beside(out) as f:
        f.write("half")
        raise RuntimeError("sampling failed")
    assert out.read_text() == "previous labels\n" and list(tmp_path.iterdir()) == [out]
    with open_beside(out) as f:
        f.write("new labels\n")
    assert out.read_text() == "new labels\n" and list(tmp_path.iterdir()) == [out]


# -- checkpoints never run code ----------------------------------------------------------------------
class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a crafted file could run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_checkpoint_runs_nothing_in_label(tiny_cfg, tmp_path):
    from srtlab.label import load_policy

    crafted = tmp_path / "crafted.ckpt"
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": _Payload(str(marker))}, crafted)
    # the file is a real exploit: an unsafe load runs its payload
    torch.load(crafted, weights_only=False)
    assert marker.exists()
    marker.unlink()

    cfg = tiny_cfg(f"ckpt_path={crafted}", f"label.out={tmp_path / 'labels.jsonl'}", name="label")
    with pytest.raises(pickle.UnpicklingError):
        load_policy(cfg)
    assert not marker.exists()


def test_no_unsafe_torch_load_in_the_code():
    """Every ``torch.load(`` in srtlab/ and experiments/ passes ``weights_only=True`` (in CI with the tests)."""
    offenders = []
    for root in ("srtlab", "experiments"):
        for path in (REPO / root).rglob("*.py"):
            source = path.read_text()
            for match in re.finditer(r"torch\.load\(", source):
                call = source[match.start():source.find(")", match.start()) + 1]
                if "weights_only=True" not in call:
                    line = source.count("\n", 0, match.start()) + 1
                    offenders.append(f"{path.relative_to(REPO)}:{line}: {call}")
    assert offenders == []


# -- the real command line, as subprocesses (exit status) --------------------------------------------
def _srtlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    env.pop("SRTLAB_COMMAND", None)
    return subprocess.run([sys.executable, "-m", "srtlab", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300, check=False)


def test_subprocess_exit_status_2_for_run_and_multirun(tmp_path):
    out = _srtlab("fit", "-m", "rollout.n=4,1", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == "config error: rollout.n=1; accepted: an integer >= 2"
    assert list(tmp_path.iterdir()) == []  # no multirun/ folder, no job folder
    out = _srtlab("label", "optim.lr=-1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "config error: optim.lr=-1; accepted: a number in (0, 1] (a larger step diverges at once)"
    assert list(tmp_path.iterdir()) == []


def test_subprocess_cfg_job_still_prints_the_config(tmp_path):
    out = _srtlab("fit", "--cfg", "job", "rollout.n=16", cwd=tmp_path)
    assert out.returncode == 0 and "'n': 16" in out.stdout  # YAML quotes the key n
    assert list(tmp_path.iterdir()) == []
