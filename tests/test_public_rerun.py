"""experiments.peers.public_rerun: a peer's public code run in a child process, rows matched and published.

HAFusion's release is not part of urbanrep, so these tests drive a stand-in work tree with the same
interface (``parse_args.args``, ``HAFusion_train`` exposing the model, its loss and the loaded
arrays) on Chicago-77's real arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

STAND_IN = {
    "parse_args.py": """
import argparse
parser = argparse.ArgumentParser()
for name in ("mobility_dist", "POI_dist", "landUse_dist", "mobility_adj", "POI_simi", "landUse_simi"):
    parser.add_argument("--" + name)
parser.add_argument("--city", default="NY")
parser.add_argument("--epochs", type=int, default=2000)
parser.add_argument("--embedding_size", type=int, default=8)
parser.add_argument("--learning_rate", type=float, default=0.01)
parser.add_argument("--weight_decay", type=float, default=0.0)
args = parser.parse_args()
args.data_path = "./nowhere"
args.POI_dim, args.landUse_dim, args.region_num, args.d_prime, args.d_m, args.c = 26, 12, 77, 4, 4, 4
""",
    "utils.py": """
import numpy as np, torch
from parse_args import args
def load_data():
    load = lambda key: torch.tensor(np.load(args.data_path + getattr(args, key)), dtype=torch.float32)
    return [load("POI_dist"), load("landUse_dist")], load("mobility_adj"), load("POI_simi"), load("landUse_simi")
""",
    "HAFusion_Model.py": """
import torch
class HAFusion(torch.nn.Module):
    def __init__(self, poi_dim, lu_dim, n, size, *rest):
        super().__init__()
        self.lin = torch.nn.Linear(poi_dim + lu_dim, size)
    def forward(self, features):
        self.emb = self.lin(torch.log1p(torch.cat(features, 1)))
        return self.emb, self.emb, self.emb, self.emb
    def out_feature(self):
        return self.emb
""",
    "HAFusion_train.py": """
import torch
import utils
from HAFusion_Model import HAFusion
features, mob_adj, poi_sim, land_sim = utils.load_data()
class ModelLoss(torch.nn.Module):
    def forward(self, s, t, mob, p, poi_sim, l, land_sim):
        return ((torch.nn.functional.cosine_similarity(p.unsqueeze(1), p.unsqueeze(0), dim=2) - poi_sim) ** 2).mean()
