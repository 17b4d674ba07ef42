"""The GPU check: SRT steps on one CUDA GPU with nothing to download, then the ``gpu``-marked tests.

For SmolLM2-135M (the built-in model folder, ``python -m srtlab prepare``) and for a randomly initialised
model of Qwen2.5-1.5B's shape (transformers' ``Qwen2Config``: hidden 1536, 28 layers, 12 heads, 2 KV
heads, intermediate 8960, vocab 151936; SmolLM2's tokenizer, whose ids all fit that vocabulary) it runs
SRT steps with the HF engine (bf16 sampling copy, majority-vote reward, bf16 autocast training, AdamW,
weight sync) and prints per-stage seconds, generated tokens/s, training tokens/s, MFU against the
device's bf16 peak (``--peak-tflops``, H200 dense: 989) and peak memory. MFU counts 2·N FLOPs per
generated token and 6·N per trained token (prompt tokens once per group, as the shared-prefix forward
computes them; N = parameters without the embeddings).

    python experiments/gpu_check.py                       # one CUDA GPU: both models, then pytest -m gpu
    python experiments/gpu_check.py --device cpu --small  # a smoke test on the CPU (tiny shapes, CI)

Then the long rows (``--long``, default 1,024 and 4,096): one step of the Qwen2.5-1.5B-shaped model at 8 prompts x 8
samples with every completion forced to T new tokens, and, on the longest step's rollout, training passes at
doubling ``module.micro_batch_tokens`` budgets until one runs out of memory: the largest micro-batch that fits.

Needs torch, transformers, Lightning, peft, and hydra-core, omegaconf, antlr4, reasoning-gym,
math-verify (wheels: docs/scale.md). Budget: under 8 minutes on one H200.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from srtlab.algorithms.advantages import compute_advantages
from srtlab.data.sources import ReasoningGymSource
from srtlab.modules.policy import PolicyModule
from srtlab.rollout.sync import policy_weights

QWEN25_1_5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                   intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)
SMALL_QWEN = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


def qwen_folder(tokenizer, sizes: dict, folder: Path) -> Path:
    """A model folder of a Qwen2 model of ``sizes`` (config.json and ``tokenizer``'s files, no weights), which
    ``model.init=random`` builds with fresh weights."""
    from transformers import Qwen2Config

    config = Qwen2Config(**sizes, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    assert len(tokenizer) <= config.vocab_size, "the tokenizer's ids must fit the vocabulary"
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_policy(args, model_path: str, init: str = "pretrained", extra: tuple[str, ...] = ()) -> PolicyModule:
    """The policy module as ``fit`` builds it (``srtlab.train.build_module``) from the default SRT config, with
    this check's shapes; its model loaded on ``args.device``."""
    from hydra import compose, initialize_config_dir

    from srtlab import config_dir
    from srtlab.train import build_module, register_resolvers

    register_resolvers()
    overrides = ["experiment=srt", f"model.path={model_path}", f"model.init={init}", "module.micro_batch_tokens=16384",
                 f"rollout.n={args.n}", f"rollout.sampling.max_new_tokens={args.max_new_tokens}",
                 f"rollout.engine.prompts_per_call={args.batch}", "rollout.engine.dtype=bfloat16", "optim.lr=1e-6",
                 "run_dir=/tmp/srtlab-gpu-check", *extra]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=overrides)
    policy = build_module(cfg)
    policy.configure_model()
    policy.model.to(args.device)
    return policy


def non_embedding_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name)


