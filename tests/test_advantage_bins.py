"""``train.ppo.advantage_bins``: each quantile bin of the critic's value gets the rollout's advantage scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_args

import agents.callbacks as callbacks
import train
from agents.callbacks import AdvantageBins, rescale_advantages
from configs.loader import ConfigError, resolve_config


def _two_kinds(rng: np.random.Generator, t: int = 64, b: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rollout where a third of the users (low value) have advantages 20× smaller than the rest: (T, B) arrays and
    the (T, B) mask of the low-value samples."""
    low = np.zeros((t, b), dtype=bool)
    low[:, : b // 3] = True
    values = np.where(low, rng.uniform(0.0, 1.0, (t, b)), rng.uniform(5.0, 9.0, (t, b))).astype(np.float32)
    adv = np.where(low, 0.05, 1.0) * rng.standard_normal((t, b))
    return adv.astype(np.float32), values, low


def test_each_value_bin_gets_the_rollouts_scale_and_the_signs_and_order_within_a_bin_stay() -> None:
    rng = np.random.default_rng(0)
    adv, values, low = _two_kinds(rng)
    before, values_before = adv.copy(), values.copy()
    sigma = float(adv.std())
    gains = rescale_advantages(adv, values, 3, max_gain=100.0)  # bin 0: exactly the low-value third
    assert np.array_equal(values, values_before)  # the value targets are the caller's; values are only read
    order = np.argsort(values.reshape(-1), kind="stable")
    for idx in np.array_split(order, 3):
        assert float(adv.reshape(-1)[idx].std()) == pytest.approx(sigma, rel=1e-4)
    assert np.array_equal(np.sign(adv), np.sign(before))
    # the low-value users' advantages were amplified (~20×), the others' damped a little
    ratio = adv / np.where(before == 0, 1, before)
    assert ratio[low].min() > 5 and ratio[~low].max() < 1.5
    assert gains[0] > 5 > 1.5 > gains[-1]


def test_the_gain_is_capped_and_a_bin_without_spread_is_left_alone() -> None:
    rng = np.random.default_rng(1)
    adv, values, low = _two_kinds(rng)
    before = adv.copy()
    gains = rescale_advantages(adv, values, 3, max_gain=4.0)
    assert gains.max() == 4.0 and np.allclose(adv[low], 4.0 * before[low])
    flat = np.full((8, 4), 0.3, dtype=np.float32)
    flat[:, 2:] = rng.standard_normal((8, 2))
    vals = np.tile(np.arange(4, dtype=np.float32), (8, 1))  # bin 0: the constant columns
    kept = flat.copy()
    rescale_advantages(flat, vals, 2, max_gain=10.0)
    assert np.array_equal(flat[:, :2], kept[:, :2])
    zeros = np.zeros((4, 4), dtype=np.float32)
    assert np.array_equal(rescale_advantages(zeros, vals[:4], 2, 10.0), np.ones(2))  # nothing to scale


def test_bad_settings_are_refused_by_name() -> None:
    for bad in ("1", "-2"):
        with pytest.raises(ConfigError, match="advantage_bins"):
            resolve_config(None, "default", [f"train.ppo.advantage_bins={bad}"])
    assert resolve_config(None, "default", ["train.ppo.advantage_bins=8"]).train.ppo.advantage_bins == 8
    with pytest.raises(ValueError, match="bins"):
        AdvantageBins(1)
    with pytest.raises(ValueError, match="max_gain"):
        AdvantageBins(4, max_gain=0.5)


def test_a_run_rescales_every_rollout_before_its_update(tmp_path: Path, runs_cache: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of the run's rollouts passes through the rescaling once, on the model's own buffer, before PPO.train."""
    monkeypatch.setenv("RECFEED_CACHE", str(runs_cache))
    seen: list[tuple[int, tuple[int, ...]]] = []
    real = callbacks.rescale_advantages

    def spy(adv: np.ndarray, values: np.ndarray, bins: int, max_gain: float) -> np.ndarray:
        seen.append((bins, adv.shape))
        gains = real(adv, values, bins, max_gain)
        order = np.argsort(values.reshape(-1), kind="stable")
        stds = [float(adv.reshape(-1)[i].std()) for i in np.array_split(order, bins)]
        assert max(stds) / min(stds) < 1.01 or gains.max() == max_gain  # equal scales unless a gain was capped
        return gains

    monkeypatch.setattr(callbacks, "rescale_advantages", spy)
    summary = train.main([*tiny_args(tmp_path, "bins", 768), "--set", "train.ppo.advantage_bins=3"])
    assert summary["total_timesteps"] == 768
    assert seen == [(3, (32, 8))] * 3  # 768 steps = 3 rollouts of n_steps 32 × n_envs 8
