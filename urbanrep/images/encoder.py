"""Batched open_clip image encoding: files or tensors in, L2-normalised CLIP features out.

Weights come only from a local checkpoint (``ImageConfig.checkpoint``); nothing is downloaded.
Without a checkpoint the model is randomly initialised from ``ImageConfig.seed`` and a warning
says so. Unreadable images never stop a run: they get zero features, ``ok=False`` and an entry
in :attr:`EncodedImages.failures`.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from urbanrep.images.cache import FeatureCache
from urbanrep.images.config import (
    TINY_MODEL,
    ImageConfig,
    ImageError,
    autocast_dtype,
    resolve_device,
    resolve_precision,
)
from urbanrep.progress import start_progress

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

log = logging.getLogger(__name__)

_TINY_CONFIG_FILE = f"{TINY_MODEL}.json"
#: New cache entries are flushed to a Parquet part every this many encoded images.
CACHE_FLUSH_ROWS = 20_000
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: ``ImageConfig()``: ViT-B-32, no checkpoint, auto device and precision, no cache.
DEFAULT_IMAGE_CONFIG = ImageConfig()


@dataclass(frozen=True, eq=False)
class EncodedImages:
    """CLIP features of a list of image paths, in the order given.

    Attributes:
        features: float32 ``[M, D]``, L2-normalised; zero rows where ``ok`` is False.
        ok: bool ``[M]``, False where the image could not be read or decoded.
        failures: ``(path, reason)`` for every distinct path that failed, as the caller spelled it.
        model_id: Identity of model and weights (also the cache key).
        n_cached: Distinct images served from the feature cache.
        n_decoded: Distinct images decoded and encoded in this call.
    """

    features: np.ndarray
    ok: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)
    model_id: str = ""
    n_cached: int = 0
    n_decoded: int = 0

    def __len__(self) -> int:
        return int(self.features.shape[0])


def import_open_clip() -> Any:
    """Import open_clip (optional dependency) and register the ``urbanrep-tiny`` architecture."""
    try:
        import open_clip
    except ImportError as exc:
        raise ImageError(
            "image encoding needs open_clip, which is not installed; run pip install 'urbanrep[images]'"
        ) from exc
    if TINY_MODEL not in open_clip.list_models():
        with resources.as_file(resources.files("urbanrep.images") / _TINY_CONFIG_FILE) as cfg_path:
            open_clip.add_model_config(cfg_path)
    return open_clip


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Forbid Hugging Face hub access while a model is built (restores the environment after)."""
    saved = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update({k: "1" for k in _OFFLINE_ENV})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (restored after)."""
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _file_digest(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _read_image(path: str) -> PILImage:
    """Decode one image file to RGB (raises on any unreadable or truncated file)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


class _ImageFiles(Dataset):
    """Decoded, preprocessed images; a failure yields ``(index, None, reason)``."""

    def __init__(self, paths: Sequence[str], transform: Any) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return i, self.transform(_read_image(self.paths[i])), None
        except Exception as exc:  # any decoder error is a per-image failure, never a crash
            return i, None, f"cannot decode image: {type(exc).__name__}: {exc}"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]
             ) -> tuple[torch.Tensor, torch.Tensor | None, list[tuple[int, str]]]:
    good = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, str(r)) for i, x, r in items if x is None]
    index = torch.tensor([i for i, _ in good], dtype=torch.long)
    images = torch.stack([x for _, x in good]) if good else None
    return index, images, failed


