"""Row copies of the batched core and the rollout lookahead built on them (``agents.lookahead``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import greedy, make_core

from agents.base import Ranker
from agents.lookahead import LookaheadRanker, RankerFactory, planning_core
from agents.rankers import OracleRanker
from configs.schema import EnvConfig
from envs.core import BatchedCore
from envs.kernels import SessionState
from envs.world import World


def _play(core: BatchedCore, steps: int) -> list[tuple[np.ndarray, ...]]:
    """``steps`` greedy requests on every row: (features, candidates, reward, click rank, ended) per request."""
    out = []
    for _ in range(steps):
        obs = core.observe()
        res = core.step(greedy(obs, core.K))
        out.append((obs["features"].copy(), obs["candidates"].copy(), res.reward.copy(), res.click_rank.copy(),
                    res.terminated | res.truncated))
    return out


def test_copied_rows_replay_their_source_and_other_keys_give_other_futures(small_cfg: EnvConfig,
                                                                           small_world: World) -> None:
    """A row copied mid-session (into another core, rows permuted) with its source's key plays exactly what the
    source plays next under the same slates; copies given other keys start from the same request but their
    responses differ."""
    src = make_core(small_cfg, small_world, b=8)
    _play(src, 3)
    src.observe()
    dst = make_core(small_cfg, small_world, b=8)
    other = make_core(small_cfg, small_world, b=8)
    perm = np.array([5, 2, 7, 0, 1, 6, 3, 4])
    dst.copy_rows(src, perm, np.arange(8))
    other.copy_rows(src, perm, np.arange(8), keys=src.keys[perm] ^ np.uint64(12345))
    np.testing.assert_array_equal(other.cands, src.cands[perm])  # the current request is copied as it is
    a, b, c = _play(src, 6), _play(dst, 6), _play(other, 6)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u[perm], v)
    assert any(not np.array_equal(x[3][perm], z[3]) for x, z in zip(a, c, strict=True))


def test_copy_rows_rejects_other_worlds_configs_and_bad_rows(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=4)
    other_cfg = dataclasses.replace(small_cfg, user_model=dataclasses.replace(small_cfg.user_model, drift_rate=0.5))
    with pytest.raises(ValueError, match="same world, config"):
        make_core(other_cfg, small_world, b=4).copy_rows(core, [0], [0])
    with pytest.raises(ValueError, match="source rows"):
        core.copy_rows(core, [0, 1], [0])
    with pytest.raises(ValueError, match="distinct"):
        core.copy_rows(core, [0, 1], [2, 2])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        core.copy_rows(core, [9], [0])
    before = {name: getattr(core, name).copy() for name in SessionState._fields}
    with pytest.raises(ValueError, match="keys"):
        core.copy_rows(core, [0, 1], [2, 3], keys=np.zeros(1, np.uint64))
    for name, arr in before.items():  # a rejected copy writes nothing
        np.testing.assert_array_equal(getattr(core, name), arr, err_msg=name)


class AntiOracle(OracleRanker):
    """Shows the K candidates with the *lowest* true click probability (a clearly bad slate)."""

    name = "anti-oracle"

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.argsort(self.core.true_click_probs(), axis=1, kind="stable")[:, : self.k].astype(np.int64)


def _lookahead(core: BatchedCore, candidates: list[RankerFactory], base: RankerFactory,
               rollouts: int = 8) -> LookaheadRanker:
    return LookaheadRanker(core.K, core, planning_core(core, len(candidates), rollouts), candidates, base,
                           rollouts=rollouts, seed=3)


def test_lookahead_keeps_the_real_sessions_untouched_and_is_deterministic(small_cfg: EnvConfig,
                                                                          small_world: World) -> None:
    """Planning reads the real core but never changes it; the same request gets the same slates twice; with one
    candidate the lookahead shows that candidate's slate."""
    core = make_core(small_cfg, small_world, b=6)
    obs = core.observe()
    before = {name: getattr(core, name).copy() for name in SessionState._fields}
    k = core.K
    look = _lookahead(core, [lambda c: OracleRanker(k, c), lambda c: AntiOracle(k, c)],
                      lambda c: OracleRanker(k, c))
    first = look.act(obs)
    for name, arr in before.items():
        np.testing.assert_array_equal(getattr(core, name), arr, err_msg=name)
    np.testing.assert_array_equal(look.act(obs), first)
    only = _lookahead(core, [lambda c: OracleRanker(k, c)], lambda c: OracleRanker(k, c), rollouts=2)
    np.testing.assert_array_equal(only.act(obs), OracleRanker(k, core).act(obs))


def test_lookahead_leaves_a_bad_base_for_a_better_candidate(small_cfg: EnvConfig, small_world: World) -> None:
    """With the anti-oracle as base and first candidate, the oracle's slate (far better now and after) wins most
    requests, and every slate shown is one of the candidates'; with the oracle first, the anti-oracle's slate
    rarely beats it by the margin (it can: a slate that wastes this request may leave a better future)."""
    core = make_core(small_cfg, small_world, b=48)
    obs = core.observe()
    k = core.K

    def anti(c: BatchedCore) -> Ranker:
        return AntiOracle(k, c)

    def oracle(c: BatchedCore) -> Ranker:
        return OracleRanker(k, c)

    escape = _lookahead(core, [anti, oracle], anti)
    slate = escape.act(obs)
    shown_oracle = (slate == oracle(core).act(obs)).all(axis=1)
    shown_anti = (slate == anti(core).act(obs)).all(axis=1)
    assert (shown_oracle | shown_anti).all()
    assert shown_oracle.mean() > 0.5
    stay = _lookahead(core, [oracle, anti], oracle)
    stay.act(obs)
    assert stay.chosen[0] >= 3 * stay.chosen[1]


def test_lookahead_rejects_a_planning_core_of_the_wrong_size(small_cfg: EnvConfig, small_world: World) -> None:
    core = make_core(small_cfg, small_world, b=4)
    k = core.K
    with pytest.raises(ValueError, match="need 16"):
        LookaheadRanker(k, core, planning_core(core, 1, 2), [lambda c: OracleRanker(k, c)] * 2,
                        lambda c: OracleRanker(k, c), rollouts=2)
    with pytest.raises(ValueError, match="at least one candidate"):
        LookaheadRanker(k, core, planning_core(core, 1, 1), [], lambda c: OracleRanker(k, c), rollouts=1)
    look = LookaheadRanker(k, core, planning_core(core, 1, 1), [lambda c: OracleRanker(k, c)],
                           lambda c: OracleRanker(k, c), rollouts=1)
    obs = core.observe()
    stale = {**obs, "candidates": obs["candidates"][:, ::-1].copy()}  # not the core's current request
    with pytest.raises(ValueError, match="current request"):
        look.act(stale)


def test_lookahead_ceiling_rejects_bad_arguments_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.lookahead_ceiling import main

    with pytest.raises(SystemExit):
        main(["--rollouts", "0"])
    assert "--rollouts" in capsys.readouterr().err
