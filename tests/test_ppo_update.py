"""``agents.ppo_update``: SB3's PPO update with its minibatches gathered on the device and one host read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer
from stable_baselines3.common.utils import FloatSchedule

from agents.checkpoints import new_ppo
from agents.distributions import PlackettLuceDistribution
from agents.policies import SlatePolicy
from agents.ppo_update import DeviceDictRolloutBuffer, LinearRate, new_rollout_buffer
from agents.training import make_venv, policy_kwargs
from bench.train_throughput import HEURISTIC
from configs.loader import resolve_config
from envs.world import World

_TRAIN_KEYS = ("train/entropy_loss", "train/policy_gradient_loss", "train/value_loss", "train/approx_kl",
               "train/clip_fraction", "train/loss", "train/explained_variance", "train/clip_range", "train/n_updates")


def _model(world: World, *overrides: str) -> PPO:
    """The recfeed PPO on the small world (16 users × 12 steps per rollout), as train.py builds it."""
    cfg = resolve_config(None, "small", ["train.ppo.n_envs=16", "train.ppo.n_steps=12", "train.ppo.batch_size=64",
                                          "train.device=cpu", *overrides])
    return new_ppo(cfg, make_venv(cfg, world, 0), th.device("cpu"), None, policy_kwargs(cfg, 0.9, world, HEURISTIC))


def _learn_with(world: World, sb3: bool, rollouts: int, *overrides: str) -> PPO:
    """``rollouts`` rollouts and updates of a new model; ``sb3``: with SB3's own buffer and update."""
    model = _model(world, *overrides)
    if sb3:  # SB3's buffer and SB3's update; the collection stays recfeed's
        model.rollout_buffer = new_rollout_buffer(model, DictRolloutBuffer)
        model.train = lambda: PPO.train(model)  # type: ignore[method-assign]
    model.learn(total_timesteps=rollouts * model.n_envs * model.n_steps)
    return model


