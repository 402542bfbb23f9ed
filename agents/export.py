"""Export a trained run's policy for serving: a self-contained artifact directory.

``python -m agents.export RUN_DIR --format onnx|torchscript [--out DIR] [--force]`` writes (default
``RUN_DIR/export``)::

    policy.onnx | policy.pt   the actor: (user (B, D), features (B, N, F), context (B, C)
                              [, candidates (B, N) int64] [, item_emb (B, N, D)] [, session_sim (B, N)])
                              -> (logits (B, N), alpha (B,), repulsion (B,), parts (B, N, P))
                              (parts: the logits' additive parts, named by the manifest's "score_parts")
    items.npz                 what the runtime needs to build features (np.load(allow_pickle=False)):
                              ids (M,) str, item_emb (M, D) f32, item_factors (M, F') f32,
                              item_features (M, 2) f32 [popularity, price], category (M,) int32,
                              category_names (C,) str, price (M,) f32 raw prices, is_new (M,) bool
                              (items without interactions: zero factors; POST /items appends to these)
    manifest.json             feature schema, N used in training, K, D, M, C, encoder identity, fallback α,
                              category cap, observation decay constants, CF fold-in settings, file hashes, parity

The artifact is built in a new folder beside ``--out`` and renamed into place; an existing ``--out`` is replaced
only when empty or a previous export, and runs are never touched. The policy is read from ``policy.safetensors`` +
``policy.json`` (``model.zip`` is never opened); nothing in the artifact needs pickle. Before anything is written
the exported graph must give the SB3 model's deterministic slate on held-out observations (parity; the slate mode
is ``agents.slate_mode.greedy_slates``, repulsion and category cap included). The rules, the parity tolerances and
the fallback α: ``docs/serving.md`` ("1. Export").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch as th
from torch import nn

from agents.policies import SCORE_PARTS
from agents.serving.runners import run_exported, run_exported_parts
from agents.slate_mode import greedy_slates, is_greedy_path
from configs.fileio import sha256_file
from configs.loader import load_config, to_dict
from configs.schema import Config
from envs.core import OBS_DECAY
from envs.spaces import CONTEXT_NAMES, FEATURE_NAMES
from envs.world import World

EXPORT_VERSION = 3  # 2: the manifest carries "category_cap"; 3: the "parts" output and "score_parts"
MANIFEST_FILE = "manifest.json"
#: ``manifest.json``'s ``producer``: how a previous export is recognised (see :func:`is_previous_export`).
PRODUCER = "recfeed.agents.export"
#: What ``train.py`` writes into a run directory (an export target inside a run must not be one of these).
RUN_ENTRIES = frozenset({"config.yaml", "versions.json", "signature.json", "tb", "checkpoints", "eval.jsonl",
                         "model.zip", "policy.safetensors", "policy.json", "report", "summary.json"})
ITEMS_FILE = "items.npz"
MODEL_FILES = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
ONNX_OPSET = 17
#: Logit gap below which two candidates count as tied (their order may legitimately differ).
TIE_TOL = 1e-5
#: Largest tolerated |α| / |β| difference between the exported graph and the SB3 policy.
VALUE_TOL = 1e-4
#: Largest tolerated |logit| (and logit part) difference. Logits span up to ``LOGIT_RANGE`` (30) nats, and a float32
#: policy whose type head standardises near-constant request statistics (``type_head_input: request``; columns with a
#: spread of 0.005 across requests) is itself 2e-4 away from its own float64 evaluation (BENCHMARKS "Session 57"), so
#: two float32 implementations of it differ by as much; 1e-3 is 3e-5 of the logits' range. The slates must agree up
#: to ties either way.
LOGIT_TOL = 1e-3

#: Graph outputs (``parts`` (B, N, P): each logit's additive parts, :data:`agents.policies.SCORE_PARTS`).
OUTPUTS = ["logits", "alpha", "repulsion", "parts"]

Format = Literal["onnx", "torchscript"]


class PolicyGraph(nn.Module):
    """The policy's actor as a plain module over tensors, for tracing.

    Calls :meth:`agents.policies.SlatePolicy.score_candidates_explained`, so the graph is the policy's
    function by construction (no copy of its code), and the logits' parts come from the same pass.

    Args:
        policy: The trained SlatePolicy (put in eval mode).
        input_names: The graph inputs, in order: ``user``, ``features``, ``context`` and, when the policy needs
            them, ``candidates`` (int64 catalog ids, for the item table), ``item_emb`` and ``session_sim``.
    """

    def __init__(self, policy: nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.policy = policy
        self.input_names = list(input_names)

    def forward(self, *inputs: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """``(user (B, D), features (B, N, F), context (B, C)[, candidates (B, N)][, item_emb (B, N, D)]
        [, session_sim (B, N)])``
        → ``(logits (B, N), alpha (B,), repulsion (B,), parts (B, N, P))`` (repulsion β = 0 for a policy without
        one; the parts sum to the logits, see :meth:`agents.policies.SlatePolicy.score_parts`)."""
        obs = dict(zip(self.input_names, inputs, strict=True))
        if "candidates" in obs:
            obs["candidates"] = obs["candidates"].to(th.float32)  # as SB3's preprocess_obs hands it over
        logits, alpha, beta, parts = self.policy.score_candidates_explained(obs)
        return logits, alpha, th.zeros_like(alpha) if beta is None else beta, parts


def has_repulsion(policy: Any) -> bool:
    """The policy draws slates with a learned within-slate category repulsion β_θ(s)."""
    return getattr(policy, "repulsion_head", None) is not None


def graph_inputs(policy: Any) -> list[str]:
    """The inputs the exported graph needs for this policy (see :class:`PolicyGraph`)."""
    names = ["user", "features", "context"]
    if getattr(policy, "item_table", None) is not None:
        names.append("candidates")
    if "item_emb" in policy.observation_space.spaces:
        names.append("item_emb")
    if "session_sim" in policy.observation_space.spaces:  # env.obs_session_sim: the runtime keeps the click sum
        names.append("session_sim")
    return names


class ExportTargetError(ValueError):
    """``--out`` names a folder that an export must not replace; the message says why."""


@dataclass
class LoadedPolicy:
    """A run's policy, loaded pickle-free, with the ``predict`` of an SB3 model (``PPO.predict`` calls the same).

    Attributes:
        policy: The SlatePolicy (eval mode).
    """

    policy: Any

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = True) -> tuple[np.ndarray, None]:
        """``(slates (B, K), None)`` for a batched observation, as ``PPO.predict``."""
        return self.policy.predict(obs, deterministic=deterministic)


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Config, LoadedPolicy, dict[str, Any]]:
    """The resolved config, the policy and the summary (``{}`` if absent) of a run directory.

    The policy comes from ``policy.safetensors`` + ``policy.json`` (:func:`agents.ppo_ranker.load_policy`);
    ``model.zip`` is never unpickled.

    Raises:
        FileNotFoundError: If ``config.yaml`` or the policy files are missing.
        ValueError: If the policy files are unreadable or inconsistent.
    """
    from agents.ppo_ranker import CONFIG_FILE, load_policy

    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{run} is not a finished recfeed run directory: {run / CONFIG_FILE} is missing")
    cfg = load_config(run / CONFIG_FILE)
    policy = load_policy(run, device)
    summary: dict[str, Any] = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return cfg, LoadedPolicy(policy), summary


# ---- where an export may be written ----------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """``path`` looks like a run directory (``config.yaml`` with a model, policy, checkpoints or versions)."""
    return (path / "config.yaml").is_file() and any(
        (path / name).exists() for name in ("model.zip", "policy.safetensors", "checkpoints", "versions.json"))


def is_previous_export(path: Path) -> bool:
    """``path`` holds an export written here: a ``manifest.json`` from this module and nothing but plain files that
    an export writes (its model file, ``items.npz``, the manifest)."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return False
    ours = manifest.get("producer") == PRODUCER or (  # exports written before the producer field
        manifest.get("version") == 1 and manifest.get("format") in MODEL_FILES and "parity" in manifest)
    allowed = {MANIFEST_FILE, ITEMS_FILE, *MODEL_FILES.values(), *map(str, manifest["files"].values())}
    return ours and all(p.name in allowed and p.is_file() and not p.is_symlink() for p in path.iterdir())


