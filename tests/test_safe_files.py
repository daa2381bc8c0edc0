"""Opening a file never runs code: pickle-free region graph files, and planted payloads everywhere.

The payload is the one of issue 19: an object whose ``__reduce__`` returns
``(os.system, ("touch MARKER",))``, pickled into every kind of file urbanrep reads (graph files,
model files, checkpoints, config files, bundle manifests and layers, run-folder tables, the image
feature cache, image checkpoints). Unpickling it anywhere would create ``MARKER``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import grid_bundle
from tests.helpers import assert_same_graph
from urbanrep.cli import main
from urbanrep.errors import UrbanRepError
from urbanrep.experts.testing import random_region_graph
from urbanrep.graphs import GraphConfig, build_graph, load_graph, save_graph
from urbanrep.graphs.io import graph_file_kind
from urbanrep.graphs.safe_format import GRAPH_FORMAT, graph_to_tensors, layout_to_json

TINY = ["--set", "train.epochs=2", "--set", "train.num_threads=1", "--set", "model.expert.hidden_channels=8",
        "--set", "model.expert.out_channels=8", "--set", "model.projection_channels=8"]
ALL = ("poi", "mobility", "landuse", "road", "remote_sensing", "street_view")


class Payload:
    """Runs ``touch marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_the_payload_fires_when_unpickled(tmp_path: Path) -> None:
    """Control: the payload is live, so a missing marker below means nothing unpickled it."""
    marker = tmp_path / "MARKER"
    _torch_payload(tmp_path / "p.pt", marker)
    torch.load(tmp_path / "p.pt", weights_only=False)
    assert marker.exists()


def _torch_payload(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": Payload(marker)}, path)


def _pickle_payload(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))


