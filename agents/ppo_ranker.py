"""The trained PPO slate policy as a :class:`agents.base.Ranker`, and loading it from a run directory, pickle-free.

A run directory (written by ``train.py``) holds ``config.yaml`` (the resolved config) and the policy twice:

* ``policy.safetensors`` (the weights) + ``policy.json`` (the constructor settings: observation and action
  spaces, widths, activation by name, the weights' sha256): what recfeed itself reads. Neither format can run
  code when loaded (safetensors holds raw tensors; JSON holds data).
* ``model.zip``: SB3's own archive (``PPO.load``), kept for SB3 users. Loading it unpickles Python objects, so
  recfeed never reads it: ``evaluate.py --rankers run:DIR``, ``agents.export`` and ``agents.serve`` load through
  :func:`load_policy` here.

A run written before the safe files existed has only ``model.zip``; :func:`load_policy` refuses it with a message
naming ``python -m agents.ppo_ranker convert RUN_DIR``, which unpickles it once (only if you trust the file) and
writes the safe files beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from torch import nn

from agents.base import Ranker
from agents.policies import SlatePolicy
from configs.loader import atomic_write_bytes, atomic_write_text, load_config
from configs.schema import Config

MODEL_FILE = "model.zip"
CONFIG_FILE = "config.yaml"
#: The policy's weights (safetensors) and constructor settings (JSON), written beside ``model.zip``.
WEIGHTS_FILE = "policy.safetensors"
SETTINGS_FILE = "policy.json"
#: ``policy.json``'s ``format`` tag and version.
SETTINGS_FORMAT = "recfeed.slate_policy"
SETTINGS_VERSION = 1
#: Activations and optimizers a ``policy.json`` may name (looked up by name, never imported from the file).
ACTIVATIONS: dict[str, type[nn.Module]] = {c.__name__: c for c in (nn.Tanh, nn.ReLU, nn.ELU, nn.GELU, nn.SiLU,
                                                                     nn.LeakyReLU, nn.Sigmoid)}
OPTIMIZERS: dict[str, type[th.optim.Optimizer]] = {c.__name__: c for c in (th.optim.Adam, th.optim.AdamW,
                                                                            th.optim.SGD, th.optim.RMSprop)}


def effective_alpha(alpha: np.ndarray | float, features: np.ndarray, scale: str = "raw") -> np.ndarray:
    """α on a common scale: the LLM signal's share of the blend's weight once both signals are standardised over the
    request's candidates.

    ``α·llm + (1 − α)·cf = α·sd_llm·z(llm) + (1 − α)·sd_cf·z(cf) + const``, so the blend of standardised signals it
    equals puts ``α·sd_llm / (α·sd_llm + (1 − α)·sd_cf)`` on the LLM side. The raw α sits near 1 whenever the CF
    score's spread (a standardised score, ~3) dwarfs the cosine's (~0.2), so its moves look small; this weight is
    comparable across requests, users and presets. A policy with the standardised gate
    (``SlatePolicy(gate="standardised")``, the export manifest's ``"alpha_scale": "standardised"``) blends
    ``α·z(llm) + (1 − α)·z(cf)``: its α already is this weight and is returned as it is.

    Args:
        alpha: The policy's α per request, (B,) (or a scalar with ``features`` (N, F)).
        features: float (B, N, F) (or (N, F)) the requests' candidate features.
        scale: What ``alpha`` weighs: ``"raw"`` (the raw signals) or ``"standardised"``.

    Returns:
        float64 (B,) (or a 0-d array): NaN where both signals are constant over the candidates.

    Raises:
        ValueError: For an unknown ``scale``.
    """
    from envs.spaces import F_CF, F_LLM

    a = np.asarray(alpha, np.float64)
    if scale == "standardised":
        return a.copy()
    if scale != "raw":
        raise ValueError(f"scale must be 'raw' or 'standardised', got {scale!r}")
    f = np.asarray(features)
    sd_llm = f[..., F_LLM].astype(np.float64).std(axis=-1)
    sd_cf = f[..., F_CF].astype(np.float64).std(axis=-1)
    den = a * sd_llm + (1.0 - a) * sd_cf
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, a * sd_llm / np.where(den > 0, den, 1.0), np.nan)


class PolicyFileError(ValueError):
    """A policy's safe files are missing, truncated, inconsistent or do not fit the world; names the file."""


def resolve_device(device: str) -> th.device:
    """``"auto"`` → cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return th.device("cuda" if th.cuda.is_available() else "cpu")
    return th.device(device)


class PPORanker(Ranker):
    """Ranks by the learned policy's logits ``[α_θ(s)·llm_sim + (1-α_θ(s))·cf_score]/τ + residual_θ(s, x_i)``.

    Deterministic by default (the Plackett-Luce mode: top-K logits, or the greedy walk with the category
    repulsion); ``deterministic=False`` samples slates.
    Source: this project's PPO policy (``agents/policies.py``), trained by ``train.py``.

    Args:
        policy: The trained policy.
        k: Slate size.
        deterministic: The distribution's mode instead of a sample.
        name: Display name.
    """

    def __init__(self, policy: SlatePolicy, k: int, deterministic: bool = True, name: str = "ppo") -> None:
        super().__init__(k)
        self.policy = policy.eval()
        self.deterministic = deterministic
        self.name = name
        self.last_alpha: np.ndarray | None = None
        self.last_alpha_effective: np.ndarray | None = None
        self.last_beta: np.ndarray | None = None

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Slates (B, K) from the policy; the α (and β) it used are kept in ``last_alpha`` (``last_beta``) (B,), α on
        the common scale of :func:`effective_alpha` in ``last_alpha_effective`` (B,)."""
        with th.no_grad():
            prepared = self.policy._prepare(obs)
            _, alpha, beta = self.policy.score_candidates(prepared)
            self.last_alpha = alpha.cpu().numpy()
            self.last_alpha_effective = effective_alpha(self.last_alpha, obs["features"],
                                                        getattr(self.policy, "gate", "raw"))
            self.last_beta = None if beta is None else beta.cpu().numpy()
            dist = self.policy.get_distribution(prepared)
            return dist.get_actions(deterministic=self.deterministic).cpu().numpy()


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved with a run.

    Raises:
        FileNotFoundError: If the run directory or its config is missing.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a recfeed run directory: {path} is missing")
    return load_config(path)


# ---- spaces as JSON ---------------------------------------------------------------------------------------------


def _bound_to_json(a: np.ndarray) -> Any:
    """A Box bound as JSON: one number when uniform, else nested lists; ±inf as the strings ``"inf"``/``"-inf"``."""
    flat = np.asarray(a, np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        v = float(flat[0])
        return v if np.isfinite(v) else ("inf" if v > 0 else "-inf")
    return [x if np.isfinite(x) else ("inf" if x > 0 else "-inf") for x in flat.tolist()]


def _bound_from_json(v: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    def num(x: Any) -> float:
        if x in ("inf", "-inf"):
            return float(x)
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise PolicyFileError(f"{where}: bound {x!r} is not a number")
        return float(x)

    if isinstance(v, list):
        arr = np.array([num(x) for x in v], np.float64)
        if arr.size != int(np.prod(shape)):
            raise PolicyFileError(f"{where}: {arr.size} bounds for shape {shape}")
        return arr.reshape(shape)
    return np.full(shape, num(v), np.float64)


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A Dict / Box / MultiDiscrete space as plain JSON data (see :func:`space_from_json`)."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound_to_json(space.low), "high": _bound_to_json(space.high)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(x) for x in space.nvec.ravel()]}
    raise TypeError(f"cannot store a {type(space).__name__} space as JSON")


def space_from_json(data: Any, where: str = "space") -> spaces.Space:
    """The space :func:`space_to_json` wrote.

    Raises:
        PolicyFileError: For anything else, naming ``where`` (the file and key).
    """
    if not isinstance(data, dict) or "type" not in data:
        raise PolicyFileError(f"{where}: expected a space object with a 'type', got {data!r:.80}")
    kind = data["type"]
    try:
        if kind == "Dict":
            if not isinstance(data.get("spaces"), dict):
                raise PolicyFileError(f"{where}.spaces: expected a mapping")
            return spaces.Dict({k: space_from_json(v, f"{where}.{k}") for k, v in data["spaces"].items()})
        if kind == "Box":
            shape = tuple(int(x) for x in data["shape"])
            dtype = np.dtype(data["dtype"])
            if dtype.kind not in "fiu":
                raise PolicyFileError(f"{where}: Box dtype {dtype} is not numeric")
            low = _bound_from_json(data["low"], shape, where)
            high = _bound_from_json(data["high"], shape, where)
            return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.array([int(x) for x in data["nvec"]], np.int64))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PolicyFileError):
            raise
        raise PolicyFileError(f"{where}: bad {kind} space ({exc})") from exc
    raise PolicyFileError(f"{where}: unknown space type {kind!r} (Dict, Box or MultiDiscrete)")


def same_space(a: spaces.Space, b: spaces.Space) -> bool:
    """Equal spaces (type, keys, shapes, dtypes, bounds)."""
    return space_to_json(a) == space_to_json(b)


# ---- the policy's safe files ------------------------------------------------------------------------------------


def policy_settings(policy: SlatePolicy) -> dict[str, Any]:
    """The constructor settings of ``policy`` as JSON data (no Python objects: classes by name).

    The item categories (one int per catalog item) are not repeated here: they are the ``item_category``
    buffer in the weights file, and ``"item_category": "weights"`` says so.
    """
    params = policy._get_constructor_parameters()
    kwargs = {k: v for k, v in params.items()
              if k not in ("observation_space", "action_space", "lr_schedule", "normalize_images")}
    act, opt = kwargs.pop("activation_fn"), kwargs.pop("optimizer_class")
    if act not in ACTIVATIONS.values() or opt not in OPTIMIZERS.values():
        raise ValueError(f"cannot store activation {act} / optimizer {opt} by name; known: {sorted(ACTIVATIONS)}, "
                         f"{sorted(OPTIMIZERS)}")
    kwargs["activation_fn"], kwargs["optimizer_class"] = act.__name__, opt.__name__
    kwargs["item_category"] = "weights" if kwargs["item_category"] is not None else None
    kwargs["optimizer_kwargs"] = dict(kwargs["optimizer_kwargs"] or {})
    json.dumps(kwargs)  # raises TypeError for anything that is not plain data
    return {"observation_space": space_to_json(policy.observation_space),
            "action_space": space_to_json(policy.action_space), "kwargs": kwargs}


def save_policy(policy: SlatePolicy, folder: str | Path) -> None:
    """Write ``policy.safetensors`` then ``policy.json`` (its settings and the weights' sha256) into ``folder``.

    Each file is written atomically; ``policy.json`` is written last and names the weights' hash, so a reader
    never pairs settings with other weights.
    """
    from safetensors.torch import save

    folder = Path(folder)
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "producer": SETTINGS_FORMAT})
    atomic_write_bytes(folder / WEIGHTS_FILE, blob)
    doc = {"format": SETTINGS_FORMAT, "version": SETTINGS_VERSION, "policy_class": "agents.policies.SlatePolicy",
           **policy_settings(policy), "n_items": policy_n_items(policy),
           "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(blob).hexdigest()}}
    atomic_write_text(folder / SETTINGS_FILE, json.dumps(doc, indent=1) + "\n")


def policy_n_items(policy: SlatePolicy) -> int:
    """The catalog size M the policy was built for (its candidate ids are in ``[0, M)``)."""
    return int(np.max(policy.observation_space["candidates"].high)) + 1


def read_policy_files(folder: str | Path) -> tuple[dict[str, Any], dict[str, th.Tensor]]:
    """``(settings, weights)`` from ``folder/policy.json`` and ``folder/policy.safetensors``, checked.

    Raises:
        FileNotFoundError: If either file is missing.
        PolicyFileError: If a file is unreadable or truncated, or the weights are not the ones the settings name.
    """
    from safetensors.torch import load

    folder = Path(folder)
    spath, wpath = folder / SETTINGS_FILE, folder / WEIGHTS_FILE
    for p in (spath, wpath):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing")
    try:
        doc = json.loads(spath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(f"{spath}: unreadable ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != SETTINGS_FORMAT:
        raise PolicyFileError(f"{spath}: not a recfeed policy settings file (format != {SETTINGS_FORMAT!r})")
    if doc.get("version") != SETTINGS_VERSION:
        raise PolicyFileError(f"{spath}: version {doc.get('version')!r}, this recfeed reads {SETTINGS_VERSION}")
    blob = wpath.read_bytes()
    want = (doc.get("weights") or {}).get("sha256")
    if hashlib.sha256(blob).hexdigest() != want:
        raise PolicyFileError(f"{wpath}: truncated or not the weights {spath.name} was written with (sha256 differs)")
    try:
        weights = load(blob)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise PolicyFileError(f"{wpath}: unreadable safetensors file ({exc})") from exc
    return doc, weights


def policy_spec(settings: dict[str, Any], weights: dict[str, th.Tensor],
                where: str = SETTINGS_FILE) -> tuple[spaces.Dict, spaces.MultiDiscrete, dict[str, Any]]:
    """``(observation_space, action_space, constructor kwargs)`` of a ``policy.json`` document.

    Classes are looked up by name in :data:`ACTIVATIONS` / :data:`OPTIMIZERS`; the item categories come from the
    weights' ``item_category`` buffer.

    Raises:
        PolicyFileError: Unknown or malformed settings, naming ``where``.
    """
    obs_space = space_from_json(settings.get("observation_space"), f"{where}: observation_space")
    act_space = space_from_json(settings.get("action_space"), f"{where}: action_space")
    if not isinstance(obs_space, spaces.Dict) or not isinstance(act_space, spaces.MultiDiscrete):
        raise PolicyFileError(f"{where}: expected a Dict observation space and a MultiDiscrete action space")
    kwargs = settings.get("kwargs")
    if not isinstance(kwargs, dict):
        raise PolicyFileError(f"{where}: 'kwargs' must be a mapping")
    kwargs = dict(kwargs)
    try:
        kwargs["activation_fn"] = ACTIVATIONS[kwargs.get("activation_fn", "Tanh")]
        kwargs["optimizer_class"] = OPTIMIZERS[kwargs.get("optimizer_class", "Adam")]
    except (KeyError, TypeError) as exc:
        raise PolicyFileError(f"{where}: unknown activation/optimizer {exc.args[0]!r}") from exc
    if kwargs.get("item_category") == "weights":
        if "item_category" not in weights:
            raise PolicyFileError(f"{where}: says the weights hold item_category, but they do not")
        kwargs["item_category"] = weights["item_category"].cpu().numpy()
    elif kwargs.get("item_category") is not None:
        raise PolicyFileError(f"{where}: kwargs.item_category must be \"weights\" or null")
    return obs_space, act_space, kwargs


def build_policy(settings: dict[str, Any], weights: dict[str, th.Tensor], device: str | th.device = "cpu",
                 where: str = SETTINGS_FILE) -> SlatePolicy:
    """A :class:`SlatePolicy` (for inference) from its settings and weights (see :func:`read_policy_files`).

    Args:
        settings: The ``policy.json`` document.
        weights: Its state dict.
        device: Torch device.
        where: The settings file, for error messages.

    Raises:
        PolicyFileError: Unknown settings, or weights that do not fit them.
    """
    obs_space, act_space, kwargs = policy_spec(settings, weights, where)
    try:
        policy = SlatePolicy(obs_space, act_space, SlatePolicy._dummy_schedule, **kwargs)
    except (TypeError, ValueError) as exc:
        raise PolicyFileError(f"{where}: bad policy settings ({exc})") from exc
    try:
        policy.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise PolicyFileError(f"{where}: the weights do not fit the settings ({exc})") from exc
    return policy.to(resolve_device(device) if isinstance(device, str) else device)


def check_n_items(policy: SlatePolicy, n_items: int, where: str) -> None:
    """Raise :class:`PolicyFileError` unless ``policy`` was built for a catalog of ``n_items`` items."""
    own = policy_n_items(policy)
    sizes = {"candidate ids": own}
    if policy.item_table is not None:
        sizes["item table"] = int(policy.item_table.num_embeddings)
    if policy.repulsion_head is not None:
        sizes["item categories"] = int(policy.item_category.numel())
    wrong = {k: v for k, v in sizes.items() if v != n_items}
    if wrong:
        got = ", ".join(f"{k}: {v}" for k, v in wrong.items())
        raise PolicyFileError(f"{where}: the policy was trained on a catalog of {own} items ({got}) but this world "
                              f"has {n_items} items; evaluate it on the world it was trained on")


def load_policy(run_dir: str | Path, device: str = "auto", n_items: int | None = None) -> SlatePolicy:
    """The trained policy of a run directory, from ``policy.safetensors`` + ``policy.json`` (never ``model.zip``).

    Args:
        run_dir: A run directory (or any folder holding the two files, such as a checkpoint).
        device: Torch device (``"auto"``: cuda when available).
        n_items: When given, the catalog size of the world the policy is to rank for; a policy trained on a
            catalog of another size is an error (its item table / categories / candidate ids would not fit).

    Raises:
        FileNotFoundError: If the safe files are missing (also for a run that has only ``model.zip``).
        PolicyFileError: Unreadable or inconsistent files, or another catalog size.
    """
    run = Path(run_dir)
    if not (run / SETTINGS_FILE).is_file() or not (run / WEIGHTS_FILE).is_file():
        if (run / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"{run} has {MODEL_FILE} but no {WEIGHTS_FILE} + {SETTINGS_FILE}: it was written before recfeed stored "
                f"policies pickle-free, and reading {MODEL_FILE} would unpickle (run code from) it. If you trust this "
                f"file, convert it once: python -m agents.ppo_ranker convert {run}")
        raise FileNotFoundError(f"no trained policy in {run}: {run / WEIGHTS_FILE} is missing (has train.py finished "
                                "for this run?)")
    settings, weights = read_policy_files(run)
    policy = build_policy(settings, weights, device, where=str(run / SETTINGS_FILE))
    if n_items is not None:
        check_n_items(policy, n_items, str(run / SETTINGS_FILE))
    policy.set_training_mode(False)
    return policy


def load_run_ranker(run_dir: str, device: str = "auto", n_items: int | None = None) -> PPORanker:
    """The ranker of a run directory (used by ``evaluate.py --rankers run:DIR``), deterministic (the mode).

    Args:
        run_dir: The run directory.
        device: Torch device.
        n_items: Catalog size of the evaluation world (checked against the policy; ``None``: not checked).
    """
    cfg = load_run_config(run_dir)
    return PPORanker(load_policy(run_dir, device, n_items=n_items), cfg.env.slate_size, deterministic=True,
                     name=f"run:{run_dir}")


def convert_legacy_run(run_dir: str | Path) -> Path:
    """Write ``policy.safetensors`` + ``policy.json`` for a run that has only ``model.zip``.

    This UNPICKLES ``model.zip`` (``PPO.load``): run it only on a file you trust (one you trained yourself).

    Returns:
        The settings file written.
    """
    from stable_baselines3 import PPO

    run = Path(run_dir)
    if not (run / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{run / MODEL_FILE} is missing")
    model = PPO.load(run / MODEL_FILE, device="cpu", custom_objects={"policy_class": SlatePolicy})
    if not isinstance(model.policy, SlatePolicy):
        raise ValueError(f"{run / MODEL_FILE} holds a {type(model.policy).__name__}, not a SlatePolicy")
    save_policy(model.policy, run)
    return run / SETTINGS_FILE


def main(argv: list[str] | None = None) -> int:
    """``python -m agents.ppo_ranker convert RUN_DIR``: see :func:`convert_legacy_run`."""
    ap = argparse.ArgumentParser(prog="python -m agents.ppo_ranker", description="Convert a run written before recfeed "
                                 "stored policies pickle-free (unpickles its model.zip: only for files you trust).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="write policy.safetensors + policy.json from RUN_DIR/model.zip")
    conv.add_argument("run_dir")
    args = ap.parse_args(argv)
    try:
        path = convert_legacy_run(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"convert failed: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} and {path.with_name(WEIGHTS_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
