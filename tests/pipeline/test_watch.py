"""``nowcast watch`` as a real process: files land in a real archive, cycles are forecast once each in
time order, gaps follow the documented policy, bad files are reported, kill -9 and SIGTERM, and a
moved champion alias is picked up between cycles.

The persistence forecaster repeats the last input frame, so each cycle's PNGs must equal that frame
(0 outside its mask) bit for bit: an independent reference for what was written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources import hko7
from pipeline.watch import cycle_name, read_records

SIZE = 32
DT = 360  # the hand archives' cadence (HKO-7: 6 min)
START_TIMEOUT_S = 120  # importing torch + mlflow on a busy 2-core machine
CYCLE_TIMEOUT_S = 300  # a deadline, not a wait: cycles take well under a second on an idle machine


def _wait(
    predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None
):
    """Poll ``predicate`` every 50 ms until it is truthy (returned) or the deadline passes (fails)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"nowcast watch exited ({proc.returncode}) while waiting for {what}:\n{_text(log)}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}:\n{_text(log)}")


def _text(log: Path | None) -> str:
    return log.read_text() if log is not None and log.exists() else ""


class Service:
    """One ``nowcast watch`` process and its log."""

    def __init__(self, tmp_path: Path, model: str, *extra: str, env: dict | None = None, name: str = "log"):
        self.out = tmp_path / "out"
        self.log = tmp_path / f"{name}.txt"
        cmd = [sys.executable, "-m", "cli", "watch", str(tmp_path / "archive"), str(tmp_path / "store.zarr")]
        cmd += ["--model", model, "--out-dir", str(self.out), "--poll-s", "0.1", "--device", "cpu", *extra]
        repo = Path(__file__).resolve().parents[2]
        full_env = {**os.environ, "PYTHONPATH": str(repo), **(env or {})}
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path, env=full_env)
        _wait(
            lambda: "watching " in _text(self.log),
            START_TIMEOUT_S,
            "the service to start",
            self.proc,
            self.log,
        )

    def records(self, status: str | None = None) -> list[dict]:
        return [r for r in read_records(self.out) if status is None or r["status"] == status]

    def wait_settled(self, time_s: int) -> dict:
        """The record of cycle ``time_s`` once it is settled (forecast or skipped)."""

        def settled():
            return next(
                (r for r in self.records() if r["frame_time_s"] == time_s and r["status"] != "gap"), None
            )

        return _wait(settled, CYCLE_TIMEOUT_S, f"cycle {time_s}", self.proc, self.log)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def text(self) -> str:
        return _text(self.log)


