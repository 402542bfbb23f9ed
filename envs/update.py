"""Incremental update of a world from new logs, without a full recalibration.

    python -m envs.update --world DIR --logs LOG.parquet [LOG.parquet ...] --out DIR2
    python -m envs.update --world DIR --add-items ITEMS.jsonl --out DIR2        # a catalog shift: new items, cold

``DIR`` is a world folder (``world.json`` + ``arrays.npz``) or a preset directory (``env.yaml`` + ``world/``, as
``python -m envs.calibrate`` writes and ``--preset DIR`` reads); ``DIR2`` is written in the same layout, atomically
(built beside its final name and renamed into place), and must not exist; ``DIR`` is never modified.

From the logs (the rollout-log schema of :mod:`envs.rollout_log`: served or simulated; clicks weigh 1, a purchase
1 more, as in the CF fit of :func:`envs.presets.fit_world_from_logs`):

- **items without factors** (new items, ``World.new_items``, or any all-zero row) that the logs show clicked get
  CF factors by the least-squares fold-in with the user factors fixed (implicit's ``partial_fit_items``: the ALS item
  half-step against the fitted user factors, λ and confidence of the world's config);
- **users without factors** (cold users) likewise get factors from their clicks with the (updated) item factors
  fixed (``partial_fit_users``); users who already have factors keep them (their earlier interactions are not in
  the world, so a refit from the new logs alone would forget them; a full recalibration refits everything);
- **popularity** adds each item's logged clicks (the world's popularity counts clicks of the fit's data);
- **histories** of the logged users append their clicks (last ``logging.history_len`` kept), and their pooled LLM
  states are recomputed from them.

Items folded in are no longer flagged new. The logs' ``user`` is the index of the user in the population its
``population`` column names (a simulated log's, as written); a served log must be mapped to population rows first.

``--add-items`` appends items (``id, text, category`` and optional ``price``; CSV / JSONL / Parquet as
``envs.data.readers.read_items`` reads), encoded with the world's encoder (``--encoder-kind``,
``--encoder-model-path``, ``--hashing-dim``; its name must be the world's; the encoder cache), hidden quality and
collaborative factor drawn from ``--seed``, zero CF factors, popularity 0 and the new flag: the simulator's
cold-start items (``envs/shift.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from configs.schema import EnvConfig
from envs.catalog import Catalog, catalog_from_items
from envs.users import pool_history
from envs.world import World


def _als(factors: int, regularization: float) -> Any:
    from implicit.cpu.als import AlternatingLeastSquares

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # implicit's BLAS-threads advice
        return AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=1, random_state=0)


def fold_in_rows(fixed: np.ndarray, rows: sp.csr_matrix, regularization: float) -> np.ndarray:
    """Least-squares fold-in of new rows against fixed factors (one implicit-ALS half-step).

    For each row r with confidences ``c`` (the matrix entries): ``x_r = (YᵀY + λI + Yᵀ(C_r − I)Y)⁻¹ Yᵀ C_r 1``,
    solved by implicit's ``recalculate_user`` (its Cholesky solver). A row without entries gets 0.

    Args:
        fixed: float32 (M, F) the fixed factors (item factors to fold users in; user factors to fold items in).
        rows: (R, M) confidences (``cf_alpha · weight``, duplicates summed).
        regularization: λ.

    Returns:
        float32 (R, F) the folded-in factors.
    """
    fixed = np.ascontiguousarray(fixed, np.float32)
    if rows.shape[1] != len(fixed):
        raise ValueError(f"rows have {rows.shape[1]} columns, the fixed factors {len(fixed)} rows")
    out = np.zeros((rows.shape[0], fixed.shape[1]), np.float32)
    if rows.shape[0] == 0 or fixed.shape[1] == 0:
        return out
    from threadpoolctl import threadpool_limits

    model = _als(fixed.shape[1], regularization)
    model.item_factors = fixed
    model.user_factors = np.zeros((1, fixed.shape[1]), np.float32)
    with threadpool_limits(1, "blas"):
        x = model.recalculate_user(np.arange(rows.shape[0]), sp.csr_matrix(rows, dtype=np.float32))
    out[:] = np.asarray(x, np.float32).reshape(out.shape)
    out[np.diff(sp.csr_matrix(rows).indptr) == 0] = 0.0
    return out


def log_interactions(logs: pd.DataFrame, population: str | None = None) -> pd.DataFrame:
    """The clicks of a rollout log as ``(population, user, item, weight, order)`` rows (a purchase weighs 1 more).

    ``order`` is the click's position in time (session, step) per user, for the histories.
    """
    missing = [c for c in ("user", "click_rank", "clicked_item", "purchase") if c not in logs.columns]
    if missing:
        raise ValueError(f"the logs lack rollout-log column(s) {missing}")
    if len(logs) and not pd.api.types.is_integer_dtype(logs["user"]):
        raise ValueError("the logs' user column must hold population indices (integers); served logs name users by "
                         "keyed hash: map them to the world's population rows first")
    clicks = logs[logs["click_rank"] >= 0]
    if population is not None and "population" in clicks.columns:
        clicks = clicks[clicks["population"] == population]
    sort = [c for c in ("user", "session", "step") if c in clicks.columns]
    clicks = clicks.sort_values(sort, kind="stable")
    return pd.DataFrame({
        "population": clicks["population"].to_numpy() if "population" in clicks.columns else "train",
        "user": clicks["user"].to_numpy(np.int64),
        "item": clicks["clicked_item"].to_numpy(np.int64),
        "weight": 1.0 + clicks["purchase"].to_numpy(np.float32),
    })


def update_world(world: World, cfg: EnvConfig, logs: pd.DataFrame) -> tuple[World, dict[str, Any]]:
    """A copy of ``world`` updated from ``logs`` (see the module docstring); ``world`` is not modified.

    Args:
        world: The world.
        cfg: Its env config (``logging``: λ, confidence, history length; ``state_decay``).
        logs: A rollout log (``population`` names the population; ``user`` indexes it).

    Returns:
        ``(updated world, report)``: counts of items and users folded in, clicks added.

    Raises:
        ValueError: Users or items out of range, or an unknown population.
    """
    new = copy_world(world)
    inter = log_interactions(logs)
    m = new.n_items
    if len(inter) and (inter["item"].min() < 0 or inter["item"].max() >= m):
        raise ValueError(f"the logs click item ids outside the catalog [0, {m})")
    names = list(new.populations)
    unknown = sorted(set(inter["population"]) - set(names))
    if unknown:
        raise ValueError(f"the logs name population(s) {unknown}; the world has {names}")
    lc = cfg.logging
    offsets = dict(zip(names, np.cumsum([0] + [new.populations[n].size for n in names])[:-1].tolist(), strict=True))
    sizes = {n: new.populations[n].size for n in names}
    for name in names:
        users = inter.loc[inter["population"] == name, "user"]
        if len(users) and (users.min() < 0 or users.max() >= sizes[name]):
            raise ValueError(f"the logs name users outside population {name!r} [0, {sizes[name]})")
    n_users = sum(sizes.values())
    gu = inter["user"].to_numpy() + inter["population"].map(offsets).to_numpy(np.int64)
    conf = sp.csr_matrix((lc.cf_alpha * inter["weight"].to_numpy(np.float32), (gu, inter["item"].to_numpy())),
                         shape=(n_users, m), dtype=np.float32)
    conf.sum_duplicates()
    user_f = np.concatenate([new.populations[n].cf_user for n in names]).astype(np.float32)
    f = new.item_factors.shape[1]
    report: dict[str, Any] = {"clicks": len(inter), "items_folded": 0, "users_folded": 0}
    if f and user_f.shape[1] == f:
        # items without factors that the logs show clicked: fold in against the fixed user factors
        cold_items = ~new.item_factors.any(axis=1)
        clicked = np.asarray(conf.getnnz(axis=0) > 0).ravel()
        items = np.flatnonzero(cold_items & clicked)
        if len(items):
            new.item_factors[items] = fold_in_rows(user_f, conf.T.tocsr()[items], lc.cf_regularization)
        # users without factors: fold in against the (updated) item factors
        users = np.flatnonzero(~user_f.any(axis=1) & (conf.getnnz(axis=1) > 0))
        if len(users):
            user_f[users] = fold_in_rows(new.item_factors, conf[users], lc.cf_regularization)
            for name in names:
                lo, hi = offsets[name], offsets[name] + sizes[name]
                new.populations[name].cf_user = user_f[lo:hi].copy()
        report.update(items_folded=len(items), users_folded=len(users),
                      items_folded_ids=[new.catalog.ids[i] for i in items[:20]])
        if new.new_items.size:
            new.new_items = new.new_items & ~new.item_factors.any(axis=1)
    new.popularity = new.popularity + np.bincount(inter["item"].to_numpy(), minlength=m).astype(np.float32)
    for name in names:
        sel = inter[inter["population"] == name]
        if len(sel):
            _append_history(new, cfg, name, sel["user"].to_numpy(), sel["item"].to_numpy())
    _invalidate(new)
    new.meta = {**new.meta, "updates": [*new.meta.get("updates", []),
                                        {k: v for k, v in report.items() if k != "items_folded_ids"}]}
    return new, report


def _append_history(world: World, cfg: EnvConfig, population: str, users: np.ndarray, items: np.ndarray) -> None:
    """Append clicks (in time order) to the users' histories (last ``history_len`` kept); re-pool their states."""
    pop = world.populations[population]
    width = pop.history.shape[1] if pop.history.ndim == 2 and pop.history.shape[1] else cfg.logging.history_len
    hist = pop.history.copy() if pop.history.shape[1:] == (width,) else np.full((pop.size, width), -1, np.int64)
    for u in np.unique(users):
        seq = np.concatenate([hist[u][hist[u] >= 0], items[users == u]])[-width:]
        hist[u] = -1
        hist[u, width - len(seq):] = seq
    touched = np.unique(users)
    pop.history = hist
    state = pop.init_state.copy()
    state[touched] = pool_history(hist[touched], world.item_emb, cfg.state_decay)
    pop.init_state = state


