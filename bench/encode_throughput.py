"""Throughput of the default transformer encoder, bare and through the on-disk cache (cold, then warm).

Usage::

    python -m bench.encode_throughput --texts 1000 --repeats 3

Each figure is the median over the repeats. Cold: a fresh cache folder, so every text is encoded and written.
Warm: the same texts again through a newly opened cache on that folder (as a second run would: the time
includes opening the database and its ``quick_check``). The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from encoders import CachedEncoder, EmbeddingCache, TransformerEncoder

_ADJECTIVES = (
    "gritty", "cheerful", "minimalist", "vintage", "award-winning", "lightweight", "handmade", "dark", "cozy",
    "epic", "quirky", "practical", "luxurious", "affordable", "haunting", "playful", "rugged", "elegant",
)  # fmt: skip
_NOUNS = (
    "thriller", "cookbook", "hiking boot", "documentary", "board game", "novel", "headphone set", "jacket",
    "podcast series", "coffee grinder", "sci-fi film", "yoga mat", "strategy game", "photo book", "backpack",
)  # fmt: skip
_TOPICS = (
    "small-town detectives", "vegan desserts", "alpine trails", "the history of jazz", "family road trips",
    "deep-sea creatures", "urban gardening", "a heist gone wrong", "long-distance running", "ancient Rome",
    "home espresso", "space colonists", "street photography", "rainy weekends", "competitive chess",
)  # fmt: skip
_CLAUSES = (
    "with a surprising twist at the end", "loved by beginners and experts alike", "made from recycled materials",
    "that critics called a modern classic", "perfect for a quiet evening at home", "built to last for years",
    "featuring a memorable soundtrack", "with easy step-by-step instructions", "designed for daily commuters",
    "from an independent studio in Lisbon", "that rewards repeated viewing", "with a bold and colourful style",
)  # fmt: skip


def synthetic_descriptions(n: int, seed: int = 0) -> list[str]:
    """Short, distinct item descriptions of 15 to 25 words, a pure function of ``(n, seed)``.

    Args:
        n: Number of descriptions.
        seed: Generator seed.

    Returns:
        n texts.
    """
    rng = np.random.default_rng(seed)
    texts = []
    for i in range(n):
        target = int(rng.integers(15, 26))
        words = (
            f"Item {i}: {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} about {rng.choice(_TOPICS)},".split()
            + " ".join(rng.permutation(_CLAUSES)).split()
        )
        texts.append(" ".join(words[:target]).rstrip(",") + ".")
    return texts


def _timed_cached_encode(encoder: TransformerEncoder, directory: str, texts: list[str]) -> tuple[float, CachedEncoder]:
    start = time.perf_counter()
    cache = EmbeddingCache(directory)
    cached = CachedEncoder(encoder, cache)
    cached.encode(texts)
    seconds = time.perf_counter() - start
    cache.close()
    return seconds, cached


def main(argv: Sequence[str] | None = None) -> dict[str, float | int | str]:
    """Runs the benchmark and prints its figures, the JSON object last.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv``).

    Returns:
        The figures printed as JSON.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=1000, help="number of synthetic item descriptions")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is reported)")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic descriptions")
    args = parser.parse_args(argv)

    texts = synthetic_descriptions(args.texts, args.seed)
    encoder = TransformerEncoder(batch_size=args.batch_size, progress=False)
    encoder.encode(texts[:8])  # load the model and warm up outside the timings

    encode_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        encoder.encode(texts)
        encode_s.append(time.perf_counter() - start)

    cold_s, warm_s = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as directory:
            seconds, cold = _timed_cached_encode(encoder, directory, texts)
            cold_s.append(seconds)
            seconds, warm = _timed_cached_encode(encoder, directory, texts)
            warm_s.append(seconds)
            if (cold.misses, warm.misses) != (len(set(texts)), 0):
                raise RuntimeError(f"cache misses cold {cold.misses}, warm {warm.misses}: the warm run should be 0")

    n = len(texts)
    encode, cold, warm = (statistics.median(s) for s in (encode_s, cold_s, warm_s))
    figures: dict[str, float | int | str] = {
        "encoder": encoder.name,
        "n_texts": n,
        "repeats": args.repeats,
        "encode_texts_per_s": round(n / encode, 1),
        "cold_cache_texts_per_s": round(n / cold, 1),
        "warm_cache_texts_per_s": round(n / warm, 1),
        "warm_cache_seconds": round(warm, 4),
        "cold_over_warm": round(cold / warm, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other processes on the machine slow the encoder down
    }
    words = [len(t.split()) for t in texts]
    print(f"{n} texts, {min(words)}-{max(words)} words each, median of {args.repeats} runs, encoder {encoder.name}")
    print(f"load average over the run's last minute: {figures['load_avg_1m']} on {os.cpu_count()} CPUs")
    print(f"encode:     {encode:8.3f} s  {n / encode:10.1f} texts/s")
    print(f"cold cache: {cold:8.3f} s  {n / cold:10.1f} texts/s")
    print(f"warm cache: {warm:8.3f} s  {n / warm:10.1f} texts/s  (cold/warm = {cold / warm:.1f}x)")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
