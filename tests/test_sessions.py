"""envs/sessions.py: rows refilled from a queue of (key, user) in order, idle once it runs dry, chained restarts;
a batched run equals the sessions stepped one by one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from configs.schema import EnvConfig
from envs import rng
from envs.core import BatchedCore
from envs.sessions import Sessions
from envs.spaces import F_LLM
from envs.world import World

Step = tuple[float, int, tuple[int, ...], bool, bool]


@pytest.fixture(scope="module")
def short_cfg(small_cfg: EnvConfig) -> EnvConfig:
    """Sessions of at most 4 requests: many end at the same step, some earlier (the budget)."""
    return dataclasses.replace(small_cfg, max_steps=4)


def queue(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    keys = rng.splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(7919))
    users = np.random.default_rng(seed).integers(0, 100, n)
    return keys, users


def greedy(obs: dict[str, np.ndarray], k: int) -> np.ndarray:
    return np.argsort(-obs["features"][:, :, F_LLM], axis=1, kind="stable")[:, :k]


def play(sessions: Sessions, check_refill: bool = False) -> dict[int, list[Step]]:
    """Run the queue to the end with the greedy ranker; each session's steps by queue index."""
    core = sessions.core
    sessions.start()
    obs = core.observe()
    out: dict[int, list[Step]] = {}
    started = int(sessions.active.sum())
    while (active := sessions.active).any():
        res = sessions.step(greedy(obs, core.K))
        for r in np.flatnonzero(active):
            out.setdefault(int(sessions.session[r]), []).append(
                (float(res.reward[r]), int(res.click_rank[r]), tuple(res.items[r].tolist()),
                 bool(res.terminated[r]), bool(res.truncated[r])))
        ended = sessions.ended.copy()
        assert np.array_equal(ended, np.flatnonzero((res.terminated | res.truncated) & active))
        restart = sessions.refill()
        if check_refill:
            keys, users = sessions._keys, sessions._users
            assert keys is not None and users is not None
            take = min(len(ended), len(keys) - started)
            assert restart.tolist() == ended[:take].tolist()  # the first ended rows, ascending
            expect = np.arange(started, started + take)
            assert sessions.session[restart].tolist() == expect.tolist()  # the next entries, in order
            assert core.keys[restart].tolist() == keys[expect].tolist()
            assert core.user[restart].tolist() == users[expect].tolist()
            assert (sessions.session[ended[take:]] == -1).all()  # the queue ran dry for these
            started += take
        obs = core.observe()
    return out


def test_ended_rows_take_the_next_entries_in_order(short_cfg: EnvConfig, small_world: World) -> None:
    core = BatchedCore(small_world, short_cfg, 3, population="heldout")
    keys, users = queue(11)
    sessions = Sessions(core, keys, users)
    played = play(sessions, check_refill=True)
    assert sorted(played) == list(range(11))  # every entry played once, to its end
    assert all(steps[-1][3] or steps[-1][4] for steps in played.values())
    assert not sessions.active.any() and (sessions.session == -1).all()


def test_a_dry_queue_leaves_rows_idle(short_cfg: EnvConfig, small_world: World) -> None:
    core = BatchedCore(small_world, short_cfg, 5, population="heldout")
    keys, users = queue(3)
    sessions = Sessions(core, keys, users)
    sessions.start()
    assert sessions.session.tolist() == [0, 1, 2, -1, -1]  # rows beyond the queue are idle from the start
    assert core.keys.tolist() == keys[[0, 1, 2, 0, 1]].tolist()  # ... replaying its first entries
    sessions.step(greedy(core.observe(), core.K))
    assert set(sessions.ended.tolist()) <= {0, 1, 2}  # an idle row never "ends"
    sessions.refill()
    played = play(Sessions(core, keys, users))
    assert sorted(played) == [0, 1, 2]


def test_batched_equals_one_by_one(short_cfg: EnvConfig, small_world: World) -> None:
    keys, users = queue(9, seed=4)
    batched = play(Sessions(BatchedCore(small_world, short_cfg, 4, population="heldout"), keys, users))
    single = BatchedCore(small_world, short_cfg, 1, population="heldout")
    for e in range(len(keys)):
        single.reset_rows(np.array([0]), keys[e:e + 1], users[e:e + 1])
        obs = single.observe()
        alone: list[Step] = []
        while not alone or not (alone[-1][3] or alone[-1][4]):
            res = single.step(greedy(obs, single.K))
            alone.append((float(res.reward[0]), int(res.click_rank[0]), tuple(res.items[0].tolist()),
                          bool(res.terminated[0]), bool(res.truncated[0])))
            obs = single.observe()
        assert batched[e] == alone, f"session {e}"


def test_chained_rows_restart_from_their_key_chain(short_cfg: EnvConfig, small_world: World) -> None:
    core = BatchedCore(small_world, short_cfg, 4, population="heldout")
    sessions = Sessions(core)
    assert sessions.chained
    first = np.arange(4, dtype=np.uint64) + np.uint64(11)
    sessions.start(first, np.array([1, 2, 3, 4]))
    assert core.user.tolist() == [1, 2, 3, 4] and sessions.session.tolist() == [0, 1, 2, 3]
    obs, restarted = core.observe(), 0
    for _ in range(12):
        before = core.keys.copy()
        sessions.step(greedy(obs, core.K))
        ended = sessions.ended.copy()
        assert np.array_equal(sessions.refill(), ended)  # every ended row restarts: rows never go idle
        assert core.keys[ended].tolist() == rng.next_key(before[ended]).tolist()
        assert sorted(sessions.session[ended].tolist()) == list(range(4 + restarted, 4 + restarted + len(ended)))
        restarted += len(ended)
        assert sessions.active.all()
        obs = core.observe()
    assert restarted >= 4


def test_bad_queues_and_misuse_are_refused(short_cfg: EnvConfig, small_world: World) -> None:
    core = BatchedCore(small_world, short_cfg, 2, population="heldout")
    keys, users = queue(3)
    with pytest.raises(ValueError, match="queue is empty"):
        Sessions(core, np.zeros(0, np.uint64))
    with pytest.raises(ValueError, match="users were given without keys"):
        Sessions(core, None, users)
    with pytest.raises(ValueError, match="3 keys but 2 users"):
        Sessions(core, keys, users[:2])
    with pytest.raises(ValueError, match="takes no keys"):
        Sessions(core, keys, users).start(keys[:2])
    with pytest.raises(ValueError, match="give start\\(\\) keys"):
        Sessions(core).start()
    sessions = Sessions(core)
    sessions.start(keys[:2])
    obs = core.observe()
    while not sessions.ended.size:
        sessions.step(greedy(obs, core.K))
        obs = core.observe()
    with pytest.raises(RuntimeError, match="call refill\\(\\) before stepping again"):
        sessions.step(greedy(obs, core.K))