def add_items(world: World, items: pd.DataFrame, encoder: Any, seed: int = 0) -> World:
    """A copy of ``world`` with ``items`` appended as new (cold-start) items (see the module docstring).

    Args:
        world: The world.
        items: Item table (``id``, ``text``; optional ``category`` among the world's, ``price``).
        encoder: The world's text encoder (its ``name`` must equal ``world.encoder_name``).
        seed: Seed of the new items' hidden quality and collaborative factor.

    Raises:
        ValueError: Duplicate ids (in the table or against the catalog), an unknown category, an encoder that is
            not the world's, or a table ``catalog_from_items`` refuses.
    """
    if encoder.name != world.encoder_name:
        raise ValueError(f"encoder {encoder.name!r} is not the world's ({world.encoder_name!r})")
    cat = world.catalog
    table = catalog_from_items(items, cat.cf_factor.shape[1], seed)
    clash = sorted(set(table.ids) & set(cat.ids))
    if clash:
        raise ValueError(f"{len(clash)} item id(s) already in the catalog, e.g. {clash[:3]}")
    if "category" in items.columns:
        bad = sorted(set(table.category_names) - set(cat.category_names))
        if bad:
            raise ValueError(f"unknown categor(ies) {bad}; the catalog has {cat.category_names}")
        code = np.array([cat.category_names.index(table.category_names[c]) for c in table.category], np.int64)
    else:
        raise ValueError("the item table needs a category column (the policy's category rules need one per item)")
    emb = np.asarray(encoder.encode(table.texts), np.float32)
    if emb.shape[1] != world.dim:
        raise ValueError(f"the encoder gives {emb.shape[1]}-d vectors, the world {world.dim}-d")
    k = table.n_items
    merged = Catalog(ids=cat.ids + table.ids, texts=cat.texts + table.texts,
                     category=np.concatenate([cat.category, code]), category_names=list(cat.category_names),
                     price=np.concatenate([cat.price, table.price]),
                     quality=np.concatenate([cat.quality, table.quality]),
                     cf_factor=np.concatenate([cat.cf_factor, table.cf_factor]),
                     themes=np.concatenate([cat.themes, table.themes]))
    old_new = world.new_items if world.new_items.size else np.zeros(world.n_items, bool)
    out = World(catalog=merged, item_emb=np.concatenate([world.item_emb, emb]),
                populations={n: dataclasses.replace(p) for n, p in world.populations.items()},
                item_factors=np.concatenate([world.item_factors, np.zeros((k, world.item_factors.shape[1]),
                                                                          np.float32)]),
                popularity=np.concatenate([world.popularity, np.zeros(k, np.float32)]),
                encoder_name=world.encoder_name, meta={**world.meta, "added_items": k},
                new_items=np.concatenate([old_new, np.ones(k, bool)]))
    return out


