"""The CUDA path agrees with the CPU path (skipped without a GPU; run on the device machine, see BENCHMARKS.md).

On CPU the Plackett-Luce distribution's path terms run in compiled kernels; on any other device the torch-op
reference runs. These tests hold the two against each other, and train a few PPO updates on the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from agents.distributions import PlackettLuceDistribution
from configs.schema import EnvConfig
from envs.world import World

pytestmark = pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device")


def _inputs(b: int, n: int, g: int, seed: int) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    gen = th.Generator().manual_seed(seed)
    logits = 2.0 * th.randn(b, n, generator=gen)
    groups = th.randint(0, g, (b, n), generator=gen)
    beta = th.rand(b, generator=gen)
    return logits, groups, beta


@pytest.mark.parametrize("repulsion", [False, True])
def test_log_prob_and_entropy_agree_with_cpu(repulsion: bool) -> None:
    b, n, k, g = 64, 20, 5, 4
    logits, groups, beta = _inputs(b, n, g, seed=3)
    kw = {"groups": groups, "repulsion": beta} if repulsion else {}
    cpu = PlackettLuceDistribution(n, k).proba_distribution(logits, **kw)
    slates = cpu.sample()
    gpu = PlackettLuceDistribution(n, k).proba_distribution(
        logits.cuda(), **{key: v.cuda() for key, v in kw.items()})
    lp_cpu, lp_gpu = cpu.log_prob(slates), gpu.log_prob(slates.cuda()).cpu()
    assert th.allclose(lp_cpu, lp_gpu, atol=1e-4, rtol=1e-4)
    # the entropy estimate follows one path (sampled or the mode): compare along the same path
    assert th.allclose(cpu._path_entropy(slates), gpu._path_entropy(slates.cuda()).cpu(), atol=1e-4, rtol=1e-4)
    assert th.equal(cpu.mode(), gpu.mode().cpu())
    # slates handed over from the host are accepted by a distribution on the GPU
    assert th.allclose(gpu.log_prob(slates).cpu(), lp_cpu, atol=1e-4, rtol=1e-4)


def test_gpu_samples_are_valid_slates() -> None:
    b, n, k, g = 512, 30, 10, 6
    logits, groups, beta = _inputs(b, n, g, seed=5)
    dist = PlackettLuceDistribution(n, k).proba_distribution(logits.cuda(), groups=groups.cuda(), repulsion=beta.cuda())
    slates = dist.sample().cpu().numpy()
    assert slates.shape == (b, k)
    assert ((slates >= 0) & (slates < n)).all()
    srt = np.sort(slates, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all(), "a GPU sample repeats a candidate"


def test_gradients_agree_with_cpu() -> None:
    b, n, k, g = 32, 12, 4, 3
    logits, groups, beta = _inputs(b, n, g, seed=7)
    slates = PlackettLuceDistribution(n, k).proba_distribution(logits, groups=groups, repulsion=beta).sample()
    grads = []
    for device in ("cpu", "cuda"):
        x = logits.detach().to(device).requires_grad_(True)
        bt = beta.detach().to(device).requires_grad_(True)
        d = PlackettLuceDistribution(n, k).proba_distribution(x, groups=groups.to(device), repulsion=bt)
        (d.log_prob(slates.to(device)).sum() + 0.1 * d._path_entropy(slates.to(device)).sum()).backward()
        grads.append((x.grad.cpu(), bt.grad.cpu()))
    assert th.allclose(grads[0][0], grads[1][0], atol=1e-4, rtol=1e-3)
    assert th.allclose(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-3)


def test_ppo_trains_on_cuda(small_cfg: EnvConfig, small_world: World) -> None:
    """A few PPO updates on the GPU: parameters live on cuda, move, and stay finite."""
    from stable_baselines3 import PPO

    from agents.policies import SlatePolicy
    from agents.training import make_venv, policy_kwargs
    from configs.loader import load_config

    cfg = load_config(None, ["train.ppo.n_steps=16", "train.ppo.n_envs=32", "train.ppo.batch_size=256"])
    cfg.env = small_cfg
    venv = make_venv(cfg, small_world, seed=0)
    model = PPO(SlatePolicy, venv, n_steps=16, batch_size=256, n_epochs=1, device="cuda", seed=0,
                policy_kwargs=policy_kwargs(cfg, 0.5, small_world))
    before = [p.detach().clone() for p in model.policy.parameters()]
    assert all(p.is_cuda for p in before)
    model.learn(16 * 32 * 2)
    after = list(model.policy.parameters())
    assert any(not th.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(th.isfinite(a).all() for a in after)
