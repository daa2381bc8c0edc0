"""The glibc malloc policy of the training process (urbanrep/allocator.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from urbanrep.allocator import ENV_VAR, allocator_blocker, choose_policy, resolve_policy
from urbanrep.errors import ConfigError
from urbanrep.train import TrainConfig

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize(("env", "reason"), [
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
    assert allocator_blocker({"LD_PRELOAD": ""}) is None


def test_policy_names_and_the_environment_override() -> None:
    assert resolve_policy("keep", {}) == "keep"
    assert resolve_policy("keep", {ENV_VAR: "Release"}) == "release"
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_policy("keep", {ENV_VAR: "fast"})
    with pytest.raises(ConfigError, match="TrainConfig.malloc"):
        TrainConfig(malloc="fast")


def test_auto_keeps_memory_unless_the_graph_would_not_fit() -> None:
    gib = 2**30
    assert choose_policy("auto", 10_000, 16 * gib)[0] == "keep"  # 10k: about 1.5 GB
    policy, why = choose_policy("auto", 100_000, 16 * gib)  # 100k: about 15 GB with keep
    assert policy == "release" and "100,000 regions" in why
    assert choose_policy("auto", 100_000, 64 * gib)[0] == "keep"
    assert choose_policy("auto", None, 16 * gib)[0] == "keep"  # mini-batch
    assert choose_policy("auto", 100_000, None)[0] == "keep"  # availability unknown
    assert choose_policy("system", 100_000, 1)[0] == "system"


_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from urbanrep import allocator
    from urbanrep.experts.testing import random_region_graph
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, train
    torch.set_num_threads(1)
    data = random_region_graph(60, ("poi", "mobility", "landuse"), seed=3, num_slices=3)
    res = train(data, ModelConfig(ensemble=2), TrainConfig(epochs=3, device="cpu", checkpoint_every=0,
                                                           malloc=sys.argv[1]))
    print(json.dumps({"policy": allocator.applied_policy(), "losses": [r["total"] for r in res.history],
                      "emb": res.embeddings[:5].tolist()}))
""")


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_policies_give_bit_identical_training() -> None:
    """A fresh process on ``release`` (set by the environment) trains exactly as this one does."""
    import torch

    from urbanrep.experts.testing import random_region_graph
    from urbanrep.network import ModelConfig
    from urbanrep.train import train

    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    out = subprocess.run([sys.executable, "-c", _SCRIPT, "keep"], capture_output=True, text=True, check=True,
                         env={**env, ENV_VAR: "release", "OMP_NUM_THREADS": "1"}, timeout=300)
    release = json.loads(out.stdout.strip().splitlines()[-1])
    assert release["policy"] == "release"  # the environment wins over the configuration
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = random_region_graph(60, ("poi", "mobility", "landuse"), seed=3, num_slices=3)
        here = train(data, ModelConfig(ensemble=2), TrainConfig(epochs=3, device="cpu", checkpoint_every=0))
    finally:
        torch.set_num_threads(threads)
    assert [r["total"] for r in here.history] == release["losses"]
    assert here.embeddings[:5].tolist() == release["emb"]


def test_the_configured_policy_reaches_the_allocator(monkeypatch: pytest.MonkeyPatch) -> None:
    import urbanrep.train as train_module
    from urbanrep.experts.testing import random_region_graph
    from urbanrep.network import ModelConfig
    from urbanrep.train import train

    calls: list[str] = []
    monkeypatch.setattr(train_module, "tune_allocator", lambda policy, regions: calls.append((policy, regions)) or True)
    data = random_region_graph(30, ("poi", "landuse"), seed=1)
    train(data, ModelConfig(ensemble=1), TrainConfig(epochs=1, device="cpu", checkpoint_every=0, malloc="system"))
    assert calls == [("system", 30)]
