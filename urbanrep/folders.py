"""Output folders urbanrep owns: a marker file, a foreign-file check and an exclusive lock.

urbanrep writes only into a new or empty folder or into one it made itself, and never deletes or
overwrites a file it did not write:

* a folder urbanrep creates gets a marker file (:data:`MARKER`); a city bundle's own marker is
  its ``manifest.json`` (``"format": "urbanrep-city-bundle"``);
* :func:`claim_folder` refuses a folder that holds anything else (naming the files), refuses to
  replace a folder of urbanrep's own unless asked to (``--overwrite`` / ``overwrite=True``;
  ``--resume`` continues a run), and removes urbanrep's own temporary folders left by a killed
  write;
* :func:`folder_lock` holds an exclusive lock for a whole run, so a second run into the same
  folder fails at once, naming the process that holds it (a lock left by a dead process is
  free: the operating system releases it with the process);
* :func:`remove_outputs` deletes named outputs of urbanrep's own before a stage writes them
  again, so a rerun never shows stale results.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from urbanrep.errors import UrbanRepError

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE", "EMBED", "GIS", "LOCK", "MARKER", "RUN", "FolderError", "FolderKind", "claim_folder",
    "folder_lock", "foreign_files", "is_owned", "remove_outputs",
]

MARKER = ".urbanrep"
LOCK = ".urbanrep.lock"
#: Hidden temporaries of :func:`urbanrep.atomic.atomic_path` (``.name.XXXX.tmp``, ``.name.old-PID``).
TEMP_PATTERNS = (".*.tmp", ".*.old-*")
_LISTED = 5


class FolderError(UrbanRepError):
    """An output folder holds files urbanrep did not write, is in use, or would be replaced unasked."""


@dataclass(frozen=True)
class FolderKind:
    """What urbanrep writes into one kind of output folder.

    Attributes:
        name: Human name used in messages (``"run folder"``).
        files: Glob patterns of the files urbanrep writes at the top level.
        subkinds: Sub-folder name → the kind of folder it is (checked recursively).
    """

    name: str
    files: tuple[str, ...]
    subkinds: tuple[tuple[str, FolderKind], ...] = ()

    def owns(self, name: str) -> bool:
        """True when a top-level file of this name is one urbanrep writes here."""
        return any(fnmatch.fnmatchcase(name, p) for p in (*self.files, MARKER, LOCK, *TEMP_PATTERNS))


#: A city bundle: manifest, layer files and ``aggregates/`` (see :mod:`urbanrep.bundle.spec`).
BUNDLE = FolderKind("city bundle", ("manifest.json", "*.parquet", "NOTICE.md"),
                    subkinds=(("aggregates", FolderKind("aggregates folder", ("*.parquet",))),))
#: The folder of ``urbanrep export --out``.
GIS = FolderKind("GIS export folder", ("*.parquet", "*.gpkg", "*.gpkg-journal", "*.geojson", "*.csv", "crs.txt"))
#: The folder of ``urbanrep embed --out``.
EMBED = FolderKind("embedding folder", ("embeddings.parquet", "fusion_weights.parquet"))
#: A run folder (``urbanrep run``, ``urbanrep train``; see :mod:`urbanrep.pipeline`).
RUN = FolderKind(
    "run folder",
    ("graph.pt", "graph.json", "config.json", "loss.csv", "model.pt", "embeddings.parquet",
     "fusion_weights.parquet", "metrics.json", "predictions.parquet", "report.html", "run.json"),
    subkinds=(("bundle", BUNDLE), ("checkpoints", FolderKind("checkpoint folder", ("epoch_*.pt",))), ("gis", GIS),
              ("figures", FolderKind("figure folder", ("*.png", "*.svg", "*.pdf")))),
)


def _marker_ok(folder: Path, kind: FolderKind) -> bool:
    if (folder / MARKER).is_file():
        return True
    try:
        if kind is BUNDLE and (folder / "manifest.json").is_file():
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            return bool(manifest.get("format") == "urbanrep-city-bundle")
        if kind is RUN and (folder / "config.json").is_file():  # written by UrbanRep.fit / train
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
            return {"model", "train"} <= set(config)
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return False


def is_owned(folder: str | os.PathLike[str], kind: FolderKind) -> bool:
    """True when ``folder`` carries urbanrep's marker (or, for a bundle, urbanrep's manifest)."""
    return Path(folder).is_dir() and _marker_ok(Path(folder), kind)


def foreign_files(folder: str | os.PathLike[str], kind: FolderKind) -> list[Path]:
    """Files and folders below ``folder`` that urbanrep does not write into a folder of ``kind``."""
    folder = Path(folder)
    out: list[Path] = []
    subkinds = dict(kind.subkinds)
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if any(fnmatch.fnmatchcase(entry.name, p) for p in TEMP_PATTERNS):
                continue  # urbanrep's own temporaries: removed, never reported
            if entry.name in subkinds:
                out += foreign_files(entry, subkinds[entry.name])
            else:
                out.append(entry)
        elif not kind.owns(entry.name):
            out.append(entry)
    return out


def _listed(paths: list[Path], base: Path) -> str:
    names = [str(p.relative_to(base)) for p in paths[:_LISTED]]
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return ", ".join(names) + more


def remove_temporaries(folder: Path) -> int:
    """Delete urbanrep's hidden temporaries (killed atomic writes) anywhere below ``folder``."""
    removed = 0
    for pattern in TEMP_PATTERNS:
        for path in sorted(folder.rglob(pattern), key=lambda p: len(p.parts), reverse=True):
            if not path.exists():
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted urbanrep write in %s", removed, folder)
    return removed