@pytest.mark.parametrize("target_kl", [None, 1e-4], ids=["no-early-stop", "early-stop"])
def test_the_update_leaves_sb3s_weights_bit_for_bit_and_logs_its_statistics(small_world: World,
                                                                            target_kl: float | None) -> None:
    """Three rollouts and updates from one seed: the same weights, Adam state, update count and logged statistics
    as SB3's buffer and update; with a tiny ``target_kl`` the early stop cuts the epochs where SB3's does."""
    extra = [] if target_kl is None else [f"train.ppo.target_kl={target_kl}", "train.ppo.n_epochs=4"]
    ours = _learn_with(small_world, False, 3, *extra)
    theirs = _learn_with(small_world, True, 3, *extra)
    assert isinstance(ours.rollout_buffer, DeviceDictRolloutBuffer)
    assert type(theirs.rollout_buffer) is DictRolloutBuffer
    for (name, a), (_, b) in zip(ours.policy.state_dict().items(), theirs.policy.state_dict().items(), strict=True):
        assert th.equal(a, b), name
    start = _model(small_world, *extra).policy.state_dict()
    changed = sum(not th.equal(a, start[k]) for k, a in ours.policy.state_dict().items())
    assert changed > 5, "the updates moved the weights"
    for a, b in zip(ours.policy.optimizer.state_dict()["state"].values(),
                    theirs.policy.optimizer.state_dict()["state"].values(), strict=True):
        assert all(th.equal(a[k], b[k]) for k in a)
    assert ours._n_updates == theirs._n_updates
    if target_kl is None:
        assert ours._n_updates == 3 * ours.n_epochs
    else:
        assert ours._n_updates < 3 * ours.n_epochs, "the early stop did not trigger: the test needs it"
    logged, expected = ours.logger.name_to_value, theirs.logger.name_to_value
    for key in _TRAIN_KEYS:
        assert logged[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key


_HOST_READS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")


def _count_update_reads(model: PPO, update: Any, monkeypatch: pytest.MonkeyPatch) -> int:
    """Tensor reads to the host during ``update()``, as on an accelerator (the policy's value checks off, the
    distribution's torch-op path). The optimizer's own reads are not counted: they read its step counters, which
    Adam keeps on the CPU whatever the device."""
    monkeypatch.setattr(SlatePolicy, "update_checks_inputs", lambda self: not self.training)
    dist = model.policy.action_dist
    assert isinstance(dist, PlackettLuceDistribution)
    dist.use_compiled = False
    reads = 0
    counting = True
    for name in _HOST_READS:
        original = getattr(th.Tensor, name)

        def counted(self: th.Tensor, *args: Any, _f: Any = original, **kwargs: Any) -> Any:
            nonlocal reads
            reads += counting
            return _f(self, *args, **kwargs)

        monkeypatch.setattr(th.Tensor, name, counted)
    step = model.policy.optimizer.step

    def uncounted_step(*args: Any, **kwargs: Any) -> Any:
        nonlocal counting
        counting = False
        try:
            return step(*args, **kwargs)
        finally:
            counting = True

    monkeypatch.setattr(model.policy.optimizer, "step", uncounted_step)
    update()
    monkeypatch.undo()
    return reads


@pytest.mark.parametrize("batch_size", [64, 16])
def test_the_update_reads_the_device_once_however_many_minibatches(small_world: World, batch_size: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """recfeed's update reads one tensor back per update (its statistics) plus the weight check's one, at 3 and at
    12 minibatches per epoch; SB3's reads five per minibatch, so the count above is not blind."""
    ours = _model(small_world, f"train.ppo.batch_size={batch_size}")
    ours.learn(total_timesteps=ours.n_envs * ours.n_steps)  # one rollout and update: the buffer is full
    assert _count_update_reads(ours, ours.train, monkeypatch) == 2
    minibatches = ours.n_epochs * -(-ours.n_envs * ours.n_steps // batch_size)
    sb3 = _learn_with(small_world, True, 1, f"train.ppo.batch_size={batch_size}")
    assert _count_update_reads(sb3, sb3.train, monkeypatch) >= 5 * minibatches


def _dict_space() -> spaces.Dict:
    return spaces.Dict({"x": spaces.Box(-1, 1, (3, 2), np.float32), "ids": spaces.Box(0, 99, (4,), np.int64)})


def _filled(cls: type[DictRolloutBuffer], seed: int) -> DictRolloutBuffer:
    space, actions = _dict_space(), spaces.MultiDiscrete([5, 5])
    buf = cls(6, space, actions, device="cpu", n_envs=3)
    gen = np.random.default_rng(seed)
    for _ in range(6):
        obs = {k: gen.integers(0, 99, (3, *(s.shape or ()))).astype(s.dtype) for k, s in space.spaces.items()}
        buf.add(obs, gen.integers(0, 5, (3, 2)), gen.normal(size=3).astype(np.float32), np.zeros(3),
                th.as_tensor(gen.normal(size=3)), th.as_tensor(gen.normal(size=3)))
    buf.compute_returns_and_advantage(th.as_tensor(gen.normal(size=3)), np.zeros(3))
    return buf


def test_the_device_buffer_yields_sb3s_minibatches_and_copies() -> None:
    """For the same ``np.random`` state the device buffer yields SB3's minibatches (values, dtypes, shapes) epoch
    after epoch; changing a yielded tensor leaves the buffer's samples as they were; a reset drops the device copy."""
    ours, theirs = _filled(DeviceDictRolloutBuffer, 0), _filled(DictRolloutBuffer, 0)
    assert isinstance(ours, DeviceDictRolloutBuffer)
    for epoch in range(2):
        np.random.seed(epoch)
        a = list(ours.get(5))
        np.random.seed(epoch)
        b = list(theirs.get(5))
        assert [len(x.actions) for x in a] == [5, 5, 5, 3]
        for x, y in zip(a, b, strict=True):
            for key in y.observations:
                assert x.observations[key].dtype == y.observations[key].dtype
                assert th.equal(x.observations[key], y.observations[key])
            for field in ("actions", "old_values", "old_log_prob", "advantages", "returns"):
                assert th.equal(getattr(x, field), getattr(y, field)), field
        a[0].observations["x"].fill_(-123.5)  # a minibatch is the caller's to change
        a[0].advantages.fill_(-123.5)
    assert not (ours.observations["x"] == -123.5).any() and not (ours.advantages == -123.5).any()
    whole = next(ours.get(None))
    assert len(whole.returns) == 18
    ours.reset()
    assert ours._on_device is None and not ours.full


def test_the_device_buffer_hands_out_its_observations_once_an_update_gathered_them() -> None:
    """``device_observations``: ``None`` before the first ``get``, then the flattened observations the minibatches
    are gathered from (every row of the rollout, each key (n, …)), which ``rollout_observations`` hands on without a
    copy; before that it reads the buffer's arrays, the same rows in another order."""
    from types import SimpleNamespace

    from agents.ppo_update import rollout_observations

    buf = _filled(DeviceDictRolloutBuffer, 1)
    assert isinstance(buf, DeviceDictRolloutBuffer) and buf.device_observations() is None
    space = _dict_space()
    model = SimpleNamespace(rollout_buffer=buf, policy=SimpleNamespace(observation_space=space, device="cpu"))
    before = rollout_observations(model)  # type: ignore[arg-type]
    assert before["x"].shape == (18, 3, 2) and before["ids"].shape == (18, 4)
    next(buf.get(5))
    on_device = buf.device_observations()
    assert on_device is not None and on_device["x"].shape == (18, 3, 2)
    after = rollout_observations(model)  # type: ignore[arg-type]
    assert after["x"] is on_device["x"]
    for key in ("x", "ids"):  # the same rows: sort each row's values to compare the two orders
        np.testing.assert_array_equal(np.sort(before[key].reshape(18, -1).numpy(), axis=0),
                                      np.sort(after[key].reshape(18, -1).numpy(), axis=0))


def test_the_update_benchmark_runs_both_updates_to_the_same_weights(capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.update_speed`` on the small preset: both updates of one rollout, alternately from one state, end at
    the same weights; a bad config or repeat count is the parser's error."""
    import json

    from bench import update_speed

    args = ["--preset", "small", "--repeats", "2", "--set", "train.ppo.n_envs=16", "--set", "train.ppo.n_steps=12",
            "--set", "train.ppo.batch_size=64", "--set", "train.device=cpu"]
    out = update_speed.main(args)
    assert out["same_weights"] is True
    assert out["samples"] == 192 and len(out["runs"]["recfeed"]) == len(out["runs"]["sb3"]) == 2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    for bad in (["--set", "env.slate_size=0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            update_speed.main(["--preset", "small", *bad])


def test_a_linear_learning_rate_reaches_its_end_with_the_steps(small_world: World) -> None:
    """``train.ppo.learning_rate_end``: each update's Adam rate follows the line from the start rate to the end rate
    by the share of the steps done (SB3's progress, counted once each rollout is collected)."""
    model = _model(small_world, "train.ppo.learning_rate=2e-3", "train.ppo.learning_rate_end=5e-4")
    rates: list[float] = []
    update = model.train

    def recorded() -> None:
        update()
        rates.append(model.policy.optimizer.param_groups[0]["lr"])

    model.train = recorded  # type: ignore[method-assign]
    model.learn(total_timesteps=4 * model.n_envs * model.n_steps)
    # SB3 updates the progress after each rollout: 3/4, 2/4, 1/4, 0 of the run remain at the four updates
    assert rates == pytest.approx([5e-4 + 1.5e-3 * left for left in (0.75, 0.5, 0.25, 0.0)])
    constant = _model(small_world, "train.ppo.learning_rate=2e-3")
    constant.learn(total_timesteps=2 * constant.n_envs * constant.n_steps)
    assert constant.policy.optimizer.param_groups[0]["lr"] == 2e-3


def test_a_linear_learning_rate_under_a_time_limit_follows_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``train.max_minutes`` the run ends by its clock: :class:`TimeLimit` gives the rate its deadline, and the
    progress is whichever is further, the steps or the minutes."""
    from agents import ppo_update
    from agents.callbacks import TimeLimit

    now = [100.0]
    monkeypatch.setattr(ppo_update.time, "perf_counter", lambda: now[0])
    rate = LinearRate(1e-3, 0.0)
    assert rate(0.5) == pytest.approx(5e-4) and rate(1.5) == 1e-3 and rate(-0.1) == 0.0  # clipped to [0, 1]

    class _Model:  # what TimeLimit reads of a model: SB3 keeps the schedule in a FloatSchedule
        lr_schedule = FloatSchedule(rate)

    limit = TimeLimit(minutes=10.0)  # time.perf_counter is the fake clock here (the module is shared)
    limit.model = _Model()  # type: ignore[assignment]
    limit._on_training_start()
    assert rate.wall_clock == (100.0, 600.0)
    now[0] = 100.0 + 150.0  # a quarter of the minutes spent, a tenth of the steps
    assert rate(0.9) == pytest.approx(0.75e-3)
    assert rate(0.5) == pytest.approx(0.5e-3)  # half the steps done: the steps are further
    now[0] = 100.0 + 900.0  # past the deadline
    assert rate(1.0) == 0.0
    other = TimeLimit(minutes=1.0)  # a constant rate stays constant
    other.model = type("M", (), {"lr_schedule": FloatSchedule(1e-3)})()  # type: ignore[assignment]
    other._on_training_start()
    assert other.model.lr_schedule(0.0) == 1e-3


def test_the_feature_gate_setting_reaches_the_policy_and_learns_from_zero(small_world: World) -> None:
    """``train.policy.feature_gate`` builds the policy with per-request feature weights; they start at 0 and the
    recfeed update moves them (a policy without the setting has none)."""
    plain = _model(small_world)
    assert not plain.policy.feature_gate and plain.policy.feature_gate_weight is None
    model = _model(small_world, "train.policy.feature_gate=true")
    weight = model.policy.feature_gate_weight
    assert model.policy.feature_gate and weight is not None and not bool(weight.detach().any())
    model.learn(total_timesteps=2 * model.n_envs * model.n_steps)
    assert bool(weight.detach().abs().max() > 0)
