"""What a run was trained on, and whether an env fits it: ``RUN_DIR/signature.json``.

A trained policy only makes sense on the world and env shape it was trained on: its input has N candidates of F
features, its item table and category lookup are indexed by the M catalog ids of that world, it ranks K slots.
``train.py`` writes the run's signature when the run starts; ``evaluate.py`` compares it with the env it is about
to simulate and stops, with one line naming both sides, before anything is evaluated.

A signature is a flat JSON mapping::

    format, preset, n_candidates, slate_size, max_steps, n_items, embedding_dim, n_features, n_context,
    obs_item_embeddings, obs_mode, encoder_kind, encoder, world_key, obs_hidden, actor_reads_hidden

``None`` means "not known" (an env before its world is loaded, or a run from before signatures that the
signature was derived for); :func:`mismatch` skips those keys. The last two name the observation keys that only a
research ablation adds (:data:`HIDDEN_OBS`, the simulated user's hidden state): ``obs_hidden`` those the env puts in
its observation, ``actor_reads_hidden`` those the run's actor cannot act without. A run whose actor reads one that
the env lacks does not fit it (such a run used to fail only at its first request, after the references' tuning,
as a ranker that "returned a bad slate"); a column that only the critic reads does not count (the run plays
without it). :func:`read_signature` fills them in from the run's ``config.yaml`` for a signature written before
they existed; without either, a signature is checked as before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.fileio import atomic_write_text
from configs.loader import ConfigError, load_config
from configs.schema import Config
from envs.spaces import CONTEXT_NAMES, FEATURE_NAMES

if TYPE_CHECKING:
    from envs.world import World

SIGNATURE_FILE = "signature.json"
SIGNATURE_FORMAT = 1
#: The keys that must agree, in the order a mismatch names them (shapes first, then what the world is).
MATCH_KEYS: tuple[str, ...] = ("n_candidates", "slate_size", "n_items", "embedding_dim", "n_features", "n_context",
                               "obs_item_embeddings", "obs_mode", "encoder_kind", "encoder", "max_steps", "world_key")
#: The observation keys that only a research ablation adds, and the setting that adds each.
HIDDEN_OBS: dict[str, str] = {"hidden_taste": "env.obs_hidden_taste", "critic_state": "env.obs_critic_state"}
_HIDDEN_KEYS = ("obs_hidden", "actor_reads_hidden")
_SHORT = {"n_candidates": "N", "slate_size": "K", "n_items": "M", "embedding_dim": "D", "world_key": "world"}


def signature(cfg: Config, world: World | None = None) -> dict[str, Any]:
    """The signature of the env ``cfg`` describes (and of ``world``, its built world, when given).

    Args:
        cfg: The resolved config (its ``env`` and ``encoder`` sections are used).
        world: The world built or loaded for ``cfg.env``; ``None``: only what the config says (the world's own
            keys are ``None``, or taken from the config where it fixes them: a synthetic catalog's size, the
            hashing encoder's dimension).

    Returns:
        The signature (JSON-ready; see the module docstring for the keys).
    """
    env, enc = cfg.env, cfg.encoder
    calibrated = env.preset_dir is not None
    sig: dict[str, Any] = {
        "format": SIGNATURE_FORMAT,
        "preset": env.preset,
        "n_candidates": env.n_candidates,
        "slate_size": env.slate_size,
        "max_steps": env.max_steps,
        "n_items": env.catalog.n_items if env.catalog.source == "synthetic" and not calibrated else None,
        "embedding_dim": enc.hashing_dim if enc.kind == "hashing" and not calibrated else None,
        "n_features": len(FEATURE_NAMES),
        "n_context": len(CONTEXT_NAMES),
        "obs_item_embeddings": env.obs_item_embeddings,
        "obs_mode": env.obs_mode,
        "encoder_kind": None if calibrated else enc.kind,
        "encoder": None,
        "world_key": None,
        "obs_hidden": [key for key, on in (("hidden_taste", env.obs_hidden_taste),
                                           ("critic_state", env.obs_critic_state)) if on],
        # a policy trained with the true taste reads it at every request; the hidden state only with the ablation
        "actor_reads_hidden": [key for key, on in (("hidden_taste", env.obs_hidden_taste),
                                                   ("critic_state", cfg.train.policy.actor_hidden_state)) if on],
    }
    if world is not None:
        from envs.presets import world_key

        sig.update(n_items=world.n_items, embedding_dim=world.dim, encoder=world.encoder_name,
                   world_key=world.meta.get("config_key") or world_key(env, world.encoder_name))
    return sig


def write_signature(run_dir: str | Path, cfg: Config, world: World) -> Path:
    """Write ``RUN_DIR/signature.json`` atomically; returns its path."""
    path = Path(run_dir) / SIGNATURE_FILE
    atomic_write_text(path, json.dumps(signature(cfg, world), indent=2) + "\n")
    return path


def read_signature(run_dir: str | Path) -> dict[str, Any]:
    """The signature of a run directory.

    Runs written before signatures existed have none: it is derived from the run's ``config.yaml`` (and the world
    key in ``versions.json``), with ``"derived_from"`` saying so and ``None`` where the config cannot tell. A
    signature written before the hidden-column keys existed gets them from ``config.yaml``.

    Args:
        run_dir: A run directory written by ``train.py``.

    Returns:
        The signature; a derived one has the extra key ``derived_from`` (the files it was read from).

    Raises:
        FileNotFoundError: ``run_dir`` is not a folder, or has neither ``signature.json`` nor ``config.yaml``.
        ConfigError: ``signature.json`` or ``config.yaml`` is unreadable or malformed (the message names it).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    path = run / SIGNATURE_FILE
    if path.is_file():
        data = _read_json(path)
        if not isinstance(data, dict) or not set(MATCH_KEYS) <= set(data):
            missing = sorted(set(MATCH_KEYS) - set(data)) if isinstance(data, dict) else "all"
            raise ConfigError(f"{path} is not a recfeed run signature (missing keys: {missing})")
        config = run / "config.yaml"
        if not set(_HIDDEN_KEYS) <= set(data) and config.is_file():  # written before these keys: the config says
            try:
                derived = signature(load_config(config))
            except ConfigError:  # a config this version cannot read: the keys stay unknown, as before
                derived = {}
            data.update({key: derived[key] for key in _HIDDEN_KEYS if key in derived})
        return data
    config = run / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a recfeed run directory: it has neither {SIGNATURE_FILE} nor "
                                "config.yaml")
    cfg = load_config(config)
    sig = signature(cfg)
    sig["derived_from"] = ["config.yaml"]
    versions = run / "versions.json"
    if versions.is_file() and cfg.env.preset_dir is None:
        info = _read_json(versions)
        if isinstance(info, dict) and isinstance(info.get("world_key"), str):
            sig["world_key"] = info["world_key"]
            sig["derived_from"].append("versions.json")
    return sig


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as JSON: {exc}") from None