def check_export_target(run_dir: str | Path, out: str | Path, force: bool = False) -> None:
    """Raise :class:`ExportTargetError` unless an export of ``run_dir`` may be written to ``out`` (see the module
    docstring, "Where it writes").

    Args:
        run_dir: The run being exported.
        out: The artifact folder.
        force: Replace a non-empty folder that is not a previous export (still never a run, nor part of one).
    """
    run, dest = Path(run_dir).resolve(), Path(out).resolve()
    if dest == run or dest in run.parents:
        raise ExportTargetError(f"--out {out} is the run directory {run_dir} or a folder above it; an export never "
                                "replaces it (pick a new folder, e.g. the default RUN_DIR/export)")
    for above in dest.parents:
        if is_run_dir(above):
            part = dest.relative_to(above).parts[0]
            if part in RUN_ENTRIES:
                raise ExportTargetError(f"--out {out} is {part!r} of the run directory {above}; an export never "
                                        "replaces what train.py wrote")
            break
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ExportTargetError(f"--out {out} exists and is not a directory")
    if is_run_dir(dest):
        raise ExportTargetError(f"--out {out} is a run directory; an export never replaces a run")
    if not any(dest.iterdir()) or is_previous_export(dest):
        return
    for root, _, _ in os.walk(dest):
        if is_run_dir(Path(root)):
            raise ExportTargetError(f"--out {out} contains the run directory {root}; an export never replaces a run")
    if not force:
        raise ExportTargetError(f"--out {out} is not empty and is not a previous export (no {MANIFEST_FILE} written "
                                "by agents.export, or other files beside it); pick a new folder, or pass --force to "
                                "replace it")


