"""What moving one PPO rollout through Ray's object store costs (the data path of issue #15's item 2, not built).

``python -m bench.ray_transfer`` starts a local Ray with W = 1 and 2 actors that each hold a shard of a rollout the
size of the default preset's (``n_envs`` 256 rows × ``n_steps`` 64 steps × 100 candidates: float32 features of
7 columns and int64 candidate ids), then times, per iteration, putting ~1.5 MB of policy weights in the object
store, gathering every shard's arrays in the driver and concatenating them (median of 5). No simulation runs:
this is the transfer alone, to set against an iteration's collection time.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def main() -> dict[int, float]:
    """Print and return the median milliseconds per iteration for each W."""
    import ray

    @ray.remote
    class Shard:
        def __init__(self, rows: int, steps: int, n: int, f: int) -> None:
            rng = np.random.default_rng(0)
            self.feat = rng.random((steps, rows, n, f), dtype=np.float32)  # (T, B/W, N, F)
            self.cand = rng.integers(0, 1000, (steps, rows, n))  # (T, B/W, N) int64
            self.rew = np.zeros((steps, rows), np.float32)

        def collect(self, weights: object) -> dict[str, np.ndarray]:
            return {"features": self.feat, "candidates": self.cand, "rewards": self.rew}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    weights = {f"w{i}": np.ones((256, 256), np.float32) for i in range(6)}
    out: dict[int, float] = {}
    try:
        for w in (1, 2):
            shards = [Shard.remote(256 // w, 64, 100, 7) for _ in range(w)]
            ray.get([s.collect.remote(None) for s in shards])
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                ref = ray.put(weights)
                parts = ray.get([s.collect.remote(ref) for s in shards])
                np.concatenate([p["features"] for p in parts], axis=1)
                np.concatenate([p["candidates"] for p in parts], axis=1)
                times.append(time.perf_counter() - t0)
            mb = sum(p["features"].nbytes + p["candidates"].nbytes for p in parts) / 1e6
            out[w] = statistics.median(times) * 1000
            print(f"W={w}: {mb:.0f} MB per iteration, median {out[w]:.0f} ms (weights put, shards gathered, concat)")
            for s in shards:
                ray.kill(s)
    finally:
        ray.shutdown()
    return out


if __name__ == "__main__":
    main()
