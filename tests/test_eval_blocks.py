"""bench.eval_blocks: one evaluation cut into blocks of sessions, on fabricated per-session returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.evaluation import episode_plan
from agents.report import write_returns
from bench import eval_blocks


class _Ret:
    """The one field of an ``EpisodeStats`` that ``write_returns`` reads."""

    def __init__(self, ret: np.ndarray) -> None:
        self.ret = ret


def _report(tmp_path: Path, policy: np.ndarray, reference: np.ndarray, n_users: int = 50) -> Path:
    plan = episode_plan(len(policy) // 4, [0, 1, 2, 3], n_users)
    write_returns({"run:x": _Ret(policy), "tuned-diverse": _Ret(reference)}, plan, tmp_path / "returns.npz")
    return tmp_path


def test_blocks_read_each_block_and_the_noise_one_block_carries() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2.0, 8000)
    res = eval_blocks.blocks(0.3 + noise, 2000, bootstrap=500)
    assert len(res["block_means"]) == 4 and res["sessions"] == 8000
    assert res["block_means"][1] == pytest.approx(0.3 + noise[2000:4000].mean())
    assert res["mean"] == pytest.approx(0.3 + noise.mean())
    assert res["ci95"][0] < res["mean"] < res["ci95"][1]
    # pure session noise: a block's SE from its sessions is σ/√block
    assert res["block_se_expected"] == pytest.approx(2.0 / np.sqrt(2000), rel=0.05)
    # blocks that differ by more than their sessions' draw show it in the block SD
    shifted = 0.3 + noise + np.repeat([0.0, 1.0, 0.0, 1.0], 2000)
    assert eval_blocks.blocks(shifted, 2000, 500)["block_sd"] > 10 * res["block_se_expected"]
    # a remainder stays in the total, not in the blocks
    odd = eval_blocks.blocks(noise[:4500], 2000, 500)
    assert len(odd["block_means"]) == 2 and odd["sessions"] == 4500
    with pytest.raises(ValueError, match="at most the 100"):
        eval_blocks.blocks(noise[:100], 200)


def test_analyse_pairs_the_named_rankers_and_splits_by_type(tmp_path: Path) -> None:
    ref = np.arange(400, dtype=np.float64)
    report = _report(tmp_path, ref + 0.5, ref)
    rho = np.where(np.arange(50) < 20, 0.1, 0.9)  # users 0..19 CF-leaning
    res = eval_blocks.analyse(report, "run:x", "tuned-diverse", 100, rho=rho, bootstrap=200)
    assert res["all"]["mean"] == pytest.approx(0.5) and res["all"]["block_sd"] == pytest.approx(0.0)
    groups = res["by_user_type"]
    assert sorted(groups) == ["rho<0.5 (CF-leaning)", "rho>=0.5 (content-leaning)"]
    assert groups["rho<0.5 (CF-leaning)"]["share"] == pytest.approx(0.4)
    assert sum(g["sessions"] for g in groups.values()) == 400
    assert "| all | 400 | +0.500 (+0.500 to +0.500) | 100 | 4 | +0.500 |" in eval_blocks.markdown(res)


def test_bad_input_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(FileNotFoundError, match=r"returns\.npz is missing"):
        eval_blocks.analyse(tmp_path, "run:x", "tuned-diverse", 10)
    report = _report(tmp_path, np.zeros(40), np.ones(40))
    with pytest.raises(ValueError, match=r"no returns of \['ppo'\]; it has \['run:x', 'tuned-diverse'\]"):
        eval_blocks.analyse(report, "ppo", "tuned-diverse", 10)
    with pytest.raises(SystemExit):
        eval_blocks.main([str(report), "--ranker", "run:x", "--block", "400"])
    assert "at most the 40" in capsys.readouterr().err
