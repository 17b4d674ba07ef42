"""The policy LightningModule: one SRT step, top to bottom (:meth:`PolicyModule.training_step`):

1. generate and score: the rollout program samples G completions per prompt with the engine and
   scores them with the reward mix (``srtlab.rollout.rollouts``, ``srtlab.rewards.mix``);
2. advantages from the mixed rewards, per group (RLOO / GRPO / Dr. GRPO);
3. loss and backward, for each micro-batch of whole groups: one forward pass of each prompt, its KV
   cache shared by the G completions (exact gradients, far fewer tokens than G full sequences), the
   clipped policy-gradient loss (+ optional k3 KL to the frozen reference), scaled so that the
   micro-batches add up to the loss of the whole batch;
4. optimizer step: gradient clipping, one optimizer step, one scheduler step;
5. weight sync: the new weights into the engine (and the probe, when configured); 6. log, samples.

Simplifications, on purpose: one optimizer step per rollout batch (fully on-policy) by default, so the
importance ratio is 1 and the "old" log-probs are the current ones detached; the clipping acts with
``ppo_epochs`` or ``mini_batches`` above 1. Groups whose advantages are all zero (unanimous groups)
contribute no policy gradient and are skipped in the gradient pass unless the KL term needs them; they
still count in the loss normaliser, so the gradient is unchanged, and a no-grad pass still measures
their entropy.

Data parallel (``trainer=ddp`` / ``fsdp``, N ranks): each rank samples its own B/N prompts of the step
with its own seed, the loss normaliser and the number of passes are agreed over ranks
(``srtlab.modules.loss_pass``), and the step's metrics, per-level statistics and held-out scores are
reduced or gathered (``srtlab.modules.ranks``), so every rank logs, and every callback sees, what one
process with B prompts would have seen.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning as L
import torch

from srtlab import interrupt
from srtlab.algorithms.advantages import compute_advantages
from srtlab.algorithms.settings import AlgorithmSettings
from srtlab.answers.gold import GoldScorer
from srtlab.logs import at_step, train_sample_rows, write_samples
from srtlab.models.allocator import released_memory
from srtlab.models.forward import TokenLogprobs, TokenStats, pass_tokens, token_logprobs, token_stats
from srtlab.models.load import CHECKPOINT_ABOVE, ModelSettings, load_model, load_tokenizer
from srtlab.models.parallel import checkpoint_layers, layer_checkpointing, mark_sharded, shard_model
from srtlab.modules import ranks
from srtlab.modules.checkpoint_io import save_stop_checkpoint
from srtlab.modules.evaluation import HeldoutLoop
from srtlab.modules.loss_pass import loss_pass, stored_logprobs
from srtlab.rewards.mix import RewardMix
from srtlab.rollout.engine import RolloutEngine
from srtlab.rollout.rollouts import Rollouts
from srtlab.seeds import seed_for
from srtlab.settings import Annotated, checked, integer, real
from srtlab.types import PromptBatch, RewardOutput, RolloutBatch


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW at lr 1e-5 (``configs/optim/adamw.yaml`` is what runs use: lr 2e-6)."""
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, betas=(0.9, 0.99))


class NonFiniteUpdates(RuntimeError):
    """Several steps in a row had a NaN or infinite loss or gradient (each skipped): the run stops."""

    def __init__(self, steps: int, at_step: int) -> None:
        self.steps, self.at_step = steps, at_step
        super().__init__(f"{steps} steps in a row up to step {at_step} had a non-finite loss or gradient; none "
                         "was applied (train/skipped_nonfinite), so the last checkpoint's weights are finite; lower "
                         "optim.lr or raise module.max_nonfinite_steps")


def _count_without_stepping(opt) -> None:
    """``opt.step()`` through Lightning, which counts it as the step's optimizer step, without changing weights or
    optimizer state (the torch optimizer's own step is skipped)."""
    inner = opt.optimizer
    inner.step = lambda closure=None: closure() if closure is not None else None  # shadows the class's step
    try:
        opt.step()
    finally:
        del inner.step


