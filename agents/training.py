"""PPO training of the slate policy: run directories, callbacks, checkpoints, resume, the final comparison.

``train.py`` is the command line over :func:`train`. A run directory holds::

    config.yaml      the resolved config (every hyperparameter)
    versions.json    library versions, device, seeds, the world's key
    signature.json   the world and env shape the policy is trained on (agents/runinfo.py)
    tb/              TensorBoard events (SB3's scalars + rollout/*, train/alpha_*, time/*, eval/*)
    checkpoints/     latest.zip (+ vecnormalize.pkl, state.json), written atomically every N steps
    eval.jsonl       periodic evaluations against tuned-alpha on held-out users
    model.zip        the final model (SB3 PPO with SlatePolicy)
    report/          final comparison: results.json / .md / .csv, plots/*.png, alpha.json
    summary.json     headline figures, timings and paths
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import HParam
from stable_baselines3.common.vec_env import VecNormalize
from tqdm.auto import tqdm

from agents.baselines import RankerContext, make_ranker, tune_alpha
from agents.evaluation import RHO_EDGES, RHO_LABELS, episode_plan, run_episodes, summarise, write_report
from agents.policies import SlatePolicy
from agents.ppo_ranker import CONFIG_FILE, MODEL_FILE, PPORanker, resolve_device
from agents.runinfo import write_signature
from configs.loader import atomic_write_text, save_yaml, to_dict
from configs.schema import Config
from envs.core import BatchedCore
from envs.presets import load_world, world_key
from envs.rec_env import make_core
from envs.sb3 import SB3VecEnv
from envs.vector_env import RecVectorEnv
from envs.world import World

CKPT_DIR = "checkpoints"
#: Baselines of the final comparison (the oracle reads hidden state; it is the upper reference).
FINAL_BASELINES = ("random", "greedy-llm", "greedy-cf", "tuned-alpha", "linucb", "diverse", "oracle")


def versions() -> dict[str, str]:
    """Library versions recorded with a run."""
    import gymnasium
    import stable_baselines3
    import transformers

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": th.__version__,
            "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


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
    atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _atomic_save(save: Any, dest: Path) -> None:
    """Call ``save(tmp_path)`` then rename into place, so a checkpoint is never half-written."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    save(tmp)
    written = tmp if tmp.exists() else tmp.with_suffix(tmp.suffix + ".zip")  # SB3 may append .zip
    os.replace(written, dest)


def policy_kwargs(cfg: Config, init_alpha: float, world: World) -> dict[str, Any]:
    """SlatePolicy constructor arguments from the config (``init_alpha`` clipped into (0, 1))."""
    pc = cfg.train.policy
    alpha0 = pc.init_alpha if pc.init_alpha is not None else init_alpha
    return dict(hidden=pc.hidden, candidate_hidden=pc.candidate_hidden, n_layers=pc.n_layers,
                temperature=pc.temperature, init_alpha=float(np.clip(alpha0, 0.02, 0.98)),
                residual_init_scale=pc.residual_init_scale, use_item_table=pc.use_item_table,
                item_category=world.catalog.category if pc.category_repulsion else None,
                entropy_estimator=pc.entropy_estimator)


def make_venv(cfg: Config, world: World, seed: int) -> SB3VecEnv:
    """The native vector env over the training users, behind the SB3 adapter (seeded)."""
    venv = SB3VecEnv(RecVectorEnv(cfg.train.ppo.n_envs, config=cfg.env, world=world, population="train"))
    venv.seed(seed)
    return venv


# ---- callbacks -----------------------------------------------------------------------------------------------