@contextlib.contextmanager
def _new_dir(dest: Path, ok_to_replace: Any) -> Iterator[Path]:
    """Yield a new temporary folder beside ``dest``; on success it takes ``dest``'s place (by rename).

    ``ok_to_replace()`` is called again just before an existing ``dest`` is replaced (it raises if that is no longer
    allowed). On any error the temporary folder is removed and ``dest`` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():
            ok_to_replace()
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.rename(dest, old / dest.name)
        try:
            os.rename(tmp, dest)
        except BaseException:
            if old is not None:
                os.rename(old / dest.name, dest)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def collect_observations(model: Any, cfg: Config, world: World, n_envs: int = 32, steps: int = 8,
                         seed: int = 12345) -> dict[str, np.ndarray]:
    """Observations of held-out users met while the SB3 model itself chooses the slates.

    Args:
        model: The policy with a ``predict`` (:class:`LoadedPolicy`, or an SB3 PPO with SlatePolicy).
        cfg: The run's config.
        world: Its world.
        n_envs: Users simulated at once.
        steps: Requests per user (``n_envs * steps`` observations).
        seed: Env seed.

    Returns:
        Batched observation ``{key: (n_envs * steps, …)}``.
    """
    from envs.vector_env import RecVectorEnv

    env = RecVectorEnv(n_envs, config=cfg.env, world=world, population="heldout")
    obs, _ = env.reset(seed=seed)
    chunks: list[dict[str, np.ndarray]] = []
    for _ in range(steps):
        chunks.append({k: v.copy() for k, v in obs.items()})
        action, _ = model.predict(obs, deterministic=True)
        obs, *_ = env.step(action)
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _graph_args(obs: dict[str, np.ndarray], names: list[str]) -> tuple[th.Tensor, ...]:
    out = []
    for n in names:
        arr = np.asarray(obs[n])
        out.append(th.as_tensor(arr, dtype=th.int64 if n == "candidates" else th.float32))
    return tuple(out)


def neutral_alpha(policy: Any, n_candidates: int) -> float:
    """The policy's α for a cold user at session start with all-zero candidate features."""
    space = policy.observation_space
    obs = {k: np.zeros((1, *space[k].shape), np.float32) for k in space.spaces if k != "mask"}
    if "candidates" in obs:
        obs["candidates"] = np.zeros((1, n_candidates), np.int64)
    with th.no_grad():
        return float(policy.alpha(obs)[0])