""",
}
for _module in ("tasks_chk", "tasks_crime", "tasks_serviceCall"):  # the release's task code: (mae, rmse, r2)
    STAND_IN[f"tasks_Chi/{_module}.py"] = "def do_tasks(embs, display=True):\n    return 0.0, 0.0, float(embs.mean())\n"


@pytest.fixture()
def stand_in(tmp_path: Path) -> Path:
    repo = tmp_path / "release"
    (repo / "tasks_Chi").mkdir(parents=True)
    for name, text in STAND_IN.items():
        (repo / name).write_text(text)
    return repo


def test_rerun_trains_in_the_work_tree_scores_and_publishes(stand_in: Path, data_root: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments import benchmark
    from experiments.peers import public_rerun

    published = tmp_path / "public_reruns.json"
    monkeypatch.setattr(public_rerun, "PUBLISHED", published)
    out = tmp_path / "runs"
    other = tmp_path / "other"
    other.mkdir()
    ids = np.arange(1, 78)
    pd.DataFrame({"region_id": ids[::-1], "a": ids[::-1] * 2.0}).to_parquet(other / "chicago77_x.parquet")
    argv = ["--repo", str(stand_in), "--cities", "chicago77", "--seeds", "0", "1", "--epochs", "3",
            "--strict-seeds", "2", "--out", str(out), "--data-root", str(data_root)]
    assert public_rerun.main([*argv, "--also", f"x={other}/{{city}}_*.parquet", "--publish"]) == 0
    emb = np.load(out / "hafusion_public_chicago77_s0_e3.npy")
    assert emb.shape == (77, 8)
    meta = json.loads((out / "hafusion_public_chicago77_s0_e3.json").read_text())
    assert meta["epochs"] == 3 and meta["seed"] == 0
    assert not np.array_equal(emb, np.load(out / "hafusion_public_chicago77_s1_e3.npy"))  # the seed is used
    row = json.loads(published.read_text())["chicago77"]["hafusion_public"]
    assert row["kind"] == "reference" and row["paper"]["n_seeds"] == 2
    assert {"check_in", "crime", "service_call"} <= set(row["strict"]) and "crime" in row["spatial"]
    # the release's task code saw each embedding in region order (the stand-in returns its mean)
    release = row["release_protocol"]
    assert release["x"]["crime"] == pytest.approx(78.0) and release["x"]["n_seeds"] == 1
    means = [float(np.load(out / f"hafusion_public_chicago77_s{s}_e3.npy").mean()) for s in (0, 1)]
    assert release["hafusion_public"]["check_in"] == pytest.approx(np.mean(means), rel=1e-5)
    # the benchmark shows the published row beside its own, with mean ± std over seeds
    monkeypatch.setattr(public_rerun, "PUBLISHED", published)
    assert benchmark.reference_rows("chicago77")["hafusion_public"] == row
    assert benchmark.reference_rows("nyc180") == {}
    lines = benchmark.format_city("chicago77", {"title": "Chicago", "n_regions": 77, "modalities": ["poi"],
                                                "tasks": ["crime"], "methods": {"hafusion_public": row},
                                                "published": {}}, 2)
    assert any(line.startswith("| hafusion_public | ") and " ± " in line for line in lines)
    # a second run reuses the embeddings: same file, same row
    before = (out / "hafusion_public_chicago77_s0_e3.npy").stat().st_mtime_ns
    assert public_rerun.main(argv) == 0
    assert (out / "hafusion_public_chicago77_s0_e3.npy").stat().st_mtime_ns == before


def test_a_folder_that_is_not_the_release_is_refused(tmp_path: Path) -> None:
    from experiments.peers import public_rerun

    with pytest.raises(SystemExit, match="not a work tree of github.com/MiRuacle24/HAFusion"):
        public_rerun.main(["--repo", str(tmp_path), "--out", str(tmp_path / "o")])


def test_a_failing_release_names_its_error(stand_in: Path, data_root: Path, tmp_path: Path) -> None:
    from experiments.peers import public_rerun

    (stand_in / "HAFusion_train.py").write_text("raise RuntimeError('weights went missing')\n")
    with pytest.raises(SystemExit, match="chicago77 seed 0 failed in .*RuntimeError: weights went missing"):
        public_rerun.main(["--repo", str(stand_in), "--seeds", "0", "--epochs", "1", "--out", str(tmp_path / "o"),
                           "--data-root", str(data_root)])


MGFN_STAND_IN = {
    "mgfn.py": """
import torch
class MGFN(torch.nn.Module):
    def __init__(self, graph_num, node_num, output_dim):
        super().__init__()
        self.lin = torch.nn.Linear(graph_num * node_num, output_dim)
    def forward(self, x):
        self.feature = self.lin(torch.log1p(x.permute(1, 0, 2).reshape(x.shape[1], -1)))
        return self.feature, self.feature
    def out_feature(self):
        return self.feature
def train_model(input_tensor, label, criterion=None, model=None):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        s, t = model(input_tensor)
        loss = -(torch.log_softmax(s @ t.T, -1) * label).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    print("Epoch 0, Loss", float(loss))
""",
    "tasks.py": "def do_tasks(embs, display=True):\n    return 0, 0, 1.0, 0, 0, 2.0, 0.5, 0.25\n",
}


def test_mgfn_release_runs_on_its_one_city(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.peers import public_rerun

    repo = tmp_path / "mgfn"
    repo.mkdir()
    for name, text in MGFN_STAND_IN.items():
        (repo / name).write_text(text)
    published = tmp_path / "public_reruns.json"
    monkeypatch.setattr(public_rerun, "PUBLISHED", published)
    with pytest.raises(SystemExit):  # its script fixes 2,000 epochs; its arrays are NYC-180's only
        public_rerun.parse_args(["--release", "mgfn", "--repo", str(repo), "--out", "o", "--epochs", "5"])
    with pytest.raises(SystemExit):
        public_rerun.parse_args(["--release", "mgfn", "--repo", str(repo), "--out", "o", "--cities", "chicago77"])
    out = tmp_path / "runs"
    assert public_rerun.main(["--release", "mgfn", "--repo", str(repo), "--seeds", "0", "--strict-seeds", "2",
                              "--out", str(out), "--data-root", str(data_root), "--publish"]) == 0
    assert np.load(out / "mgfn_public_nyc180_s0_e2000.npy").shape == (180, 96)
    row = json.loads(published.read_text())["nyc180"]["mgfn_public"]
    assert row["release_protocol"]["mgfn_public"]["nmi"] == 0.5 and "nmi" in row["paper"]
    assert "MGFN" in row["description"] and "tasks.py" in row["scorer"]
