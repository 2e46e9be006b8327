"""The README's measured tables are generated from benchmarks/results/ (benchmarks/update_readme.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_skill, update_readme

REPO = Path(__file__).resolve().parents[1]


def test_readme_tables_match_the_result_files():
    readme = (REPO / "README.md").read_text()
    assert update_readme.render(readme) == readme, "run python benchmarks/update_readme.py"


def test_every_block_has_its_markers_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in update_readme.BLOCKS:
        assert f"<!-- BEGIN {name} -->" in readme and f"<!-- END {name} -->" in readme, name


def _row(csi5: float | None, b_mse: float) -> dict:
    return {
        "csi": {"5": csi5, "10": 0.1},
        "hss": {"5": 0.2, "10": None},
        "b_mse": b_mse,
        "b_mae": 2 * b_mse,
        "csi5_by_lead": [csi5 or 0.0] * 3,
        "n_clips": 7,
        "interval_s": 360,
    }


def test_markdown_table_shows_undefined_scores_as_a_dash():
    table = bench_skill.markdown_table({"rows": {"m": _row(None, 12.345), "persistence": _row(0.25, 3.0)}})
    lines = table.splitlines()
    assert lines[0] == "| model | CSI ≥5 | CSI ≥10 | HSS ≥5 | HSS ≥10 | B-MSE | B-MAE |"
    assert lines[2] == "| m | – | 0.100 | 0.200 | – | 12.3 | 24.7 |"
    assert lines[3] == "| persistence | 0.250 | 0.100 | 0.200 | – | 3.0 | 6.0 |"


def test_demo_block_renders_demo_results(tmp_path, monkeypatch):
    results = {
        "command": "nowcast demo",
        "settings": {"days": 12, "size_px": 96},
        "steps": 400,
        "minutes": {"synth": 0.1, "train": 5.0},
        "split": "test",
        "n_clips": 7,
        "rows": {"nowcast-tiny (400 steps)": _row(0.3, 400.0), "persistence": _row(0.2, 500.0)},
    }
    (tmp_path / "demo_results.json").write_text(json.dumps(results))
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path)
    text = "a\n<!-- BEGIN demo -->\nold\n<!-- END demo -->\nb"
    out = update_readme.render(text)
    assert "old" not in out and "**5.1 min** in all" in out and "| nowcast-tiny (400 steps) | 0.300 |" in out
    assert out.startswith("a\n<!-- BEGIN demo -->\n`nowcast demo` (12 days of 96 px, 400 training steps)")
    assert out.endswith("\n<!-- END demo -->\nb")
    empty = "a\n<!-- BEGIN demo -->\n<!-- END demo -->\nb"  # a new block is filled too
    assert update_readme.render(empty) == out and update_readme.render(out) == out


@pytest.mark.parametrize(
    "split, path_ok, frames_ok, expected",
    [
        ("test", True, True, True),
        ("valid", True, True, False),
        ("test", False, True, False),
        ("test", True, False, False),
    ],
)
def test_baseline_scores_reused_only_from_the_same_store(
    tmp_path, monkeypatch, split, path_ok, frames_ok, expected
):
    store = tmp_path / "store.zarr"

    class FakeStore:
        @staticmethod
        def open(path):
            assert Path(path) == store
            return FakeStore()

        def describe(self):
            return {"frames": 100}

    import pipeline.store

    monkeypatch.setattr(pipeline.store, "Store", FakeStore)
    scored = tmp_path / "persistence.json"
    scored.write_text(
        json.dumps(
            {
                "split": split,
                "store": {
                    "path": str(store) if path_ok else "/elsewhere",
                    "n_frames": 100 if frames_ok else 99,
                },
            }
        )
    )
    assert bench_skill._scored_on(scored, store) is expected
    assert bench_skill._scored_on(tmp_path / "missing.json", store) is False


def test_verify_block_renders_bench_verify_results(tmp_path, monkeypatch):
    """The verify block names the command, the clip subset and the models; undefined scores show as "–"."""
    row = {
        "csi_5": 0.25,
        "hss_5": 0.3,
        "b_mse": 500.0,
        "fss_5mm_h_5px": 0.5,
        "crps_mm_h": 0.9,
        "brier_skill_5mm_h": 0.12,
        "brier_skill_10mm_h": None,
        "reliability_5mm_h": 0.002,
        "roc_auc_5mm_h": 0.8,
        "seconds_per_clip": 4.2,
        "n_clips": 106,
    }
    results = {
        "command": "python benchmarks/bench_verify.py --store s.zarr",
        "clip_stride": 8,
        "machine": {"cpu_cores": 2, "cpu": "x86", "torch": "2.13"},
        "rows": {"TrajGRU": row | {"model_uri": "models:/t/1"}, "S-PROG": row | {"model_uri": "sprog"}},
    }
    (tmp_path / "verify.json").write_text(json.dumps(results))
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path)
    out = update_readme.render("<!-- BEGIN verify -->\n<!-- END verify -->")
    assert "106 clips, every 8th sequential clip" in out and "TrajGRU: `models:/t/1`" in out
    assert "| S-PROG | 0.250 | 0.300 | 500.0 | 0.500 | 0.900 | 0.120 | – | 0.0020 | 0.800 | 4.20 |" in out
