"""New items (cold start) in the simulator: items without interaction history, modelled as a served item is.

With ``env.catalog.new_item_share = s > 0`` the world builder (:func:`envs.presets.build_world`) marks a share
``s`` of the catalog as *new*: they are left out of the users' organic histories and of the logging phase (both run
on the world restricted to the old items, :func:`old_items_world`), so they have no logged interaction. The CF fit
then has nothing to say about them: their item factors are set to exactly zero (the ALS item update of an item
without interactions), so their observed CF score is ``p_u·0`` standardised over the catalog, as the serving
runtime computes it for an item added by ``POST /items``; their popularity is 0. The users' hidden utility (taste,
quality, price) sees them as any other item, so a policy can only find the good ones through the language-model
signal. ``World.new_items`` flags them (for evaluation and for ``python -m envs.update``, which folds them in once
logs hold interactions with them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from envs.catalog import Catalog
from envs.world import World

#: Stream offset of the new-item draw from the catalog seed (keeps it apart from the catalog's own draws).
NEW_ITEM_SEED_OFFSET = 104_729


def new_item_mask(n_items: int, share: float, seed: int) -> np.ndarray:
    """Which items are new: bool (M,), ``round(share·M)`` items drawn without replacement from ``seed``.

    Args:
        n_items: M.
        share: Share of new items in [0, 1).
        seed: The catalog seed.

    Raises:
        ValueError: ``share`` outside [0, 1).
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"new_item_share must be in [0, 1), got {share}")
    mask = np.zeros(n_items, bool)
    n_new = round(share * n_items)
    if n_new:
        gen = np.random.default_rng(seed + NEW_ITEM_SEED_OFFSET)
        mask[gen.choice(n_items, size=n_new, replace=False)] = True
    return mask


def subset_catalog(cat: Catalog, keep: np.ndarray) -> Catalog:
    """The catalog's rows ``keep`` (int (m,)), categories unchanged."""
    return Catalog(ids=[cat.ids[i] for i in keep], texts=[cat.texts[i] for i in keep], category=cat.category[keep],
                   category_names=list(cat.category_names), price=cat.price[keep], quality=cat.quality[keep],
                   cf_factor=cat.cf_factor[keep], themes=cat.themes[keep])


def old_items_world(world: World, keep: np.ndarray) -> World:
    """The world before its new items existed: the same populations (shared objects) over the items ``keep``.

    Item indices of the result are positions in ``keep``; :func:`to_catalog_ids` maps them back.

    Args:
        world: A world before its CF fit (zero-width item factors).
        keep: int (m,) catalog indices of the old items, ascending.
    """
    return World(catalog=subset_catalog(world.catalog, keep), item_emb=world.item_emb[keep],
                 populations=world.populations, item_factors=np.zeros((len(keep), 0), np.float32),
                 popularity=np.zeros(len(keep), np.float32), encoder_name=world.encoder_name)


def to_catalog_ids(ids: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Sub-world item indices → catalog indices (``-1`` stays ``-1``): same shape as ``ids``."""
    ids = np.asarray(ids, np.int64)
    return np.where(ids >= 0, keep[np.maximum(ids, 0)], -1)


def remap_log(frame: pd.DataFrame, keep: np.ndarray) -> pd.DataFrame:
    """A rollout log of the sub-world with its item columns (candidates, slate, clicked item) as catalog ids."""
    out = frame.copy()
    out["clicked_item"] = to_catalog_ids(out["clicked_item"].to_numpy(), keep)
    for col in ("candidates", "slate"):  # absent from a log kept without its lists (``lists=False``)
        if col in out:
            out[col] = [to_catalog_ids(np.asarray(v), keep) for v in out[col]]
    return out


def zero_new_items(world: World, mask: np.ndarray) -> None:
    """Mark ``mask`` (bool (M,)) as new: zero CF item factors and popularity, ``world.new_items`` set."""
    world.item_factors[mask] = 0.0
    world.popularity[mask] = 0.0
    world.new_items = mask.copy()
    for name in ("item_features", "popular_items"):
        world.__dict__.pop(name, None)
    world._tables.clear()


def sessions_with_new_items(candidates: np.ndarray, new_items: np.ndarray) -> np.ndarray:
    """Which requests offer at least one new item: bool (R,) for candidates int (R, N) and new_items bool (M,)."""
    if new_items.size == 0:
        return np.zeros(len(candidates), bool)
    return new_items[np.asarray(candidates, np.int64)].any(axis=1)
