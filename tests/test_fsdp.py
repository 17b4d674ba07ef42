"""FSDP2 and DDP on the CPU with two gloo processes: sharded sync, and training equal to one process (the
data-parallel split itself, validation and resume: tests/test_ddp.py)."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import PARITY_REWARD, TINY_OVERRIDES


# -- sync from a sharded policy: two processes spawned here ------------------------------------------
def _gather_worker(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from srtlab.models.load import LoraSettings, ModelSettings, load_model
    from srtlab.models.parallel import shard_model
    from srtlab.rollout.sync import policy_weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("data_parallel", "tensor_parallel"))  # as Lightning
    results = {}
    for kind, lora in (("plain", None), ("lora", LoraSettings(r=2, alpha=4))):
        torch.manual_seed(0)
        model = load_model(ModelSettings(model_dir, lora=lora or LoraSettings()))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
        shard_model(model, mesh)
        assert any(type(p).__name__ == "DTensor" for p in model.parameters())
        local = sum(p.to_local().numel() for p in model.parameters())
        full = {k: v.clone() for k, v in policy_weights(model)}  # collective: both ranks iterate
        results[kind] = {"weights": full, "local_numel": local}
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two spawned processes import torch and transformers: ~30 s (fork hangs after other tests' threads)
def test_policy_weights_gather_fsdp_shards_tensor_by_tensor(tiny_model_dir, tmp_path):
    import copy

    import torch.multiprocessing as mp

    from srtlab.models.load import LoraSettings, ModelSettings, load_model

    out = tmp_path / "gathered.pt"
    mp.spawn(_gather_worker, args=(2, _free_port(), str(tiny_model_dir), str(out)), nprocs=2)
    got = torch.load(out, weights_only=True)
    plain = load_model(ModelSettings(str(tiny_model_dir))).state_dict()
    torch.manual_seed(0)
    lora = load_model(ModelSettings(str(tiny_model_dir), lora=LoraSettings(r=2, alpha=4)))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    for kind, expected in (("plain", plain), ("lora", merged)):
        weights = got[kind]["weights"]
        assert set(weights) == set(expected)
        for k, v in weights.items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-6)
    # each rank held about half of the model, not all of it
    assert got["plain"]["local_numel"] <= 0.6 * sum(v.numel() for k, v in plain.items() if k != "lm_head.weight")


# -- end to end: `python -m srtlab fit` on two CPU processes ------------------------------------------
class DumpWeights(L.Callback):
    """A test callback: every rank saves the policy's full weights at the end of fit (rank<r>.pt)."""

    def on_train_end(self, trainer, pl_module):
        from srtlab.rollout.sync import policy_weights

        weights = {k: v.clone() for k, v in policy_weights(pl_module.model)}  # collective under FSDP
        torch.save(weights, Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.pt")


class RankParity:
    """A test reward: rank 0 rewards even token-id sums, rank 1 odd ones, so the ranks' gradients differ."""

    def __call__(self, rollouts, ctx):
        import torch.distributed as dist

        from srtlab.types import RewardOutput

        rank = dist.get_rank() if dist.is_initialized() else 0
        return RewardOutput(rewards=torch.tensor([float(sum(c) % 2 == rank) for c in rollouts.completion_ids]))


COMMON = ["eval_before=false", "eval_after=false", "trainer.val_check_interval=100", "optim.lr=1e-3",
          "rollout.sampling.temperature=1.0", "trainer.max_steps=2", "data.batch_size=2", "module.micro_batch_tokens=1024",
          "+callbacks.dump._target_=test_fsdp.DumpWeights"]


def _fit(model_dir, run_dir, *extra):
    cmd = [sys.executable, "-m", "srtlab", "fit", f"model.path={model_dir}", f"run_dir={run_dir}", *TINY_OVERRIDES,
           *COMMON, *extra]
    run_dir.mkdir(parents=True, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))  # the tests, and this checkout's srtlab
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.path.dirname(here)]), "SRTLAB_TEST_DUMP": str(run_dir)}
    proc = subprocess.run(cmd, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("variant", [["algorithm.kl_coef=0.1"], ["model.lora.r=4"], ["model.activation_checkpointing=true"]],
                         ids=["kl-reference", "lora", "checkpointed-layers"])
def test_fsdp_fit_on_two_processes_matches_one_process(variant, tiny_model_dir, tmp_path):
    """Each rank trains its half of the batch (test_ddp.PerPromptEngine: a prompt's samples do not depend on
    the rank that draws it), and the update equals one process's with the whole batch.

    With KL on, the frozen reference is sharded too; with LoRA, the synced weights are merged ones; with checkpointed
    layers, FSDP2 units recompute in backward through the shared-prompt cache."""
    one, two = tmp_path / "one", tmp_path / "two"
    engine = "rollout.engine._target_=test_ddp.PerPromptEngine"
    # SGD: a weight moves by lr x its gradient. (Adam divides by the gradient's own size, so an element whose
    # gradient is at rounding level, summed in another order over ranks, moves by up to lr either way.)
    sgd = ["optim=sgd", "optim.lr=1e-2"]
    _fit(tiny_model_dir, one, *PARITY_REWARD, *variant, *sgd, engine)
    _fit(tiny_model_dir, two, *PARITY_REWARD, *variant, *sgd, engine, "trainer=fsdp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.precision=32-true")
    a, b = torch.load(one / "rank0.pt", weights_only=True), torch.load(two / "rank0.pt", weights_only=True)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    other = torch.load(two / "rank1.pt", weights_only=True)
    assert all(torch.equal(other[k], b[k]) for k in b)  # every rank streams the same full weights
    assert (two / "checkpoints" / "last.ckpt").is_dir()  # sharded: one file per rank plus metadata
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)  # training did move the weights


