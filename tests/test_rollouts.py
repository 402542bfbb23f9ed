"""``agents.rollouts.RecPPO``: SB3's rollout with the time-limit bootstrap in one value call per step."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from agents.callbacks import play
from agents.checkpoints import new_ppo
from agents.evaluation import episode_plan, run_episodes
from agents.policies import SlatePolicy
from agents.ppo_ranker import PPORanker
from agents.rollouts import RecPPO
from agents.training import make_venv, policy_kwargs
from bench.train_throughput import HEURISTIC
from configs.loader import ConfigError, resolve_config
from envs.factory import make_core
from envs.world import World


def _collect(algo: type[PPO], world: World, normalize: bool) -> tuple[PPO, int]:
    """One rollout of ``algo`` on the small world with sessions cut at 3 requests (most end by the limit); returns
    the model and how many times the policy's value head was called during it."""
    cfg = resolve_config(None, "small", ["env.max_steps=3", "train.ppo.n_envs=16", "train.ppo.n_steps=12",
                                          "train.ppo.batch_size=64", "train.device=cpu"])
    venv = make_venv(cfg, world, 0)
    env = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.train.ppo.gamma) if normalize else venv
    model = new_ppo(cfg, env, th.device("cpu"), None, policy_kwargs(cfg, 0.9, world, HEURISTIC))
    if algo is PPO:  # the same construction, SB3's own collection
        model.__class__ = PPO
    calls = 0
    inner = model.policy.predict_values

    def counted(obs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        return inner(obs)

    model.policy.predict_values = counted  # type: ignore[method-assign]
    _, callback = model._setup_learn(cfg.train.ppo.n_envs * cfg.train.ppo.n_steps, None)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, cfg.train.ppo.n_steps)
    return model, calls


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "vecnormalize"])
def test_recppo_fills_the_buffer_as_sb3_does_with_one_value_call_per_step(small_world: World,
                                                                           normalize: bool) -> None:
    ours, our_calls = _collect(RecPPO, small_world, normalize)
    sb3, sb3_calls = _collect(PPO, small_world, normalize)
    assert type(ours) is RecPPO and type(sb3) is PPO
    a, b = ours.rollout_buffer, sb3.rollout_buffer
    np.testing.assert_array_equal(a.actions, b.actions)  # the value calls draw nothing: the same sessions
    np.testing.assert_array_equal(a.episode_starts, b.episode_starts)
    n_steps = a.buffer_size
    truncated = sb3_calls - 1  # SB3: one call per truncated session, and one for the rollout's last observation
    assert truncated > 2 * n_steps, "the test needs many truncated sessions per step"
    assert 1 < our_calls <= n_steps + 1  # at most one batched call per step
    assert np.abs(b.values).min() > 1e-3  # the critic's values are not ~0: a missing bootstrap would show below
    np.testing.assert_allclose(a.rewards, b.rewards, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.returns, b.returns, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-6)


def test_new_ppo_builds_recppo_for_the_local_backend(small_world: World) -> None:
    cfg = resolve_config(None, "small", ["train.device=cpu"])
    model = new_ppo(cfg, make_venv(cfg, small_world, 0), th.device("cpu"), None,
                    policy_kwargs(cfg, 0.9, small_world, HEURISTIC))
    assert type(model) is RecPPO


