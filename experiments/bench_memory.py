"""Peak memory and time of one SRT step at fixed completion lengths (issue 26, item 6).

For each T it runs one step of 8 prompts x 8 samples (the default SRT config, every completion forced to T
new tokens: ``rollout.sampling.min_new_tokens = max_new_tokens = T``) in a fresh process, built as ``fit``
builds it (``srtlab.train.build_module``, the configured optimizer, the engine), and prints per stage
(load, generate, reward, train = forward + backward + optimizer step, sync) the seconds, the resident
memory when the stage starts and the kernel's high-water mark during it (``/proc/self/status`` VmHWM, reset
before each stage through ``/proc/self/clear_refs``), so the whole process's peak is the largest of them.
Every group trains (the rewards alternate 0/1, as in ``bench_step.py``): the most memory a step can take.
Then tokens/s and the ratio to the roofline of each stage (``srtlab.perf``: FLOPs at the matmul peak of
the dtype that runs, bytes at the memory bandwidth), and what the resident fixed part is made of
(weights, gradients, optimizer state, reference, sampling copy, the runtime).

    python experiments/bench_memory.py                                 # T = 64 ... 4,096, then Qwen2.5-0.5B's shape
    python experiments/bench_memory.py --lengths 64,256 --qwen 0       # a short sweep, no Qwen-shaped row
    python experiments/bench_memory.py --lengths 1024 model.activation_checkpointing=false   # any fit override
    python experiments/bench_memory.py --json out.json --plot docs/figures/memory.png

The Qwen-shaped row is a randomly initialised model of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14
heads, 2 KV heads, intermediate 4,864, vocabulary 151,936, tied head; ``model.init=random``) with SmolLM2's
tokenizer, at ``--qwen`` new tokens. Linux only (it reads ``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

QWEN25_0_5B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                   intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)
TRL = {64: 5.1, 192: 5.9, 1024: 8.6}  # TRL 1.16 GRPOTrainer peak GiB on this machine, as measured in issue 26
GIB = 2**30
PROGRESS = "stage done: "  # the child's progress lines on stderr, echoed by the parent


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class Stages:
    """Seconds, resident memory at the start and the high-water mark of each stage of this process."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts at the current RSS
        start, t = _status("VmRSS"), time.perf_counter()
        yield
        self.rows[name] = row = {"s": time.perf_counter() - t, "start_gib": start / GIB,
                                 "peak_gib": _status("VmHWM") / GIB}
        # as each stage ends (a long row runs for an hour here; one stopped early still shows what it reached)
        print(f"{PROGRESS}{name} {row['s']:.1f} s, peak {row['peak_gib']:.2f} GiB", file=sys.stderr, flush=True)