class RolloutMetrics(BaseCallback):
    """Logs what users did during each rollout, the learned α, and where the time goes.

    ``rollout/ctr`` (sessions' requests with a click), ``rollout/purchase_rate`` (purchases per request),
    ``rollout/dwell`` (dwell seconds per request), ``rollout/session_length``, ``rollout/session_return``,
    ``train/alpha_mean`` / ``train/alpha_std`` and the ``train/alpha`` histogram over the rollout's states,
    ``time/collect_s``, ``time/train_s``, ``time/env_steps_per_s``.
    """

    def __init__(self, stats_env: SB3VecEnv, bar: tqdm | None = None) -> None:
        super().__init__()
        self.stats_env, self.bar = stats_env, bar
        self._t_rollout = self._t_train = time.perf_counter()
        self.collect_s = self.train_s = 0.0
        self._last_steps = 0
        self._updating = False

    def _on_rollout_start(self) -> None:
        now = time.perf_counter()
        if self._updating:  # the time since the last rollout ended went into the update
            self.train_s += now - self._t_train
            self.logger.record("time/train_s", now - self._t_train)
        self._t_rollout = now

    def _on_training_end(self) -> None:
        if self._updating:
            self.train_s += time.perf_counter() - self._t_train
            self._updating = False

    def _on_step(self) -> bool:
        if self.bar is not None:
            self.bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        now = time.perf_counter()
        collect = now - self._t_rollout
        self.collect_s += collect
        self._t_train = now
        self._updating = True
        s = self.stats_env.pop_stats()
        steps = max(s["steps"], 1)
        self.logger.record("rollout/ctr", s["clicks"] / steps)
        self.logger.record("rollout/purchase_rate", s["purchases"] / steps)
        self.logger.record("rollout/dwell", s["dwell"] / steps)
        self.logger.record("rollout/reward_per_request", s["reward"] / steps)
        if s["episodes"]:
            self.logger.record("rollout/session_length", s["episode_len"] / s["episodes"])
            self.logger.record("rollout/session_return", s["episode_return"] / s["episodes"])
        self.logger.record("time/collect_s", collect)
        self.logger.record("time/env_steps_per_s", (self.num_timesteps - self._last_steps) / max(collect, 1e-9))
        self._last_steps = self.num_timesteps
        policy = self.model.policy
        assert isinstance(policy, SlatePolicy)
        buf = self.model.rollout_buffer.observations
        assert isinstance(buf, dict)
        n = min(2048, buf["context"].shape[0] * buf["context"].shape[1])
        flat = {k: v.reshape(-1, *v.shape[2:])[-n:] for k, v in buf.items()}
        with th.no_grad():
            alpha = policy.alpha(flat).cpu()
        self.logger.record("train/alpha_mean", float(alpha.mean()))
        self.logger.record("train/alpha_std", float(alpha.std()))
        self.logger.record("train/alpha", alpha)
        with th.no_grad():
            beta = policy.repulsion(flat)
        if beta is not None:
            self.logger.record("train/repulsion_mean", float(beta.mean()))
        if self.bar is not None:
            self.bar.set_postfix(ctr=f"{s['clicks'] / steps:.3f}", alpha=f"{float(alpha.mean()):.2f}")


class TimeLimit(BaseCallback):
    """Stops learning once ``minutes`` of wall time have passed (checked every step)."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.deadline = time.perf_counter() + 60.0 * minutes

    def _on_step(self) -> bool:
        return time.perf_counter() < self.deadline


class PeriodicEval(BaseCallback):
    """Every ``every`` steps: the policy against tuned-alpha on the same held-out sessions (``eval.jsonl``).

    Args:
        core: Evaluation core over the held-out users.
        plan: The fixed held-out sessions.
        tuned_return: tuned-alpha's per-episode returns on ``plan`` (computed once).
        every: Steps between evaluations.
        path: The ``eval.jsonl`` file.
        k: Slate size.
    """

    def __init__(self, core: BatchedCore, plan: Any, tuned_return: np.ndarray, every: int, path: Path,
                 k: int) -> None:
        super().__init__()
        self.core, self.plan, self.tuned, self.every, self.path, self.k = core, plan, tuned_return, every, path, k
        self._next = every

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.evaluate()
        return True

    def evaluate(self) -> dict[str, float]:
        """Run the evaluation now; log and append it."""
        policy = self.model.policy
        assert isinstance(policy, SlatePolicy)
        ret = run_episodes(self.core, PPORanker(policy, self.k), self.plan).ret
        policy.train()
        row = {"step": int(self.num_timesteps), "return": float(ret.mean()),
               "return_tuned_alpha": float(self.tuned.mean()), "ratio_vs_tuned": float(ret.mean() / self.tuned.mean()),
               "time": time.time()}
        for k in ("return", "return_tuned_alpha", "ratio_vs_tuned"):
            self.logger.record(f"eval/{k}", row[k])
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        return row


class Checkpointer(BaseCallback):
    """Every ``every`` steps: ``checkpoints/latest.zip`` (+ reward-normalisation stats, step count), atomically."""

    def __init__(self, run_dir: Path, every: int) -> None:
        super().__init__()
        self.dir, self.every = run_dir / CKPT_DIR, every
        self._next = every

    def _on_step(self) -> bool:
        if self.every > 0 and self.num_timesteps >= self._next:
            self._next += self.every
            self.save()
        return True

    def save(self) -> None:
        """Write the checkpoint now."""
        save_checkpoint(self.model, self.dir)


def save_checkpoint(model: PPO, ckpt_dir: Path) -> None:
    """Model, VecNormalize statistics and step count, each written atomically; state.json last."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _atomic_save(model.save, ckpt_dir / "latest.zip")
    venv = model.get_env()
    if isinstance(venv, VecNormalize):
        _atomic_save(venv.save, ckpt_dir / "vecnormalize.pkl")
    _json(ckpt_dir / "state.json", {"num_timesteps": int(model.num_timesteps), "time": time.time()})