def training_autocast(args, device: str):
    """bf16 autocast on ``device`` for the training pass (``--no-bf16``: none)."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()


def run_model(name: str, policy: PolicyModule, args, device: str, warmup: bool = True):
    """``args.steps`` SRT steps (after one warm-up, unless not ``warmup``) and the figures; -> the last rollout."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = policy.model
    engine = policy.rollouts.make_engine(model=model, tokenizer=policy.tokenizer)
    sampling, reward = policy.rollouts.sampling, policy.reward
    prompts = ReasoningGymSource("letter_counting", size=args.batch * (args.steps + 1), seed=0).prompts
    first = 0 if warmup else 1
    opt = policy.make_optimizer([p for p in model.parameters() if p.requires_grad])  # the configured optimizer
    autocast = training_autocast(args, device)
    n_params = non_embedding_params(model)
    times: dict[str, list[float]] = {"generate": [], "reward": [], "train": [], "sync": [], "step": []}
    gen_tps, train_tps, gen_mfu, train_mfu = [], [], [], []
    for step in range(first, args.steps + 1):
        batch = prompts[step * args.batch:(step + 1) * args.batch]
        sync(); t0 = time.perf_counter()  # noqa: E702
        r = engine.generate(batch, args.n, sampling, seed=step)
        sync(); t1 = time.perf_counter()  # noqa: E702
        r.rewards = reward(r).rewards
        if not args.real_rewards:  # the full-cost step: every group has a non-zero advantage
            r.rewards = torch.arange(len(r), dtype=torch.float) % 2
        t2 = time.perf_counter()
        opt.zero_grad()
        adv = compute_advantages("rloo", r.rewards.to(device), r.n)
        with autocast:
            policy.accumulate_gradients(r, adv, lambda loss: loss.backward())
        opt.step()
        sync(); t3 = time.perf_counter()  # noqa: E702
        engine.load_weights(policy_weights(model))
        sync(); t4 = time.perf_counter()  # noqa: E702
        if step == 0:
            continue  # warm-up (allocations, kernels)
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            times[key].append(value)
        generated = sum(len(c) for c in r.completion_ids)
        trained = generated + sum(len(p) for p in r.prompt_ids)
        gen_tps.append(generated / (t1 - t0))
        train_tps.append(trained / (t3 - t2))
        gen_mfu.append(2 * n_params * generated / (t1 - t0) / (args.peak_tflops * 1e12))
        train_mfu.append(6 * n_params * trained / (t3 - t2) / (args.peak_tflops * 1e12))
    peak = (torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(f"{name}: {n_params / 1e6:.0f}M non-embedding parameters, {args.batch} prompts x {args.n} samples, "
          f"{args.max_new_tokens} new tokens, {device}, bf16 autocast={args.bf16}, {args.steps} steps")
    for key, values in times.items():
        print(f"  {key:9s} median {statistics.median(values):7.2f} s   (min {min(values):.2f}, max {max(values):.2f})")
    print(f"  generated tokens/s {statistics.median(gen_tps):.0f}   MFU {100 * statistics.median(gen_mfu):.2f}%")
    print(f"  training tokens/s {statistics.median(train_tps):.0f}   MFU {100 * statistics.median(train_mfu):.2f}%"
          f"  (peak {args.peak_tflops:g} TFLOP/s)")
    print(f"  peak memory {peak:.2f} GiB ({'allocated on the GPU' if device.startswith('cuda') else 'max RSS'})")
    return r


def run_long(args, folder: Path, lengths: list[int]) -> None:
    """The long rows: one step each (no warm-up) of 8 prompts x 8 samples, every completion forced to T new tokens,
    on the Qwen-shaped model; then, on the longest step's rollout, training passes at growing
    ``module.micro_batch_tokens`` budgets until one runs out of memory: the largest micro-batch that fits."""
    cuda = args.device.startswith("cuda")
    rollout, policy = None, None
    for length in lengths:
        long = argparse.Namespace(**{**vars(args), "batch": 8, "n": 8, "max_new_tokens": length, "steps": 1})
        policy = build_policy(long, str(folder), init="random", extra=(f"rollout.sampling.min_new_tokens={length}",))
        try:
            rollout = run_model(f"long: {'Qwen2.5-1.5B' if not args.small else 'small'} shape, 8 x 8 x {length} "
                                f"new tokens", policy, long, args.device, warmup=False)
        except torch.cuda.OutOfMemoryError as err:
            print(f"long: 8 x 8 x {length}: out of GPU memory ({str(err).splitlines()[0][:160]})")
            rollout = None
        if length != lengths[-1]:
            policy.model = None
            if cuda:
                torch.cuda.empty_cache()
    if rollout is None:
        return
    model, fits = policy.model, None
    autocast = training_autocast(args, args.device)
    adv = compute_advantages("rloo", (torch.arange(len(rollout), dtype=torch.float) % 2).to(args.device), rollout.n)
    total = sum(len(c) for c in rollout.completion_ids) + sum(len(p) for p in rollout.prompt_ids)
    budget = max(len(rollout.prompt_ids[0]) + max(len(c) for c in rollout.completion_ids), 1024)
    while True:
        policy.micro_batch_tokens = budget
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with autocast:
                policy.accumulate_gradients(rollout, adv, lambda loss: loss.backward())
            if cuda:
                torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            took = time.perf_counter() - t
            print(f"  micro_batch_tokens {budget:7d}: a training pass over the step {took:6.2f} s, peak {peak:.2f} GiB")
            fits = budget
        except torch.cuda.OutOfMemoryError:
            print(f"  micro_batch_tokens {budget:7d}: out of GPU memory")
            break
        if budget >= total:
            break  # the whole step in one pass
        budget *= 2
    model.zero_grad(set_to_none=True)
    print(f"largest micro-batch that fits: {fits} tokens" + (" (the whole step)" if fits and fits >= total else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--small", action="store_true", help="a tiny Qwen2 shape, not Qwen2.5-1.5B's (CPU)")
    parser.add_argument("--model-path", default="smollm2-135m-instruct", help="SmolLM2 (also the tokenizer)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per model, after one warm-up")
    parser.add_argument("--batch", type=int, default=16, help="prompts per step (B)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak (H200: 989)")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32 (no autocast)")
    parser.add_argument("--real-rewards", action="store_true", help="train on the vote's rewards (unanimous groups "
                        "are skipped); by default rewards alternate 0/1 so every group trains")
    parser.add_argument("--long", default=None, help="T of the long rows, comma-separated (default: 1024,4096 on a "
                        "GPU, 8,16 with --small); 0: none")
    parser.add_argument("--skip-tests", action="store_true", help="do not run `pytest -m gpu` afterwards")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu --small for the CPU smoke test")
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    policy = build_policy(args, args.model_path)
    run_model(f"policy {args.model_path} (SmolLM2-135M by default)", policy, args, args.device)
    tokenizer = policy.tokenizer
    policy.model = None  # free it before the larger model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    folder = qwen_folder(tokenizer, SMALL_QWEN if args.small else QWEN25_1_5B, Path(tempfile.mkdtemp()))
    qwen = build_policy(args, str(folder), init="random")
    run_model("Qwen2.5-1.5B shape, random weights" if not args.small else "Qwen2 small shape, random weights",
              qwen, args, args.device)
    qwen.model = None
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    lengths = [int(x) for x in (args.long or ("8,16" if args.small else "1024,4096")).split(",") if int(x) > 0]
    if lengths:
        run_long(args, folder, lengths)
    if not args.skip_tests:
        tests = Path(__file__).resolve().parents[1] / "tests"
        code = subprocess.call([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                str(tests / "test_gpu.py")], cwd=tests.parent)
        print(f"pytest -m gpu: exit code {code}")
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    main()
