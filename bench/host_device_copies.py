"""Host-device copies of PPO training on a GPU, per collection step and per update minibatch.

``python -m bench.host_device_copies --set train.device=cuda`` builds PPO as ``bench.train_throughput`` does
(``--config`` / ``--preset`` / ``--set`` as there), learns one warm-up rollout, then runs one more rollout's
collection and one update under torch's profiler and counts the copies the GPU saw (``Memcpy HtoD``, ``DtoH``,
``DtoD`` activity records) and the host's synchronisations (``cudaStreamSynchronize`` / ``cudaDeviceSynchronize``
calls). One collection step is one batched call for all ``n_envs`` users, so the figures per step do not grow with the
batch; with ``train.collect_device=cpu`` (the default) the collection's policy calls run on a CPU copy and the
rollout's copies are the weights' refresh at its start. ``--sources N`` also records Python calls and names the N
functions that issue the most scalar reads (``aten::_local_scalar_dense``: ``.item()``, ``int()`` or ``bool()`` of a
tensor, each a wait for the GPU), ``nonzero`` calls (a wait too) and device or dtype moves (``aten::_to_copy``). The
last line is a JSON object. Without a CUDA device there is nothing to count: it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Any

import torch as th
from torch.profiler import ProfilerActivity, profile

from bench.train_throughput import make_model
from configs.loader import ConfigError, resolve_config

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
#: the torch ops whose call sites ``--sources`` names
SOURCE_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::_to_copy")


def count(prof: profile) -> dict[str, int]:
    """Copies by direction and synchronising calls in a finished profile."""
    out: collections.Counter[str] = collections.Counter()
    for ev in prof.events():
        name = ev.name
        if name.startswith("Memcpy"):
            for kind in ("HtoD", "DtoH", "DtoD"):
                if kind in name:
                    out[kind] += 1
        elif name in SYNC_CALLS:
            out["sync"] += 1
    return {k: out.get(k, 0) for k in ("HtoD", "DtoH", "DtoD", "sync")}


def _caller(ev: Any) -> str:
    """The first Python frame outside torch that led to a profiler event: from its recorded stack, or (where torch
    records Python calls as parent events instead) from its chain of parents."""
    frames = list(ev.stack or ())
    parent = ev.cpu_parent
    while parent is not None:
        frames.append(parent.name)
        parent = parent.cpu_parent
    return next((f for f in frames if "): " in f and "torch/" not in f and not f.startswith("<")), "?")


def records_python_frames(prof: profile) -> bool:
    """Whether the profile names any Python caller: torch 2.13 (the pinned version) does; the torch 2.11 of the H200
    image of sessions 31-32 kept no Python frames with ``with_stack=True``, so :func:`sources` has nothing to name
    there."""
    return any(_caller(ev) != "?" for ev in prof.events())


def sources(prof: profile, n: int) -> list[tuple[str, str, int]]:
    """The ``n`` most frequent ``(op, calling function, count)`` of :data:`SOURCE_OPS` in a profile recorded with
    ``with_stack=True``."""
    found: collections.Counter[tuple[str, str]] = collections.Counter(
        (ev.name, _caller(ev)) for ev in prof.events() if ev.name in SOURCE_OPS)
    return [(op, frame, k) for (op, frame), k in found.most_common(n)]


def main(argv: list[str] | None = None) -> dict:
    """Run the count; print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML config (default: the schema's defaults)")
    ap.add_argument("--preset", help="env preset (default: env.preset, else 'default')")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--sources", type=int, default=0, metavar="N", help="name the N busiest functions (slower)")
    args = ap.parse_args(argv)
    th.set_num_threads(1)
    try:
        cfg = resolve_config(args.config, args.preset, args.overrides)
    except ConfigError as exc:
        ap.error(str(exc))
    model = make_model(cfg)
    if model.device.type != "cuda":
        print(f"host_device_copies: the policy is on {model.device}, not a CUDA device: no copies to count",
              file=sys.stderr)
        sys.exit(2)
    pc = cfg.train.ppo
    model.learn(pc.n_envs * pc.n_steps)  # warm-up: kernels compiled, buffers allocated
    _, callback = model._setup_learn(pc.n_envs * pc.n_steps, None, reset_num_timesteps=False)
    callback.on_training_start(locals(), globals())
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, with_stack=args.sources > 0) as collect:
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=pc.n_steps)
        th.cuda.synchronize()
    with profile(activities=activities, with_stack=args.sources > 0) as update:
        model.train()
        th.cuda.synchronize()
    minibatches = pc.n_epochs * -(-pc.n_envs * pc.n_steps // pc.batch_size)
    c, u = count(collect), count(update)
    out = {"device": str(model.device), "collect_device": cfg.train.collect_device, "n_envs": pc.n_envs,
           "n_steps": pc.n_steps, "minibatches": minibatches,
           "collect": c, "update": u,
           "collect_per_step": {k: round(v / pc.n_steps, 2) for k, v in c.items()},
           "update_per_minibatch": {k: round(v / minibatches, 2) for k, v in u.items()}}
    if args.sources > 0 and not records_python_frames(collect):
        out["sources"] = f"torch {th.__version__}'s profiler recorded no Python frames: no sources to name"
    elif args.sources > 0:
        out["collect_sources"] = sources(collect, args.sources)
        out["update_sources"] = sources(update, args.sources)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
