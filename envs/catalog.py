"""The item catalog: a synthetic generator with real descriptive text, and a loader for item tables.

Each item has observable text, category and price, and hidden attributes the simulator uses but the agent
never sees: a quality and a collaborative factor that text cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from configs.schema import CatalogConfig

# Category → (noun, themes, base price). The themes make the LLM embedding carry meaning.
CATEGORIES: dict[str, tuple[str, tuple[str, ...], float]] = {
    "mystery": (
        "mystery novel",
        ("a small-town murder", "a locked-room puzzle", "a missing heiress", "a cold case", "art forgery",
         "a poisoned banquet", "a detective's last case", "a coastal village secret"),
        14.0,
    ),
    "scifi": (
        "science fiction novel",
        ("first contact with aliens", "a generation starship", "artificial intelligence", "time travel",
         "terraforming Mars", "a cyberpunk megacity", "a galactic empire", "a post-human future"),
        15.0,
    ),
    "cooking": (
        "cookbook",
        ("vegan desserts", "Italian home cooking", "quick weeknight dinners", "sourdough baking",
         "Japanese street food", "slow-cooker stews", "Mexican regional dishes", "healthy meal prep"),
        28.0,
    ),
    "travel": (
        "travel guide",
        ("hiking in Patagonia", "Tokyo neighbourhoods", "rail journeys across Europe", "Iceland road trips",
         "budget backpacking in Southeast Asia", "wine regions of France", "national parks",
         "island hopping in Greece"),
        22.0,
    ),
    "documentary": (
        "documentary film",
        ("ocean wildlife", "the history of jazz", "climate change", "a mountaineering expedition",
         "the space race", "a true-crime investigation", "street art", "ancient civilisations"),
        9.0,
    ),
    "romcom": (
        "romantic comedy film",
        ("a wedding gone wrong", "rivals who fall in love", "a summer in Paris", "a fake relationship",
         "second chances", "a bookshop owner", "a holiday romance", "online dating mishaps"),
        8.0,
    ),
    "boardgame": (
        "strategy board game",
        ("building medieval castles", "trading on the silk road", "space colonisation", "cooperative pandemic defence",
         "railway empires", "farming and harvests", "deduction and hidden roles", "deck-building fantasy battles"),
        45.0,
    ),
    "videogame": (
        "video game",
        ("open-world fantasy exploration", "competitive racing", "survival horror", "puzzle platforming",
         "city-building simulation", "tactical squad combat", "cosy farming life", "retro arcade shooting"),
        40.0,
    ),
    "music": (
        "jazz and soul album",
        ("late-night piano trios", "big band swing", "smooth vocal ballads", "Afro-Cuban rhythms",
         "experimental fusion", "gospel-tinged soul", "bebop saxophone", "lo-fi instrumental grooves"),
        12.0,
    ),
    "fitness": (
        "fitness course",
        ("yoga for beginners", "high-intensity interval training", "marathon preparation", "strength training at home",
         "pilates and posture", "mobility for desk workers", "kettlebell workouts", "mindful breathing"),
        35.0,
    ),
    "programming": (
        "programming course",
        ("Python for data analysis", "building web apps with JavaScript", "machine learning fundamentals",
         "Rust systems programming", "SQL and databases", "mobile app development", "cloud infrastructure",
         "algorithms and interviews"),
        60.0,
    ),
    "kids": (
        "children's picture book",
        ("a brave little dragon", "bedtime under the stars", "friendly farm animals", "a first day at school",
         "dinosaurs and diggers", "a magical treehouse", "learning to share", "an underwater adventure"),
        10.0,
    ),
}

STYLES = (
    "lighthearted", "dark and gritty", "thoughtful", "fast-paced", "award-winning", "quirky", "beautifully illustrated",
    "hands-on", "classic", "experimental", "heartwarming", "in-depth",
)
AUDIENCES = (
    "beginners", "experts", "families", "teenagers", "busy professionals", "retirees", "students", "enthusiasts",
)
LENGTHS = ("short", "medium-length", "long")
TITLE_A = (
    "Silent", "Golden", "Hidden", "Last", "Endless", "Little", "Bright", "Wild", "Northern", "Secret", "Broken",
    "Electric", "Quiet", "Crimson", "Paper", "Iron", "Velvet", "Distant",
)
TITLE_B = (
    "Harbour", "Orbit", "Kitchen", "Road", "Garden", "Signal", "Forest", "Empire", "Journey", "Melody", "Engine",
    "Lantern", "Tide", "Circuit", "Summit", "Atlas", "River", "Clockwork",
)
AGES = ("young", "middle-aged", "retired", "student", "thirty-something")
OCCUPATIONS = (
    "teacher", "software developer", "nurse", "graphic designer", "accountant", "chef", "engineer", "journalist",
    "parent of two", "shop owner", "researcher", "musician",
)


@dataclass
class Catalog:
    """M items with observable and hidden attributes.

    Attributes:
        ids: (M,) item ids as strings.
        texts: (M,) descriptive texts (what the encoder embeds).
        category: int64 (M,) category index into ``category_names``.
        category_names: (C,) category names.
        price: float32 (M,) price (NaN-free; 0 where unknown).
        quality: float32 (M,) hidden quality, roughly standard normal.
        cf_factor: float32 (M, F) hidden collaborative factor that text cannot see.
        themes: int64 (M,) theme index within the category (synthetic catalogs; -1 otherwise).
    """

    ids: list[str]
    texts: list[str]
    category: np.ndarray
    category_names: list[str]
    price: np.ndarray
    quality: np.ndarray
    cf_factor: np.ndarray
    themes: np.ndarray

    def __post_init__(self) -> None:
        m = len(self.ids)
        for name in ("texts", "category", "price", "quality", "cf_factor", "themes"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"catalog field {name!r} has {len(getattr(self, name))} rows, expected {m}")
        if m == 0:
            raise ValueError("catalog is empty")

    @property
    def n_items(self) -> int:
        """M."""
        return len(self.ids)

    @property
    def n_categories(self) -> int:
        """C."""
        return len(self.category_names)


def _price_band(price: float, base: float) -> str:
    if price < 0.75 * base:
        return "Budget price"
    if price > 1.5 * base:
        return "Premium price"
    return "Mid-range price"


def generate_catalog(cfg: CatalogConfig) -> Catalog:
    """The embedded synthetic catalog, a pure function of its config.

    Each item's text names its category, themes, style, audience, length and price band, e.g.
    ``"Silent Harbour: a dark and gritty mystery novel about a cold case and art forgery, for enthusiasts.
    Long. Premium price."``

    Args:
        cfg: Catalog settings (``n_items``, ``cf_dim``, ``seed``).

    Returns:
        The catalog.
    """
    if cfg.n_items < 1:
        raise ValueError(f"catalog.n_items must be >= 1, got {cfg.n_items}")
    rng = np.random.default_rng(cfg.seed)
    names = list(CATEGORIES)
    m = cfg.n_items
    # Category sizes are uneven, as in real catalogs.
    cat_weights = rng.dirichlet(np.full(len(names), 4.0))
    category = rng.choice(len(names), size=m, p=cat_weights)
    n_themes = len(next(iter(CATEGORIES.values()))[1])
    theme1 = rng.integers(0, n_themes, m)
    theme2 = (theme1 + rng.integers(1, n_themes, m)) % n_themes
    style = rng.integers(0, len(STYLES), m)
    audience = rng.integers(0, len(AUDIENCES), m)
    length = rng.integers(0, len(LENGTHS), m)
    base = np.array([CATEGORIES[n][2] for n in names])[category]
    price = (base * rng.lognormal(0.0, 0.45, m)).round(2)
    quality = rng.normal(0.0, 1.0, m)
    cf_factor = rng.normal(0.0, 1.0 / np.sqrt(cfg.cf_dim), (m, cfg.cf_dim))
    title_a = rng.integers(0, len(TITLE_A), m)
    title_b = rng.integers(0, len(TITLE_B), m)
    texts = []
    for i in range(m):
        noun, themes, cat_base = CATEGORIES[names[category[i]]]
        texts.append(
            f"{TITLE_A[title_a[i]]} {TITLE_B[title_b[i]]}: a {STYLES[style[i]]} {noun} about {themes[theme1[i]]} "
            f"and {themes[theme2[i]]}, for {AUDIENCES[audience[i]]}. {LENGTHS[length[i]].capitalize()}. "
            f"{_price_band(price[i], cat_base)}."
        )
    return Catalog(
        ids=[f"item-{i:05d}" for i in range(m)],
        texts=texts,
        category=category.astype(np.int64),
        category_names=names,
        price=price.astype(np.float32),
        quality=quality.astype(np.float32),
        cf_factor=cf_factor.astype(np.float32),
        themes=theme1.astype(np.int64),
    )


def catalog_from_items(items: pd.DataFrame, cf_dim: int, seed: int) -> Catalog:
    """A catalog from an item table (columns ``id, text`` and optional ``category, price``).

    Hidden attributes that a table does not carry are drawn from ``seed``: quality ~ N(0, 1) and the
    collaborative factor ~ N(0, 1/F) (calibration replaces both with values fitted on real logs).

    Args:
        items: Item table; ``id`` and ``text`` are required, ``text`` non-empty.
        cf_dim: Dimension F of the hidden collaborative factor.
        seed: Seed for the hidden attributes.

    Returns:
        The catalog, items in table order.

    Raises:
        ValueError: On missing columns, empty or duplicate ids, empty texts, negative prices.
    """
    missing = [c for c in ("id", "text") if c not in items.columns]
    if missing:
        raise ValueError(f"item table is missing column(s) {missing}; it has {list(items.columns)}")
    if len(items) == 0:
        raise ValueError("item table has no rows")
    ids = items["id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"item table repeats {len(dup)} id(s), e.g. {dup.iloc[:3].tolist()}")
    texts = items["text"].fillna("").astype(str)
    empty = np.flatnonzero(texts.str.strip().eq("").to_numpy())
    if len(empty):
        raise ValueError(f"item table has {len(empty)} empty text(s), first at row {int(empty[0]) + 1}")
    if "category" in items.columns:
        cats = items["category"].fillna("unknown").astype(str)
    else:
        cats = pd.Series(["unknown"] * len(items))
    codes, names = pd.factorize(cats, sort=True)
    price = items["price"].to_numpy(dtype=np.float64) if "price" in items.columns else np.zeros(len(items))
    price = np.nan_to_num(price, nan=0.0)
    if (price < 0).any():
        row = int(np.flatnonzero(price < 0)[0])
        raise ValueError(f"item table has a negative price at row {row + 1}: {price[row]}")
    rng = np.random.default_rng(seed)
    m = len(items)
    return Catalog(
        ids=ids.tolist(),
        texts=texts.tolist(),
        category=codes.astype(np.int64),
        category_names=[str(n) for n in names],
        price=price.astype(np.float32),
        quality=rng.normal(0.0, 1.0, m).astype(np.float32),
        cf_factor=rng.normal(0.0, 1.0 / np.sqrt(cf_dim), (m, cf_dim)).astype(np.float32),
        themes=np.full(m, -1, dtype=np.int64),
    )


def persona_texts(n: int, seed: int) -> list[str]:
    """Persona descriptions of synthetic users, deterministic from the seed.

    Args:
        n: Number of users.
        seed: Seed.

    Returns:
        n persona texts, each naming two favourite categories and themes and a style.
    """
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    n_themes = len(next(iter(CATEGORIES.values()))[1])
    cats = np.stack([rng.integers(0, len(names), n), rng.integers(0, len(names), n)], axis=1)
    themes = rng.integers(0, n_themes, (n, 2))
    age = rng.integers(0, len(AGES), n)
    occ = rng.integers(0, len(OCCUPATIONS), n)
    style = rng.integers(0, len(STYLES), n)
    texts = []
    for u in range(n):
        c1, c2 = names[cats[u, 0]], names[cats[u, 1]]
        t1 = CATEGORIES[c1][1][themes[u, 0]]
        t2 = CATEGORIES[c2][1][themes[u, 1]]
        texts.append(
            f"A {AGES[age[u]]} {OCCUPATIONS[occ[u]]} who loves {CATEGORIES[c1][0]}s about {t1} "
            f"and enjoys {CATEGORIES[c2][0]}s about {t2}; prefers a {STYLES[style[u]]} style."
        )
    return texts