def describe(sig: dict[str, Any]) -> str:
    """A short human description: ``preset small, N=20, K=5, M=400, D=64, encoder hashing-v1:…, world 1a2b…``."""
    parts = [f"preset {sig.get('preset')}"]
    for key in ("n_candidates", "slate_size", "n_items", "embedding_dim"):
        if sig.get(key) is not None:
            parts.append(f"{_SHORT[key]}={sig[key]}")
    if sig.get("encoder") is not None:
        parts.append(f"encoder {sig['encoder']}")
    elif sig.get("encoder_kind") is not None:
        parts.append(f"encoder {sig['encoder_kind']}")
    if sig.get("world_key") is not None:
        parts.append(f"world {sig['world_key']}")
    return ", ".join(parts)


def mismatch(run_sig: dict[str, Any], env_sig: dict[str, Any], run_label: str = "the run",
             env_label: str = "the env to evaluate on") -> str | None:
    """Why a run does not fit an env, in one line naming both sides; ``None`` when it fits.

    Keys that either side does not know (``None``) are skipped. Beyond :data:`MATCH_KEYS`, every hidden observation
    key that the run's actor reads (``actor_reads_hidden``) must be among the other side's ``obs_hidden``.

    Args:
        run_sig: The run's signature (:func:`read_signature`).
        env_sig: The env's signature (:func:`signature`), or another run's.
        run_label: How to name the run (e.g. ``"run:runs/a"``).
        env_label: How to name the other side.

    Returns:
        ``None``, or e.g. ``"run:runs/a (preset small, N=20, K=5, …) does not fit the env to evaluate on (preset
        default, N=100, K=10, …): n_candidates 20 vs 100, slate_size 5 vs 10"``.
    """
    diffs = [f"{key} {run_sig.get(key)!r} vs {env_sig.get(key)!r}" for key in MATCH_KEYS
             if run_sig.get(key) is not None and env_sig.get(key) is not None and run_sig[key] != env_sig[key]]
    reads, has = run_sig.get("actor_reads_hidden"), env_sig.get("obs_hidden")
    if reads is not None and has is not None:
        diffs += [f"the run's actor reads obs[{key!r}], which needs {HIDDEN_OBS.get(key, key)}=true (a research "
                  "ablation's hidden column)" for key in reads if key not in has]
    if not diffs:
        return None
    hint = ""
    if len(diffs) == 1 and diffs[0].startswith("world_key "):
        hint = " (the worlds were built from different catalog, user_model, logging, candidates or reward settings)"
    return (f"{run_label} ({describe(run_sig)}) does not fit {env_label} ({describe(env_sig)}): "
            + ", ".join(diffs) + hint)
