"""urbanrep.images: open_clip encoding of the 24 real satellite tiles with the tiny CLIP, and the cache.

Real data: ``<data root>/imagery_samples`` (24 zoom-16 tiles from the UrbanCLIP toolkit, paths from
``tiles.csv``). Tests that need it skip when the data root is absent.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("open_clip")

from urbanrep.errors import ConfigError, UrbanRepError  # noqa: E402
from urbanrep.images import (  # noqa: E402
    TINY_MODEL,
    FeatureCache,
    ImageConfig,
    ImageEncoder,
    ImageError,
    encode_images,
    encode_tensors,
)
from urbanrep.images import encoder as encoder_mod  # noqa: E402
from urbanrep.images.cache import MAX_PARTS  # noqa: E402

TINY = ImageConfig(model_name=TINY_MODEL, batch_size=8, device="cpu")
TINY_DIM = 32


def _cfg(**kw: object) -> ImageConfig:
    return ImageConfig(**{**TINY.__dict__, **kw})


@pytest.fixture(scope="module")
def tiles() -> list[str]:
    """Absolute paths of the 24 real tiles, in tiles.csv order."""
    from urbanrep.datasets import default_data_root

    root = default_data_root() / "imagery_samples"
    if not (root / "tiles.csv").is_file():
        pytest.skip(f"{root}/tiles.csv not present (set URBANREP_DATA to the shared data folder)")
    files = pd.read_csv(root / "tiles.csv")["file"]
    return [str(root / f) for f in files]


@pytest.fixture(scope="module")
def tiny_tiles(tiles: list[str]) -> np.ndarray:
    """Features of the 24 tiles with the tiny model, seed 0, no cache."""
    res = encode_images(tiles, TINY)
    assert res.ok.all()
    return res.features


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every image decode (the DataLoader runs in-process with num_workers=0)."""
    calls: list[str] = []
    real = encoder_mod._read_image

    def counting(path: str):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(encoder_mod, "_read_image", counting)
    return calls