def copy_world(world: World) -> World:
    """A copy whose arrays can be changed without touching ``world`` (catalog and embeddings shared: read-only)."""
    pops = {n: dataclasses.replace(p, cf_user=p.cf_user.copy(), history=p.history.copy(),
                                   init_state=p.init_state.copy()) for n, p in world.populations.items()}
    return World(catalog=world.catalog, item_emb=world.item_emb, populations=pops,
                 item_factors=world.item_factors.copy(), popularity=world.popularity.copy(),
                 encoder_name=world.encoder_name, meta=dict(world.meta), new_items=world.new_items.copy())


def _invalidate(world: World) -> None:
    for name in ("item_features", "popular_items", "gram", "log_price"):
        world.__dict__.pop(name, None)
    world._tables.clear()


# ---- command line ---------------------------------------------------------------------------------------------------


def _read_source(path: Path) -> tuple[World, Path | None]:
    """The world of a world folder or a preset directory, and the preset's ``env.yaml`` (``None`` for a folder)."""
    if (path / "env.yaml").is_file() and (path / "world" / "world.json").is_file():
        return World.load(path / "world"), path / "env.yaml"
    return World.load(path), None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m envs.update", description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", required=True, help="world folder or preset directory (env.yaml + world/)")
    ap.add_argument("--logs", nargs="*", default=[], help="rollout logs (Parquet, envs/rollout_log.py schema)")
    ap.add_argument("--add-items", help="item table to append as new items (id, text, category[, price])")
    ap.add_argument("--out", required=True, help="new folder (same layout as --world); must not exist")
    ap.add_argument("--preset", help="env preset of a bare world folder (default: 'default'); a preset directory "
                                     "brings its own env.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="env override of a bare world folder's config, e.g. --set catalog.n_items=400")
    ap.add_argument("--as-preset", action="store_true",
                    help="write a bare world folder's update as a preset directory (env.yaml + world/), which "
                         "train.py --preset DIR2 reads")
    ap.add_argument("--seed", type=int, default=0, help="seed of added items' hidden attributes")
    ap.add_argument("--encoder-kind", default="transformer", choices=["transformer", "hashing"])
    ap.add_argument("--encoder-model-path", help="local model folder of a transformer encoder (default: MiniLM)")
    ap.add_argument("--hashing-dim", type=int, default=256)
    args = ap.parse_args(argv)
    from configs.loader import ConfigError, apply_overrides, deep_merge, from_dict, preset_data, preset_env
    from envs.rollout_log import read_rollout_log

    src, out = Path(args.world), Path(args.out)
    if not args.logs and not args.add_items:
        ap.error("nothing to do: give --logs and/or --add-items")
    if out.exists():
        ap.error(f"--out {out} exists; pick a new folder (nothing is overwritten)")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        ap.error("--out must not be --world or inside it")
    try:
        world, env_yaml = _read_source(src)
        if env_yaml is not None:
            cfg = preset_env(str(src))
        else:
            data: dict[str, Any] = {}
            apply_overrides(data, args.overrides)
            cfg = from_dict(EnvConfig, deep_merge(preset_data(args.preset or "default"), data), "env")
        report: dict[str, Any] = {"source": str(src.resolve())}
        if args.add_items:
            from configs.schema import EncoderConfig
            from encoders.factory import make_encoder
            from envs.data.readers import read_items

            enc = make_encoder(EncoderConfig(kind=args.encoder_kind, model_path=args.encoder_model_path,
                                             hashing_dim=args.hashing_dim, progress=False))
            n0 = world.n_items
            world = add_items(world, read_items(args.add_items)[0], enc, seed=args.seed)
            report["added_items"] = world.n_items - n0
        if args.logs:
            logs = pd.concat([read_rollout_log(p) for p in args.logs], ignore_index=True)
            world, rep = update_world(world, cfg, logs)
            report.update(rep)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"python -m envs.update: error: {exc}", file=sys.stderr)
        return 2
    from configs.fileio import atomic_dir

    with atomic_dir(out) as tmp:
        if env_yaml is not None or args.as_preset:
            world.save(tmp / "world")
            if env_yaml is not None:
                shutil.copyfile(env_yaml, tmp / "env.yaml")
            else:
                import yaml

                from configs.loader import to_dict

                data = to_dict(cfg)
                data.pop("preset_dir", None)
                data["preset"] = "updated"
                data["catalog"]["n_items"] = world.n_items
                (tmp / "env.yaml").write_text("# written by python -m envs.update\n"
                                              + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        else:
            world.save(tmp / "w")
            for f in (tmp / "w").iterdir():
                f.rename(tmp / f.name)
            (tmp / "w").rmdir()
        (tmp / "update.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
