"""PPO training of the slate policy: the run directory, the model, and :func:`train`, which runs it end to end.

``train.py`` is the command line over :func:`train`. A run directory holds::

    config.yaml      the resolved config (every hyperparameter)
    versions.json    library versions, device, seeds, the world's key
    signature.json   the world and env shape the policy is trained on (agents/runinfo.py)
    tb/              TensorBoard events (SB3's scalars + rollout/*, train/alpha_*, time/*, eval/*; agents/callbacks.py)
    checkpoints/     step-<N>/ every train.checkpoint_every steps, the last two kept (agents/checkpoints.py)
    eval.jsonl       periodic evaluations against tuned-alpha on held-out users
    policy.safetensors + policy.json   the final policy, pickle-free: what evaluate.py / export / serve read (with
                     train.policy_average_halflife > 0, the average of the weights; the checkpoints hold the
                     last iterate and the average, policy_average.safetensors; with train.select_episodes > 0, the
                     iterate that scored best on fixed sessions of the training users)
    selection.jsonl, best_iterate.safetensors + .json   with train.select_episodes > 0: every evaluation of that
                     choice, and the best iterate so far (what a resume continues from)
    model.zip        the final model as SB3's archive (PPO with SlatePolicy), for SB3 users; recfeed never reads it
    report/          final comparison: results.json / .md / .csv, plots/*.png, alpha.json (agents/final_report.py)
    summary.json     headline figures, timings and paths

``--resume`` continues a run from its newest usable checkpoint (:mod:`agents.checkpoints`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.vec_env import VecNormalize
from tqdm.auto import tqdm

from agents.baselines import ParamSearch, RankerContext, make_ranker
from agents.callbacks import (
    SELECT_SEED,
    AdvantageBins,
    Checkpointer,
    PeriodicEval,
    PolicyAverage,
    RolloutMetrics,
    SelectIterate,
    TimeLimit,
)
from agents.checkpoints import (
    CKPT_DIR,
    STATE_FILE,
    Checkpoint,
    checkpoint_dirs,
    latest_checkpoint,
    new_ppo,
    restore_model,
    save_checkpoint,
)
from agents.evaluation import episode_plan, run_episodes
from agents.final_report import final_comparison, tuning_context
from agents.policies import SlatePolicy
from agents.ppo_ranker import CONFIG_FILE, MODEL_FILE, WEIGHTS_FILE, resolve_device, save_policy
from agents.rollouts import acting_policy
from agents.runinfo import write_signature
from configs.fileio import json_default
from configs.loader import atomic_write_text, load_config, save_yaml, to_dict
from configs.schema import Config
from envs.factory import make_core
from envs.presets import load_world, world_key
from envs.sb3 import SB3VecEnv
from envs.spaces import F_CAT_EXPOSURE, F_ITEM_SEEN, FEATURE_NAMES
from envs.vector_env import RecVectorEnv
from envs.world import World


def versions() -> dict[str, str]:
    """Library versions recorded with a run (from the installed distributions' metadata: importing transformers only
    to read its version cost ~2 s per run)."""
    from importlib.metadata import PackageNotFoundError, version

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": th.__version__,
            "stable_baselines3": dist("stable-baselines3"), "gymnasium": dist("gymnasium"),
            "transformers": dist("transformers"), "platform": platform.platform()}


def new_run_dir(cfg: Config) -> Path:
    """A fresh run directory under ``train.out_dir`` (``run_name`` or a timestamp; never reused)."""
    base = Path(cfg.train.out_dir)
    name = cfg.train.run_name or time.strftime(f"ppo-{cfg.env.preset.split(':')[0]}-%Y%m%d-%H%M%S")
    path = base / name
    if path.exists():
        raise FileExistsError(f"run directory {path} already exists; pick another train.run_name or use --resume")
    path.mkdir(parents=True)
    return path


def _json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=json_default) + "\n")


def _atomic_save(save: Any, dest: Path) -> None:
    """Call ``save(tmp_path)`` then rename into place, so a checkpoint is never half-written."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    save(tmp)
    written = tmp if tmp.exists() else tmp.with_suffix(tmp.suffix + ".zip")  # SB3 may append .zip
    os.replace(written, dest)


