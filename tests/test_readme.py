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


def test_gpu_skill_tables_are_marked_until_bench_skill_gpu_regenerates_them(tmp_path, monkeypatch):
    """The old skill_sweep loop's GPU tables carry the "needs a rerun through `nowcast train`" note; once
    bench_skill.py --gpu has written skill_gpu.json, the full GPU table is rendered from it, unmarked, with
    its GPU minutes."""
    for name in ("skill_sweep_h200_run1.json", "skill_sweep_h200_run2.json"):
        (tmp_path / name).write_text((update_readme.RESULTS / name).read_text())
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path)
    blocks = ("skill-gpu-full", "skill-gpu", "skill-sweep1")
    text = "".join(f"<!-- BEGIN {b} -->\n<!-- END {b} -->\n" for b in blocks)
    marked = update_readme.render(text)
    assert marked.count("**Needs a rerun through `nowcast train`:**") == 3
    results = {
        "command": "python benchmarks/bench_skill.py --gpu --steps 2000",
        "archive": {"days": 120, "size": 96, "seed": 7},
        "preset": "tiny",
        "steps": 2000,
        "workers": 1,
        "gpu": True,
        "machine": {"gpu": "NVIDIA H100", "torch": "2.13", "cpu_cores": 16, "cpu": "x"},
        "minutes": {"train trajgru": 3.0, "evaluate tiny trajgru": 0.5},
        "gpu_minutes": 3.5,
        "rows": {"tiny trajgru": _row(0.4, 300.0), "persistence": _row(0.2, 500.0)},
    }
    (tmp_path / "skill_gpu.json").write_text(json.dumps(results))
    regenerated = update_readme.render(text)
    full = regenerated.split("<!-- BEGIN skill-gpu-full -->\n")[1].split("<!-- END skill-gpu-full -->")[0]
    assert "Needs a rerun" not in full and "3.5 GPU minutes" in full and "| tiny trajgru | 0.400 |" in full
    assert full.startswith("`python benchmarks/bench_skill.py --gpu --steps 2000` — 120 days of 96 px")
    assert update_readme.gpu_results() is None  # the old loop's plot is no longer drawn


def test_gpu_speed_table_is_marked_until_bench_trajgru_times_the_pipelines_step(tmp_path, monkeypatch):
    """bench.json without ``train_step`` (timed the old CapturedTrainStep) gets the rerun note; one that
    records trajgru.step.TrainStep does not."""
    (tmp_path / "gpu_check_h200").mkdir()
    bench = json.loads((update_readme.RESULTS / "gpu_check_h200" / "bench.json").read_text())
    bench.pop("train_step", None)
    (tmp_path / "gpu_check_h200" / "bench.json").write_text(json.dumps(bench))
    monkeypatch.setattr(update_readme, "RESULTS", tmp_path)
    assert update_readme.gpu_bench().startswith("**Needs a rerun through the pipeline's training step:**")
    bench["train_step"] = "trajgru.step.TrainStep"
    (tmp_path / "gpu_check_h200" / "bench.json").write_text(json.dumps(bench))
    assert "Needs a rerun" not in update_readme.gpu_bench()


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
        "probabilities": "25 px nbhd",
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
    assert (
        "| S-PROG | 0.250 | 0.300 | 500.0 | 0.500 | 0.900 | 0.120 | – | 0.0020 | 0.800 | 4.20 | 25 px nbhd |"
        in out
    )