@pytest.mark.slow
def test_ddp_ranks_with_different_rewards_stay_identical(tiny_model_dir, tmp_path):
    run = tmp_path / "ddp"
    reward = ["~reward.sources.vote", "~reward.weights.vote", "+reward.sources.parity._target_=test_fsdp.RankParity",
              "+reward.weights.parity=1.0"]
    _fit(tiny_model_dir, run, *reward, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "trainer.precision=32-true")
    a, b = torch.load(run / "rank0.pt", weights_only=True), torch.load(run / "rank1.pt", weights_only=True)
    for k in a:  # gradients were averaged: without it the ranks would have moved apart
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert any(not torch.equal(start[k], a[k]) for k in a)


@pytest.mark.parametrize("trainer", ["fsdp", "ddp"])
def test_strategy_configs_compose(trainer, tiny_cfg):
    from hydra.utils import instantiate

    from srtlab.train import check_config
    from srtlab.validate import ConfigError

    cfg = tiny_cfg(f"trainer={trainer}")
    assert cfg.trainer.max_steps == 2 and cfg.trainer.accelerator == "gpu"  # the CPU defaults, on GPUs
    if not torch.cuda.is_available():  # said before anything loads: no GPU here
        with pytest.raises(ConfigError, match="trainer.accelerator='gpu'; accepted: cpu or auto on this machine"):
            check_config(cfg)
        cfg.trainer.accelerator = "cpu"
    check_config(cfg)
    if trainer == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        assert isinstance(instantiate(cfg.trainer.strategy), ModelParallelStrategy)


@pytest.mark.parametrize("checkpointing", [True, "auto"])
def test_layer_checkpointing_keeps_gradients_with_the_shared_prompt(tiny_model_dir, checkpointing):
    """Checkpointed decoder layers are recomputed in backward, the shared prompt's cache included: same log-probs and
    gradients as without (fp32, 1e-6), names unchanged; ``auto`` checkpoints only passes longer than its threshold."""
    from srtlab.algorithms.settings import AlgorithmSettings
    from srtlab.models import load
    from srtlab.models.load import ModelSettings
    from srtlab.modules.policy import PolicyModule

    prompts, completions = [[5, 6, 7, 9, 10], [8, 9]], [[10, 11, 12], [12], [13, 14], [15, 16, 17, 18], [19], [20, 21]]
    results = []
    for setting in (False, checkpointing):
        policy = PolicyModule(ModelSettings(str(tiny_model_dir), activation_checkpointing=setting), AlgorithmSettings())
        policy.configure_model()
        recomputed = []
        for layer in policy.model.model.layers:  # count each layer's forward calls: recomputation calls it again
            getattr(layer, "_checkpoint_wrapped_module", layer).register_forward_pre_hook(
                lambda *a, calls=recomputed: calls.append(1))
        logp, mask, _ = policy.policy_logprobs(prompts, completions, 3)
        (logp * torch.linspace(-1, 1, logp.numel()).reshape(logp.shape) * mask).sum().backward()
        grads = {k.replace("._checkpoint_wrapped_module", ""): p.grad.clone() for k, p in policy.model.named_parameters()}
        results.append((logp.detach(), grads, len(recomputed)))
        if setting:
            assert any("checkpoint" in type(m).__name__.lower() for m in policy.model.modules())
            assert set(policy.model.state_dict()) == set(load_plain(tiny_model_dir))
    (logp0, grads0, calls0), (logp1, grads1, calls1) = results
    torch.testing.assert_close(logp1, logp0, rtol=0, atol=1e-6)
    assert grads1.keys() == grads0.keys()
    for k in grads0:
        torch.testing.assert_close(grads1[k], grads0[k], rtol=0, atol=1e-6, msg=k)
    layers = len(policy.model.model.layers)
    assert calls0 == 2 * layers  # the prompt pass and the completion pass
    # true: every layer runs again in backward; auto: this short pass (under CHECKPOINT_ABOVE tokens) keeps them
    assert calls1 == (4 * layers if checkpointing is True else 2 * layers)
    assert load.CHECKPOINT_ABOVE > 30


def load_plain(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
