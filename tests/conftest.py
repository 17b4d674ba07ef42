"""Shared fixtures: a tiny random Llama and a character-level tokenizer, built offline in a temp folder."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    """A character-level tokenizer with the chat special tokens (no network, no files)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    chars = list(string.printable)
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", bos_token="<|im_start|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 2) -> Path:
    """Save a tiny random LlamaForCausalLM plus tokenizer at ``path`` and return it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")

# Small enough for a 2-core CPU: 2 prompts x 4 samples, 8 new tokens, 4 held-out prompts x 2 samples.
TINY_OVERRIDES = [
    "data.batch_size=2", "data.train_size=40", "data.val_size=4", "data.val_batch_size=4",
    "rollout.n=4", "rollout.val_n=2", "rollout.sampling.max_new_tokens=8", "rollout.engine.dtype=null",
    "trainer.max_steps=2", "trainer.val_check_interval=2", "checkpoint_every=1",
    "trainer.enable_progress_bar=false", "module.micro_batch_tokens=1024", "trainer.precision=32-true",
]


def compose_config(name: str, overrides: list[str]):
    """The config ``python -m srtlab <name> <overrides>`` would run with."""
    from hydra import compose, initialize_config_dir

    from srtlab.train import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=overrides)


@pytest.fixture
def tiny_cfg(tiny_model_dir, tmp_path):
    """A factory: the fit config on the tiny model, writing into a fresh temp run folder."""

    def make(*extra: str, name: str = "fit", run_dir: Path | None = None):
        run = run_dir or tmp_path / "run"
        return compose_config(name, [f"model.path={tiny_model_dir}", f"run_dir={run}", *TINY_OVERRIDES, *extra])

    return make


class LengthParity:
    """A test reward source: 1.0 for completions whose token ids sum to an even number. It gives the tiny random
    model (which never writes a readable answer) varied rewards, so its groups have advantages and train."""

    def __call__(self, rollouts, ctx):
        from srtlab.types import RewardOutput

        return RewardOutput(rewards=torch.tensor([float(sum(c) % 2 == 0) for c in rollouts.completion_ids]))


PARITY_REWARD = ["~reward.sources.vote", "~reward.weights.vote", "+reward.sources.parity._target_=conftest.LengthParity",
                 "+reward.weights.parity=1.0"]


def make_batch(prompts, answers):
    """A RolloutBatch with fake token ids; only the answers matter to the rewards."""
    from srtlab.types import RolloutBatch

    return RolloutBatch(prompts=prompts, n=len(answers) // len(prompts), prompt_ids=[[1, 2, 3] for _ in prompts],
                        completion_ids=[[4, 5] for _ in answers],
                        texts=[f"Answer: {a}" if a is not None else "..." for a in answers], answers=answers,
                        finish_reasons=["stop"] * len(answers))


def ctx_for(batch, **fields):
    """The RewardContext the mix would build for ``batch`` (its votes and gold verdicts), plus ``fields``."""
    from srtlab.answers.votes import vote_groups
    from srtlab.rewards.base import RewardContext
    from srtlab.rewards.ground_truth import GroundTruth

    return RewardContext(votes=vote_groups(batch), gold=GroundTruth().verdicts(batch), **fields)


def start_and_kill(cmd: list[str], run_dir: Path, cwd: Path, max_steps: int) -> int:
    """Run a real ``python -m srtlab fit`` (this checkout's code), SIGKILL it just after its first checkpoint;
    -> the global step that checkpoint holds (asserted strictly between 0 and ``max_steps``)."""
    import os
    import signal
    import subprocess
    import time

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "tests")])}
    env.pop("SRTLAB_COMMAND", None)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # let it run on past the checkpoint, so some work after it is lost
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < stopped_at < max_steps
    return stopped_at
