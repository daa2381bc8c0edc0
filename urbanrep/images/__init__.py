"""Image encoding with open_clip and the Parquet feature cache.

>>> from urbanrep.images import ImageConfig, encode_images
>>> enc = encode_images(paths, ImageConfig(model_name="ViT-B-32", checkpoint="clip.bin",
...                                        cache_dir="cache/"))
>>> enc.features.shape, enc.ok.all(), enc.failures

open_clip is optional (``pip install 'urbanrep[images]'``) and imported only when an encoder is
built. Weights load from a local checkpoint; nothing is ever downloaded.
"""

from urbanrep.images.cache import FeatureCache
from urbanrep.images.config import TINY_MODEL, ImageConfig, ImageError
from urbanrep.images.encoder import (
    EncodedImages,
    ImageEncoder,
    encode_images,
    encode_tensors,
    import_open_clip,
)

__all__ = [
    "TINY_MODEL",
    "EncodedImages",
    "FeatureCache",
    "ImageConfig",
    "ImageEncoder",
    "ImageError",
    "encode_images",
    "encode_tensors",
    "import_open_clip",
]