class Peaks(dict):
    """What the machine can do, measured on first use (``srtlab.perf``): bf16 matmuls take minutes to time on a
    CPU without native bf16, so they are timed only when a row runs in bf16."""

    def __missing__(self, key: str) -> float:
        from srtlab.perf import measure_bandwidth, measure_matmul_flops

        self[key] = measure_bandwidth() if key == "bandwidth" else measure_matmul_flops(
            torch.bfloat16 if key == "bf16" else torch.float32)
        return self[key]

    def __init__(self, given: dict[str, float | None]) -> None:
        super().__init__({k: v for k, v in given.items() if v})


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def child(args) -> dict:
    """One step in this process; -> its figures."""
    runtime = _status("VmRSS")
    from bench_step import policy_from
    from hydra import compose, initialize_config_dir

    from srtlab import config_dir
    from srtlab.algorithms.advantages import compute_advantages
    from srtlab.builder import Builder
    from srtlab.data.datamodule import PromptStream
    from srtlab.models.forward import micro_batches
    from srtlab.models.precision import trainer_precision
    from srtlab.perf import ModelShape, generate_work, train_work
    from srtlab.rollout.sync import policy_weights
    from srtlab.train import register_resolvers

    register_resolvers()
    length = args.child
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=["experiment=srt", "run_dir=/tmp/srtlab-bench", "data.batch_size=8",
                                        "rollout.n=8", *args.overrides, f"rollout.sampling.min_new_tokens={length}",
                                        f"rollout.sampling.max_new_tokens={length}"])
    runtime = max(runtime, _status("VmRSS"))  # python, torch, transformers, Lightning, Hydra imported
    stages = Stages()
    with stages("load"):
        module = policy_from(cfg)
        precision = trainer_precision(cfg.trainer.precision, cfg.trainer.get("accelerator"))
        opt = module.make_optimizer([p for p in module.model.parameters() if p.requires_grad])
        engine = module.rollouts.make_engine(model=module.model, tokenizer=module.tokenizer)
        dm = Builder(cfg)("data")
        dm.setup()
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16")
                else contextlib.nullcontext())
    stream = iter(PromptStream(dm.train.prompts, cfg.data.batch_size, cfg.seed))
    for step in range(args.steps):
        batch = next(stream)
        with stages("generate"):
            r = engine.generate(batch.prompts, cfg.rollout.n, module.rollouts.sampling, seed=step)
            engine.sleep()
        with stages("reward"):
            r.rewards = module.reward(r).rewards
            r.rewards = torch.arange(len(r), dtype=torch.float) % 2  # every group trains: the costliest step
        with stages("train"):
            opt.zero_grad()
            adv = compute_advantages(cfg.algorithm.advantage, r.rewards, r.n)
            with autocast:
                stats = module.accumulate_gradients(r, adv, lambda loss: loss.backward())
            grads = _bytes(p.grad for p in module.model.parameters() if p.grad is not None)
            opt.step()
        with stages("sync"):
            engine.load_weights(policy_weights(module.model))
    params = list(module.model.parameters())
    sampling_dtype = next(engine.model.parameters()).dtype
    shape = ModelShape.of(module.model, bytes_per_param=sampling_dtype.itemsize)
    prompt_lens = [len(p) for p in r.prompt_ids]
    lens = [[len(r.completion_ids[i]) for i in g] for g in r.groups()]
    return {
        "length": length, "model": str(cfg.model.path), "init": cfg.model.init, "precision": precision,
        "sampling_dtype": str(sampling_dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "prompts": len(r.prompts), "n": r.n, "prompt_tokens": sum(prompt_lens),
        "completion_tokens": sum(len(c) for c in r.completion_ids), "stages": stages.rows,
        "peak_gib": max(s["peak_gib"] for s in stages.rows.values()), "rss_after_gib": _status("VmRSS") / GIB,
        "micro_batches": len(list(micro_batches(r, list(range(len(r.prompts))), module.micro_batch_tokens))),
        "micro_batch_tokens": module.micro_batch_tokens, "loss": stats["train/loss"],
        "fixed_gib": {
            "runtime": runtime / GIB,
            "weights": _bytes(params) / GIB,
            "gradients": grads / GIB,
            "optimizer": _bytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)) / GIB,
            "reference": _bytes(module.reference.parameters()) / GIB if module.reference is not None else 0.0,
            "sampling copy": 0.0 if engine.shares_policy else _bytes(engine.model.parameters()) / GIB},
        "work": {"generate": vars(generate_work(shape, prompt_lens, lens)),
                 "train": vars(train_work(shape, prompt_lens, lens))},
    }


def run_point(length: int, overrides: list[str], steps: int) -> dict:
    """One point in a fresh process (its peak is its own); -> the child's figures."""
    with tempfile.TemporaryFile("w+") as stdout:
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(length), "--steps", str(steps), *overrides],
                                stdout=stdout, stderr=subprocess.PIPE, text=True)
        last = ""
        for line in proc.stderr:  # the stages as they end; the last line is the error, if any
            if line.startswith(PROGRESS):
                print(f"  T={length} {line.strip()}", flush=True)
            elif line.strip():
                last = line.strip()
        returncode = proc.wait()
        stdout.seek(0)
        lines = stdout.read().strip().splitlines()
    if returncode != 0:
        return {"length": length, "error": last or f"exit {returncode}", "returncode": returncode}
    return json.loads(lines[-1])


def qwen_overrides(folder: Path) -> list[str]:
    """A Qwen2.5-0.5B-shaped model folder (random weights at load, SmolLM2's tokenizer) -> its overrides."""
    from gpu_check import qwen_folder

    from srtlab.models.load import ModelSettings, load_tokenizer

    qwen_folder(load_tokenizer(ModelSettings()), QWEN25_0_5B, folder)
    return [f"model.path={folder}", "model.init=random"]


