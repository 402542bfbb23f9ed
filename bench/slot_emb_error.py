"""The int8 slot-embedding copy's error (``env.slot_emb_dtype=int8``) against the exact float32 copy.

``python -m bench.slot_emb_error --set env.catalog.n_items=1000000 --set encoder.kind=hashing`` loads the world,
makes two cores of B = ``--batch`` rows that differ only in ``slot_emb_dtype`` (float32: bit-identical to the
gather; int8), and prints: the error of the similarities a click computes (``e_c · e_s`` for every slot of every
row, with ``e_c`` the row's first slot) against their spread; and, stepping both cores with the same random
slates for ``--steps`` steps (ended rows restarted with keys from the row and step), the share of identical
click decisions and the mean reward and click rate of each (a rounding difference flips a click, purchase or
like/dislike draw now and then, after which the two rows' sessions differ). The last line is a JSON object with the
same figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from bench.env_throughput import add_world_args, config_and_world
from envs.core import BatchedCore


def main(argv: list[str] | None = None) -> dict:
    """Measure and print; the JSON summary is the last line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=1024, help="rows B")
    ap.add_argument("--steps", type=int, default=200, help="steps of both cores")
    add_world_args(ap)
    args = ap.parse_args(argv)
    full, world = config_and_world(ap, args)
    world.__dict__["gram"] = None  # the similarity path without a Gram matrix, whatever the catalog size
    cfg = full.env
    cores = {d: BatchedCore(world, dataclasses.replace(cfg, slot_emb_dtype=d), args.batch) for d in ("float32", "int8")}
    b = args.batch
    rows = np.arange(b)
    for core in cores.values():
        core.reset_rows(rows, np.arange(b, dtype=np.uint64) + 7)
    # one-click similarities: the row's first slot against all its slots, exact vs the int8 copy
    q = cores["int8"]
    e = world.item_emb[q.slot_items]  # (B, S, D) float32
    deq = q._slot_emb.astype(np.float32) * q._slot_scale[:, :, None]
    exact = np.einsum("bsd,bd->bs", e, e[:, 0])
    approx = np.einsum("bsd,bd->bs", deq, e[:, 0])
    err = approx - exact
    sims = {"rms_error": float(np.sqrt(np.mean(err**2))), "max_error": float(np.abs(err).max()),
            "spread_sd": float(exact[:, 1:].std()), "values": int(err.size)}
    # trajectories
    gen = np.random.default_rng(0)
    n, k = cfg.n_candidates, cfg.slate_size
    same_clicks, rewards, clicks = [], {d: 0.0 for d in cores}, {d: 0 for d in cores}
    for t in range(args.steps):
        slate = np.argsort(gen.random((b, n)), axis=1)[:, :k]
        out = {}
        for d, core in cores.items():
            core.observe()
            out[d] = core.step(slate)
            rewards[d] += float(out[d].reward.sum())
            clicks[d] += int((out[d].click_rank >= 0).sum())
        same = out["float32"].click_rank == out["int8"].click_rank
        same_clicks.append(float(same.mean()))
        ended = {d: np.flatnonzero(out[d].terminated | out[d].truncated) for d in cores}
        for d, core in cores.items():
            if ended[d].size:
                core.reset_rows(ended[d], (ended[d] + 1000 * (t + 1)).astype(np.uint64))
    res = {"n_items": world.n_items, "batch": b, "steps": args.steps, "similarity": sims,
           "same_click_share": round(float(np.mean(same_clicks)), 4),
           "same_click_share_first_10": round(float(np.mean(same_clicks[:10])), 4),
           "reward_per_step": {d: round(rewards[d] / (b * args.steps), 4) for d in cores},
           "click_rate": {d: round(clicks[d] / (b * args.steps), 4) for d in cores}}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