def penalty_weights(point: dict[str, float]) -> np.ndarray:
    """The diversity heuristic's fixed feature weights (F,) at a point of its search: minus its exposure and seen
    weights on ``cat_exposure`` and ``item_seen``, 0 elsewhere (the policy's ``base_weights``)."""
    weights = np.zeros(len(FEATURE_NAMES))
    weights[F_CAT_EXPOSURE] = -float(point["exposure_weight"])
    weights[F_ITEM_SEEN] = -float(point["seen_weight"])
    return weights


def policy_kwargs(cfg: Config, init_alpha: float, world: World,
                  diverse: dict[str, float] | None = None,
                  cf_rule: dict[str, float] | None = None) -> dict[str, Any]:
    """SlatePolicy constructor arguments from the config (``init_alpha`` clipped into (0, 1)).

    Args:
        cfg: The run's config.
        init_alpha: tuned-alpha's α (the start of a ``"blend"`` policy unless ``policy.init_alpha`` is set).
        world: The world (item categories).
        diverse: ``tuned-diverse``'s parameters ``{alpha, cap, exposure_weight, seen_weight}``; required for
            ``policy.base = "diverse"``, whose start they are (α, the fixed penalties, the category cap). With
            ``env.obs_session_sim``, tuned-session-diverse's (the same and ``session_weight``); with
            ``policy.start = "pop-diverse"``, tuned-pop-diverse's (the same and ``pop_weight``).
        cf_rule: The CF-leaning users' point of the same rule (``RankerContext.cf_rule_search``); required for
            ``policy.cf_rule_base``, the second base (its α, click-lean weight and penalties; the cap stays
            tuned-diverse's).
    """
    pc = cfg.train.policy
    extra: dict[str, Any] = {}
    if pc.base == "diverse":
        if diverse is None:
            raise ValueError("policy.base = 'diverse' needs tuned-diverse's parameters")
        init_alpha = float(diverse["alpha"])
        weights = penalty_weights(diverse)
        cap = int(diverse["cap"])
        lean = float(diverse.get("lean_weight", 0.0))
        gate = pc.gate if pc.gate != "auto" else "standardised" if lean != 0.0 or pc.cf_rule_base else "raw"
        if lean != 0.0 and gate != "standardised":
            raise ValueError(f"train.policy.gate: {pc.gate!r} cannot start at tuned-diverse, whose α follows the "
                             f"clicks (lean_weight {lean:g}); use 'auto' or 'standardised'")
        extra = dict(base="diverse", base_weights=weights.tolist(),
                     category_cap=cap if cap < cfg.env.slate_size else None, gate=gate,
                     gate_lean=lean if lean != 0.0 else None)
        if cfg.env.obs_session_sim:  # the start is tuned-session-diverse: its β on z(session_sim) too
            extra["session_base_weight"] = float(diverse["session_weight"])
        if pc.start == "pop-diverse":  # the start is tuned-pop-diverse: its w on z(popularity) too
            extra["pop_base_weight"] = float(diverse["pop_weight"])
        if pc.cf_rule_base:  # the second base: the CF-leaning users' point, reached by the type head's reading
            if cf_rule is None:
                raise ValueError("policy.cf_rule_base needs the CF-leaning users' rule (RankerContext.cf_rule_search)")
            extra.update(gate_lean=lean, cf_rule_alpha=float(np.clip(cf_rule["alpha"], 0.02, 0.98)),
                         cf_rule_lean=float(cf_rule.get("lean_weight", 0.0)),
                         cf_rule_weights=penalty_weights(cf_rule).tolist(),
                         cf_rule_threshold=pc.cf_rule_threshold, cf_rule_sharpness=pc.cf_rule_sharpness)
    alpha0 = pc.init_alpha if pc.init_alpha is not None else init_alpha
    return dict(hidden=pc.hidden, candidate_hidden=pc.candidate_hidden, n_layers=pc.n_layers,
                temperature=pc.temperature, init_alpha=float(np.clip(alpha0, 0.02, 0.98)),
                residual_init_scale=pc.residual_init_scale, use_item_table=pc.use_item_table,
                item_category=world.catalog.category if pc.category_repulsion else None,
                entropy_estimator=pc.entropy_estimator, gate_gain=pc.gate_gain,
                gate_context=pc.gate_context, gate_only_signals=pc.gate_only_signals,
                lean_gate_only=pc.lean_gate_only, type_head_weight=pc.type_head_weight,
                type_loss_scale=pc.type_head_weight / cfg.train.ppo.ent_coef if pc.type_head_weight > 0 else 0.0,
                type_gate_init=pc.type_gate_init, type_gate_lower_only=pc.type_gate_lower_only,
                type_gate_margin=pc.type_gate_margin, type_head_input=pc.type_head_input,
                type_cap=pc.type_cap, actor_hidden_state=pc.actor_hidden_state,
                actor_hidden_columns=pc.actor_hidden_columns, feature_gate=pc.feature_gate,
                pool_spread=pc.pool_spread, **extra)