def print_row(label: str, row: dict, peaks: dict[str, float]) -> None:
    if "error" in row:
        print(f"{label:>10s}  FAILED (exit {row['returncode']}): {row['error']}", flush=True)
        return
    stages, work = row["stages"], row["work"]
    tokens = row["completion_tokens"]
    gen_peak = peaks["bf16" if row["sampling_dtype"] == "bfloat16" else "fp32"]
    train_peak = peaks["bf16" if row["precision"].startswith("bf16") else "fp32"]
    floors = {stage: max(work[stage]["flops"] / peak, work[stage]["bytes"] / peaks["bandwidth"])
              for stage, peak in (("generate", gen_peak), ("train", train_peak))}
    parts = "  ".join(f"{name} {s['s']:7.1f} s {s['peak_gib']:5.2f} GiB" for name, s in stages.items())
    print(f"{label:>10s}  peak {row['peak_gib']:5.2f} GiB  {parts}", flush=True)
    gen_s = stages["generate"]["s"]
    print(f"{'':>10s}  generate {tokens / gen_s:6.0f} tokens/s ({gen_s / floors['generate']:.1f}x roofline)"
          f"  train {(tokens + row['prompt_tokens']) / stages['train']['s']:6.0f} tokens/s "
          f"({stages['train']['s'] / floors['train']:.1f}x roofline)  after the step {row['rss_after_gib']:.2f} GiB  "
          f"peak above it {(row['peak_gib'] - row['rss_after_gib']) * GIB / tokens / 1e3:.0f} KB/token", flush=True)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and r["init"] == "pretrained"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lengths = [r["length"] for r in ok]
    ax.plot(lengths, [r["peak_gib"] for r in ok], "o-", label="srtlab: peak (whole process)")
    ax.plot(lengths, [r["rss_after_gib"] for r in ok], "s--", label="srtlab: resident between steps (fixed part)")
    ax.plot(list(TRL), list(TRL.values()), "^:", color="grey", label="TRL 1.16 GRPOTrainer (issue 26)")
    for r in rows:
        if "error" not in r and r["init"] == "random":
            ax.plot([r["length"]], [r["peak_gib"]], "D", color="tab:red", label="srtlab: Qwen2.5-0.5B shape, peak")
    ax.axhline(24, color="black", lw=0.8)
    ax.text(lengths[0] if lengths else 64, 23.2, "machine: 24 GiB", fontsize=8)
    ax.axhline(8, color="tab:green", lw=0.8, ls="--")
    ax.text(lengths[0] if lengths else 64, 8.2, "target at T = 1,024: 8 GiB", fontsize=8, color="tab:green")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("new tokens per completion T (8 prompts x 8 samples)")
    ax.set_ylabel("GiB")
    ax.set_ylim(0, 26)
    ax.set_title("One SRT step of SmolLM2-135M on a 2-core CPU: peak resident memory")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=_ints, default=[64, 256, 1024, 2048, 4096], help="T, comma-separated")
    parser.add_argument("--qwen", type=int, default=1024, help="T of the Qwen2.5-0.5B-shaped row (0: none)")
    parser.add_argument("--steps", type=int, default=1, help="steps per point (the figures are the last step's)")
    parser.add_argument("--peak-bf16", type=float, help="bf16 matmul FLOP/s (default: measured)")
    parser.add_argument("--peak-fp32", type=float, help="fp32 matmul FLOP/s (default: measured)")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth, bytes/s (default: measured)")
    parser.add_argument("--json", type=Path, help="write every point's figures here")
    parser.add_argument("--plot", type=Path, help="draw peak memory against T here (PNG)")
    parser.add_argument("--plot-from", type=Path, nargs="+", metavar="JSON",
                        help="draw --plot from the rows of these --json files (runs made apart), run nothing")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one point, in this process
    parser.add_argument("overrides", nargs="*", help="fit config overrides")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args)))
        return
    if args.plot_from:
        if not args.plot:
            parser.error("--plot-from needs --plot PNG")
        rows = [row for f in args.plot_from for row in json.loads(f.read_text())["rows"]]
        plot(sorted(rows, key=lambda r: (r.get("init", ""), r["length"])), args.plot)
        print(f"plot: {args.plot}")
        return

    peaks = Peaks({"bf16": args.peak_bf16, "fp32": args.peak_fp32, "bandwidth": args.bandwidth})
    print(f"machine: {os.cpu_count()} CPUs, fp32 matmul {peaks['fp32'] / 1e9:.1f} GFLOP/s, memory "
          f"{peaks['bandwidth'] / 1e9:.1f} GB/s (bf16 measured when a row samples or trains in it)", flush=True)
    print("one step (8 prompts x 8 samples unless overridden), every completion T new tokens; per stage: seconds "
          "and peak resident memory (the kernel's high-water mark)", flush=True)
    rows = []
    for length in args.lengths:
        rows.append(run_point(length, args.overrides, args.steps))
        print_row(f"T={length}", rows[-1], peaks)
    if args.qwen:
        with tempfile.TemporaryDirectory() as folder:
            rows.append(run_point(args.qwen, [*args.overrides, *qwen_overrides(Path(folder))], args.steps))
        print_row(f"Qwen0.5B T={args.qwen}", rows[-1], peaks)
    done = [r for r in rows if "error" not in r]
    if done:
        first = done[0]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in first["fixed_gib"].items())
        print(f"resident parts at T={first['length']} (GiB): {parts}; {first['micro_batches']} micro-batches of "
              f"<= {first['micro_batch_tokens']} tokens")
    if args.json:
        args.json.write_text(json.dumps({"machine": dict(peaks), "rows": rows}, indent=1))
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
