"""Atomic writes: a crash never leaves a half-written file or folder that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for files and folders. On error the temporary is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_item = tmp / target.name
    try:
        yield tmp_item
        if not tmp_item.exists():
            raise FileNotFoundError(f"atomic write produced nothing at {tmp_item}")
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp_item, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet_atomic(df: Any, target: str | os.PathLike[str]) -> None:
    """Write a (Geo)DataFrame to ``target`` as Parquet atomically, without its index."""
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