@pytest.fixture
def watched(tmp_path, archive_tools):
    """An archive of 6 frames (k = 0..5) already in the store; -> (archive, land(k, bad=False))."""
    from pipeline.ingest import IngestConfig, ingest

    arch = archive_tools.build_archive(tmp_path / "archive", 6, size=SIZE)
    with warnings.catch_warnings():  # a tiny store has no valid/test clips
        warnings.simplefilter("ignore")
        ingest(IngestConfig(archive=arch.root, store=tmp_path / "store.zarr", workers=0), progress=False)

    def land(k: int, bad: bool = False) -> int:
        t = archive_tools.T0_S + k * DT
        if bad:
            path = hko7.frame_path(arch.root, t)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a png")
        else:  # the mask first: a frame is complete when its PNG lands (the watch's rule for HKO-7)
            arch.masks[t] = archive_tools.mask_pixels(t, SIZE)
            arch.frames[t] = archive_tools.frame_pixels(t, SIZE)
            for path, data in (
                (hko7.mask_path(arch.root, t), hko7.encode_mask(arch.masks[t])),
                (hko7.frame_path(arch.root, t), hko7.encode_frame(arch.frames[t])),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.part")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        return t

    return arch, land


def _expected_png(arch, time_s: int) -> np.ndarray:
    return np.where(arch.masks[time_s], arch.frames[time_s], 0).astype(np.uint8)


def _forecast_times(service: Service) -> list[int]:
    return [r["frame_time_s"] for r in service.records("forecast")]


def test_late_out_of_order_duplicate_and_bad_files(tmp_path, watched, archive_tools):
    """New frames become cycles once each in time order: a frame landing before the one it follows
    waits for it, a re-delivered file makes no second cycle, a bad file is reported and the cycles
    needing it are skipped while the service runs on; only --keep folders stay; SIGTERM exits 0."""
    arch, land = watched
    t5 = archive_tools.T0_S + 5 * DT
    svc = Service(tmp_path, "persistence", "--keep", "2", "--wait-missing-s", "60")
    first = svc.wait_settled(t5)  # first start: the newest stored frame is the first cycle
    assert first["status"] == "forecast"
    t7 = land(7)  # before 6: it waits for 6 (else 6 would come too late and never be forecast)
    t6 = land(6)
    svc.wait_settled(t7)
    land(7)  # the same file delivered again
    t8 = land(8, bad=True)
    rec8 = svc.wait_settled(t8)
    t9 = land(9)
    rec9 = svc.wait_settled(t9)
    assert svc.stop() == 0
    assert _forecast_times(svc) == [t5, t6, t7]
    assert rec8["status"] == "skipped" and "missing input frame(s) 2015-06-01T00:48:00Z" in rec8["reason"]
    assert rec9["status"] == "skipped" and "00:48:00Z" in rec9["reason"]
    assert "bad file " in svc.text() and "stopped after" in svc.text()
    for rec in svc.records("forecast"):
        assert rec["latency_s"] is None or rec["latency_s"] == pytest.approx(rec["written_s"] - rec["seen_s"])
    # --keep 2: the two newest cycle folders; latest points at the newest forecast
    assert sorted(p.name for p in svc.out.iterdir() if p.name[0].isdigit()) == [
        cycle_name(t6),
        cycle_name(t7),
    ]
    assert os.readlink(svc.out / "latest") == cycle_name(t7)
    pngs = sorted((svc.out / "latest").glob("*.png"))
    assert [hko7.time_from_name(p) for p in pngs] == [t7 + DT * k for k in range(1, 21)]
    for p in pngs:
        np.testing.assert_array_equal(hko7.decode_frame(p.read_bytes()), _expected_png(arch, t7))


def test_gap_is_declared_missing_after_the_wait(tmp_path, watched, archive_tools):
    """A slot still empty --wait-missing-s after a newer frame arrived is declared missing: a gap record,
    the cycles needing it skipped, the frame arriving later reported as late and never forecast."""
    arch, land = watched
    svc = Service(tmp_path, "persistence", "--wait-missing-s", "1")
    svc.wait_settled(archive_tools.T0_S + 5 * DT)
    t7 = land(7)
    rec7 = svc.wait_settled(t7)
    gaps = svc.records("gap")
    t6 = land(6)
    _wait(lambda: "late file" in svc.text(), CYCLE_TIMEOUT_S, "the late-file report", svc.proc, svc.log)
    assert svc.stop() == 0
    assert [g["frame_time_s"] for g in gaps] == [t6]
    assert rec7["status"] == "skipped" and "00:36:00Z" in rec7["reason"]
    assert t6 not in [r["frame_time_s"] for r in svc.records() if r["status"] != "gap"]


def test_kill_9_then_restart_neither_redoes_nor_skips_cycles(tmp_path, watched, archive_tools):
    """kill -9 while cycles are being forecast, then a restart: every cycle is forecast exactly once.
    A cycle published just before the crash (state not yet moved past it) is recorded, not redone."""
    arch, land = watched
    t5 = archive_tools.T0_S + 5 * DT
    svc = Service(tmp_path, "persistence", name="run1")
    svc.wait_settled(t5)
    times = [land(k) for k in range(6, 11)]
    _wait(lambda: len(svc.records("forecast")) >= 2, CYCLE_TIMEOUT_S, "a cycle", svc.proc, svc.log)
    svc.proc.kill()
    svc.proc.wait(timeout=30)
    svc = Service(tmp_path, "persistence", name="run2")
    svc.wait_settled(times[-1])
    assert svc.stop() == 0
    assert _forecast_times(svc) == [t5, *times]
    # a crash between publishing a cycle and saving the state: the folder is there, the state is behind
    state_path = svc.out / "watch_state.json"
    state = json.loads(state_path.read_text())
    state["last_cycle_s"] = times[-2]
    state_path.write_text(json.dumps(state))
    written = (svc.out / cycle_name(times[-1]) / "cycle.json").stat().st_mtime_ns
    svc = Service(tmp_path, "persistence", name="run3")
    _wait(
        lambda: "already written before a restart" in svc.text(),
        CYCLE_TIMEOUT_S,
        "recovery",
        svc.proc,
        svc.log,
    )
    assert svc.stop() == 0
    assert _forecast_times(svc) == [t5, *times]
    assert (svc.out / cycle_name(times[-1]) / "cycle.json").stat().st_mtime_ns == written
    assert json.loads(state_path.read_text())["last_cycle_s"] == times[-1]


def test_bad_options_are_one_line_errors(tmp_path):
    """A missing archive or a bad --keep fails at once with one line and a non-zero exit."""
    from typer.testing import CliRunner

    import cli

    (tmp_path / "a").mkdir()
    common = [str(tmp_path / "s.zarr"), "--model", "persistence", "--out-dir", str(tmp_path / "out")]
    runner = CliRunner()
    result = runner.invoke(cli.app, ["watch", str(tmp_path / "nope"), *common])
    assert result.exit_code != 0 and "is not a folder" in result.output
    result = runner.invoke(cli.app, ["watch", str(tmp_path / "a"), *common, "--keep", "0"])
    assert result.exit_code != 0 and "--keep must be >= 1" in result.output
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_a_moved_champion_alias_is_used_from_the_next_cycle(tmp_path, watched, archive_tools):
    """Two registered versions (MLflow on SQLite); moving @champion while the service runs switches
    the model between cycles without a restart, and each record names the version that made it."""
    import mlflow
    import torch

    from pipeline import tracking
    from trajgru.model import build_model

    arch, land = watched
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        exp = tracking.setup_experiment(uri, "watch")
        for seed in (0, 1):
            torch.manual_seed(seed)
            model = build_model("tiny", "convgru", height=SIZE, width=SIZE, in_len=2, out_len=3).eval()
            example = np.zeros((2, 2, 1, SIZE, SIZE), np.float32)
            with mlflow.start_run(experiment_id=exp):
                tracking.log_and_register_model(model, example, "wm", serialization_format="pickle")
        tracking.promote("wm", 1, force=True)
        svc = Service(tmp_path, "models:/wm@champion", env={"MLFLOW_TRACKING_URI": uri})
        rec5 = svc.wait_settled(archive_tools.T0_S + 5 * DT)
        tracking.promote("wm", 2, force=True)
        rec6 = svc.wait_settled(land(6))
        assert svc.stop() == 0
    finally:
        mlflow.set_tracking_uri("")
    assert (rec5["model_version"], rec6["model_version"]) == ("wm/1", "wm/2")
    assert "models:/wm@champion -> wm/2" in svc.text()
    assert len(sorted((svc.out / cycle_name(rec6["frame_time_s"])).glob("*.png"))) == 3


def test_read_records_ignores_a_line_cut_short(tmp_path):
    """A JSON line cut short by kill -9 does not hide the records before it."""
    (tmp_path / "cycles.jsonl").write_text(
        json.dumps({"frame_time_s": 1, "status": "forecast"}) + '\n{"frame'
    )
    assert read_records(tmp_path) == [{"frame_time_s": 1, "status": "forecast"}]


@pytest.mark.slow
def test_demo_watch_replays_test_frames_cycle_by_cycle(tmp_path):
    """demo --watch on a work folder that has a champion: the replayed test frames each become one
    forecast (with a latency) in a fresh live folder, and the call returns after the bounded cycles."""
    import mlflow
    import torch

    from pipeline import tracking
    from pipeline.demo import DemoConfig, replay_watch
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive
    from trajgru.model import build_model

    work = tmp_path / "demo"
    synth_archive(
        SynthConfig(
            out_dir=work / "archive",
            days=3,
            frames_per_day=30,
            size_px=SIZE,
            seed=3,
            workers=1,
            missing_frame_rate=0.0,
        ),
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(IngestConfig(archive=work / "archive", store=work / "store.zarr", workers=0), progress=False)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        torch.manual_seed(0)
        model = build_model("tiny", "convgru", height=SIZE, width=SIZE).eval()
        with mlflow.start_run(experiment_id=tracking.setup_experiment(uri, "demo")):
            tracking.log_and_register_model(
                model,
                np.zeros((5, 2, 1, SIZE, SIZE), np.float32),
                "nowcast-tiny",
                serialization_format="pickle",
            )
        tracking.promote("nowcast-tiny", 1, force=True)
        lines = []
        out = replay_watch(DemoConfig(workdir=work, size_px=SIZE), cycles=2, every_s=0.5, echo=lines.append)
    finally:
        mlflow.set_tracking_uri("")
    settled = [r for r in read_records(out) if r["status"] != "gap"]
    assert len(settled) == 3  # the last history frame, then the two replayed frames
    assert [r["frame_time_s"] for r in settled] == sorted(r["frame_time_s"] for r in settled)
    assert any(line.startswith("[demo] ") and "latency median" in line for line in lines)
    assert (out / "latest").is_symlink()


def test_ingest_until_s_appends_only_up_to_that_time(tmp_path, archive_tools):
    """IngestConfig.until_s (how the watch holds newer frames back) stores exactly the frames at or
    before it; a later ingest without it appends the rest."""
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.store import Store

    arch = archive_tools.build_archive(tmp_path / "archive", 8, size=16)
    until = archive_tools.T0_S + 4 * DT
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ingest(
            IngestConfig(archive=arch.root, store=tmp_path / "s.zarr", workers=0, until_s=until),
            progress=False,
        )
        assert Store.open(tmp_path / "s.zarr").time_s.tolist() == [t for t in arch.times_s() if t <= until]
        ingest(IngestConfig(archive=arch.root, store=tmp_path / "s.zarr", workers=0), progress=False)
    store = Store.open(tmp_path / "s.zarr")
    assert store.time_s.tolist() == arch.times_s().tolist()
    frames, _ = store.reader().read(store.time_s)
    np.testing.assert_array_equal(frames, np.stack([arch.frames[t] for t in arch.times_s().tolist()]))