def fallback_alpha(policy: Any, summary: dict[str, Any], n_candidates: int) -> tuple[float, str]:
    """``(α, source)``: the run's tuned α when its summary has one, else :func:`neutral_alpha`."""
    tuned = summary.get("tuned_alpha")
    if isinstance(tuned, int | float) and 0.0 <= float(tuned) <= 1.0:
        return float(tuned), "summary.json:tuned_alpha"
    return neutral_alpha(policy, n_candidates), "policy_alpha_at_neutral_state"


def _write_graph(graph: PolicyGraph, example: tuple[th.Tensor, ...], names: list[str], path: Path,
                 fmt: Format) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter / tracer deprecation notices
        if fmt == "onnx":
            dyn: dict[str, dict[int, str]] = {n: {0: "B"} for n in names}
            for n in names:
                if n != "user" and n != "context":
                    dyn[n][1] = "N"
            dyn["logits"] = {0: "B", 1: "N"}
            dyn["alpha"] = {0: "B"}
            dyn["repulsion"] = {0: "B"}
            dyn["parts"] = {0: "B", 1: "N"}
            th.onnx.export(graph, example, str(path), input_names=names, output_names=OUTPUTS,
                           dynamic_axes=dyn, opset_version=ONNX_OPSET, dynamo=False)
            import onnx

            onnx.checker.check_model(onnx.load(str(path)))
        else:
            traced = th.jit.trace(graph, example, check_trace=False)
            traced = th.jit.freeze(traced.eval())
            traced.save(str(path))


@dataclass
class ParityReport:
    """Agreement of the exported graph with the SB3 model.

    Attributes:
        observations: Observations compared.
        slates_equal: Observations whose slate is identical.
        slates_equal_up_to_ties: Observations whose slate differs only between tied candidates.
        max_abs_logit_diff: Over all observations and candidates.
        max_abs_alpha_diff: Of α and of the repulsion β, over all observations.
        max_abs_parts_diff: Of the logits' parts (the graph's ``parts`` output against
            :meth:`agents.policies.SlatePolicy.score_parts`), over all observations, candidates and parts.
        other_n: The second N checked against the policy's forward.
        other_n_max_abs_logit_diff: Its largest logit difference.
        tie_tol: Within how many nats two candidates' effective logits count as tied when a slate that differs is
            checked (:func:`tie_tolerance`).
    """

    observations: int
    slates_equal: int
    slates_equal_up_to_ties: int
    max_abs_logit_diff: float
    max_abs_alpha_diff: float
    max_abs_parts_diff: float
    other_n: int
    other_n_max_abs_logit_diff: float
    tie_tol: float = TIE_TOL

    @property
    def ok(self) -> bool:
        """Every slate agrees (up to ties), α and β within :data:`VALUE_TOL`, the logits and their parts within
        :data:`LOGIT_TOL`."""
        return (self.slates_equal_up_to_ties == self.observations and self.max_abs_logit_diff <= LOGIT_TOL
                and self.max_abs_alpha_diff <= VALUE_TOL and self.max_abs_parts_diff <= LOGIT_TOL
                and self.other_n_max_abs_logit_diff <= LOGIT_TOL)


def tie_tolerance(logit_diff: float, beta_diff: float, slate_size: int) -> float:
    """How far apart two candidates' effective logits may be and still count as tied when two implementations pick
    slates: at least :data:`TIE_TOL`, and twice what the two may disagree on a step's effective logit (each logit by
    ``logit_diff``, each of up to K − 1 repulsion terms by ``beta_diff``), so that a pair the two order differently
    within their own numerical disagreement is a tie, not a failure. Before session 60 the check used
    :data:`TIE_TOL` alone while allowing logits :data:`LOGIT_TOL` apart, and a policy whose logits are 2e-4 from
    their float64 value (a type head over the standardised request) failed one export in a few hundred slates."""
    return max(TIE_TOL, 2.0 * (logit_diff + (slate_size - 1) * beta_diff))


