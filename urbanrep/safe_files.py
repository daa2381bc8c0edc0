"""Reading files that may come from someone else without running code from them.

urbanrep never unpickles a file it reads (graph files are safetensors, see
:mod:`urbanrep.graphs.io`). The helpers here give the other readers the same one-line errors:
:func:`load_weights_only` for model files and checkpoints (``torch.load(weights_only=True)``:
tensors and plain containers only), :func:`read_text` for JSON / YAML / TOML files (text, parsed
by data-only parsers such as ``yaml.safe_load``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from urbanrep.errors import UrbanRepError

_PICKLE_PROTO = 0x80
_ZIP_MAGIC = b"PK\x03\x04"
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
_REFUSED = re.compile(r"WeightsUnpickler error: (.{1,80}?)(?: Check the documentation|$)")


def one_line(exc: BaseException, limit: int = 240) -> str:
    """``str(exc)`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_text(path: str | Path, fix: str, error: type[UrbanRepError] = UrbanRepError) -> str:
    """The UTF-8 text of a config or manifest file.

    Raises:
        error: the file is not UTF-8 text (a pickle or other binary file); the message names the
            file and ``fix``.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        looks = " (it looks like a Python pickle, which urbanrep never opens)" if raw[:1] == bytes(
            [_PICKLE_PROTO]) or raw[:4] == _ZIP_MAGIC else ""
        raise error(f"{path} is not UTF-8 text{looks}: {one_line(exc, 120)}; {fix}") from exc


def load_weights_only(path: str | Path, what: str, fix: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, never other objects.

    Args:
        path: A file written by ``torch.save`` (model weights, a checkpoint).
        what: What the file should be, for the message (``"model file"``).
        fix: How to get a good file, for the message.
        map_location: As for :func:`torch.load`.

    Raises:
        UrbanRepError: one line naming the file and ``fix``. A file that would need to run code
            (a pickled object outside torch's weights-only allowlist) is refused, not opened.
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses a file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zips, truncated pickles and refused globals raise several types
        with open(path, "rb") as f:
            head = f.read(4)
        text = " ".join(str(exc).split())
        found = _GLOBAL.search(text)
        refused = _REFUSED.search(text)
        if not (head[:1] == bytes([_PICKLE_PROTO]) or head == _ZIP_MAGIC):
            why = "it is not a file written by torch.save"
        elif found:
            why = f"it holds a pickled {found.group(1)}, not plain tensors, and urbanrep never runs code from a file"
        elif isinstance(exc, pickle.UnpicklingError):
            detail = f": {refused.group(1)}" if refused else ""
            why = f"it holds pickle instructions that a weights-only load refuses{detail}"
        else:
            why = f"{type(exc).__name__}: {one_line(exc, 160)}"
        raise UrbanRepError(f"cannot read {what} {path} ({why}); {fix}") from exc


def read_parquet(path: str | Path, fix: str, error: type[UrbanRepError] = UrbanRepError) -> Any:
    """A Parquet file as a DataFrame (Arrow reads data and JSON metadata only; nothing is unpickled).

    Raises:
        error: the file is missing, truncated, corrupt or not Parquet; one line naming it and ``fix``.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; {fix}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated / corrupt / non-Parquet files
        raise error(f"cannot read {path} ({type(exc).__name__}: {one_line(exc, 160)}); {fix}") from exc


def read_json(path: str | Path, fix: str, error: type[UrbanRepError] = UrbanRepError) -> Any:
    """A JSON file (UTF-8 text, parsed by :func:`json.loads`).

    Raises:
        error: the file is not UTF-8 text or not JSON; one line naming it and ``fix``.
    """
    import json

    try:
        return json.loads(read_text(path, fix, error))
    except json.JSONDecodeError as exc:
        raise error(f"cannot parse {path} as JSON ({one_line(exc, 120)}); {fix}") from exc
