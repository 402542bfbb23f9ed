"""File helpers every module shares: atomic writes (a file or a folder), JSON of numpy values, a file's sha256."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_dir", "atomic_write_bytes", "atomic_write_text", "figure_png", "json_default", "sha256_file"]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text to ``path`` atomically: readers see the old file or the new one, never half.

    Args:
        path: Destination file; its folder is created if needed.
        text: Content (UTF-8).
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def figure_png(fig: Any, dpi: int = 110, **savefig: Any) -> bytes:
    """A matplotlib figure rendered as PNG bytes (to write with :func:`atomic_write_bytes`).

    Args:
        fig: A ``matplotlib.figure.Figure`` (pyplot's or a bare one).
        dpi: Resolution.
        savefig: Further ``Figure.savefig`` options (``bbox_inches``, …).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig)
    return buf.getvalue()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write bytes to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder atomically: yield a temp folder beside ``path``; on success it replaces ``path``.

    On any error the temp folder is removed and ``path`` is left as it was.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_default(x: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars as Python numbers, arrays as lists.

    Raises:
        TypeError: For any other type (as ``json`` does).
    """
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
