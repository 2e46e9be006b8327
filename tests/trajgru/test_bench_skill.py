"""benchmarks/bench_skill.py drives the real `nowcast` stages; --gpu trains every model with
`nowcast train --gpu --workers 1` and reports the GPU minutes (checked here with the commands recorded
instead of run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_skill


def _fake_stages(monkeypatch, seconds: dict[str, float]):
    """Record each `nowcast` command instead of running it; evaluate writes a small scores file."""
    commands = []

    def nowcast(args, log, env):
        commands.append(args)
        if args[0] == "evaluate":
            out_json = args[args.index("--out-json") + 1]
            scores = {"thresholds": [5.0], "csi": [[0.5]] * 2, "hss": [[0.4]] * 2, "b_mse": [1.0, 3.0]}
            scores["b_mae"] = [2.0, 2.0]
            record = {"scores": scores, "n_clips": 3, "interval_s": 360}
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(record))
        label = args[0] if args[0] != "evaluate" else f"evaluate {args[args.index('--model') + 1]}"
        return 60 * seconds.get(label, 0.0)

    monkeypatch.setattr(bench_skill, "nowcast", nowcast)
    monkeypatch.setattr(bench_skill, "_archive_matches", lambda archive, args: True)
    monkeypatch.setattr(bench_skill, "registered_version", lambda uri, name, run: 1)
    monkeypatch.setattr(bench_skill, "plot", lambda results, path: path.write_text("png"))
    return commands


def test_gpu_mode_trains_through_nowcast_train_on_one_gpu_worker(tmp_path, monkeypatch):
    """Each cell: `nowcast train --gpu --workers 1`, evaluated on cuda (the baselines on the CPU);
    results in skill_gpu.json with the minutes of training and model evaluation as GPU minutes."""
    commands = _fake_stages(monkeypatch, {"train": 2.0, "evaluate models:/bench-tiny-convgru/1": 0.5})
    monkeypatch.setattr(bench_skill, "_cuda_available", lambda: True)
    argv = ["--gpu", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--steps", "7"]
    bench_skill.main([*argv, "--cells", "trajgru,convgru"])
    trains = [c for c in commands if c[0] == "train"]
    assert len(trains) == 2
    for cmd in trains:
        assert (
            "--gpu" in cmd and cmd[cmd.index("--workers") + 1] == "1" and cmd[cmd.index("--steps") + 1] == "7"
        )
    devices = {c[c.index("--model") + 1]: c[c.index("--device") + 1] for c in commands if c[0] == "evaluate"}
    assert devices == {
        "persistence": "cpu",
        "optical-flow": "cpu",
        "models:/bench-tiny-trajgru/1": "cuda",
        "models:/bench-tiny-convgru/1": "cuda",
    }
    results = json.loads((tmp_path / "out" / "skill_gpu.json").read_text())
    assert results["gpu"] and results["workers"] == 1
    assert results["gpu_minutes"] == pytest.approx(2 * 2.0 + 0.5)  # two trainings and one timed evaluation
    assert not (tmp_path / "out" / "skill.json").exists()  # the CPU results are not overwritten


def test_cpu_mode_is_unchanged_and_gpu_mode_needs_cuda(tmp_path, monkeypatch):
    """Without --gpu: two CPU workers, no --device, skill.json; --gpu without CUDA stops with a message."""
    commands = _fake_stages(monkeypatch, {})
    bench_skill.main(["--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "out"), "--cells", "trajgru"])
    (train,) = [c for c in commands if c[0] == "train"]
    assert "--gpu" not in train and train[train.index("--workers") + 1] == "2"
    assert not any("--device" in c for c in commands)
    assert (tmp_path / "out" / "skill.json").exists()
    monkeypatch.setattr(bench_skill, "_cuda_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        bench_skill.main(["--gpu", "--workdir", str(tmp_path / "w2")])


def test_skill_sweep_runs_each_setting_through_bench_skill_with_its_overrides(tmp_path, monkeypatch):
    """A sweep setting is a bench_skill run of its cell whose overrides reach `nowcast train --config`."""
    import yaml

    from benchmarks import skill_sweep

    runs = []

    def fake_main(argv):
        runs.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text())
        row = {"csi": {"5": 0.1 * config["steps"] / 1000}, "b_mse": 9.0}
        rows = {
            f"tiny {argv[argv.index('--cells') + 1]}": row,
            "optical-flow": {"csi": {"5": 0.2}, "b_mse": 8.0},
        }
        (out / "skill.json").write_text(json.dumps({"rows": rows}))

    monkeypatch.setattr(skill_sweep.bench_skill, "main", fake_main)
    skill_sweep.main(["--workdir", str(tmp_path), "--settings", "trajgru_2k,convlstm_2k"])
    assert [r[r.index("--cells") + 1] for r in runs] == ["trajgru", "convlstm"]
    assert [r[r.index("--tag") + 1] for r in runs] == ["trajgru_2k", "convlstm_2k"]
    assert all("--reuse-baselines" in r and "--gpu" not in r for r in runs)
    lines = skill_sweep.table({n: tmp_path / "results" / n for n in ("trajgru_2k", "convlstm_2k")}, gpu=False)
    assert lines.splitlines()[2] == "| optical-flow | – | – | 0.200 | 8.0 |"  # once, above the settings
    assert lines.splitlines()[3:] == [
        "| trajgru_2k | trajgru | steps=2000 | 0.200 | 9.0 |",
        "| convlstm_2k | convlstm | steps=2000 | 0.200 | 9.0 |",
    ]
    with pytest.raises(SystemExit, match="unknown setting"):
        skill_sweep.main(["--workdir", str(tmp_path), "--settings", "tiny_const"])
