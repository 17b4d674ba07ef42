"""The policy LightningModule: scores rollouts with the trainer's weights and takes one optimizer step.

One training step reads top to bottom (the rollouts and rewards were attached to the batch by the
rollout callback, see ``srtlab.rollout.callback``):

1. advantages from the mixed rewards, per group (RLOO / GRPO / Dr. GRPO);
2. for each micro-batch of whole groups: one forward pass of each prompt, its KV cache shared by the
   G completions (exact gradients, far fewer tokens than G full sequences), then per-token log-probs;
3. the clipped policy-gradient loss (+ optional k3 KL to the frozen reference), scaled so that the
   micro-batches add up to the loss of the whole batch, and backward;
4. gradient clipping, one optimizer step, one scheduler step.

Simplifications, on purpose: one optimizer step per rollout batch (fully on-policy), so the importance
ratio is 1 and the "old" log-probs are the current ones detached; the clipping therefore only acts
once several updates per batch are added. Groups whose advantages are all zero (unanimous groups)
contribute no policy gradient and are skipped in the forward pass unless the KL term needs them;
they still count in the loss normaliser, so the gradient is unchanged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from srtlab.algorithms.advantages import ADVANTAGE_ESTIMATORS, compute_advantages
from srtlab.algorithms.losses import AGGREGATIONS, aggregate, kl_k3, masked_mean, policy_gradient_loss
from srtlab.eval.canonical import cluster_answers, normalize_text
from srtlab.eval.metrics import aggregate_scores, group_scores
from srtlab.models.load import LoraSettings, load_model, load_tokenizer
from srtlab.rewards.ground_truth import GroundTruth
from srtlab.rollout.hf import left_pad
from srtlab.types import PromptBatch, RolloutBatch


@dataclass
class AlgorithmSettings:
    """The RL objective. ``kl_coef=0`` (the default) loads no reference model."""

    advantage: str = "rloo"  # rloo | grpo | dr_grpo
    loss_agg: str = "token_mean"  # see srtlab.algorithms.losses.AGGREGATIONS
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    max_tokens: int | None = None  # Dr. GRPO's constant normaliser; defaults to max_new_tokens

    def validate(self) -> None:
        if self.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"algorithm.advantage={self.advantage!r}; accepted: {', '.join(ADVANTAGE_ESTIMATORS)}")
        if self.loss_agg not in AGGREGATIONS:
            raise ValueError(f"algorithm.loss_agg={self.loss_agg!r}; accepted: {', '.join(AGGREGATIONS)}")
        if self.kl_coef < 0:
            raise ValueError(f"algorithm.kl_coef={self.kl_coef}; must be >= 0")


@dataclass
class OptimSettings:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    grad_clip: float = 1.0  # max gradient norm; 0 disables


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [N, T] and mask [N, T], padded on the right."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def completion_logits(model, prompt_ids: list[list[int]], completion_ids: list[list[int]], n: int,
                      pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of every completion token, with each prompt's forward pass shared by its n completions.

    Returns logits [b*n, T, V] (position t predicts completion token t), the completion ids [b*n, T]
    and their mask [b*n, T]. The prompt pass keeps its graph, so gradients are exact.
    """
    device = next(model.parameters()).device
    p_ids, p_mask = (t.to(device) for t in left_pad(prompt_ids, pad_id))  # [b, P]
    p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # [b, P]
    prompt_out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True,
                       logits_to_keep=1)  # only the last prompt position predicts a completion token
    cache = prompt_out.past_key_values
    cache.batch_repeat_interleave(n)
    c_ids, c_mask = (t.to(device) for t in right_pad(completion_ids, pad_id))  # [b*n, T]
    c_pos = p_mask.sum(-1).repeat_interleave(n)[:, None] + torch.arange(c_ids.shape[1], device=device)  # [b*n, T]
    full_mask = torch.cat([p_mask.repeat_interleave(n, 0), c_mask.long()], dim=1)  # [b*n, P+T]
    out = model(input_ids=c_ids, attention_mask=full_mask, position_ids=c_pos, past_key_values=cache)
    first = prompt_out.logits[:, -1:].repeat_interleave(n, 0)  # [b*n, 1, V]: predicts token 0
    logits = torch.cat([first, out.logits[:, :-1]], dim=1)  # [b*n, T, V]
    return logits, c_ids, c_mask


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: modules of the classes the model names in ``_no_split_modules``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__} names no decoder layer class in _no_split_modules; "
                         "cannot pick FSDP units or checkpointed blocks")
    return layers