def parity_check(model: Any, path: Path, fmt: Format, names: list[str], obs: dict[str, np.ndarray],
                 slate_size: int, categories: np.ndarray) -> ParityReport:
    """Compare the exported graph with the SB3 model on ``obs`` (see the module docstring).

    Args:
        model: The policy with a ``predict`` (:class:`LoadedPolicy`, or an SB3 PPO with SlatePolicy).
        path: The exported file.
        fmt: Its format.
        names: Graph inputs.
        obs: Batched observations (B, …).
        slate_size: K.
        categories: int (M,) item categories (the groups of the policy's repulsion, if it has one).

    Returns:
        The report (check :attr:`ParityReport.ok`).
    """
    policy = model.policy
    sb3_slates, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        ref_logits = policy.candidate_logits(obs).cpu().numpy()
        ref_alpha = policy.alpha(obs).cpu().numpy()
        rep = policy.repulsion(obs) if has_repulsion(policy) else None
        ref_beta = np.zeros_like(ref_alpha) if rep is None else rep.cpu().numpy()
        ref_parts = policy.score_parts_tensor(obs).cpu().numpy()
    args = tuple(a.numpy() for a in _graph_args(obs, names))
    logits, alpha, beta, parts = run_exported_parts(path, fmt, args, names)
    groups = categories[obs["candidates"]] if has_repulsion(policy) else None
    cap = getattr(policy, "category_cap", None)
    ours = greedy_slates(logits, slate_size, groups, beta, cap)
    equal = (ours == sb3_slates).all(axis=1)
    logit_diff = float(np.abs(logits - ref_logits).max())
    tol = tie_tolerance(logit_diff, float(np.abs(beta - ref_beta).max()), slate_size)
    ties = np.array([bool(equal[i]) or is_greedy_path(sb3_slates[i], logits[i], None if groups is None
                                                       else groups[i], float(beta[i]), tol, cap)
                     for i in range(len(equal))])
    # A second N: tile each row's candidates to 2N + 3 and compare with the policy's forward on the same tensors.
    n = obs["features"].shape[1]
    n2 = 2 * n + 3
    idx = np.arange(n2) % n
    big = {key: (v[:, idx] if key in ("features", "candidates", "item_emb", "session_sim") else v)
           for key, v in obs.items() if key in names}
    big_args = _graph_args(big, names)
    with th.no_grad():
        ref2 = PolicyGraph(policy, names)(*big_args)[0]
    got2, _, _ = run_exported(path, fmt, tuple(a.numpy() for a in big_args), names)
    return ParityReport(
        observations=len(equal),
        slates_equal=int(equal.sum()),
        slates_equal_up_to_ties=int(ties.sum()),
        max_abs_logit_diff=logit_diff,
        max_abs_alpha_diff=float(max(np.abs(alpha - ref_alpha).max(), np.abs(beta - ref_beta).max())),
        max_abs_parts_diff=float(np.abs(parts - ref_parts).max()),
        other_n=n2,
        other_n_max_abs_logit_diff=float(np.abs(got2 - ref2.numpy()).max()),
        tie_tol=tol,
    )


def write_items(world: World, path: Path) -> None:
    """Write the runtime's item table (see the module docstring) to ``path`` (no pickled objects)."""
    ids = np.array(world.catalog.ids)
    if ids.dtype.kind != "U":
        raise ValueError(f"catalog ids must be strings, got dtype {ids.dtype}")
    with path.open("wb") as fh:
        np.savez(
            fh,
            ids=ids,
            item_emb=np.ascontiguousarray(world.item_emb, np.float32),
            item_factors=np.ascontiguousarray(world.item_factors, np.float32),
            item_features=np.ascontiguousarray(world.item_features, np.float32),
            category=np.ascontiguousarray(world.catalog.category, np.int32),
            category_names=np.array(list(world.catalog.category_names), dtype=str),
            price=np.ascontiguousarray(world.catalog.price, np.float32),
            is_new=world.new_items if world.new_items.size else np.zeros(world.n_items, bool),
        )