# ---- the run -------------------------------------------------------------------------------------------------


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train PPO on the configured world; evaluate against the baselines; write the run directory.

    Args:
        cfg: The resolved config.
        run_dir: Run directory (``None``: a new one under ``train.out_dir``).
        resume: Continue ``run_dir`` from its last checkpoint (its saved config is used).
        progress: Show progress bars.

    Returns:
        The summary (also in ``summary.json``).
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
    if not resume:
        save_yaml(cfg, run_dir / CONFIG_FILE)
    say(f"run directory: {run_dir}")

    world = load_world(cfg.env, cfg.encoder, progress=progress)
    say(f"world: {world.n_items} items, users {({k: p.size for k, p in world.populations.items()})}, "
        f"encoder {world.encoder_name}")
    _json(run_dir / "versions.json", {**versions(), "device": str(device), "seed": tc.seed,
                                      "world_key": world_key(cfg.env, world.encoder_name)})
    write_signature(run_dir, cfg, world)  # what evaluate.py checks run:DIR against (agents/runinfo.py)

    # The reference every result is compared with: the best fixed α on the training users.
    t0 = time.perf_counter()
    curve = tune_alpha(world, cfg.env, episodes=max(100, cfg.eval.episodes // 2), seed=tc.seed + 1_000_003,
                       batch=cfg.eval.batch, progress=progress)
    say(f"tuned-alpha on training users: α* = {curve.best_alpha:g} ({time.perf_counter() - t0:.0f}s)")

    venv: SB3VecEnv | VecNormalize = make_venv(cfg, world, tc.seed)
    stats_env = venv
    ckpt_dir = run_dir / CKPT_DIR
    if resume:
        if not (ckpt_dir / "latest.zip").is_file():
            raise FileNotFoundError(f"no checkpoint to resume in {ckpt_dir}")
        if (ckpt_dir / "vecnormalize.pkl").is_file():
            venv = VecNormalize.load(str(ckpt_dir / "vecnormalize.pkl"), venv)
        model = PPO.load(ckpt_dir / "latest.zip", env=venv, device=device,
                         custom_objects={"policy_class": SlatePolicy})
        say(f"resuming from step {model.num_timesteps:,}")
    else:
        if tc.ppo.normalize_reward:
            venv = VecNormalize(venv, norm_obs=False, norm_reward=True, gamma=tc.ppo.gamma)
        pc = tc.ppo
        model = PPO(SlatePolicy, venv, learning_rate=pc.learning_rate, n_steps=pc.n_steps, batch_size=pc.batch_size,
                    n_epochs=pc.n_epochs, gamma=pc.gamma, gae_lambda=pc.gae_lambda, clip_range=pc.clip_range,
                    ent_coef=pc.ent_coef, vf_coef=pc.vf_coef, max_grad_norm=pc.max_grad_norm,
                    target_kl=pc.target_kl, tensorboard_log=str(run_dir / "tb"), device=device, seed=tc.seed,
                    policy_kwargs=policy_kwargs(cfg, curve.best_alpha, world), verbose=0)
        model.set_logger(_tb_logger(run_dir))
        model.logger.record("hparams", HParam(_flat_hparams(cfg), {"eval/return": 0.0, "eval/ratio_vs_tuned": 0.0}),
                            exclude=("stdout", "log", "json", "csv"))
    if resume:
        model.set_logger(_tb_logger(run_dir))

    eval_core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", cfg.eval.batch)
    eval_plan = episode_plan(tc.eval_episodes, [tc.seed + 7], world.populations["heldout"].size)
    tuned_ret = run_episodes(eval_core, make_ranker("fixed-alpha:" + str(curve.best_alpha),
                                                    RankerContext(world, cfg.env)), eval_plan).ret
    remaining = max(0, tc.total_timesteps - model.num_timesteps)
    bar = tqdm(total=tc.total_timesteps, initial=model.num_timesteps, unit="step", desc="PPO", disable=not progress,
               smoothing=0.1)
    metrics = RolloutMetrics(stats_env, bar)
    periodic = PeriodicEval(eval_core, eval_plan, tuned_ret, tc.eval_every, run_dir / "eval.jsonl",
                            cfg.env.slate_size)
    periodic._next = (model.num_timesteps // tc.eval_every + 1) * tc.eval_every if tc.eval_every > 0 else 0
    ckpt = Checkpointer(run_dir, tc.checkpoint_every)
    ckpt._next = (model.num_timesteps // tc.checkpoint_every + 1) * tc.checkpoint_every if tc.checkpoint_every else 0
    t_learn = time.perf_counter()
    steps_before = model.num_timesteps
    callbacks: list[BaseCallback] = [metrics, periodic, ckpt]
    if tc.max_minutes is not None:
        callbacks.append(TimeLimit(tc.max_minutes))
    if remaining:
        model.learn(remaining, callback=CallbackList(callbacks), reset_num_timesteps=not resume, tb_log_name="ppo")
    bar.close()
    learn_s = time.perf_counter() - t_learn
    save_checkpoint(model, ckpt_dir)
    _atomic_save(model.save, run_dir / MODEL_FILE)
    final_eval = periodic.evaluate() if tc.eval_every > 0 else None
    say(f"trained {model.num_timesteps - steps_before:,} steps in {learn_s:.0f}s "
        f"({(model.num_timesteps - steps_before) / max(learn_s, 1e-9):,.0f} steps/s; "
        f"collection {metrics.collect_s:.0f}s, updates {metrics.train_s:.0f}s)")

    report = final_comparison(cfg, world, model.policy, curve, run_dir, progress)
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
        "alpha_by_user_type": report["alpha"]["by_rho"],
        "paths": {"config": str(run_dir / CONFIG_FILE), "model": str(run_dir / MODEL_FILE),
                  "tensorboard": str(run_dir / "tb"), "report": str(run_dir / "report"),
                  "plots": str(run_dir / "report" / "plots")},
    }
    _json(run_dir / "summary.json", summary)
    return summary


def final_comparison(cfg: Config, world: World, policy: SlatePolicy, curve: Any, run_dir: Path,
                     progress: bool) -> dict[str, Any]:
    """PPO against the baselines on held-out users (common random numbers); α by user type and by step.

    Writes ``report/`` (results.json/.md/.csv, plots) and ``report/alpha.json``.
    """
    ec = cfg.eval
    core = make_core(cfg.env, cfg.env.preset, cfg.encoder, world, "heldout", ec.batch)
    plan = episode_plan(ec.episodes, list(range(ec.seeds)), world.populations["heldout"].size)
    ctx = RankerContext(world, cfg.env, core=core, seed=cfg.train.seed, batch=ec.batch, progress=progress)
    rankers = {}
    for spec in FINAL_BASELINES:
        if spec in ("tuned-alpha", "diverse"):  # both on the α tuned above (not tuned again)
            base = "fixed-alpha" if spec == "tuned-alpha" else "diverse"
            rankers[spec] = make_ranker(f"{base}:{curve.best_alpha:g}", ctx)
            rankers[spec].name = spec
        else:
            rankers[spec] = make_ranker(spec, ctx)
    ppo = PPORanker(policy, cfg.env.slate_size)
    alpha_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rho, step, alpha) per step

    def record_alpha(obs: dict[str, np.ndarray], slate: np.ndarray, feedback: Any, active: np.ndarray) -> None:
        assert ppo.last_alpha is not None
        rows = np.flatnonzero(active)
        alpha_rows.append((core.pop.rho[core.user[rows]], core.t[rows] - 1, ppo.last_alpha[rows]))

    stats = {"ppo": run_episodes(core, ppo, plan, progress=progress, desc="ppo (held-out)", on_step=record_alpha)}
    for name, r in rankers.items():
        stats[name] = run_episodes(core, r, plan, progress=progress, desc=f"{name} (held-out)")
    results = summarise(stats, reference="tuned-alpha", n_boot=ec.bootstrap, seed=cfg.train.seed,
                        hidden=["oracle"], alpha_curve=curve.to_dict(),
                        setup={"users": "heldout", "preset": cfg.env.preset, "seeds": list(range(ec.seeds))})
    rho, step, alpha = (np.concatenate(x) for x in zip(*alpha_rows, strict=True))
    by_rho = {}
    for lo, hi, label in zip(RHO_EDGES[:-1], RHO_EDGES[1:], RHO_LABELS, strict=True):
        sel = (rho >= lo) & ((rho < hi) | (hi == 1.0))
        by_rho[label] = float(alpha[sel].mean()) if sel.any() else None
    by_step = {}
    for t in range(min(cfg.env.max_steps, 20)):
        sel = step == t
        if sel.sum() >= 20:
            lo_t = sel & (rho < 0.5)
            hi_t = sel & (rho >= 0.5)
            by_step[t] = {"all": float(alpha[sel].mean()),
                          "rho<0.5": float(alpha[lo_t].mean()) if lo_t.any() else None,
                          "rho>=0.5": float(alpha[hi_t].mean()) if hi_t.any() else None}
    results["alpha"] = {"by_rho": by_rho, "by_step": by_step,
                        "corr_alpha_rho": float(np.corrcoef(alpha, rho)[0, 1]) if alpha.std() > 0 else 0.0}
    r = results["rankers"]
    results["ratio_vs_tuned_alpha"] = r["ppo"]["return"]["mean"] / r["tuned-alpha"]["return"]["mean"]
    gap = r["oracle"]["return"]["mean"] - r["tuned-alpha"]["return"]["mean"]
    if gap > 0:
        results["gap_closed_to_oracle"] = (r["ppo"]["return"]["mean"] - r["tuned-alpha"]["return"]["mean"]) / gap
    out = run_dir / "report"
    write_report(results, out)
    _alpha_plot(results["alpha"], out / "plots" / "alpha.png")
    return results


def _alpha_plot(alpha: dict[str, Any], path: Path) -> None:
    """Plot learned α by hidden user type and by step within the session."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from configs.loader import atomic_write_bytes

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [k for k, v in alpha["by_rho"].items() if v is not None]
    a1.bar(range(len(labels)), [alpha["by_rho"][k] for k in labels], color="#4C72B0")
    a1.set_xticks(range(len(labels)), [k.split(" ")[1].strip("()") if " " in k else k for k in labels])
    a1.set_ylabel("mean learned α")
    a1.set_title("α by hidden user type (ρ_u)")
    steps = sorted(alpha["by_step"], key=int)
    for key, colour in (("rho<0.5", "#DD8452"), ("rho>=0.5", "#55A868"), ("all", "#4C72B0")):
        a2.plot([int(s) for s in steps], [alpha["by_step"][s][key] for s in steps], label=key, color=colour)
    a2.set_xlabel("step in session")
    a2.set_ylabel("mean learned α")
    a2.set_title("α within the session")
    a2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


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


def print_summary(summary: dict[str, Any], results_md: Path) -> None:
    """The closing message of ``train.py``: how PPO compares, and where everything is."""
    print()
    if results_md.is_file():
        print(results_md.read_text(encoding="utf-8"))
    h = summary["heldout"]
    ppo, tuned = h["ppo"]["mean"], h["tuned-alpha"]["mean"]
    print(f"PPO return per session on held-out users: {ppo:.3f} (95% CI {h['ppo']['ci95'][0]:.3f}–"
          f"{h['ppo']['ci95'][1]:.3f}); tuned-alpha {tuned:.3f} → {summary['ratio_vs_tuned_alpha']:.3f}×")
    if summary.get("gap_closed_to_oracle") is not None:
        print(f"share of the tuned-alpha → oracle gap closed: {summary['gap_closed_to_oracle']:.2f}")
    print("learned α by hidden user type: "
          + ", ".join(f"{k}: {v:.2f}" for k, v in summary["alpha_by_user_type"].items() if v is not None))
    p = summary["paths"]
    print(f"\nrun directory: {summary['run_dir']}\n  model:       {p['model']}\n  TensorBoard: tensorboard "
          f"--logdir {p['tensorboard']}\n  report:      {p['report']}/results.md\n  plots:       {p['plots']}")