def _stat_all(paths: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """Size and mtime (ns) of each path, and a failure reason (``None`` when it is a readable file)."""
    sizes = np.zeros(len(paths), dtype=np.int64)
    mtimes = np.zeros(len(paths), dtype=np.int64)
    reasons: list[str | None] = [None] * len(paths)
    for k, p in enumerate(paths):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            reasons[k] = "file not found"
            continue
        except OSError as exc:
            reasons[k] = f"cannot stat file: {exc.strerror or exc}"
            continue
        if not stat.S_ISREG(st.st_mode):
            reasons[k] = "not a regular file"
            continue
        sizes[k], mtimes[k] = st.st_size, st.st_mtime_ns
    return sizes, mtimes, reasons


class ImageEncoder:
    """An open_clip image tower for batched inference, with the feature cache.

    The model is built on first use, so a run whose images are all cached never loads weights.

    Args:
        config: Model, weights, device, precision, batch size and cache settings.

    Raises:
        ImageError: open_clip is missing, the architecture is unknown or the checkpoint is absent.
    """

    def __init__(self, config: ImageConfig = DEFAULT_IMAGE_CONFIG) -> None:
        self.config = config
        self._open_clip = import_open_clip()
        known = self._open_clip.list_models()
        if config.model_name not in known:
            close = difflib.get_close_matches(config.model_name, known, n=5, cutoff=0.5)
            raise ImageError(
                f"unknown open_clip architecture {config.model_name!r} (ImageConfig.model_name); "
                f"close names: {', '.join(close) or 'none'}; see open_clip.list_models() or use "
                f"{TINY_MODEL!r} for tests"
            )
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.checkpoint: Path | None = None
        if config.checkpoint is not None:
            ckpt = Path(config.checkpoint).expanduser().resolve()
            if not ckpt.is_file():
                raise ImageError(
                    f"image checkpoint {ckpt} does not exist (ImageConfig.checkpoint); give the path of a "
                    f"local open_clip checkpoint for {config.model_name!r} (nothing is downloaded), or "
                    "checkpoint=None for random weights"
                )
            self.checkpoint = ckpt
            weights = f"sha256:{_file_digest(ckpt)}"
        else:
            weights = (f"random:seed={config.seed}:torch={torch.__version__}"
                       f":open_clip={self._open_clip.__version__}")
        self.model_id = f"{config.model_name}|{weights}"
        model_cfg = self._open_clip.get_model_config(config.model_name)
        self.embed_dim = int(model_cfg["embed_dim"])
        size = model_cfg["vision_cfg"].get("image_size", 224)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        self._model: torch.nn.Module | None = None
        self._transform: Any = None

    # ------------------------------------------------------------------ model
    def _build(self) -> None:
        cfg = self.config
        with _offline(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model, _, transform = self._open_clip.create_model_and_transforms(
                cfg.model_name, pretrained=None, pretrained_image=False, pretrained_text=False, device="cpu"
            )
        if self.checkpoint is not None:
            try:
                self._open_clip.load_checkpoint(model, str(self.checkpoint), strict=True, weights_only=True)
            except Exception as exc:  # torch/safetensors raise many types for a bad file
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ImageError(
                    f"cannot load image checkpoint {self.checkpoint} into open_clip model "
                    f"{cfg.model_name!r}: {type(exc).__name__}: {first[:300]}; pass an open_clip state dict "
                    f"saved from this architecture (torch.save(model.state_dict(), path), .pt/.bin/.safetensors)"
                ) from exc
            log.info("loaded image weights for %s from %s", cfg.model_name, self.checkpoint)
        else:
            log.warning(
                "no image checkpoint given: %s weights are randomly initialised (seed %d), so its features "
                "carry no pretrained semantics; set ImageConfig.checkpoint to a local open_clip checkpoint",
                cfg.model_name, cfg.seed,
            )
        self._model = model.to(self.device).eval()
        self._transform = transform

    @property
    def model(self) -> torch.nn.Module:
        """The open_clip model on :attr:`device` in eval mode (built on first access)."""
        if self._model is None:
            self._build()
        assert self._model is not None
        return self._model

    @property
    def transform(self) -> Any:
        """The open_clip evaluation preprocessing (PIL image → float tensor ``[3, H, W]``)."""
        if self._transform is None:
            self._build()
        return self._transform

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed one preprocessed batch ``[B, 3, H, W]`` → float32 ``[B, D]`` on the CPU, unit norm."""
        model = self.model
        dtype = autocast_dtype(self.precision)
        x = images.to(self.device, non_blocking=True)
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            feats = cast(Any, model).encode_image(x)
        return F.normalize(feats.float(), dim=-1).cpu()

    # ------------------------------------------------------------------ inputs
    def encode_tensors(self, images: torch.Tensor) -> np.ndarray:
        """Embed already-decoded, preprocessed images.

        Args:
            images: float ``[B, 3, H, W]`` at :attr:`image_size`, normalised with the model's
                mean/std (as :attr:`transform` produces).

        Returns:
            float32 ``[B, D]``, L2-normalised.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ImageError(f"encode_tensors expects a float tensor [B, 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        if tuple(images.shape[2:]) != self.image_size:
            raise ImageError(f"{self.config.model_name} expects {self.image_size[0]}x{self.image_size[1]} "
                             f"images, got {images.shape[2]}x{images.shape[3]}; resize with the model's "
                             "transform (ImageEncoder.transform)")
        out = np.zeros((images.shape[0], self.embed_dim), dtype=np.float32)
        if self.device.type == "cuda" and not images.is_cuda:
            images = images.pin_memory()
        for start in range(0, images.shape[0], self.config.batch_size):
            stop = start + self.config.batch_size
            out[start:stop] = self._forward(images[start:stop]).numpy()
        return out

    def encode_paths(self, paths: Sequence[str | os.PathLike[str]]) -> EncodedImages:
        """Embed image files, reusing and filling the feature cache.

        Args:
            paths: ``M`` image paths (duplicates are decoded once).

        Returns:
            :class:`EncodedImages` aligned with ``paths``.

        Cache entries are keyed by absolute path, size, mtime and :attr:`model_id`; failed images
        are never cached, so they are retried on the next call.
        """
        t0 = time.perf_counter()
        given = [os.fspath(p) for p in paths]
        absolute = np.array([os.path.abspath(p) for p in given], dtype=object)
        codes, unique = _factorize(absolute)
        n_unique = len(unique)
        feats = np.zeros((n_unique, self.embed_dim), dtype=np.float32)
        ok = np.zeros(n_unique, dtype=bool)
        sizes, mtimes, reasons = _stat_all(unique)
        readable = np.array([r is None for r in reasons], dtype=bool)

        cache = FeatureCache(self.config.cache_dir, self.model_id) if self.config.cache_dir else None
        hit = np.zeros(n_unique, dtype=bool)
        if cache is not None and readable.any():
            cand = np.flatnonzero(readable)
            cand_hit, cand_feats = cache.lookup(unique[cand], sizes[cand], mtimes[cand])
            if cand_hit.any() and cand_feats.shape[1] != self.embed_dim:
                log.warning("image feature cache %s holds %d-dim features, expected %d; ignoring it",
                            cache.folder, cand_feats.shape[1], self.embed_dim)
            elif cand_hit.any():
                hit[cand[cand_hit]] = True
                feats[cand[cand_hit]] = cand_feats
                ok[cand[cand_hit]] = True

        todo = np.flatnonzero(readable & ~hit)
        if len(todo):
            self._decode_and_encode(unique, todo, sizes, mtimes, feats, ok, reasons, cache)

        failed_u = np.flatnonzero(~ok)
        first_given = _first_occurrence(codes, n_unique)
        failures = [(given[first_given[u]], str(reasons[u])) for u in failed_u]
        result = EncodedImages(features=feats[codes], ok=ok[codes], failures=failures, model_id=self.model_id,
                               n_cached=int(hit.sum()), n_decoded=int(ok[todo].sum()))
        if failures:
            log.warning("%d of %d images could not be read (first: %s: %s); they get zero features and ok=False",
                        len(failures), n_unique, *failures[0])
            for path, reason in failures:
                log.debug("image failure %s: %s", path, reason)
        log.info("encoded %d images (%d distinct: %d from cache, %d decoded, %d failed) with %s on %s/%s in %.1f s",
                 len(given), n_unique, result.n_cached, result.n_decoded, len(failures), self.config.model_name,
                 self.device, self.precision, time.perf_counter() - t0)
        return result

    def _decode_and_encode(self, unique: np.ndarray, todo: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray,
                           feats: np.ndarray, ok: np.ndarray, reasons: list[str | None],
                           cache: FeatureCache | None) -> None:
        """Decode ``unique[todo]`` in a DataLoader, embed, fill ``feats``/``ok``/``reasons``, flush the cache."""
        loader = DataLoader(
            _ImageFiles(unique[todo].tolist(), self.transform),
            batch_size=self.config.batch_size,
            shuffle=False,
            num_workers=self.config.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        pending: list[np.ndarray] = []
        n_pending = 0
        batches = iter(loader)
        bar = start_progress("image encoding", len(todo))
        while True:
            # In-process decoding runs the per-image tensor ops single-threaded, as DataLoader workers
            # do: multi-threading such small ops only adds overhead, and on a busy machine it stalls.
            with _torch_threads(1) if self.config.num_workers == 0 else contextlib.nullcontext():
                batch = next(batches, None)
            if batch is None:
                break
            index, images, failed = batch
            bar.update(len(index) + len(failed))
            for i, reason in failed:
                reasons[todo[i]] = reason
            if images is None:
                continue
            rows = todo[index.numpy()]
            feats[rows] = self._forward(images).numpy()
            ok[rows] = True
            pending.append(rows)
            n_pending += len(rows)
            if cache is not None and n_pending >= CACHE_FLUSH_ROWS:
                self._flush(cache, np.concatenate(pending), unique, sizes, mtimes, feats)
                pending, n_pending = [], 0
        bar.close()
        if cache is not None and pending:
            self._flush(cache, np.concatenate(pending), unique, sizes, mtimes, feats)

    @staticmethod
    def _flush(cache: FeatureCache, rows: np.ndarray, unique: np.ndarray, sizes: np.ndarray,
               mtimes: np.ndarray, feats: np.ndarray) -> None:
        cache.add(unique[rows], sizes[rows], mtimes[rows], feats[rows])


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[M]`` and unique values in order of first appearance."""
    import pandas as pd

    codes, unique = pd.factorize(values, sort=False)
    return codes.astype(np.int64), np.asarray(unique, dtype=object)


def _first_occurrence(codes: np.ndarray, n_unique: int) -> np.ndarray:
    """Index of the first position of each code."""
    first = np.full(n_unique, len(codes), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(codes)))
    return first


def encode_images(paths: Sequence[str | Path], config: ImageConfig = DEFAULT_IMAGE_CONFIG) -> EncodedImages:
    """Embed image files with open_clip (batched, cached, failures skipped).

    Args:
        paths: ``M`` image file paths.
        config: Model, weights, device, precision, batch size and cache settings.

    Returns:
        :class:`EncodedImages` with features float32 ``[M, D]`` (L2-normalised, zero rows for
        failures), ok bool ``[M]``, failures and the model id.
    """
    return ImageEncoder(config).encode_paths(paths)


def encode_tensors(images: torch.Tensor, config: ImageConfig = DEFAULT_IMAGE_CONFIG) -> np.ndarray:
    """Embed already-decoded, preprocessed images ``[B, 3, H, W]`` → float32 ``[B, D]`` (unit norm)."""
    return ImageEncoder(config).encode_tensors(images)