def load_training_world(cfg: Config, progress: bool = False) -> World:
    """The run's world (cache, else built). Built as in pooled mode: a world does not depend on ``env.obs_mode``
    (``world_key`` leaves it out), and its logging phase cannot run in text mode (no prompt encoder there)."""
    return load_world(dataclasses.replace(cfg.env, obs_mode="pooled"), cfg.encoder, progress=progress)


def make_venv(cfg: Config, world: World, seed: int) -> SB3VecEnv:
    """The native vector env over the training users, behind the SB3 adapter (seeded; row i as ``seed + i``)."""
    venv = SB3VecEnv(RecVectorEnv(cfg.train.ppo.n_envs, config=cfg.env, encoder=cfg.encoder, world=world,
                                  population="train"))
    venv.seed(seed)
    return venv


def make_train_env(cfg: Config, world: World, kwargs: dict[str, Any]) -> Any:
    """The training env of ``train.backend``: :func:`make_venv` (local), or the Ray actors' :class:`RayVecEnv`
    (ray: W shards of the same rows, each building the same env; ``kwargs`` is the policy's constructor arguments
    for their CPU copies)."""
    if cfg.train.backend == "ray":
        from agents.ray_backend import make_ray_venv

        return make_ray_venv(cfg, kwargs)
    return make_venv(cfg, world, cfg.train.seed)


def finished_summary(cfg: Config, run_dir: Path) -> dict[str, Any] | None:
    """The saved summary when ``run_dir`` has finished training up to ``train.total_timesteps``, else ``None``.

    Finished: ``summary.json`` and the final policy exist, the summary counts at least ``total_timesteps`` steps,
    and no checkpoint was written after it (a resume that was killed before its summary is not finished).
    """
    path = run_dir / "summary.json"
    if not path.is_file() or not (run_dir / WEIGHTS_FILE).is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        steps = int(summary["total_timesteps"])
        dirs = checkpoint_dirs(run_dir / CKPT_DIR)
        newest = json.loads((dirs[0] / STATE_FILE).read_text(encoding="utf-8"))["num_timesteps"] if dirs else steps
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if steps >= cfg.train.total_timesteps and newest == steps:
        return summary
    return None


