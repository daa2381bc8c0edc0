"""Configuration of the image encoder: model, weights, device, precision and feature cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from urbanrep.errors import ConfigError, UrbanRepError

#: Name of the tiny CLIP architecture shipped with urbanrep (tests, smoke runs).
TINY_MODEL = "urbanrep-tiny"

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


class ImageError(UrbanRepError):
    """Images cannot be encoded: open_clip missing, unknown model, unreadable checkpoint."""


@dataclass(frozen=True)
class ImageConfig:
    """How images become CLIP feature vectors.

    Attributes:
        model_name: Any open_clip architecture name (``open_clip.list_models()``) or
            ``"urbanrep-tiny"``, a tiny CLIP shipped with urbanrep for tests.
        checkpoint: Local path of an open_clip checkpoint (state dict; ``.pt``/``.bin``/
            ``.safetensors``). Nothing is ever downloaded. ``None`` = random (seeded) weights,
            which carry no pretrained semantics (a warning is logged).
        batch_size: Images per forward pass.
        device: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"`` or
            ``"fp16"`` (autocast dtypes).
        cache_dir: Folder of the Parquet feature cache; ``None`` disables caching.
        num_workers: DataLoader worker processes that decode images (0 = in-process).
        seed: Seed of the random initialisation used when no checkpoint is given.
    """

    model_name: str = "ViT-B-32"
    checkpoint: str | None = None
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    cache_dir: str | None = None
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.model_name:
            raise ConfigError("ImageConfig.model_name is empty; use an open_clip architecture such as 'ViT-B-32'")
        if self.model_name.startswith("hf-hub:"):
            raise ConfigError(
                f"ImageConfig.model_name={self.model_name!r} would download from the Hugging Face hub; "
                "urbanrep never downloads: give the architecture name (e.g. 'ViT-B-32') and a local "
                "checkpoint= path"
            )
        if self.batch_size < 1:
            raise ConfigError(f"ImageConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"ImageConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"ImageConfig.precision={self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}"
            )
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as exc:
                raise ConfigError(
                    f"ImageConfig.device={self.device!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'"
                ) from exc


def resolve_device(device: str) -> torch.device:
    """The torch device for ``ImageConfig.device`` (``"auto"`` = CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"ImageConfig.device={device!r} but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """The concrete precision (``fp32``/``bf16``/``fp16``); ``"auto"`` = bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a concrete precision, ``None`` for fp32 (no autocast)."""
    return _AUTOCAST_DTYPES.get(precision)