class _SeesTrainedPolicy(BaseCallback):
    """Checks at every collection step that ``model.policy`` is the trained policy and whether the loop's calls went
    to a copy (its ``forward`` swapped in)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = self.swapped = 0

    def _on_step(self) -> bool:
        assert type(self.model.policy) is SlatePolicy and self.model.policy is self.locals["self"].policy
        self.steps += 1
        self.swapped += "forward" in vars(self.model.policy)
        return True


def _learn(world: World, copy: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[RecPPO, _SeesTrainedPolicy]:
    """Two rollouts and their updates on the small world; ``copy``: through a separate collecting policy (on the CPU,
    where the copy is built only when forced: on a GPU run it collects on the CPU while the update runs on cuda)."""
    cfg = resolve_config(None, "small", ["train.ppo.n_envs=8", "train.ppo.n_steps=16", "train.ppo.batch_size=64",
                                          "train.device=cpu", "train.seed=3"])
    model = new_ppo(cfg, make_venv(cfg, world, 0), th.device("cpu"), None, policy_kwargs(cfg, 0.9, world, HEURISTIC))
    assert isinstance(model, RecPPO) and model.collect_device == "cpu"
    if copy:
        monkeypatch.setattr(model, "_separate_collector", lambda: True)
    seen = _SeesTrainedPolicy()
    model.learn(2 * 8 * 16, callback=seen)
    return model, seen


def test_a_separate_collecting_policy_collects_what_the_trained_policy_would(small_world: World,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    plain, seen_plain = _learn(small_world, False, monkeypatch)
    copied, seen_copied = _learn(small_world, True, monkeypatch)
    assert plain._collector is None and seen_plain.swapped == 0
    assert copied._collector is not None and copied._collector is not copied.policy
    assert seen_copied.swapped == seen_copied.steps == 2 * 16  # every step's calls went to the copy
    assert "forward" not in vars(copied.policy) and "predict_values" not in vars(copied.policy)  # restored
    assert copied.device == th.device("cpu")
    # The second rollout ran on weights refreshed after the first update: the same sessions, values and updates.
    a, b = copied.rollout_buffer, plain.rollout_buffer
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    for (name, x), y in zip(copied.policy.state_dict().items(), plain.policy.state_dict().values(), strict=True):
        assert th.equal(x, y), name
    # The copy holds the weights of the last rollout, the trained policy those of the update after it.
    assert any(not th.equal(x, y) for x, y in zip(copied._collector.state_dict().values(),
                                                   copied.policy.state_dict().values(), strict=True))
    assert all(th.equal(x, y) for x, y in zip(copied.rollout_policy().state_dict().values(),
                                              copied.policy.state_dict().values(), strict=True))
    # SB3's archive (train.py writes one) holds the trained policy and the setting, not the copy.
    copied.save(tmp_path / "model.zip")
    with zipfile.ZipFile(tmp_path / "model.zip") as zf:
        data = zf.read("data").decode()
    assert '"_collector"' not in data and '"collect_device": "cpu"' in data


def test_recppo_refuses_an_unknown_collect_device(small_world: World) -> None:
    cfg = resolve_config(None, "small", ["train.device=cpu"])
    with pytest.raises(ValueError, match="collect_device must be one of"):
        RecPPO(SlatePolicy, make_venv(cfg, small_world, 0), collect_device="gpu",
               policy_kwargs=policy_kwargs(cfg, 0.9, small_world, HEURISTIC))
    with pytest.raises(ConfigError, match="collect_device"):
        resolve_config(None, "small", ["train.collect_device=gpu"])


def test_training_evaluations_play_on_the_collecting_copy(small_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """``agents.callbacks.play`` (the periodic evaluation and the iterate choice) plays the copy that collects, with
    the trained policy's current weights: the same returns as the trained policy's own, its mode left alone."""
    copied, _ = _learn(small_world, True, monkeypatch)
    cfg = resolve_config(None, "small", ["train.device=cpu"])
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, small_world, "heldout", 16)
    plan = episode_plan(16, [7], small_world.populations["heldout"].size)
    calls = 0
    inner = copied.rollout_policy

    def counted() -> SlatePolicy:
        nonlocal calls
        calls += 1
        return inner()

    monkeypatch.setattr(copied, "rollout_policy", counted)
    copied.policy.set_training_mode(True)
    ret = play(copied, core, plan, cfg.env.slate_size)
    assert calls == 1 and copied.policy.training  # the copy played; the trained policy's mode is untouched
    own = run_episodes(core, PPORanker(copied.policy, cfg.env.slate_size), plan).ret
    np.testing.assert_array_equal(ret, own)
    assert np.ptp(ret) > 0  # sessions differ: a constant would hide a wrong policy


class _Diverge(BaseCallback):
    """Poisons one weight at the end of the first rollout, as an update that diverged would leave it."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        with th.no_grad():
            self.model.policy.value_net.weight[0, 0] = float("nan")


def test_an_update_that_leaves_non_finite_weights_stops_the_run(small_world: World,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On an accelerator the update does not check its minibatches' logits (``update_checks_inputs``); RecPPO checks
    the weights once after each update instead, so a diverged update stops the run there, naming the weights, before
    the next rollout or a checkpoint."""
    cfg = resolve_config(None, "small", ["train.ppo.n_envs=8", "train.ppo.n_steps=16", "train.ppo.batch_size=64",
                                          "train.device=cpu"])
    model = new_ppo(cfg, make_venv(cfg, small_world, 0), th.device("cpu"), None,
                    policy_kwargs(cfg, 0.9, small_world, HEURISTIC))
    monkeypatch.setattr(SlatePolicy, "update_checks_inputs", lambda self: False)  # as on an accelerator
    model.policy.action_dist.use_compiled = False  # with the torch ops an accelerator runs
    steps = 0
    inner = model.collect_rollouts

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal steps
        steps += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(model, "collect_rollouts", counted)
    with pytest.raises(FloatingPointError, match=r"step 128 left non-finite weights \([a-z_]+"):
        model.learn(4 * 8 * 16, callback=_Diverge())
    assert steps == 1  # stopped after the first update, before a second rollout