# ---- the run -------------------------------------------------------------------------------------------------


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False, progress: bool = True,
          init_from: str | Path | None = None) -> dict[str, Any]:
    """Train PPO on the configured world; evaluate against the baselines; write the run directory.

    Args:
        cfg: The resolved config.
        run_dir: Run directory (``None``: a new one under ``train.out_dir``).
        resume: Continue ``run_dir`` from its last usable checkpoint (``cfg`` is its saved config, with a larger
            ``train.total_timesteps`` to extend a finished run). A run that has already trained
            ``train.total_timesteps`` steps and written its summary is not trained again: a message says so and
            its saved summary is returned (with ``"already_finished": True``).
        progress: Show progress bars.
        init_from: A run directory whose final policy the new run starts from (``agents/warm_start.py``);
            not with ``resume``.

    Returns:
        The summary (also in ``summary.json``).

    Raises:
        FileNotFoundError: ``resume`` without any checkpoint.
        CheckpointError: ``resume`` without a usable checkpoint (each one's fault named).
    """
    t_start = time.perf_counter()
    tc = cfg.train
    device = resolve_device(tc.device)
    if tc.torch_threads > 0:
        th.set_num_threads(tc.torch_threads)
    th.manual_seed(tc.seed)
    if run_dir is None:
        run_dir = new_run_dir(cfg)
    run_dir = Path(run_dir)
    say = (lambda msg: tqdm.write(msg)) if progress else (lambda msg: None)
    ckpt: Checkpoint | None = None
    skipped: list[str] = []
    if resume:
        done = finished_summary(cfg, run_dir)
        if done is not None:
            print(f"train.py: {run_dir} has already finished: {done['total_timesteps']:,} steps trained "
                  f"(train.total_timesteps = {tc.total_timesteps:,}); to train it further, resume with a larger "
                  "--total-timesteps", file=sys.stderr, flush=True)
            return {**done, "already_finished": True}
        # Read (and check) the checkpoint before anything slow; an unusable newest one falls back to the previous.
        ckpt, skipped = latest_checkpoint(run_dir / CKPT_DIR, device, tc.ppo.normalize_reward)
        saved = load_config(run_dir / CONFIG_FILE)
        if tc.total_timesteps > saved.train.total_timesteps:  # extending: the run's config says how far it goes
            saved.train.total_timesteps = tc.total_timesteps
            save_yaml(saved, run_dir / CONFIG_FILE)
    else:
        save_yaml(cfg, run_dir / CONFIG_FILE)
    say(f"run directory: {run_dir}")

    world = load_training_world(cfg, progress)
    say(f"world: {world.n_items} items, users {({k: p.size for k, p in world.populations.items()})}, "
        f"encoder {world.encoder_name}")
    _json(run_dir / "versions.json", {**versions(), "device": str(device), "seed": tc.seed,
                                      "world_key": world_key(cfg.env, world.encoder_name)})
    write_signature(run_dir, cfg, world)  # what evaluate.py checks run:DIR against (agents/runinfo.py)

    # The reference every result is compared with: the best fixed α on the training users. One context tunes it and
    # tuned-diverse (which starts from its α), the same one the final table's references come from.
    tuning = tuning_context(cfg, world, None, progress)
    t0 = time.perf_counter()
    curve = tuning.alpha_curve()
    say(f"tuned-alpha on training users: α* = {curve.best_alpha:g} ({time.perf_counter() - t0:.0f}s)")
    diverse: ParamSearch | None = None
    if tc.policy.base == "diverse":  # the policy starts at tuned-diverse: search it now (cached for the final table)
        t0 = time.perf_counter()
        diverse = tuning.diverse_search()
        kept = "kept the hand-set start" if diverse.best == diverse.start else "moved from the hand-set start"
        say(f"tuned-diverse on training users: {diverse.best} ({kept}; validation sessions: "
            f"{max(diverse.validation_means):.2f} against the start's {diverse.validation_means[0]:.2f}; "
            f"{time.perf_counter() - t0:.0f}s)")
        if cfg.env.obs_session_sim:  # the observation has session_sim: start at the heuristic that reads it
            t0 = time.perf_counter()
            diverse = tuning.session_diverse_search()
            say(f"tuned-session-diverse on training users: {diverse.best} (validation sessions: "
                f"{max(diverse.validation_means):.2f} against tuned-diverse's {diverse.validation_means[0]:.2f}; "
                f"{time.perf_counter() - t0:.0f}s)")
        elif tc.policy.start == "pop-diverse":  # start at the heuristic with a popularity prior
            t0 = time.perf_counter()
            diverse = tuning.pop_diverse_search()
            say(f"tuned-pop-diverse on training users: {diverse.best} (validation sessions: "
                f"{max(diverse.validation_means):.2f} against tuned-diverse's {diverse.validation_means[0]:.2f}; "
                f"{time.perf_counter() - t0:.0f}s)")

    cf_rule: dict[str, float] | None = None
    if tc.policy.cf_rule_base:  # the second base: the same rule's point for the CF-leaning training users
        t0 = time.perf_counter()
        cf_rule = tuning.cf_rule_search()
        say(f"the CF-leaning users' rule on training users: {cf_rule} ({time.perf_counter() - t0:.0f}s)")
    kwargs = policy_kwargs(cfg, curve.best_alpha, world, None if diverse is None else diverse.best, cf_rule)
    venv: SB3VecEnv | VecNormalize = make_train_env(cfg, world, kwargs)
    try:
        return _learn_and_report(cfg, run_dir, world, curve, tuning, venv, ckpt, skipped, kwargs, device, say,
                                 progress, t_start, init_from)
    finally:
        venv.close()
        if tc.backend == "ray":
            from agents.ray_backend import shutdown_if_started

            shutdown_if_started()