def _write_marker(folder: Path, kind: FolderKind) -> None:
    if kind is BUNDLE or (folder / MARKER).exists():
        return
    info = {"format": "urbanrep-folder", "kind": kind.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "note": "written by urbanrep; urbanrep writes into and replaces only folders carrying this file"}
    (folder / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def claim_folder(folder: str | os.PathLike[str], kind: FolderKind, *, overwrite: bool = False,
                 keep: bool = False, create: bool = True, what: str = "--out") -> Path:
    """Check that urbanrep may write ``folder`` as a folder of ``kind``; create and mark it.

    Args:
        folder: The output folder.
        kind: What urbanrep writes there (:data:`RUN`, :data:`BUNDLE`, ...).
        overwrite: Replace a folder urbanrep wrote before (never one holding foreign files).
        keep: Continue in a folder urbanrep wrote before (``--resume``, later stages of a run).
        create: Create (and mark) the folder; False only checks (the caller writes it atomically).
        what: How the user named the folder (for the fix in messages).

    Returns:
        The folder.

    Raises:
        FolderError: ``folder`` is a file; holds files urbanrep did not write (named); or holds
            earlier urbanrep output and neither ``overwrite`` nor ``keep`` is set.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} exists and is not a folder; choose another {what}")
    entries = [p for p in folder.iterdir()] if folder.is_dir() else []
    if entries:
        if not _marker_ok(folder, kind):
            raise FolderError(f"{folder} is not empty and was not written by urbanrep (it holds "
                              f"{_listed(sorted(entries), folder)}); urbanrep writes only into a new or empty "
                              f"folder or one it made: choose another {what}")
        foreign = foreign_files(folder, kind)
        if foreign:
            raise FolderError(f"{folder} is an urbanrep {kind.name} but also holds {_listed(foreign, folder)}, "
                              f"which urbanrep did not write; move that out or choose another {what} "
                              "(urbanrep never deletes files it did not write)")
        outputs = [p for p in entries if p.name not in (MARKER, LOCK)
                   and not any(fnmatch.fnmatchcase(p.name, t) for t in TEMP_PATTERNS)]
        if outputs and not (overwrite or keep):
            hint = ("pass --overwrite (overwrite=True) to replace it"
                    + (", or --resume to continue it" if kind is RUN else ""))
            raise FolderError(f"{folder} already holds an urbanrep {kind.name} ({_listed(sorted(outputs), folder)}); "
                              f"{hint}, or choose another {what}")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
        _write_marker(folder, kind)
    return folder


def remove_outputs(folder: str | os.PathLike[str], names: Iterable[str], kind: FolderKind = RUN) -> list[str]:
    """Delete urbanrep's own outputs ``names`` (files or sub-folders) of ``folder`` before a stage rewrites them.

    Only names :data:`kind` says urbanrep writes are touched; a sub-folder is removed only when
    everything in it is urbanrep's (else :class:`FolderError` names the foreign files).

    Returns:
        The names removed.
    """
    folder = Path(folder)
    removed = []
    subkinds = dict(kind.subkinds)
    for name in names:
        path = folder / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir() and not path.is_symlink():
            if name not in subkinds:
                raise FolderError(f"{path} is not an output of urbanrep; leaving it in place")
            foreign = foreign_files(path, subkinds[name])
            if foreign:
                raise FolderError(f"{path} holds {_listed(foreign, folder)}, which urbanrep did not write; "
                                  "move that out (urbanrep never deletes files it did not write)")
            shutil.rmtree(path)
        else:
            if not kind.owns(name):
                raise FolderError(f"{path} is not an output of urbanrep; leaving it in place")
            path.unlink()
        removed.append(name)
    if removed:
        log.info("removed earlier output %s of %s before rewriting it", ", ".join(removed), folder)
    return removed


# --- the lock ---------------------------------------------------------------------------------

_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (fd, depth), re-entrant per process


def _holder(lock: Path) -> str:
    try:
        info, _ = json.JSONDecoder().raw_decode(lock.read_text(encoding="utf-8"))
        return f"PID {info.get('pid')} on {info.get('host')}, since {info.get('since')}"
    except (OSError, ValueError, AttributeError):
        return "another process"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (``folder/.urbanrep.lock``) while the block runs.

    Re-entrant within one process. Another process trying to lock the same folder gets a
    :class:`FolderError` at once naming the holder's PID. A lock file left by a process that died
    is taken over (the operating system releases ``flock`` locks of dead processes; where
    ``flock`` is missing, a lock file whose PID no longer runs on this host is stale).

    Raises:
        FolderError: another process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield folder
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    lock = folder / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: PID check only
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FolderError(f"{folder} is in use by another urbanrep process ({_holder(lock)}); wait for it to "
                                  "finish or choose another folder") from None
        else:  # pragma: no cover
            try:
                info = json.loads(lock.read_text(encoding="utf-8") or "{}")
            except ValueError:
                info = {}
            pid = info.get("pid")
            if pid and pid != os.getpid() and info.get("host") == socket.gethostname() and _pid_alive(int(pid)):
                raise FolderError(f"{folder} is in use by another urbanrep process ({_holder(lock)}); wait for it "
                                  "to finish or choose another folder")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        os.fsync(fd)
        _held[key] = (fd, 1)
        try:
            yield folder
        finally:
            del _held[key]
    finally:
        if key not in _held:
            os.close(fd)  # closing releases the flock