def test_encode_real_tiles(tiles: list[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="urbanrep.images"):
        res = encode_images(tiles, TINY)
    assert res.features.shape == (24, TINY_DIM) and res.features.dtype == np.float32
    assert np.isfinite(res.features).all()
    np.testing.assert_allclose(np.linalg.norm(res.features, axis=1), 1.0, atol=1e-5)
    assert res.ok.dtype == bool and res.ok.all() and res.failures == []
    assert res.model_id.startswith(f"{TINY_MODEL}|random:seed=0")
    # distinct tiles give distinct features
    sim = res.features @ res.features.T
    assert (sim[~np.eye(24, dtype=bool)] < 1 - 1e-6).all()
    assert "randomly initialised" in caplog.text


def test_corrupt_and_missing_images_are_skipped(tiles: list[str], tiny_tiles: np.ndarray,
                                                tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.jpg"
    data = Path(tiles[0]).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    paths = [tiles[3], str(truncated), str(missing), tiles[5], str(text), str(tmp_path)]
    res = encode_images(paths, TINY)
    assert res.ok.tolist() == [True, False, False, True, False, False]
    reasons = dict(res.failures)
    assert set(reasons) == {str(truncated), str(missing), str(text), str(tmp_path)}
    assert reasons[str(missing)] == "file not found"
    assert reasons[str(truncated)].startswith("cannot decode image")
    assert reasons[str(tmp_path)] == "not a regular file"
    assert not res.features[~res.ok].any()
    # the good rows stay aligned with their paths
    np.testing.assert_allclose(res.features[[0, 3]], tiny_tiles[[3, 5]], atol=1e-6)


def test_duplicates_decoded_once(tiles: list[str], tiny_tiles: np.ndarray, count_decodes: list[str]) -> None:
    res = encode_images([tiles[1], tiles[2], tiles[1]], TINY)
    assert len(count_decodes) == 2
    np.testing.assert_array_equal(res.features[0], res.features[2])
    np.testing.assert_allclose(res.features[:2], tiny_tiles[[1, 2]], atol=1e-6)


def test_cache_hit_skips_decoding(tiles: list[str], tmp_path: Path, count_decodes: list[str]) -> None:
    cfg = _cfg(cache_dir=str(tmp_path / "cache"))
    first = encode_images(tiles, cfg)
    assert len(count_decodes) == 24 and first.n_decoded == 24 and first.n_cached == 0
    assert list((tmp_path / "cache").rglob("part-*.parquet"))
    count_decodes.clear()
    second = encode_images(tiles[::-1], cfg)
    assert count_decodes == [] and second.n_cached == 24 and second.n_decoded == 0
    np.testing.assert_array_equal(second.features, first.features[::-1])
    # another seed is another model: no hits
    third = encode_images(tiles[:2], _cfg(cache_dir=str(tmp_path / "cache"), seed=1))
    assert third.n_cached == 0 and len(count_decodes) == 2


def test_changed_file_invalidates_cache(tiles: list[str], tiny_tiles: np.ndarray, tmp_path: Path,
                                        count_decodes: list[str]) -> None:
    img = tmp_path / "tile.jpg"
    shutil.copyfile(tiles[0], img)
    cfg = _cfg(cache_dir=str(tmp_path / "cache"))
    before = encode_images([img], cfg)
    np.testing.assert_allclose(before.features[0], tiny_tiles[0], atol=1e-6)
    shutil.copyfile(tiles[7], img)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    count_decodes.clear()
    after = encode_images([img], cfg)
    assert len(count_decodes) == 1 and after.n_cached == 0
    np.testing.assert_allclose(after.features[0], tiny_tiles[7], atol=1e-6)
    count_decodes.clear()
    again = encode_images([img], cfg)
    assert count_decodes == [] and again.n_cached == 1
    np.testing.assert_array_equal(again.features, after.features)


def test_corrupt_cache_part_is_ignored(tiles: list[str], tiny_tiles: np.ndarray, tmp_path: Path) -> None:
    cfg = _cfg(cache_dir=str(tmp_path / "cache"))
    encode_images(tiles[:2], cfg)
    (part,) = (tmp_path / "cache").rglob("part-*.parquet")
    part.write_bytes(b"garbage")
    res = encode_images(tiles[:2], cfg)
    assert res.n_cached == 0 and res.ok.all()
    np.testing.assert_allclose(res.features, tiny_tiles[:2], atol=1e-6)


def test_feature_cache_compaction_keeps_newest(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, "m|x")
    rng = np.random.default_rng(0)
    paths = np.array(["/a.jpg", "/b.jpg"], dtype=object)
    for k in range(MAX_PARTS + 1):
        cache.add(paths[[k % 2]], np.array([k]), np.array([k]), rng.standard_normal((1, 4)).astype(np.float32))
    last = rng.standard_normal((1, 4)).astype(np.float32)
    cache.add(paths[[0]], np.array([99]), np.array([99]), last)
    assert len(cache.parts()) <= 2
    hit, feats = cache.lookup(paths, np.array([99, MAX_PARTS - 1]), np.array([99, MAX_PARTS - 1]))
    assert hit.tolist() == [True, True]
    np.testing.assert_array_equal(feats[0], last[0])
    stale, _ = cache.lookup(paths[[0]], np.array([0]), np.array([0]))
    assert not stale.any()
    assert not FeatureCache(tmp_path, "m|y").lookup(paths, np.array([99, 0]), np.array([99, 0]))[0].any()


def test_same_seed_same_features() -> None:
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = encode_tensors(x, TINY), encode_tensors(x, TINY)
    c = encode_tensors(x, _cfg(seed=1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, TINY_DIM) and not np.allclose(a, c, atol=1e-3)
    state = torch.get_rng_state()
    ImageEncoder(TINY).model  # noqa: B018 -- builds the model
    assert torch.equal(state, torch.get_rng_state()), "building a model must not touch the global RNG"
    assert ImageEncoder(TINY).model_id != ImageEncoder(_cfg(seed=1)).model_id


def test_tensor_and_file_routes_agree(tiles: list[str], tiny_tiles: np.ndarray) -> None:
    enc = ImageEncoder(TINY)
    batch = torch.stack([enc.transform(encoder_mod._read_image(p)) for p in tiles[:4]])
    np.testing.assert_allclose(enc.encode_tensors(batch), tiny_tiles[:4], atol=1e-6)
    with pytest.raises(ImageError, match="64x64"):
        enc.encode_tensors(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ImageError, match=r"\[B, 3, H, W\]"):
        enc.encode_tensors(torch.zeros(3, 64, 64))


def test_bf16_autocast_close_to_fp32(tiles: list[str], tiny_tiles: np.ndarray) -> None:
    res = encode_images(tiles[:6], _cfg(precision="bf16"))
    cos = (res.features * tiny_tiles[:6]).sum(1)
    assert (cos > 0.98).all()
    np.testing.assert_allclose(np.linalg.norm(res.features, axis=1), 1.0, atol=1e-5)


def test_dataloader_workers_match(tiles: list[str], tiny_tiles: np.ndarray) -> None:
    res = encode_images(tiles[:6], _cfg(num_workers=1, batch_size=4))
    np.testing.assert_allclose(res.features, tiny_tiles[:6], atol=1e-6)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "clip.bin"
    with pytest.raises(ImageError, match="does not exist") as err:
        encode_images([], _cfg(checkpoint=str(missing)))
    assert str(missing) in str(err.value)


def test_corrupt_checkpoint_is_a_clear_error(tiles: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "clip.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ImageError, match="cannot load image checkpoint") as err:
        encode_images(tiles[:1], _cfg(checkpoint=str(bad)))
    assert str(bad) in str(err.value)
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ImageError, match="wrong.pt"):
        encode_images(tiles[:1], _cfg(checkpoint=str(wrong)))


def test_checkpoint_from_tiny_model_roundtrips(tiles: list[str], tiny_tiles: np.ndarray, tmp_path: Path) -> None:
    source = ImageEncoder(TINY)
    plain = tmp_path / "tiny.pt"
    torch.save(source.model.state_dict(), plain)
    res = encode_images(tiles, _cfg(checkpoint=str(plain), seed=123))
    np.testing.assert_array_equal(res.features, tiny_tiles)
    assert "|sha256:" in res.model_id
    # a training-style checkpoint ({"state_dict": ...} with DDP "module." prefixes) loads too
    wrapped = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}},
               wrapped)
    res2 = encode_images(tiles[:3], _cfg(checkpoint=str(wrapped), seed=5))
    # another batch size may take another BLAS path: equal up to float32 rounding
    np.testing.assert_allclose(res2.features, tiny_tiles[:3], rtol=1e-5, atol=1e-6)


def test_config_errors() -> None:
    with pytest.raises(ImageError, match="unknown open_clip architecture"):
        ImageEncoder(_cfg(model_name="ViT-B-33x"))
    with pytest.raises(ConfigError, match="never downloads"):
        ImageConfig(model_name="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    with pytest.raises(ConfigError, match="precision"):
        ImageConfig(precision="int8")
    with pytest.raises(ConfigError, match="batch_size"):
        ImageConfig(batch_size=0)
    assert issubclass(ImageError, UrbanRepError)


def test_missing_open_clip_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImageError, match=r"pip install 'urbanrep\[images\]'"):
        encode_images([], TINY)


def test_empty_input() -> None:
    res = encode_images([], TINY)
    assert res.features.shape == (0, TINY_DIM) and res.ok.shape == (0,) and res.failures == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu(tiles: list[str], tiny_tiles: np.ndarray) -> None:
    res = encode_images(tiles, _cfg(device="cuda", precision="auto"))
    assert res.ok.all()
    assert ((res.features * tiny_tiles).sum(1) > 0.98).all()