def _learn_and_report(cfg: Config, run_dir: Path, world: World, curve: Any, tuning: RankerContext, venv: Any,
                      ckpt: Checkpoint | None, skipped: list[str], kwargs: dict[str, Any], device: th.device,
                      say: Any, progress: bool, t_start: float, init_from: str | Path | None = None
                      ) -> dict[str, Any]:
    """:func:`train` from the training env on: learn, save, evaluate, write the summary."""
    tc = cfg.train
    resume = ckpt is not None
    stats_env = venv
    ckpt_dir = run_dir / CKPT_DIR
    resumed_from: dict[str, Any] | None = None
    initialised_from: dict[str, Any] | None = None
    if init_from is not None and ckpt is None:
        from agents.warm_start import warm_start_model

        model, initialised_from = warm_start_model(cfg, init_from, venv, world, device, run_dir)
        say(f"policy initialised from {init_from}")
        model.set_logger(_tb_logger(run_dir))
    elif ckpt is not None:
        model = restore_model(cfg, ckpt, venv, device, run_dir)
        resumed_from = {"checkpoint": str(ckpt.path), "num_timesteps": ckpt.num_timesteps, "skipped": skipped}
        say(f"resuming from step {model.num_timesteps:,} ({ckpt.path.name})")
        model.set_logger(_tb_logger(run_dir))
    else:
        if tc.ppo.normalize_reward:
            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=tc.ppo.gamma)
        model = new_ppo(cfg, venv, device, run_dir, kwargs)
        model.set_logger(_tb_logger(run_dir))
        model.logger.record("hparams", HParam(_flat_hparams(cfg), {"eval/return": 0.0, "eval/ratio_vs_tuned": 0.0}),
                            exclude=("stdout", "log", "json", "csv"))

    eval_core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", cfg.eval.batch)
    eval_plan = episode_plan(tc.eval_episodes, [tc.seed + 7], world.populations["heldout"].size)
    tuned_ret = run_episodes(eval_core, make_ranker("fixed-alpha:" + str(curve.best_alpha),
                                                    RankerContext(world, cfg.env)), eval_plan).ret
    remaining = max(0, tc.total_timesteps - model.num_timesteps)
    bar = tqdm(total=tc.total_timesteps, initial=model.num_timesteps, unit="step", desc="PPO", disable=not progress,
               smoothing=0.1)
    metrics = RolloutMetrics(stats_env, bar)
    periodic = PeriodicEval(eval_core, eval_plan, tuned_ret, tc.eval_every, run_dir / "eval.jsonl",
                            cfg.env.slate_size, start=model.num_timesteps)
    average = None
    if tc.policy_average_halflife > 0:
        if resume and ckpt is not None and ckpt.average is None:
            print(f"train.py: warning: {ckpt.path.name} holds no average of the weights (written before "
                  "train.policy_average_halflife was set?); the average restarts from its weights", file=sys.stderr,
                  flush=True)
        average = PolicyAverage(tc.policy_average_halflife, None if ckpt is None else ckpt.average)
    checkpointer = Checkpointer(run_dir, tc.checkpoint_every, start=model.num_timesteps, average=average)
    select = None
    if tc.select_episodes > 0:  # the saved policy: the best iterate on fixed sessions of the training users
        select_core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "train", cfg.eval.batch)
        select_plan = episode_plan(tc.select_episodes, [tc.seed + SELECT_SEED], world.populations["train"].size)
        select = SelectIterate(select_core, select_plan, tc.eval_every, run_dir, cfg.env.slate_size,
                               start=model.num_timesteps, resume=resume)
        select.init_callback(model)  # the final evaluation needs it when nothing is left to learn
    t_learn = time.perf_counter()
    steps_before = model.num_timesteps
    bins = cfg.train.ppo.advantage_bins
    callbacks: list[BaseCallback] = [AdvantageBins(bins)] if bins else []  # first: the update sees its advantages
    callbacks += [metrics, periodic, checkpointer] + ([average] if average is not None else [])
    callbacks += [select] if select is not None else []
    if tc.max_minutes is not None:
        callbacks.append(TimeLimit(tc.max_minutes))
    periodic.init_callback(model)  # learn() does this too, but the final evaluation needs it when nothing is left
    if remaining:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resume, tb_log_name="ppo")
    bar.close()
    learn_s = time.perf_counter() - t_learn
    assert isinstance(model.policy, SlatePolicy)
    last_iterate: SlatePolicy | None = None
    if average is not None:
        if not remaining:  # learn() did not run, so it did not start the callback: the saved average as it is
            average.init_callback(model)
            average.on_training_start({}, {})
        average.update()
    save_checkpoint(model, ckpt_dir, average=None if average is None else average.average)  # the live weights
    final_eval = periodic.evaluate() if tc.eval_every > 0 else None  # eval.jsonl follows the live weights
    if average is not None and average.average is not None:
        last_iterate = copy.deepcopy(model.policy)
        model.policy.load_state_dict(average.average)
    selection = None
    if select is not None:
        select.evaluate()  # the last iterate is a candidate too
        selection = select.summary()
        if select.best_step != model.num_timesteps and select.best_weights is not None:
            last_iterate = copy.deepcopy(model.policy)
            model.policy.load_state_dict(select.best_weights)
            say(f"saved policy: the iterate of step {select.best_step:,} ({select.best_return:.3f} on "
                f"{tc.select_episodes} training-user sessions; the last iterate {selection['last_return']:.3f})")
    save_policy(model.policy, run_dir)  # what recfeed reads (pickle-free): the average or the chosen iterate
    _atomic_save(model.save, run_dir / MODEL_FILE)  # SB3's archive, for SB3 users
    say(f"trained {model.num_timesteps - steps_before:,} steps in {learn_s:.0f}s "
        f"({(model.num_timesteps - steps_before) / max(learn_s, 1e-9):,.0f} steps/s; "
        f"collection {metrics.collect_s:.0f}s, updates {metrics.train_s:.0f}s)")

    # the final table plays the saved weights where the rollouts were collected (a CPU copy on a GPU run)
    acting = acting_policy(model)
    assert isinstance(acting, SlatePolicy)
    report = final_comparison(cfg, world, acting, curve, run_dir, progress, tuning, last_iterate)
    summary = {
        "run_dir": str(run_dir),
        "total_timesteps": int(model.num_timesteps),
        "learn_seconds": round(learn_s, 1),
        "steps_per_s": round((model.num_timesteps - steps_before) / max(learn_s, 1e-9), 1),
        "collect_seconds": round(metrics.collect_s, 1),
        "update_seconds": round(metrics.train_s, 1),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "device": str(device),
        "tuned_alpha": curve.best_alpha,
        "final_periodic_eval": final_eval,
        "heldout": {name: report["rankers"][name]["return"] for name in report["rankers"]},
        "ratio_vs_tuned_alpha": report["ratio_vs_tuned_alpha"],
        "gap_closed_to_oracle": report.get("gap_closed_to_oracle"),
        "ratio_vs_tuned_diverse": report["ratio_vs_tuned_diverse"],
        "paired_vs_tuned_diverse": report["paired_vs_tuned_diverse"],
        "best_hand_written_heldout": report["best_hand_written_heldout"],
        "policy_base": tc.policy.base,
        "selected_iterate": selection,
        "gap_closed_to_ceiling": report.get("gap_closed_to_ceiling"),
        "alpha_by_user_type": report["alpha"]["by_rho"],
        "alpha_by_user_type_effective": report["alpha"].get("by_rho_effective"),
        "resumed_from": resumed_from,
        "initialised_from": initialised_from,
        "backend": _backend_summary(cfg, stats_env),
        "paths": {"config": str(run_dir / CONFIG_FILE), "model": str(run_dir / MODEL_FILE),
                  "policy": str(run_dir / WEIGHTS_FILE),
                  "tensorboard": str(run_dir / "tb"), "report": str(run_dir / "report"),
                  "plots": str(run_dir / "report" / "plots")},
    }
    _json(run_dir / "summary.json", summary)
    return summary



def _backend_summary(cfg: Config, env: Any) -> dict[str, Any]:
    """How the rollouts were collected: ``{"name": "local"}``, or the Ray backend's workers, shards and faults."""
    if cfg.train.backend != "ray":
        return {"name": "local"}
    return {"name": "ray", "workers": cfg.train.ray.workers, "shards": [list(s) for s in env.shards],
            "iterations": env.iterations, "lost_rollouts": env.lost_rollouts,
            "worker_collect_seconds": round(env.worker_seconds, 1),
            "address": env.address}


def _tb_logger(run_dir: Path) -> Any:
    from stable_baselines3.common.logger import configure

    return configure(str(run_dir / "tb"), ["tensorboard"])


def _flat_hparams(cfg: Config) -> dict[str, Any]:
    """Every config value, flattened (``train.ppo.n_epochs``), as TensorBoard hparams (scalars and strings)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, bool | int | float | str):
            out[prefix] = value
        else:
            out[prefix] = str(value)

    walk("", to_dict(cfg))
    return out