def _same_values(a: Any, b: Any) -> None:
    """Non-tensor attributes equal *and* of the same Python types, all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, list | tuple):
        for x, y in zip(a, b, strict=True):
            _same_values(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same_values(a[k], b[k])
    elif not torch.is_tensor(a):
        assert a == b


def _assert_identical(a: Any, b: Any) -> None:
    assert_same_graph(a, b)
    for sa, sb in zip(a.stores, b.stores, strict=True):
        assert list(sa.keys()) == list(sb.keys())
        for key, value in sa.items():
            _same_values(value, sb[key])


# --------------------------------------------------------------------------- the safe graph format


@pytest.fixture(scope="module")
def full_graph() -> Any:
    """Every modality, image nodes, per-slice mobility edge_attr, masked regions."""
    return random_region_graph(40, ALL, seed=1, num_slices=3, images_per_region=2.0, mask_rate=0.2)


@pytest.fixture(scope="module")
def grid_graph() -> Any:
    """String region ids, raw POIs and an OD aggregate, as the ETL builds them."""
    return build_graph(grid_bundle(3), GraphConfig())[0]


@pytest.mark.parametrize("which", ["nyc", "full_graph", "grid_graph"])
def test_roundtrip_is_identical_without_unpickling(which: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = request.getfixturevalue(which)
    path = tmp_path / "graph.pt"
    save_graph(data, {"bundle": which}, path)
    assert graph_file_kind(path) == "safetensors"

    def no_unpickling(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("load_graph unpickled something")

    for target in ("torch.load", "pickle.load", "pickle.loads", "pickle.Unpickler"):
        monkeypatch.setattr(target, no_unpickling)
    loaded = load_graph(path)
    _assert_identical(data, loaded)
    assert json.loads((tmp_path / "graph.json").read_text())["file_format"].startswith("safetensors")


def test_plain_attributes_keep_their_types(nyc: Any, tmp_path: Path) -> None:
    data = nyc.clone()
    data.note = ("a", 1, [2.5, None, float("-inf")], {"k": (True, -3)}, {"": []})
    data["region"].extra = torch.arange(6, dtype=torch.int16).view(2, 3).t()  # a non-contiguous view
    data["region"].shared = data["region"].pos[:, 0]  # shares storage with pos
    save_graph(data, {}, tmp_path / "g.pt")
    _assert_identical(data, load_graph(tmp_path / "g.pt"))

    data.bad = np.float32(1.0)
    with pytest.raises(UrbanRepError, match=r"graph\.bad holds a numpy\.float32"):
        save_graph(data, {}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_legacy_pickle_graphs_need_the_explicit_flag(nyc: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    legacy = tmp_path / "graph.pt"
    torch.save(nyc, legacy)  # what urbanrep <= 0.1 wrote
    assert graph_file_kind(legacy) == "pickle"
    with pytest.raises(UrbanRepError, match="can run code") as err:
        load_graph(legacy)
    assert "urbanrep build-graphs BUNDLE --out" in str(err.value) and "--trust-legacy-pickle" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="urbanrep.graphs.io"):
        loaded = load_graph(legacy, trust_legacy_pickle=True)
    assert "can run any code" in caplog.text
    _assert_identical(nyc, loaded)

    capsys.readouterr()
    assert main(["-q", "info", str(legacy)]) == 1
    err_text = capsys.readouterr().err.strip()
    assert err_text.startswith("urbanrep: error:") and "\n" not in err_text and "--trust-legacy-pickle" in err_text
    assert main(["-q", "info", str(legacy), "--trust-legacy-pickle"]) == 0
    assert json.loads(capsys.readouterr().out)["nodes"]["region"] == 180
    # re-saving a trusted legacy graph gives a file that opens safely
    save_graph(loaded, {}, legacy)
    _assert_identical(nyc, load_graph(legacy))


def _crafted(path: Path, nyc: Any, how: str) -> None:
    tensors, layout = graph_to_tensors(nyc)
    meta = {"format": GRAPH_FORMAT, "format_version": "2", "layout": layout_to_json(layout)}
    if how == "other_format":
        meta["format"] = "something-else"
    elif how == "layout_is_a_pickle":
        meta["layout"] = pickle.dumps(Payload(path.with_name("MARKER"))).decode("latin-1")
    elif how == "missing_tensor":
        tensors.pop("node/region/pos")
    elif how == "unused_tensor":
        tensors["node/region/surprise"] = torch.zeros(1)
    elif how == "off_schema":
        layout["stores"][0]["attrs"] = [a if a[0] != "schema_version" else [a[0], "value", 99]
                                        for a in layout["stores"][0]["attrs"]]
        meta["layout"] = layout_to_json(layout)
    elif how == "malformed_layout":
        meta["layout"] = json.dumps({"format": GRAPH_FORMAT, "format_version": 2, "stores": [{"kind": "graph",
                                                                                              "attrs": [[1, 2]]}]})
    save_file(tensors, str(path), metadata=meta)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize("how", ["other_format", "layout_is_a_pickle", "missing_tensor", "unused_tensor",
                                 "off_schema", "malformed_layout", "truncated"])
def test_crafted_graph_files_are_one_line_errors(how: str, nyc: Any, tmp_path: Path) -> None:
    path = tmp_path / "graph.pt"
    _crafted(path, nyc, how)
    with pytest.raises(UrbanRepError) as err:
        load_graph(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "MARKER").exists()


# --------------------------------------------------------------------------- planted payloads


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, nyc: Any) -> dict[str, Path]:
    """A good bundle, graph file and run folder to plant payloads into (copies are made per case)."""
    from urbanrep.bundle import write_bundle
    from urbanrep.datasets import load_dataset
    from urbanrep.runconfig import load_run_config

    root = tmp_path_factory.mktemp("world")
    write_bundle(load_dataset(None), root / "bundle")
    save_graph(nyc, {}, root / "graph.pt")
    run = root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(load_run_config(None, [s for s in TINY if s != "--set"]).to_dict()))
    return {"root": root, "bundle": root / "bundle", "graph": root / "graph.pt", "run": run}


def _ext_payload_table(table: pa.Table, column: str, marker: Path) -> pa.Table:
    """``column`` as binary carrying the pyarrow<14.0.1 pickled extension-type payload (CVE-2023-47248)."""
    meta = {b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": pickle.dumps(Payload(marker))}
    i = table.schema.get_field_index(column)
    values = pa.array([str(v).encode() for v in table.column(column).to_pylist()], pa.binary())
    return table.set_column(i, pa.field(column, pa.binary(), metadata=meta), values)


def _plant(case: str, w: dict[str, Path], tmp: Path, marker: Path) -> tuple[list[list[str]], Any]:
    """Plant the payload for ``case``; returns the CLI commands that read the file and an API call."""
    from urbanrep.bundle import read_bundle
    from urbanrep.model import UrbanRep
    from urbanrep.runconfig import load_run_config, read_run_config

    out = str(tmp / "out")
    if case in ("graph_torch_save", "graph_pickle"):
        g = tmp / "graph.pt"
        (_torch_payload if case == "graph_torch_save" else _pickle_payload)(g, marker)
        return [["info", str(g)], ["train", str(g), "--out", out, *TINY]], lambda: load_graph(g)
    if case in ("model", "run_config"):
        run = tmp / "run"
        shutil.copytree(w["run"], run)
        if case == "model":
            _torch_payload(run / "model.pt", marker)
        else:
            _pickle_payload(run / "config.json", marker)
            _torch_payload(run / "model.pt", marker)  # present, so that config.json is what fails first
        api = (lambda: UrbanRep.load(run)) if case == "model" else (lambda: read_run_config(run))
        return [["embed", str(run), str(w["bundle"]), "--out", out]], api
    if case == "checkpoint":
        run = tmp / "run"
        _torch_payload(run / "checkpoints" / "epoch_000001.pt", marker)
        cmd = ["train", str(w["graph"]), "--out", str(run), "--resume", *TINY]

        def api() -> Any:
            from urbanrep.pipeline import train_stage

            return train_stage(w["graph"], run, load_run_config(None, [s for s in TINY if s != "--set"]), resume=True)
        return [cmd], api
    if case.startswith("config_"):
        suffix = case.split("_", 1)[1]
        cfg = tmp / f"config.{suffix.replace('_tag', '')}"
        if suffix == "yaml_tag":
            cfg.write_text(f'train: !!python/object/apply:os.system ["touch {marker}"]\n')
        else:
            _pickle_payload(cfg, marker)
        return [["train", str(w["graph"]), "--out", out, "--config", str(cfg)]], lambda: load_run_config(cfg)
    if case == "set_override":
        value = f'train.epochs=!!python/object/apply:os.system ["touch {marker}"]'
        return [["train", str(w["graph"]), "--out", out, "--set", value]], lambda: load_run_config(None, [value])
    if case.startswith("bundle_"):
        b = tmp / "bundle"
        shutil.copytree(w["bundle"], b)
        if case == "bundle_manifest":
            _pickle_payload(b / "manifest.json", marker)
        elif case == "bundle_layer_pickle":
            _pickle_payload(b / "trips.parquet", marker)
        else:  # bundle_layer_extension_type
            table = pq.read_table(b / "regions.parquet")
            pq.write_table(_ext_payload_table(table, "region_id", marker), b / "regions.parquet")
        cmds = [["validate", str(b)], ["info", str(b)], ["build-graphs", str(b), "--out", str(tmp / "g.pt")]]
        return cmds, lambda: read_bundle(b)
    if case in ("run_embeddings", "run_metrics"):
        run = tmp / "run"
        shutil.copytree(w["bundle"], run / "bundle")
        if case == "run_embeddings":
            _pickle_payload(run / "embeddings.parquet", marker)
            cmds = [["evaluate", str(run)], ["info", str(run)], ["export", str(run)]]
        else:
            pd_emb = np.zeros((180, 2), np.float32)
            import pandas as pd

            pd.DataFrame({"region_id": range(180), "emb_000": pd_emb[:, 0]}).to_parquet(run / "embeddings.parquet")
            _pickle_payload(run / "metrics.json", marker)
            cmds = [["info", str(run)]]

        def api() -> Any:
            from urbanrep.pipeline import evaluate_stage

            return evaluate_stage(run, read_bundle(run / "bundle"))
        return cmds, (api if case == "run_embeddings" else None)
    raise AssertionError(case)


CASES = ["graph_torch_save", "graph_pickle", "model", "run_config", "checkpoint", "config_yaml_tag",
         "config_yaml", "config_toml", "config_json", "set_override", "bundle_manifest", "bundle_layer_pickle",
         "bundle_layer_extension_type", "run_embeddings", "run_metrics"]


@pytest.mark.parametrize("case", CASES)
def test_planted_payload_never_runs(case: str, world: dict[str, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "MARKER"
    commands, api = _plant(case, world, tmp_path, marker)
    for argv in commands:
        capsys.readouterr()
        assert main(["-q", *argv]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("urbanrep: error:") and "\n" not in err and "Traceback" not in err, (argv, err)
        assert not marker.exists(), argv
    if api is not None:
        with pytest.raises(UrbanRepError) as exc:
            api()
        assert "\n" not in str(exc.value)
    assert not marker.exists()


def test_planted_payload_in_source_data(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``urbanrep prepare`` reads source .npy files with allow_pickle=False."""
    marker = tmp_path / "MARKER"
    root = tmp_path / "data"
    shutil.copytree(data_root / "nyc_manhattan180", root / "nyc_manhattan180")
    np.save(root / "nyc_manhattan180" / "features" / "hafusion_poi_dist.npy",
            np.array([Payload(marker)], dtype=object), allow_pickle=True)
    capsys.readouterr()
    argv = ["-q", "prepare", "nyc_manhattan180", "--data-root", str(root), "--out", str(tmp_path / "b")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("urbanrep: error:") and "\n" not in err and "hafusion_poi_dist.npy" in err, err
    assert not marker.exists()


def test_planted_payload_in_the_image_cache_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cache is rebuildable: a poisoned part is skipped with a warning naming it; nothing runs."""
    from urbanrep.images.cache import FeatureCache

    marker = tmp_path / "MARKER"
    cache = FeatureCache(tmp_path / "cache", "tiny|random")
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG fake")
    st = image.stat()
    cache.add(np.array([str(image)]), np.array([st.st_size]), np.array([st.st_mtime_ns]), np.ones((1, 4), np.float32))
    good = cache.parts()[0]
    _pickle_payload(cache.folder / "part-00000000000000000001-0-pickle.parquet", marker)
    table = pq.read_table(good)
    table = table.set_column(table.schema.get_field_index("feature"), "feature",
                             pa.array([b"x"] * len(table), pa.binary()))
    pq.write_table(_ext_payload_table(table, "feature", marker),
                   cache.folder / "part-00000000000000000002-0-ext.parquet")
    with caplog.at_level(logging.WARNING, logger="urbanrep.images.cache"):
        hit, feats = cache.lookup(np.array([str(image)]), np.array([st.st_size]), np.array([st.st_mtime_ns]))
    assert hit.tolist() == [True] and feats.shape == (1, 4)  # the good part still serves
    assert "pickle.parquet" in caplog.text and "ext.parquet" in caplog.text
    assert not marker.exists()


def test_planted_payload_in_an_image_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("open_clip")
    from urbanrep.images import TINY_MODEL, ImageConfig, ImageEncoder

    marker = tmp_path / "MARKER"
    ckpt = tmp_path / "clip.pt"
    _torch_payload(ckpt, marker)
    with pytest.raises(UrbanRepError, match="cannot load image checkpoint"):
        _ = ImageEncoder(ImageConfig(model_name=TINY_MODEL, device="cpu", checkpoint=str(ckpt))).model
    assert not marker.exists()
