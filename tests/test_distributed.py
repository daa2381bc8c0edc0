"""Data-parallel mini-batch training: two CPU processes (gloo) on NYC-180 with a tiny model.

One spawn of two processes runs every check of the default suite (process start-up dominates):
gradient averaging on a toy module, a 2-process training (ranks keep identical parameters after
every step, rank 0 writes the run folder, the loss goes down), the same run again (reproducible)
and an interrupted-and-resumed run (equal to the uninterrupted one).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from urbanrep.distributed import GradientAverager, Ranks, spawn
from urbanrep.errors import ConfigError, UrbanRepError
from urbanrep.experts.base import ExpertConfig
from urbanrep.fusion import FusionConfig, LossConfig
from urbanrep.minibatch import MiniBatchConfig
from urbanrep.network import ModelConfig
from urbanrep.train import CHECKPOINT_DIR, EMBEDDINGS, LOSS_CSV, MODEL_FILE, TrainConfig

SMALL = ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=8, num_layers=1, heads=2),
                    fusion=FusionConfig(hidden_channels=8), projection_channels=8, ensemble=1,
                    loss=LossConfig(fusion_weight=1.0, fusion_contrast="views"))
TC = TrainConfig(epochs=4, lr=5e-3, device="cpu", log_every=1000, num_threads=1, mode="minibatch",
                 checkpoint_every=1)
BC = MiniBatchConfig(batch_size=45, num_neighbors=(5, 5))  # 4 batches per epoch: 2 steps per rank


def _check_gradient_averaging(ranks: Ranks) -> dict[str, bool]:
    """Toy module: ``a`` used on both ranks, ``b`` on rank 1 only, ``c`` on none."""
    torch.manual_seed(0)
    mod = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(3, 2), "c": torch.nn.Linear(3, 2)})
    x = torch.full((4, 3), float(ranks.rank + 1))
    loss = mod["a"](x).pow(2).sum() + (mod["b"](x).sum() if ranks.rank == 1 else 0.0)
    loss.backward()
    local = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in mod.named_parameters()}
    mean_loss = GradientAverager(ranks)(mod, loss.detach())
    gathered = [None, None]
    torch.distributed.all_gather_object(gathered, (local, float(loss)))
    (g0, l0), (g1, l1) = gathered
    grads = dict(mod.named_parameters())
    return {
        "a_mean": all(torch.allclose(grads[k].grad, (g0[k] + g1[k]) / 2) for k in ("a.weight", "a.bias")),
        "b_half": all(torch.allclose(grads[k].grad, g1[k] / 2) for k in ("b.weight", "b.bias")),
        "c_none": grads["c.weight"].grad is None and grads["c.bias"].grad is None,
        "loss_mean": abs(float(mean_loss) - (l0 + l1) / 2) < 1e-4 * max(1.0, abs(l0 + l1)),
    }


def _worker(graph_path: str, out: str) -> None:
    """One rank: joins the group from the environment, trains four times, saves what it saw."""
    import urbanrep.minibatch as mb
    from urbanrep.distributed import all_gather, process_group
    from urbanrep.graphs import load_graph

    torch.set_num_threads(1)
    data = load_graph(graph_path)
    out_dir = Path(out)
    with process_group(torch.device("cpu")) as ranks:
        report: dict[str, object] = {"ranks": [ranks.rank, ranks.world_size],
                                     "averaging": _check_gradient_averaging(ranks)}
        real_step = mb.optimisation_step
        steps = {"n": 0, "diverged": 0}

        def checked_step(model, *args, **kwargs):
            result = real_step(model, *args, **kwargs)
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            every = all_gather(flat, ranks)
            steps["n"] += 1
            steps["diverged"] += int(not all(torch.equal(every[0], f) for f in every))
            return result

        mb.optimisation_step = checked_step
        try:
            first = mb.train_minibatch(data, SMALL, TC, BC, run_dir=out_dir / "first")
            report["steps"] = steps["n"]
            again = mb.train_minibatch(data, SMALL, TC, BC)
            mb.train_minibatch(data, SMALL, dataclasses.replace(TC, epochs=2), BC, run_dir=out_dir / "split")
            resumed = mb.train_minibatch(data, SMALL, TC, BC, run_dir=out_dir / "split", resume=True)
        finally:
            mb.optimisation_step = real_step
        report["diverged_steps"] = steps["diverged"]
        report["history"] = first.history
        np.savez(out_dir / f"rank{ranks.rank}.npz", first=first.embeddings, again=again.embeddings,
                 resumed=resumed.embeddings, again_total=[r["total"] for r in again.history],
                 resumed_total=[r["total"] for r in resumed.history])
        (out_dir / f"rank{ranks.rank}.json").write_text(json.dumps(report))


def test_two_process_training_on_cpu(nyc, tmp_path: Path) -> None:
    from urbanrep.graphs import save_graph

    graph = tmp_path / "graph.pt"
    save_graph(nyc, {}, graph)
    spawn(_worker, 2, (str(graph), str(tmp_path)))
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    arrays = [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]
    assert [r["ranks"] for r in reports] == [[0, 2], [1, 2]]
    for rep in reports:
        assert rep["averaging"] == {"a_mean": True, "b_half": True, "c_none": True, "loss_mean": True}
        # 180 regions / 45 = 4 batches per epoch, shared by 2 ranks: 2 steps per epoch, 4 epochs
        assert rep["steps"] == 8 and rep["diverged_steps"] == 0
    assert reports[0]["history"] == reports[1]["history"]
    totals = [row["total"] for row in reports[0]["history"]]
    assert len(totals) == 4 and totals[-1] < totals[0]
    # every rank ends with the same embedding; the run repeats exactly; resuming changes nothing
    for key in ("first", "again", "resumed"):
        assert np.array_equal(arrays[0][key], arrays[1][key]), key
    assert np.array_equal(arrays[0]["first"], arrays[0]["again"])
    assert np.array_equal(arrays[0]["first"], arrays[0]["resumed"])
    assert list(arrays[0]["again_total"]) == totals == list(arrays[0]["resumed_total"])
    # rank 0 wrote the run folder: one loss row per epoch, checkpoints, embeddings, model
    first = tmp_path / "first"
    loss = pd.read_csv(first / LOSS_CSV)
    assert list(loss["epoch"]) == [1, 2, 3, 4]
    np.testing.assert_allclose(loss["total"], totals)
    assert (first / MODEL_FILE).exists() and (first / CHECKPOINT_DIR / "epoch_000004.pt").exists()
    emb = pd.read_parquet(first / EMBEDDINGS)
    np.testing.assert_array_equal(emb.drop(columns="region_id").to_numpy(), arrays[0]["first"])
    assert (tmp_path / "split" / LOSS_CSV).read_text() == (first / LOSS_CSV).read_text()
    ckpt = torch.load(first / CHECKPOINT_DIR / "epoch_000004.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rank_states"]) == 2
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_single_process_averager_is_a_no_op() -> None:
    lin = torch.nn.Linear(2, 1)
    lin(torch.ones(1, 2)).sum().backward()
    before = lin.weight.grad.clone()
    assert float(GradientAverager(Ranks())(lin, torch.tensor(3.0))) == 3.0
    assert torch.equal(lin.weight.grad, before)


def test_launch_mistakes_are_named(nyc, monkeypatch, tmp_path: Path) -> None:
    from urbanrep.model import UrbanRep
    from urbanrep.runconfig import RunConfig
    from urbanrep.train import train

    with pytest.raises(ConfigError, match="train.mode=minibatch"):
        UrbanRep(RunConfig(model=SMALL, train=dataclasses.replace(TC, mode="full"))).fit(nyc, nproc=2)
    with pytest.raises(ConfigError, match="nproc"):
        spawn(print, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.mode=minibatch"):  # full-graph training under torchrun
        train(nyc, SMALL, dataclasses.replace(TC, mode="full"))
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        from urbanrep.minibatch import train_minibatch

        train_minibatch(nyc, SMALL, TC, BC)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        train_minibatch(nyc, SMALL, TC, BC)


def test_a_failing_process_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UrbanRepError, match="training process failed"):
        spawn(_fail, 1, ())


def _fail() -> None:
    raise ValueError("boom")
