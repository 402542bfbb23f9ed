"""End-to-end PPO training throughput (collection + updates) on the default config.

``python -m bench.train_throughput --threads 1 --rollouts 3`` builds the default world and PPO as ``train.py``
does (every ``train.ppo`` hyperparameter, reward normalisation, the policy kwargs), learns one warm-up rollout,
then times ``--rollouts`` more (``--repeats`` times, in one process). The last line is a JSON object with
``steps_per_s`` (the median over the repeats), ``collect_s`` / ``update_s`` (the split of the timed wall time
between collecting rollouts and the gradient updates, summed over the repeats), ``truncated_per_step`` (sessions
the step limit ended per collection step, each bootstrapped with its final observation's value) and the
per-repeat figures.
``--config FILE`` starts from a config file (e.g. ``configs/quality-adapt.yaml``, the learner of the ``adapt``
protocol); ``--set key=value`` overrides config values (e.g. ``train.ppo.n_epochs=2``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecNormalize

from agents.checkpoints import new_ppo
from agents.ppo_ranker import resolve_device
from agents.rollouts import BOOTSTRAPPED
from agents.training import make_venv, policy_kwargs
from configs.loader import ConfigError, resolve_config
from configs.schema import Config
from envs.presets import load_world
from envs.sb3 import SB3VecEnv


class _Split(BaseCallback):
    """Wall time spent collecting rollouts vs in the updates that follow them; collection steps, and sessions the
    step limit ended (each needs the value of its final observation: SB3's time-limit bootstrap)."""

    def __init__(self) -> None:
        super().__init__()
        self.collect_s = self.update_s = 0.0
        self.steps = self.truncated = 0
        self._t: float | None = None
        self._in_update = False

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if self._in_update and self._t is not None:
            self.update_s += now - self._t
        self._t, self._in_update = now, False

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        if self._t is not None:
            self.collect_s += now - self._t
        self._t, self._in_update = now, True

    def _on_training_end(self) -> None:
        if self._in_update and self._t is not None:
            self.update_s += time.perf_counter() - self._t
        self._in_update = False

    def _on_step(self) -> bool:
        self.steps += 1
        self.truncated += sum(bool(i.get("TimeLimit.truncated") or i.get(BOOTSTRAPPED)) for i in self.locals["infos"])
        return True


#: The ``base: diverse`` policy's start: the untuned heuristic ``diverse:0.9`` (its cost does not depend on the values,
#: so the benchmark skips the tuned-diverse search that train.py runs first).
HEURISTIC = {"alpha": 0.9, "cap": 2, "exposure_weight": 3.0, "seen_weight": 0.5}


def make_model(cfg: Config) -> PPO:
    """PPO over ``cfg``'s world as ``train.py`` builds it (:func:`agents.checkpoints.new_ppo`: every ``train.ppo``
    hyperparameter, the policy kwargs, ``train.device``; reward normalisation), starting from :data:`HEURISTIC`;
    nothing learned yet."""
    world = load_world(cfg.env, cfg.encoder, progress=False)
    venv: SB3VecEnv | VecNormalize = make_venv(cfg, world, 0)
    if cfg.train.ppo.normalize_reward:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=cfg.train.ppo.gamma)
    return new_ppo(cfg, venv, resolve_device(cfg.train.device), None, policy_kwargs(cfg, 0.9, world, HEURISTIC))


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The options that pick the model a training benchmark builds: ``--threads``, ``--config``, ``--preset``,
    ``--set`` (read back by :func:`model_config`)."""
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--config", help="YAML config (e.g. configs/quality-adapt.yaml; default: the schema's defaults)")
    ap.add_argument("--preset", help="env preset (default: env.preset, else 'default')")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def model_config(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Config:
    """The config that :func:`add_model_args`' options name (a bad one is the parser's error); sets the torch
    threads."""
    th.set_num_threads(args.threads)
    try:
        return resolve_config(args.config, args.preset, args.overrides)
    except ConfigError as exc:
        ap.error(str(exc))


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the JSON summary as the last line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--rollouts", type=int, default=3, help="timed rollouts (after one warm-up)")
    ap.add_argument("--repeats", type=int, default=1, help="timed blocks of --rollouts; steps_per_s is the median")
    args = ap.parse_args(argv)
    cfg = model_config(ap, args)
    model = make_model(cfg)
    pc = cfg.train.ppo
    per_rollout = pc.n_envs * pc.n_steps
    model.learn(per_rollout)
    split = _Split()
    rates = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.learn(args.rollouts * per_rollout, reset_num_timesteps=False, callback=split)
        rates.append(round(args.rollouts * per_rollout / (time.perf_counter() - t0), 1))
    out = {"device": str(model.device), "collect_device": cfg.train.collect_device, "threads": args.threads,
           "steps": args.rollouts * per_rollout, "repeats": args.repeats,
           "steps_per_s": statistics.median(rates), "runs": rates, "collect_s": round(split.collect_s, 2),
           "update_s": round(split.update_s, 2), "n_envs": pc.n_envs, "n_steps": pc.n_steps,
           "batch_size": pc.batch_size, "n_epochs": pc.n_epochs,
           "truncated_per_step": round(split.truncated / max(split.steps, 1), 2)}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
