"""The glibc malloc tuning of the training process (urbanrep/allocator.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from urbanrep.allocator import ENV_SWITCH, allocator_blocker

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize(("env", "reason"), [
    ({ENV_SWITCH: "0"}, ENV_SWITCH),
    ({ENV_SWITCH: "off"}, ENV_SWITCH),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
    ({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, "tcmalloc"),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "already tuned"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "already tuned"),
])
def test_blocked_where_it_should_leave_the_process_alone(env: dict[str, str], reason: str) -> None:
    why = allocator_blocker(env)
    assert why is not None and reason in why


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_not_blocked_on_plain_glibc() -> None:
    assert allocator_blocker({}) is None
    assert allocator_blocker({ENV_SWITCH: "1", "LD_PRELOAD": ""}) is None


_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    import torch
    from urbanrep import allocator
    from urbanrep.experts.testing import random_region_graph
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, train
    torch.set_num_threads(1)
    data = random_region_graph(60, ("poi", "mobility", "landuse"), seed=3, num_slices=3)
    res = train(data, ModelConfig(ensemble=2), TrainConfig(epochs=3, device="cpu", checkpoint_every=0,
                                                           tune_malloc=sys.argv[1] == "1"))
    print(json.dumps({"tuned": allocator._applied, "losses": [r["total"] for r in res.history],
                      "emb": res.embeddings[:5].tolist()}))
""")


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuned_training_is_bit_identical_and_switchable() -> None:
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH}

    def run(flag: str, extra: dict[str, str]) -> dict:
        out = subprocess.run([sys.executable, "-c", _SCRIPT, flag], capture_output=True, text=True, check=True,
                             env={**env, **extra}, timeout=300)
        return json.loads(out.stdout.strip().splitlines()[-1])

    tuned, env_off = run("1", {}), run("1", {ENV_SWITCH: "0"})
    assert tuned["tuned"] and not env_off["tuned"]
    assert tuned["losses"] == env_off["losses"]
    assert tuned["emb"] == env_off["emb"]


def test_config_switch_skips_the_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    import urbanrep.train as train_module
    from urbanrep.experts.testing import random_region_graph
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, train

    calls: list[int] = []
    monkeypatch.setattr(train_module, "tune_allocator", lambda: calls.append(1) or True)
    data = random_region_graph(30, ("poi", "landuse"), seed=1)
    mc = ModelConfig(ensemble=1)
    train(data, mc, TrainConfig(epochs=1, device="cpu", checkpoint_every=0, tune_malloc=False))
    assert calls == []
    train(data, mc, TrainConfig(epochs=1, device="cpu", checkpoint_every=0))
    assert calls == [1]
