"""PPO's update alone: recfeed's (minibatches gathered on the device, one host read) against SB3's own.

``python -m bench.update_speed --repeats 7`` builds the default config's PPO as ``train.py`` does (as
``bench.train_throughput``), collects one rollout, and then times the update of that rollout ``--repeats`` times for
each of the two, alternately, from the same weights, optimizer state and random state (so both do the same work
and leave the same weights, which the benchmark checks):

- ``recfeed``: :func:`agents.ppo_update.ppo_update` over :class:`agents.ppo_update.DeviceDictRolloutBuffer`;
- ``sb3``: SB3's ``PPO.train`` over SB3's ``DictRolloutBuffer``.

The last line is a JSON object with the median seconds of each and their ratio. ``--set train.device=cuda`` times
the update on a GPU (the one place where its host reads and copies cost waits); ``--config`` and ``--set`` as in
``bench.train_throughput``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import DictRolloutBuffer

from agents.ppo_update import DeviceDictRolloutBuffer, new_rollout_buffer, ppo_update
from bench.train_throughput import add_model_args, make_model, model_config

_ARRAYS = ("actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


def _buffer_like(model: PPO, source: DictRolloutBuffer, cls: type[DictRolloutBuffer]) -> DictRolloutBuffer:
    """A full buffer of class ``cls`` holding a copy of ``source``'s rollout (not yet flattened)."""
    buf = new_rollout_buffer(model, cls)
    buf.observations = {k: v.copy() for k, v in source.observations.items()}
    for name in _ARRAYS:
        setattr(buf, name, getattr(source, name).copy())
    buf.pos, buf.full = source.pos, True
    return buf


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--repeats", type=int, default=5, help="timed updates of each kind (alternating)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    model = make_model(model_config(ap, args))
    model.learn(model.n_envs * model.n_steps)  # one rollout and update: the weights are not the initial ones
    _, callback = model._setup_learn(model.n_envs * model.n_steps, None, reset_num_timesteps=False)
    callback.on_training_start(locals(), globals())
    env = model.get_env()
    assert env is not None and isinstance(model.rollout_buffer, DictRolloutBuffer)
    model.collect_rollouts(env, callback, model.rollout_buffer, model.n_steps)
    rollout = copy.deepcopy(model.rollout_buffer)
    weights = copy.deepcopy(model.policy.state_dict())
    optimizer = copy.deepcopy(model.policy.optimizer.state_dict())
    kinds: dict[str, tuple[type[DictRolloutBuffer], Callable[[], None]]] = {
        "recfeed": (DeviceDictRolloutBuffer, lambda: ppo_update(model)),
        "sb3": (DictRolloutBuffer, lambda: PPO.train(model)),
    }
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    after: dict[str, dict[str, th.Tensor]] = {}
    for _ in range(args.repeats):
        for kind, (cls, update) in kinds.items():
            model.rollout_buffer = _buffer_like(model, rollout, cls)
            model.policy.load_state_dict(weights)
            model.policy.optimizer.load_state_dict(copy.deepcopy(optimizer))  # Adam adopts the tensors it loads
            np.random.seed(0)
            th.manual_seed(0)
            if model.device.type == "cuda":
                th.cuda.synchronize()
            t0 = time.perf_counter()
            update()
            if model.device.type == "cuda":
                th.cuda.synchronize()
            seconds[kind].append(time.perf_counter() - t0)
            after[kind] = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    same = all(th.equal(after["recfeed"][k], after["sb3"][k]) for k in after["sb3"])
    median = {k: statistics.median(v) for k, v in seconds.items()}
    out = {"device": str(model.device), "threads": args.threads, "repeats": args.repeats,
           "samples": model.n_envs * model.n_steps, "batch_size": model.batch_size, "n_epochs": model.n_epochs,
           "recfeed_s": round(median["recfeed"], 4), "sb3_s": round(median["sb3"], 4),
           "sb3_over_recfeed": round(median["sb3"] / median["recfeed"], 3), "same_weights": same,
           "runs": {k: [round(s, 4) for s in v] for k, v in seconds.items()}}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
