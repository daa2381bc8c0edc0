"""The srai peers' summary in RESULTS.md is written by experiments/srai_baselines.py and kept by the benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("geopandas")

ROWS = [
    {"city": "x", "embedding": "srai_contextual_count", "inputs": "poi",
     "scores": {"population": {"r2": 0.3, "r2_std": 0.01}, "landuse_shares": {"cosine": 0.8, "l1": 0.7}}},
    {"city": "x", "embedding": "raw_poi", "inputs": "poi",
     "scores": {"population": {"r2": 0.9, "r2_std": 0.01}}},  # raw rows stay out of the summary
    {"city": "x", "embedding": "urbanrep", "inputs": "poi,road",
     "scores": {"population": {"r2": 0.5, "r2_std": 0.02}, "landuse_shares": {"cosine": 0.7, "l1": 0.8}}},
]


def test_results_section_replaces_the_old_one_and_survives_the_benchmark(tmp_path: Path) -> None:
    from experiments.benchmark import kept_sections
    from experiments.srai_baselines import SECTION_END, replace_section, results_section

    section = results_section(ROWS, "python -m experiments.srai_baselines")
    assert "raw_poi" not in section and "0.900" not in section
    assert "| x | urbanrep | poi, road | **0.500 ± 0.020** | land-use cosine 0.700 |" in section
    assert "| x | srai ContextualCountEmbedder | poi | 0.300 ± 0.010 | land-use cosine **0.800** |" in section
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\ntables\n\n<!-- srai peers: an older marker -->\nold table\n"
                       f"{SECTION_END}\n", encoding="utf-8")
    replace_section(results, section)
    text = results.read_text(encoding="utf-8")
    assert "old table" not in text and text.count(SECTION_END) == 1 and text.startswith("# results\n\ntables")
    assert kept_sections(results).strip() == section  # the benchmark carries it into a rewritten file
    bare = tmp_path / "BARE.md"
    bare.write_text("# results\n", encoding="utf-8")
    replace_section(bare, section)  # no section yet: appended
    assert bare.read_text(encoding="utf-8") == "# results\n\n" + section + "\n"