@checked
class PolicyModule(HeldoutLoop, L.LightningModule):
    """Wraps the policy (and, when KL is on, the frozen reference), the rollout stage and the reward mix
    (``module`` in ``configs/fit.yaml``; the other nodes it takes are their own config groups).

    Args:
        model: what to load (``srtlab.models.load.ModelSettings``); nothing loads until ``configure_model``.
        algorithm: the objective (``configs/algorithm/``).
        optimizer: ``params -> torch.optim.Optimizer`` (``configs/optim/``, a Hydra ``_partial_``: any torch
            optimizer); default AdamW.
        lr_schedule: ``optimizer -> LR scheduler`` (``configs/lr_schedule/``, a ``_partial_``), stepped once per
            optimizer step; None: a constant learning rate.
        rollouts: the rollout stage (engine, sampling, program); None for a module that only scores.
        reward: the reward mix of training batches.
        grad_clip: the largest gradient norm (clipped before each optimizer step); 0: no clipping.
        micro_batch_tokens: the most tokens one forward/backward pass holds (prompts once each, completions padded:
            ``srtlab.models.forward.pass_tokens``); activation memory is proportional to it. Groups are packed
            whole while they fit, a longer one split.
        samples_every: write ``samples/train_step<N>.jsonl`` every this many steps; 0: never.
        temperature: the sampling temperature; log-probs are taken of the same tempered distribution
            (default: ``rollouts.sampling.temperature``).
        max_nonfinite_steps: stop the run after this many steps in a row whose update was not finite (each one
            skipped, the weights untouched: :meth:`update`).
        logprob_chunk: tokens per chunk of the head and log-softmax (``srtlab.models.forward.chunked_head``): at
            most this many x V logits exist at once; None: 2**24 / V (256 for a 49k vocabulary).

    Under ``trainer=fsdp`` (Lightning's ``ModelParallelStrategy``) ``configure_model`` shards the policy
    and the reference with FSDP2, each decoder layer one unit (``srtlab.models.parallel``).
    """

    def __init__(self, model: ModelSettings, algorithm: AlgorithmSettings | None = None,
                 optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | None = None,
                 lr_schedule: Callable[[torch.optim.Optimizer], object] | None = None,
                 rollouts: Rollouts | None = None, reward: RewardMix | None = None,
                 grad_clip: Annotated[float, real(0)] = 1.0, micro_batch_tokens: Annotated[int, integer(1)] = 16384,
                 samples_every: Annotated[int, integer(0)] = 0,
                 temperature: Annotated[float | None, real(0, 100, null=True)] = None,
                 logprob_chunk: Annotated[int | None, integer(1, null=True)] = None,
                 max_nonfinite_steps: Annotated[int, integer(1)] = 3) -> None:
        super().__init__()
        self.settings = model
        self.algorithm = algorithm or AlgorithmSettings()
        self.make_optimizer, self.make_lr_schedule = optimizer or default_optimizer, lr_schedule
        self.grad_clip = grad_clip
        self.rollouts, self.base_reward = rollouts, reward
        self.reward = reward
        self.reward_overrides: dict[str, dict[str, float]] = {}  # owner -> reward weights, oldest first
        self.update_skips: dict[str, dict[str, float]] = {}  # owner -> {prompt id: skip probability}
        if temperature is None:
            temperature = rollouts.sampling.temperature if rollouts is not None else 1.0
        self.micro_batch_tokens, self.temperature = micro_batch_tokens, temperature or 1.0
        self.samples_every, self.logprob_chunk = samples_every, logprob_chunk
        self.max_nonfinite_steps, self.nonfinite_in_a_row = max_nonfinite_steps, 0
        self.automatic_optimization = False
        self.strict_loading = False  # the reference model is not saved in checkpoints
        self._tokenizer = None
        self.model: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.gold = GoldScorer()  # held-out scoring

    @property
    def tokenizer(self):
        """The policy's tokenizer, loaded on first use (building the module loads nothing)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.settings)
        return self._tokenizer

    # -- building -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = load_model(self.settings)
        self.model.train()
        if self.algorithm.kl_coef > 0:
            self._load_reference()
        if self.settings.activation_checkpointing:  # true or auto (then per pass: policy_logprobs)
            checkpoint_layers(self.model, offload=self.settings.offload_activations)
        if self.device_mesh is not None:  # set by ModelParallelStrategy (trainer=fsdp) before this hook
            shard_model(self.model, self.device_mesh)
            mark_sharded(self.model)

    def _load_reference(self) -> None:
        """The frozen reference of the KL term; with LoRA it is the adapter-off model (nothing loaded)."""
        if self.reference is not None or self.settings.lora.r > 0:
            return
        self.reference = load_model(self.settings, lora=False)
        self.reference.eval().requires_grad_(False)
        if self.device_mesh is not None:
            shard_model(self.reference, self.device_mesh)
            mark_sharded(self.reference)
        elif self.model is not None:
            self.reference.to(next(self.model.parameters()).device)

    def configure_optimizers(self):
        opt = self.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
        if self.make_lr_schedule is None:
            return opt
        return [opt], [self.make_lr_schedule(opt)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        checkpoint["reward_overrides"] = [[owner, dict(w)] for owner, w in self.reward_overrides.items()]
        checkpoint["update_skips"] = {owner: dict(s) for owner, s in self.update_skips.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.reward_overrides = {owner: dict(w) for owner, w in checkpoint.get("reward_overrides", [])}
        self.update_skips = {owner: dict(s) for owner, s in checkpoint.get("update_skips", {}).items()}
        if self.base_reward is not None:
            self._apply_reward_overrides()

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # prompts are moved to the device as tensors when they are built

    # -- what callbacks and remedies may change (public, so no one reaches into attributes) ----------
    def engine(self) -> RolloutEngine:
        """The rollout engine, built on first use and synced to the current weights."""
        if self.rollouts is None:
            raise RuntimeError("this PolicyModule was built without a rollout stage (rollouts=None)")
        return self.rollouts.engine(self.model, self.tokenizer)

    def override_reward_weights(self, owner: str, weights: dict[str, float] | None) -> None:
        """Train on other weights of the same sources (``ground_truth`` allowed) for as long as ``owner`` wants;
        None ends ``owner``'s override. The weights in force are the newest override still set, else the
        config's, so one owner's change never undoes another's: a curriculum's ground-truth warm-up and a guard's
        gold mix can overlap and end in any order. Saved in checkpoints, so a resumed run trains on the same."""
        self.reward_overrides.pop(owner, None)
        if weights is not None:
            self.base_reward.with_weights(dict(weights))  # fails now, naming the source, if the weights are wrong
            self.reward_overrides[owner] = {name: float(w) for name, w in weights.items()}
        self._apply_reward_overrides()

    def _apply_reward_overrides(self) -> None:
        newest = next(reversed(self.reward_overrides.values()), None) if self.reward_overrides else None
        self.reward = self.base_reward if newest is None else self.base_reward.with_weights(newest)

    def set_update_skips(self, owner: str, skips: dict[str, float] | None) -> None:
        """Skip updates on some prompts: ``{prompt id: probability}``, each time the prompt is drawn its group gets
        no advantage with that probability (a seeded coin per (step, prompt): the same in a resumed run, on any
        number of ranks); None ends ``owner``'s skips. TTRL-Guard's remedy for prompts at risk of collapse. Saved
        in checkpoints."""
        self.update_skips.pop(owner, None)
        if skips:
            bad = {k: v for k, v in skips.items() if not 0.0 <= float(v) <= 1.0}
            if bad:
                raise ValueError(f"update skip probabilities must be in [0, 1]: {bad}")
            self.update_skips[owner] = {str(k): float(v) for k, v in skips.items()}

    def skip_groups(self, r: RolloutBatch, adv: torch.Tensor, step: int) -> int:
        """Zero the advantages (in place) of the groups whose prompt draws a skip this step; -> how many."""
        if not self.update_skips:
            return 0
        skipped = 0
        for b, prompt in enumerate(r.prompts):
            chance = max((s.get(prompt.id, 0.0) for s in self.update_skips.values()), default=0.0)
            if chance > 0:
                coin = seed_for(self.rollouts.seed if self.rollouts else 0, "skip", step, prompt.id) / 2**31
                if coin < chance:
                    adv[b * r.n:(b + 1) * r.n] = 0.0
                    skipped += 1
        return skipped

    def sync_engine(self) -> None:
        """Send the current weights to the rollout engine (after a rollback restored older ones)."""
        if self.rollouts is not None:
            self.rollouts.sync(self.model)

    def set_kl_coef(self, coef: float) -> None:
        """Change the KL coefficient, loading the frozen reference the first time it becomes positive."""
        if coef < 0:
            raise ValueError(f"kl_coef={coef}; must be >= 0")
        if coef > 0:
            self._load_reference()
        self.algorithm.kl_coef = coef

    # -- scoring --------------------------------------------------------------------------------
    def token_logprobs(self, model, prompt_ids, completion_ids, n) -> TokenLogprobs:
        """:func:`srtlab.models.forward.token_logprobs` with this policy's padding and temperature."""
        return token_logprobs(model, prompt_ids, completion_ids, n, self.tokenizer.pad_token_id, self.temperature,
                              self.logprob_chunk)

    def policy_logprobs(self, prompt_ids, completion_ids, n) -> TokenLogprobs:
        """The trained policy's :meth:`token_logprobs` (a ``LogprobFn``: what the loss pass and the probe take), its
        decoder layers checkpointed in this pass when ``model.activation_checkpointing`` says so."""
        counts = [n] * len(prompt_ids) if isinstance(n, int) else n
        tokens = pass_tokens([len(p) for p in prompt_ids], [len(c) for c in completion_ids])
        on = self.settings.activation_checkpointing
        with layer_checkpointing(on is True or (on == "auto" and tokens > CHECKPOINT_ABOVE)):
            return self.token_logprobs(self.model, prompt_ids, completion_ids, counts)

    def reference_logprobs(self, prompt_ids, completion_ids, n) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self.token_logprobs(self.reference, prompt_ids, completion_ids, n).logp
            with self.model.disable_adapter():
                return self.token_logprobs(self.model, prompt_ids, completion_ids, n).logp

    @torch.no_grad()
    def scoring_stats(self, prompt_ids, completion_ids, n, temperature: float = 1.0) -> TokenStats:
        """Per-token log-prob, entropy and mean log-prob of completions with the current weights, eval mode, under
        the trainer's precision (bf16 autocast under ``bf16-mixed``): what reward sources that read the policy get
        (a ``TokenStatsFn``)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self._precision():
                return token_stats(self.model, prompt_ids, completion_ids, n, self.tokenizer.pad_token_id,
                                   temperature, self.logprob_chunk)
        finally:
            self.model.train(was_training)

    def _precision(self):
        return self.trainer.precision_plugin.forward_context() if self._trainer is not None \
            else contextlib.nullcontext()

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: PromptBatch, batch_idx: int) -> dict:
        """One step (:meth:`step`); a SIGTERM or SIGINT during it drops the step and writes the checkpoint of the
        state before it (``srtlab.interrupt``): a run resumed from it runs this step again, exactly."""
        try:
            interrupt.check(collective=True)
            return self.step(batch)
        except interrupt.Interrupted:
            if self._trainer is not None:
                save_stop_checkpoint(self.trainer)
            raise

    def step(self, batch: PromptBatch) -> dict:
        if self.rollouts is None or self.reward is None:
            raise RuntimeError("training needs the rollout stage and the reward mix (PolicyModule rollouts, reward)")
        t0 = time.perf_counter()

        # 1. generate and score
        engine = self.engine()
        rank = ranks.rank()  # this rank's share of the step (the datamodule's), sampled with its own seed
        reward_s = 0.0

        def score(rollouts: RolloutBatch) -> RewardOutput:
            nonlocal reward_s
            t = time.perf_counter()
            out = self.reward(rollouts, token_stats=self.scoring_stats, engine=engine,
                              micro_batch_tokens=self.micro_batch_tokens)
            reward_s += time.perf_counter() - t
            return out

        r = self.rollouts.train_batch(engine, batch.prompts, batch.step, score, rank=rank)
        t1 = time.perf_counter()

        # 2. advantages, per group; groups a callback asked to skip (at-risk prompts) get none
        adv = compute_advantages(self.algorithm.advantage, r.rewards.to(self.device), r.n)  # [B*G]
        skipped = self.skip_groups(r, adv, batch.step)

        # 3-4. loss, backward and optimizer step: ppo_epochs x mini_batches updates (one by default)
        stats = self.update(r, adv)
        t2 = time.perf_counter()

        # 5. weight sync into the engine, then the probe (the next step samples from these weights)
        self.rollouts.sync(self.model)
        probe = self.rollouts.check(self.policy_logprobs, batch.prompts, batch.step)
        t3 = time.perf_counter()

        # 6. log (over all ranks: ``stats`` is global already, the rest is this rank's), samples
        local = {**{f"train/{k}": v for k, v in r.metrics.items()}, **probe,
                 "train/lr": self.optimizers().param_groups[0]["lr"],
                 "train/truncated": r.finish_reasons.count("length") / len(r),
                 "train/skipped_groups": skipped / max(len(r.prompts), 1),
                 "time/generate": t1 - t0 - reward_s, "time/reward": reward_s, "time/train": t2 - t1,
                 "time/sync": t3 - t2,
                 "perf/tokens_per_s": sum(len(c) for c in r.completion_ids) / max(t1 - t0 - reward_s, 1e-9)}
        votes = [(p.id, *v) for p, v in zip(r.prompts, r.majorities)]  # [B] (prompt id, majority answer, share)
        gathered = ranks.gather((local, r.level_stats, votes))
        metrics = {**ranks.mean_metrics([m for m, _, _ in gathered], sums=("perf/tokens_per_s",)), **stats}
        level_stats = ranks.merge_level_stats([s for _, s, _ in gathered]) if len(gathered) > 1 else r.level_stats
        votes = [v for _, _, part in gathered for v in part]
        self.log_dict(at_step(self.global_step, metrics), on_step=True, batch_size=len(batch))
        if "train/reward/mixed" in metrics:
            self.log("reward", metrics["train/reward/mixed"], prog_bar=True, on_step=True, logger=False,
                     batch_size=len(batch))
        self.log("step_s", t3 - t0, prog_bar=True, on_step=True, logger=False, batch_size=len(batch))
        if self.samples_every and batch.step % self.samples_every == 0:
            self._write_train_samples(r, adv, self.global_step)  # N = this row's step in metrics.csv
        return {"loss": torch.tensor(stats["train/loss"]), "metrics": metrics, "level_stats": level_stats,
                "votes": votes}

    def update(self, r: RolloutBatch, adv: torch.Tensor) -> dict[str, float]:
        """``ppo_epochs`` x ``mini_batches`` optimizer updates on one rollout batch; -> the step's metrics.

        Every update after the first compares against the log-probs stored before the first, so the clip
        (and clip-higher, dual clip) act. The updates before the last step the bare torch optimizer, so
        that Lightning counts one global step per rollout batch (seeds, schedules and resume key on it).

        No non-finite update lands: when an update's loss or gradient is NaN or infinite (on any rank) it and the
        step's later updates are skipped, the weights and optimizer state stay as they were (with one update per
        step, the default: as before the step), ``train/skipped_nonfinite`` is 1, and after
        ``max_nonfinite_steps`` such steps in a row the run stops (:class:`NonFiniteUpdates`).
        """
        algo, opt = self.algorithm, self.optimizers()
        groups = list(range(len(r.prompts)))
        parts = [groups[i::algo.mini_batches] for i in range(algo.mini_batches)]
        updates = [part for _ in range(algo.ppo_epochs) for part in parts if part]
        old = None
        if len(updates) > 1:
            old = stored_logprobs(r, self.policy_logprobs, self.micro_batch_tokens)
        totals: dict[str, list[float]] = {}
        skipped = False
        for i, part in enumerate(updates):
            opt.zero_grad()
            # a stop request is honoured only before the step's first weight change: a rerun then starts from it
            stats = self.accumulate_gradients(r, adv, self.manual_backward, groups=part, old=old,
                                              measure_skipped=i < len(parts), interruptible=i == 0)
            for key, value in stats.items():
                totals.setdefault(key, []).append(value)
            if not self._finite_update(stats["train/loss"]):
                skipped = True
                break
            if self.grad_clip > 0 and stats["train/active_groups"] > 0:
                self.clip_gradients(opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
            if i == len(updates) - 1:
                opt.step()
                if self.make_lr_schedule is not None:
                    self.lr_schedulers().step()
            else:
                opt.optimizer.step()
        if skipped:
            opt.zero_grad()
            _count_without_stepping(opt)  # Lightning's step count moves on (seeds, data, resume key on it)
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
                raise NonFiniteUpdates(self.nonfinite_in_a_row, self.global_step)
        else:
            self.nonfinite_in_a_row = 0
        out = {key: (max(v) if key.endswith("_max") else sum(v) / len(v)) for key, v in totals.items()}
        out["train/updates"] = float(len(updates))
        out["train/skipped_nonfinite"] = float(skipped)
        return out

    def _finite_update(self, loss: float) -> bool:
        """Whether the update's loss (global already) and every gradient are finite, on every rank."""
        bad = not math.isfinite(loss)
        for p in self.model.parameters():
            if not bad and p.grad is not None:
                grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # a shard under FSDP
                bad = not bool(torch.isfinite(grad).all())
        return ranks.all_reduce([float(bad)], "max", self.device)[0] == 0.0

    def accumulate_gradients(self, r: RolloutBatch, adv: torch.Tensor, backward, groups: list[int] | None = None,
                             old: list[list[float]] | None = None, measure_skipped: bool = True,
                             interruptible: bool = True) -> dict[str, float]:
        """Forward and ``backward(loss)`` over micro-batches of whole groups (``srtlab.modules.loss_pass``)."""
        every = self.algorithm.kl_coef > 0  # the KL term has a gradient in unanimous groups too
        max_tokens = self.algorithm.max_tokens or (self.rollouts.sampling.max_new_tokens if self.rollouts else None)
        long = sum(map(len, r.prompt_ids)) + sum(map(len, r.completion_ids)) > CHECKPOINT_ABOVE
        with released_memory(adv.device, when=long):  # freed activations leave the process (long steps)
            return loss_pass(r, adv, self.policy_logprobs,
                             self.reference_logprobs if self.algorithm.kl_coef > 0 else None, self.algorithm,
                             self.micro_batch_tokens, backward, max_tokens=max_tokens, groups=groups,
                             train_every_group=every, old=old, measure_skipped=measure_skipped,
                             interruptible=interruptible)

    def _write_train_samples(self, r: RolloutBatch, adv: torch.Tensor, step: int) -> None:
        """Every completion of the step with its answer, reward per source and advantage:
        ``<run_dir>/samples/train_step<N>.jsonl`` (reward hacking shows in training samples first); every
        rank's rows, in rank order, written by rank 0."""
        if self._trainer is None:
            return
        rows = [row for part in ranks.gather(train_sample_rows(r, adv)) for row in part]
        if self.trainer.is_global_zero:
            write_samples(rows, Path(self.trainer.default_root_dir) / "samples" / f"train_step{step}.jsonl")