def shard_model(model: torch.nn.Module, mesh) -> None:
    """FSDP2 in place: each decoder layer one unit, the rest (embeddings, final norm, head) the root unit.

    Lightning's mesh is (nodes, devices per node): on a 2-D mesh ``fully_shard`` shards within a node
    and replicates across nodes (HSDP); on one node that is plain FSDP. Parameters become DTensors.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def checkpoint_mlps(model: torch.nn.Module) -> None:
    """Activation checkpointing of each decoder layer's ``mlp`` (recomputed in backward)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing,
        checkpoint_wrapper,
    )

    mlps = {id(layer.mlp) for layer in decoder_layers(model)}
    apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: id(m) in mlps)


def score_groups(r: RolloutBatch, correct: torch.Tensor) -> tuple[list[dict[str, float]], list[dict]]:
    """Per prompt with a gold answer: its scores (mean, maj, pass, answer_rate) and its sample row.

    ``correct`` is GroundTruth's ``[B*G]`` reward (NaN where a prompt has no gold answer: skipped).
    Sample rows hold the prompt id, gold, the k answers, their correctness and texts.
    """
    scores, samples = [], []
    for b, rows in enumerate(r.groups()):
        if torch.isnan(correct[rows.start]):
            continue
        answers = [r.answers[i] for i in rows]
        ok = [bool(correct[i] > 0.5) for i in rows]
        row = group_scores(ok, cluster_answers(answers, r.prompts[b].answer_kind))
        row["answer_rate"] = sum(a is not None for a in answers) / len(answers)
        scores.append(row)
        samples.append({"id": r.prompts[b].id, "gold": r.prompts[b].answer, "answers": answers, "correct": ok,
                        "texts": [r.texts[i] for i in rows]})
    return scores, samples


def top_answer_share(samples: list[dict]) -> float:
    """Share of all held-out answers (no answer included) that are the single most common answer.

    Near 1.0 with a middling accuracy is the collapse SRT is known for: one answer for every question.
    """
    answers = [normalize_text(a) if a is not None else None for row in samples for a in row["answers"]]
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][1] / len(answers) if counts else 0.0


