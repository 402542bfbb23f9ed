"""The CUDA path agrees with the CPU path (the CUDA tests skip without a GPU; run on the device machine, see
BENCHMARKS.md).

On CPU the Plackett-Luce distribution's path terms run in compiled kernels; on any other device the torch-op
reference runs. These tests hold the two against each other, and train a few PPO updates on the GPU. The PPO test
also runs on the CPU, so that CI (which has no GPU) keeps its body in step with how train.py builds PPO: session 31
found the GPU-only version had not built since session 6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch as th

from agents.distributions import PlackettLuceDistribution
from bench.train_throughput import HEURISTIC  # the untuned start of the default policy.base = "diverse"
from envs.world import World

needs_cuda = pytest.mark.skipif(not th.cuda.is_available(), reason="no CUDA device")


def _inputs(b: int, n: int, g: int, seed: int) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    gen = th.Generator().manual_seed(seed)
    logits = 2.0 * th.randn(b, n, generator=gen)
    groups = th.randint(0, g, (b, n), generator=gen)
    beta = th.rand(b, generator=gen)
    return logits, groups, beta


@needs_cuda
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


@needs_cuda
def test_gpu_samples_are_valid_slates() -> None:
    b, n, k, g = 512, 30, 10, 6
    logits, groups, beta = _inputs(b, n, g, seed=5)
    dist = PlackettLuceDistribution(n, k).proba_distribution(logits.cuda(), groups=groups.cuda(), repulsion=beta.cuda())
    slates = dist.sample().cpu().numpy()
    assert slates.shape == (b, k)
    assert ((slates >= 0) & (slates < n)).all()
    srt = np.sort(slates, axis=1)
    assert (srt[:, 1:] != srt[:, :-1]).all(), "a GPU sample repeats a candidate"


@needs_cuda
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


@needs_cuda
@pytest.mark.parametrize("estimator", ["sample", "action"])
def test_the_update_pass_never_waits_for_the_device(estimator: str) -> None:
    """PPO's update pass (``evaluate_actions`` in training mode, then the backward pass) makes no synchronisation on
    cuda once the policy has acted (which checked the observations and cached the category count): torch's sync debug
    mode raises on any. The CPU test ``test_the_update_on_an_accelerator_reads_nothing_back_from_the_device`` counts
    the host reads of the same pass on the torch-op path."""
    from agents.policies import SlatePolicy
    from envs.spaces import action_space, observation_space

    space = observation_space(50, 8, 16)
    policy = SlatePolicy(space, action_space(8, 3), lambda _: 3e-4, item_category=np.arange(50) % 4, category_cap=2,
                         base="diverse", entropy_estimator=estimator, residual_init_scale=1.0).cuda()
    space.seed(0)
    obs, _ = policy.obs_to_tensor({k: np.stack([space[k].sample() for _ in range(32)]) for k in space.spaces})
    policy.set_training_mode(False)
    actions = policy.get_distribution(obs).sample().float()  # the collection's pass: checks on
    policy.set_training_mode(True)
    th.cuda.synchronize()
    th.cuda.set_sync_debug_mode("error")
    try:
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        assert entropy is not None
        (values.square().mean() - log_prob.mean() - entropy.mean()).backward()
    finally:
        th.cuda.set_sync_debug_mode(0)
    assert bool(th.isfinite(log_prob).all()) and bool(th.isfinite(entropy).all())


SMALL_PPO = ["train.ppo.n_steps=16", "train.ppo.n_envs=32", "train.ppo.batch_size=256"]


@pytest.mark.parametrize("collect", ["cpu", "train"], ids=["collect-cpu", "collect-train"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda), "cpu"])
@pytest.mark.parametrize("config", [None, "configs/quality-adapt.yaml"], ids=["default", "adapt-learner"])
def test_ppo_trains_on_device_as_on_cpu(device: str, config: str | None, collect: str, small_world: World,
                                        tmp_path: Path) -> None:
    """PPO as train.py builds it (``new_ppo``; the default learner, and the ``adapt`` protocol's: the critic reading
    the hidden state, the type head, the entropy of the drawn slate) trains on ``device``, its rollouts collected on
    the CPU or on ``device`` (``train.collect_device``): parameters live there, move and stay finite; and the
    trained policy, saved as train.py saves it and loaded on the CPU, gives the same values and log-probabilities
    there."""
    from agents.checkpoints import new_ppo
    from agents.ppo_ranker import load_policy, save_policy
    from agents.training import make_venv, policy_kwargs
    from configs.loader import resolve_config

    path = None if config is None else Path(__file__).resolve().parents[1] / config
    cfg = resolve_config(path, "small", [*SMALL_PPO, f"train.collect_device={collect}"])
    pc = cfg.train.ppo
    venv = make_venv(cfg, small_world, 0)
    model = new_ppo(cfg, venv, th.device(device), None, policy_kwargs(cfg, 0.9, small_world, HEURISTIC))
    before = [p.detach().clone() for p in model.policy.parameters()]
    assert all(p.device.type == device for p in before)
    model.learn(pc.n_steps * pc.n_envs * 2)
    after = list(model.policy.parameters())
    assert any(not th.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(th.isfinite(a).all() for a in after)
    copy = model._collector  # type: ignore[attr-defined]  # RecPPO's CPU copy, when it collects on another device
    if device != "cpu" and collect == "cpu":
        assert copy is not None and next(copy.parameters()).device.type == "cpu"
        assert model.rollout_buffer.device.type == device  # the update's minibatches go to the device
    else:
        assert copy is None

    trained = model.policy
    trained.set_training_mode(False)
    save_policy(trained, tmp_path)
    cpu = load_policy(tmp_path, device="cpu")
    cpu.set_training_mode(False)
    assert cpu is not trained and next(cpu.parameters()).device.type == "cpu"
    obs = venv.reset()
    slates = cpu.get_distribution(cpu.obs_to_tensor(obs)[0]).sample()
    with th.no_grad():
        v_cpu, lp_cpu, _ = cpu.evaluate_actions(cpu.obs_to_tensor(obs)[0], slates)
        v_dev, lp_dev, _ = trained.evaluate_actions(trained.obs_to_tensor(obs)[0], slates.to(device))
    assert th.allclose(v_cpu, v_dev.cpu(), atol=1e-4, rtol=1e-4)
    assert th.allclose(lp_cpu, lp_dev.cpu(), atol=1e-3, rtol=1e-4)


@needs_cuda
def test_the_update_synchronises_a_fixed_number_of_times_however_many_minibatches(small_world: World) -> None:
    """recfeed's PPO update on cuda (``agents.ppo_update``): the rollout's copy to the device, one permutation per
    epoch and the statistics' read at the end are its only synchronisations, so 3 and 12 minibatches per epoch make
    the same number (torch's sync debug mode, set to warn, counts them); SB3's own update makes several more per
    minibatch. The CPU test ``test_the_update_reads_the_device_once_however_many_minibatches`` counts the reads."""
    import warnings

    from stable_baselines3 import PPO
    from stable_baselines3.common.buffers import DictRolloutBuffer

    from agents.checkpoints import new_ppo
    from agents.ppo_update import new_rollout_buffer
    from agents.training import make_venv, policy_kwargs
    from configs.loader import resolve_config

    def syncs(batch_size: int, sb3: bool) -> int:
        cfg = resolve_config(None, "small", ["train.ppo.n_envs=16", "train.ppo.n_steps=12",
                                              f"train.ppo.batch_size={batch_size}"])
        model = new_ppo(cfg, make_venv(cfg, small_world, 0), th.device("cuda"), None,
                        policy_kwargs(cfg, 0.9, small_world, HEURISTIC))
        if sb3:
            model.rollout_buffer = new_rollout_buffer(model, DictRolloutBuffer)
            model.train = lambda: PPO.train(model)  # type: ignore[method-assign]
        model.learn(model.n_envs * model.n_steps)  # a warm-up update; then one more rollout, its update counted
        _, callback = model._setup_learn(model.n_envs * model.n_steps, None, reset_num_timesteps=False)
        callback.on_training_start(locals(), globals())
        model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
        th.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            th.cuda.set_sync_debug_mode("warn")
            try:
                model.train()
            finally:
                th.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    few, many = syncs(64, False), syncs(16, False)
    assert few == many, (few, many)
    n_epochs = resolve_config(None, "small", []).train.ppo.n_epochs
    assert syncs(16, True) >= 5 * n_epochs * 12  # SB3's: at least its five reads per minibatch (192 / 16 = 12)
