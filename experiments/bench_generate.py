"""Generation and training at fixed lengths against the machine's roofline (issue 15, items 2 and 3).

``bench_step.py`` measures the default step, whose completions stop after ~5 tokens. This one fixes the
lengths (``min_new_tokens = max_new_tokens``: no eos before the budget) and measures

- generation: tokens/s of one ``generate`` call of the engine (default config: the bf16 sampling copy) at
  each number of sequences (prompts x 8 samples) and new tokens, against the roofline of that work
  (``srtlab.perf.generate_work``: FLOPs at the sampling dtype's matmul peak, weight and KV-cache bytes at the memory
  bandwidth);
- training: one forward + backward pass (``PolicyModule.accumulate_gradients``, bf16 autocast) of one prompt's
  8 completions of each length, with the share of the log-softmax (forward and backward) in it.

    python experiments/bench_generate.py                                   # 64/256 sequences x 32/256 tokens
    python experiments/bench_generate.py --rows 64 --new 32,256 --train 256
    python experiments/bench_generate.py --rows= --train 1024 model.activation_checkpointing=true

8 x 1,024 tokens ran out of 24 GiB without activation checkpointing (the saved activations of 30 layers).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from srtlab import config_dir
from srtlab.algorithms.advantages import compute_advantages
from srtlab.builder import Builder
from srtlab.models.precision import trainer_precision
from srtlab.perf import ModelShape, generate_work, measure_bandwidth, measure_matmul_flops, train_work
from srtlab.rollout.engine import SamplingSettings
from srtlab.train import register_resolvers
from srtlab.types import RolloutBatch

sys.path.insert(0, str(Path(__file__).parent))
from bench_step import policy_from  # noqa: E402  (the same policy module as the step benchmark)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=_ints, default=[64, 256], help="sequences per call, comma-separated")
    parser.add_argument("--new", type=_ints, default=[32, 256], help="new tokens per sequence, comma-separated")
    parser.add_argument("--train", type=_ints, default=[256], help="completion lengths to train, comma-separated")
    parser.add_argument("--repeats", type=int, default=1, help="measured calls per point (after one warm-up)")
    parser.add_argument("--peak-sampling", type=float, help="matmul FLOP/s in the sampling dtype (default: measured)")
    parser.add_argument("--peak-train", type=float, help="matmul FLOP/s in the training precision (default: measured)")
    parser.add_argument("--bandwidth", type=float, help="memory bandwidth, bytes/s (default: measured)")
    parser.add_argument("overrides", nargs="*", help="fit config overrides")
    args = parser.parse_args()
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("fit", overrides=["experiment=srt", "run_dir=/tmp/srtlab-bench", *args.overrides])
    module = policy_from(cfg)
    precision = trainer_precision(cfg.trainer.precision, cfg.trainer.get("accelerator"))  # auto: what pays here
    dm = Builder(cfg)("data")
    dm.setup()
    engine = module.rollouts.make_engine(model=module.model, tokenizer=module.tokenizer)
    base = module.rollouts.sampling
    n = cfg.rollout.n
    sampling_dtype = next(engine.model.parameters()).dtype
    train_dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    peak = args.peak_sampling or measure_matmul_flops(sampling_dtype)  # the dtypes that run, not bf16 by default:
    train_peak = args.peak_train or measure_matmul_flops(train_dtype)  # an AVX2 CPU runs bf16 ~150x slower
    bandwidth = args.bandwidth or measure_bandwidth()
    shape = ModelShape.of(module.model, bytes_per_param=sampling_dtype.itemsize)
    print(f"machine: {sampling_dtype} matmul {peak / 1e12:.2f} TFLOP/s (sampling), {train_dtype} "
          f"{train_peak / 1e12:.2f} TFLOP/s (training), memory {bandwidth / 1e9:.1f} GB/s; "
          f"threads={torch.get_num_threads()}, engine dtype={cfg.rollout.engine.dtype}, precision={precision}")

    print("generation (one call, fixed lengths)")
    for rows in args.rows:
        prompts = [dm.train.prompts[i % len(dm.train.prompts)] for i in range(rows // n)]
        for new in args.new:
            sampling = SamplingSettings(temperature=base.temperature, top_p=base.top_p, top_k=base.top_k,
                                        max_new_tokens=new, min_new_tokens=new)
            times = []
            for seed in range(args.repeats + 1):
                t = time.perf_counter()
                r = engine.generate(prompts, n, sampling, seed=seed)
                times.append(time.perf_counter() - t)
            took = statistics.median(times[1:])
            tokens = sum(len(c) for c in r.completion_ids)
            lengths = [[len(c) for c in r.completion_ids[i * n:(i + 1) * n]] for i in range(len(prompts))]
            floor = generate_work(shape, [len(p) for p in r.prompt_ids], lengths).roofline_s(peak, bandwidth)
            print(f"  {rows:4d} sequences x {new:4d} new tokens: {took:7.2f} s  {tokens / took:7.0f} tokens/s  "
                  f"roofline {floor:6.2f} s ({tokens / floor:7.0f} tokens/s)  ratio {took / floor:4.1f}x")

    print("training pass (1 prompt x 8 completions of fixed length, forward + backward)")
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision.startswith("bf16")
                else contextlib.nullcontext())
    prompt = dm.train.prompts[0]
    prompt_ids = engine.generate([prompt], 1, SamplingSettings(max_new_tokens=1), seed=0).prompt_ids
    gen = torch.Generator().manual_seed(0)
    vocab = module.model.config.vocab_size
    for length in args.train:
        completions = torch.randint(0, vocab, (n, length), generator=gen).tolist()
        batch = RolloutBatch(prompts=[prompt], n=n, prompt_ids=prompt_ids, completion_ids=completions,
                             texts=[""] * n, answers=[None] * n, finish_reasons=["length"] * n)
        adv = compute_advantages(cfg.algorithm.advantage, torch.arange(n, dtype=torch.float) % 2, n)
        module.model.zero_grad(set_to_none=True)
        with autocast:
            module.accumulate_gradients(batch, adv, lambda loss: loss.backward())  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, autocast:
            t = time.perf_counter()
            module.accumulate_gradients(batch, adv, lambda loss: loss.backward())
            took = time.perf_counter() - t
        ops = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ops)
        softmax = sum(e.self_cpu_time_total for e in ops if "log_softmax" in e.key)
        floor = train_work(shape, [len(p) for p in prompt_ids], [[length] * n]).roofline_s(train_peak, bandwidth)
        print(f"  {n} x {length:5d} tokens: {took:6.2f} s  roofline {floor:5.2f} s  ratio {took / floor:4.1f}x  "
              f"log_softmax (fwd + bwd) {100 * softmax / total:4.1f}% of CPU time  peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


if __name__ == "__main__":
    main()