def export_run(run_dir: str | Path, fmt: Format = "onnx", out: str | Path | None = None, world: World | None = None,
               parity_envs: int = 32, parity_steps: int = 8, progress: bool = False, force: bool = False) -> Path:
    """Export ``run_dir``'s policy (see the module docstring).

    Args:
        run_dir: A run directory (``config.yaml``, ``policy.safetensors`` + ``policy.json``, optionally
            ``summary.json``).
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: Artifact directory (default ``RUN_DIR/export``): written as a new folder renamed into place; an existing
            one is replaced only if empty or a previous export (see :func:`check_export_target`).
        world: The run's world (default: ``envs.presets.load_world(cfg.env, cfg.encoder)``, cached on disk).
        parity_envs: Users simulated for the parity observations.
        parity_steps: Requests per user for the parity observations.
        progress: Show progress while a world is built.
        force: Replace a non-empty ``out`` that is not a previous export (never a run directory or part of one).

    Returns:
        The artifact directory.

    Raises:
        FileNotFoundError: For a missing run directory or file.
        ExportTargetError: For an ``out`` that must not be replaced (checked before anything else is done).
        ValueError: For an unknown format, a world that does not match the policy, or a failed parity check.
    """
    if fmt not in MODEL_FILES:
        raise ValueError(f"format must be one of {sorted(MODEL_FILES)}, got {fmt!r}")
    run = Path(run_dir)
    dest = Path(out) if out is not None else run / "export"
    check_export_target(run, dest, force)
    cfg, model, summary = load_run(run)
    policy = model.policy
    if world is None:
        from envs.presets import load_world

        world = load_world(cfg.env, cfg.encoder, progress=progress)
    space = policy.observation_space
    d, n_train = int(space["user"].shape[0]), int(space["features"].shape[0])
    from agents.ppo_ranker import check_n_items

    check_n_items(policy, world.n_items, str(run / "policy.json"))
    if d != world.dim:
        raise ValueError(f"the policy was trained on D={d} embeddings but the run's world has D={world.dim}")
    if tuple(space["features"].shape[1:]) != (len(FEATURE_NAMES),) or space["context"].shape != (len(CONTEXT_NAMES),):
        raise ValueError("the policy's feature/context layout differs from envs/spaces.py: re-train or use the "
                         "recfeed version it was trained with")
    if "mask" in space.spaces:
        raise ValueError("policies with a candidate mask input are not exportable yet")
    if "hidden_taste" in space.spaces:
        raise ValueError("the policy reads obs['hidden_taste'] (env.obs_hidden_taste), the simulated user's hidden "
                         "taste: a research ablation that no service can observe, so it is not exportable; train "
                         "without env.obs_hidden_taste to serve it")
    if getattr(policy, "actor_hidden_state", False):
        raise ValueError("the policy's actor reads obs['critic_state'] (train.policy.actor_hidden_state), the "
                         "simulated user's hidden state: a research ablation that no service can observe, so it is not "
                         "exportable; train without it to serve")
    if has_repulsion(policy):
        cats = policy.item_category.cpu().numpy()
        if cats.shape != (world.n_items,) or not np.array_equal(cats, world.catalog.category):
            raise ValueError("the policy's item categories (its repulsion groups) differ from the world's catalog")
    names = graph_inputs(policy)

    t0 = time.perf_counter()
    obs = collect_observations(model, cfg, world, parity_envs, parity_steps)
    with _new_dir(dest, lambda: check_export_target(run, dest, force)) as tmp:
        model_path = tmp / MODEL_FILES[fmt]
        graph = PolicyGraph(policy, names).eval()
        example = _graph_args({k: v[:2] for k, v in obs.items()}, names)
        _write_graph(graph, example, names, model_path, fmt)
        report = parity_check(model, model_path, fmt, names, obs, cfg.env.slate_size, world.catalog.category)
        if not report.ok:
            raise ValueError(f"exported policy disagrees with the SB3 model: {report}")
        write_items(world, tmp / ITEMS_FILE)
        alpha, alpha_src = fallback_alpha(policy, summary, n_train)
        with th.no_grad():
            visited = policy.alpha(obs).cpu().numpy()
        manifest = {
            "version": EXPORT_VERSION,
            "producer": PRODUCER,
            "format": fmt,
            "created_unix": time.time(),
            "run_dir": str(run.resolve()),
            "files": {"model": MODEL_FILES[fmt], "items": ITEMS_FILE},
            "sha256": {MODEL_FILES[fmt]: sha256_file(model_path), ITEMS_FILE: sha256_file(tmp / ITEMS_FILE)},
            "inputs": names,
            "outputs": OUTPUTS,
            "score_parts": list(SCORE_PARTS),
            "repulsion": has_repulsion(policy),
            "category_cap": getattr(policy, "category_cap", None),
            # what the "alpha" output weighs: the raw signals, or both standardised over the request (SlatePolicy.gate)
            "alpha_scale": getattr(policy, "gate", "raw"),
            "feature_names": list(FEATURE_NAMES),
            "context_names": list(CONTEXT_NAMES),
            "n_candidates": n_train,
            "slate_size": int(cfg.env.slate_size),
            "dim": d,
            "n_items": int(world.n_items),
            "n_categories": int(world.catalog.n_categories),
            "cf_dim": int(world.item_factors.shape[1]),
            "encoder": {"name": world.encoder_name, "kind": cfg.encoder.kind, "model_path": cfg.encoder.model_path,
                        "hashing_dim": cfg.encoder.hashing_dim if cfg.encoder.kind == "hashing" else None},
            "fallback_alpha": alpha,
            "fallback_alpha_source": alpha_src,
            "alpha_on_parity_observations": {"mean": float(visited.mean()), "std": float(visited.std())},
            "obs": {"obs_decay": OBS_DECAY, "state_decay": cfg.env.state_decay, "click_weight": cfg.env.click_weight,
                    "purchase_weight": cfg.env.purchase_weight, "max_steps": cfg.env.max_steps,
                    "obs_mode": cfg.env.obs_mode, "dwell_cap_s": cfg.env.user_model.dwell_cap},
            "cf": {"regularization": cfg.env.logging.cf_regularization, "alpha": cfg.env.logging.cf_alpha,
                   "click_weight": 1.0, "purchase_weight": 1.0},
            "policy": to_dict(cfg.train.policy),
            "env_preset": cfg.env.preset,
            "parity": {**report.__dict__, "value_tol": VALUE_TOL, "logit_tol": LOGIT_TOL},
            "versions": {"torch": th.__version__, "onnx_opset": ONNX_OPSET if fmt == "onnx" else None},
            "export_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return dest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m agents.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run directory written by train.py (config.yaml, model.zip)")
    parser.add_argument("--format", choices=sorted(MODEL_FILES), default="onnx", help="artifact format")
    parser.add_argument("--out", default=None, help="artifact directory (default: RUN_DIR/export); an existing one "
                        "is replaced only if empty or a previous export")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out that is not a previous export "
                        "(never a run directory, a folder holding one, or part of one)")
    parser.add_argument("--parity-envs", type=int, default=32, help="users simulated for the parity check")
    parser.add_argument("--parity-steps", type=int, default=8, help="requests per user for the parity check")
    args = parser.parse_args(argv)
    try:
        dest = export_run(args.run_dir, args.format, args.out, parity_envs=args.parity_envs,
                          parity_steps=args.parity_steps, progress=True, force=args.force)
    except (FileNotFoundError, ValueError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads((dest / MANIFEST_FILE).read_text(encoding="utf-8"))
    p = manifest["parity"]
    print(f"exported {manifest['format']} policy to {dest}")
    print(f"  parity: {p['slates_equal_up_to_ties']}/{p['observations']} slates equal to the SB3 model "
          f"(max |Δlogit| {p['max_abs_logit_diff']:.2e}, N={manifest['n_candidates']} and N={p['other_n']})")
    print(f"  fallback α = {manifest['fallback_alpha']:.3f} ({manifest['fallback_alpha_source']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