class PolicyModule(L.LightningModule):
    """Wraps the policy (and, when KL is on, the frozen reference) and owns loss and optimizer.

    Args:
        model_path, dtype, lora, trust_remote_code: what to load (see ``srtlab.models.load``).
        algorithm: the objective; optim: optimizer settings.
        micro_batch_prompts: prompts (each with its G completions) per forward/backward pass.
        temperature: the sampling temperature; log-probs are taken of the same tempered distribution.
        activation_checkpointing: recompute each decoder layer's MLP in backward instead of storing its
            activations (the attention is not recomputed: it writes the shared prompt's KV cache).

    Under ``trainer=fsdp`` (Lightning's ``ModelParallelStrategy``) ``configure_model`` shards the policy
    and the reference with FSDP2, each decoder layer one unit (:func:`shard_model`).
    """

    def __init__(self, model_path: str, algorithm: AlgorithmSettings, optim: OptimSettings,
                 lora: LoraSettings | None = None, dtype: str = "float32", micro_batch_prompts: int = 4,
                 temperature: float = 1.0, trust_remote_code: bool = False,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        algorithm.validate()
        self.model_path, self.dtype_name, self.lora = model_path, dtype, lora
        self.algorithm, self.optim = algorithm, optim
        self.micro_batch_prompts, self.temperature = micro_batch_prompts, temperature or 1.0
        self.trust_remote_code = trust_remote_code
        self.activation_checkpointing = activation_checkpointing
        self.automatic_optimization = False
        self.strict_loading = False  # the reference model is not saved in checkpoints
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.model: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self._gold = GroundTruth()
        self._val_scores: dict[str, list[dict[str, float]]] = {}
        self._val_samples: dict[str, list[dict]] = {}
        self._val_k = 0  # samples per prompt in the last evaluation
        self.last_val_metrics: dict[str, float] = {}
        self.last_val_step = -1  # global step of the last evaluation

    # -- building -------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = load_model(self.model_path, self.dtype_name, self.lora, self.trust_remote_code)
        self.model.train()
        uses_lora = self.lora is not None and self.lora.r > 0
        if self.algorithm.kl_coef > 0 and not uses_lora:  # with LoRA the reference is the adapter-off model
            self.reference = load_model(self.model_path, self.dtype_name, None, self.trust_remote_code)
            self.reference.eval().requires_grad_(False)
        if self.activation_checkpointing:
            checkpoint_mlps(self.model)
        if self.device_mesh is not None:  # set by ModelParallelStrategy (trainer=fsdp) before this hook
            for model in (self.model, self.reference):
                if model is not None:
                    shard_model(model, self.device_mesh)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay,
                                betas=tuple(self.optim.betas))
        warmup = max(1, self.optim.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return [opt], [sched]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch  # prompts are moved to the device as tensors when they are built

    # -- scoring --------------------------------------------------------------------------------
    def token_logprobs(self, model, prompt_ids, completion_ids, n) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> log-probs [b*n, T] of the sampled tokens, mask [b*n, T], entropy [b*n, T] (detached)."""
        logits, ids, mask = completion_logits(model, prompt_ids, completion_ids, n, self.tokenizer.pad_token_id)
        logp_all = torch.log_softmax(logits.float() / self.temperature, dim=-1)  # [b*n, T, V]
        logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [b*n, T]
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)  # [b*n, T]
        return logp, mask, entropy

    def reference_logprobs(self, prompt_ids, completion_ids, n) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self.token_logprobs(self.reference, prompt_ids, completion_ids, n)[0]
            with self.model.disable_adapter():
                return self.token_logprobs(self.model, prompt_ids, completion_ids, n)[0]

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: PromptBatch, batch_idx: int) -> torch.Tensor:
        r = batch.rollouts
        if r is None or r.rewards is None:
            raise RuntimeError("the batch has no scored rollouts: is RolloutCallback among trainer callbacks?")
        opt = self.optimizers()
        opt.zero_grad()

        # 1. advantages, per group
        adv = compute_advantages(self.algorithm.advantage, r.rewards.to(self.device), r.n)  # [B*G]

        # 2-3. micro-batches of whole groups: shared-prompt forward, loss, backward
        stats = self.accumulate_gradients(r, adv, self.manual_backward)

        # 4. clip, step
        if self.optim.grad_clip > 0 and stats["train/active_groups"] > 0:
            self.clip_gradients(opt, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        self.lr_schedulers().step()

        self.log_dict({**stats, "train/lr": opt.param_groups[0]["lr"]}, on_step=True, batch_size=len(batch))
        return torch.tensor(stats["train/loss"])

    def accumulate_gradients(self, r: RolloutBatch, adv: torch.Tensor, backward) -> dict[str, float]:
        """Forward and ``backward(loss)`` over micro-batches of whole groups; returns step metrics.

        Each micro-batch's loss is weighted by its share of the batch's normaliser (tokens for
        token_mean, sequences otherwise), so the accumulated gradient is that of the whole batch.
        """
        algo, n = self.algorithm, r.n
        lengths = torch.tensor([len(c) for c in r.completion_ids], dtype=torch.float)  # [B*G]
        if r.loss_mask is not None:  # the normaliser counts trained tokens only
            lengths = torch.tensor([float(sum(m)) for m in r.loss_mask])  # [B*G]
        total_tokens, total_seqs = float(lengths.sum().clamp(min=1)), float(len(r))
        max_tokens = algo.max_tokens or int(lengths.max().clamp(min=1))
        groups = range(len(r.prompts))
        # Several processes train every group: each must run as many forward/backward passes (collectives).
        every = algo.kl_coef > 0 or (self._trainer is not None and self.trainer.world_size > 1)
        active = [b for b in groups if every or bool(adv[b * n:(b + 1) * n].abs().sum() > 0)]
        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
        tokens_seen = 0.0
        for start in range(0, len(active), self.micro_batch_prompts):
            chunk = active[start:start + self.micro_batch_prompts]
            rows = [i for b in chunk for i in range(b * n, (b + 1) * n)]
            p_ids, c_ids = [r.prompt_ids[b] for b in chunk], [r.completion_ids[i] for i in rows]
            logp, mask, entropy = self.token_logprobs(self.model, p_ids, c_ids, n)  # [b*n, T]
            if r.loss_mask is not None:  # only some completion tokens are trained (e.g. a reflection)
                mask = mask & right_pad([r.loss_mask[i] for i in rows], 0)[0].bool().to(mask.device)
            loss, m = policy_gradient_loss(logp, logp.detach(), adv[rows], mask, algo.clip_eps,
                                           algo.clip_eps_high, algo.loss_agg, max_tokens)
            if algo.kl_coef > 0:
                kl = kl_k3(logp, self.reference_logprobs(p_ids, c_ids, n))  # [b*n, T]
                loss = loss + algo.kl_coef * aggregate(kl, mask, algo.loss_agg, max_tokens)
                sums["kl"] += float(masked_mean(kl.detach(), mask)) * float(mask.sum())
            tokens = float(mask.sum())
            share = tokens / total_tokens if algo.loss_agg == "token_mean" else len(rows) / total_seqs
            backward(loss * share)
            sums["loss"] += float(loss.detach()) * share
            sums["entropy"] += float(masked_mean(entropy, mask)) * tokens
            sums["clip_fraction"] += float(m["clip_fraction"]) * tokens
            tokens_seen += tokens
        stats = {"train/loss": sums["loss"], "train/response_length": float(lengths.mean()),
                 "train/active_groups": len(active) / max(1, len(groups))}
        if tokens_seen:
            stats["train/entropy"] = sums["entropy"] / tokens_seen
            stats["train/clip_fraction"] = sums["clip_fraction"] / tokens_seen
            if algo.kl_coef > 0:
                stats["train/kl"] = sums["kl"] / tokens_seen
        return stats

    # -- evaluation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_samples = {}, {}

    def validation_step(self, batch: PromptBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        r = batch.rollouts
        if r is None:
            raise RuntimeError("the batch has no rollouts: is RolloutCallback among trainer callbacks?")
        self._val_k = r.n
        scores, samples = score_groups(r, self._gold(r).rewards)
        self._val_scores.setdefault(batch.source, []).extend(scores)
        self._val_samples.setdefault(batch.source, []).extend(samples)

    def on_validation_epoch_end(self) -> None:
        metrics = {}
        for name, rows in self._val_scores.items():
            agg, k = aggregate_scores(rows), self._val_k
            metrics.update({f"val/{name}/mean@{k}": agg["mean"], f"val/{name}/maj@{k}": agg["maj"],
                            f"val/{name}/pass@{k}": agg["pass"], f"val/{name}/answer_rate": agg["answer_rate"],
                            f"val/{name}/top_answer_share": top_answer_share(self._val_samples.get(name, []))})
        self.last_val_metrics = metrics
        self.last_val_step = self.global_step
        self._write_samples()
        if metrics:
            self.log_dict(metrics, add_dataloader_idx=False)

    def _write_samples(self) -> None:
        """Every held-out sample of this evaluation: ``<run_dir>/samples/<set>_step<N>.jsonl``."""
        if self.trainer is None or not self.trainer.is_global_zero:
            return
        folder = Path(self.trainer.default_root_dir) / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in self._val_samples.items():
            with open(folder / f"{name}_step{self.global_step}.jsonl", "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
