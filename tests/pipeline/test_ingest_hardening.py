"""Ingest hardening: one lock per store (two real processes), archive edge cases end to end, empty
splits, and ``--workers 0``."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from pipeline import ingest as ing
from pipeline import store as st
from pipeline.catalog import INTERVAL_S
from pipeline.errors import NowcastError
from pipeline.sources import hko7
from tests.pipeline._ingest_helpers import slow_ingest_script, tree_bytes

REPO = Path(__file__).resolve().parents[2]
IV = INTERVAL_S
runner = CliRunner()


def run(archive, store, **kw) -> ing.IngestResult:
    kw.setdefault("workers", 0)
    kw.setdefault("chunk_frames", 2)
    kw.setdefault("shard_frames", 8)
    return ing.ingest(ing.IngestConfig(archive, store, **kw), progress=False)


# --------------------------------------------------------------------------- one ingest per store

SLOW_INGEST = slow_ingest_script(
    "pipeline.sources.hko7:Hko7Source._read", 1.0
)  # 64 s in all: killed long before


def test_a_second_ingest_into_the_same_store_fails_clearly_and_the_lock_dies_with_its_holder(
    hand_archive, tmp_path
):
    """Process A ingests slowly; process B (the CLI) is refused with A's pid while A runs. After A is killed
    with -9, the lock is gone: B resumes and the store ends byte-identical to an undisturbed ingest."""
    arch = hand_archive(64)
    ref = tmp_path / "ref.zarr"
    run(arch.root, ref, chunk_frames=1, shard_frames=4)
    store = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", SLOW_INGEST, str(arch.root), str(store)],
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (store / "_ingest" / "units" / "u00000001").exists():
            assert holder.poll() is None, "the first ingest ended early"
            time.sleep(0.05)
        assert st.lock_path(store).read_text().strip() == str(holder.pid)
        second = subprocess.run(
            [sys.executable, "-m", "cli", "ingest", str(arch.root), str(store), "--workers", "0"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert f"another `nowcast ingest` (pid {holder.pid}) is writing" in second.stderr
        assert "Traceback" not in second.stderr
        assert holder.poll() is None  # the first one was not disturbed
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    res = run(arch.root, store, chunk_frames=1, shard_frames=4)  # the killed holder's lock is gone
    assert res.n_units_skipped >= 1
    assert tree_bytes(store) == tree_bytes(ref)


def test_lock_refuses_a_symlinked_lock_file(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    st.lock_path(tmp_path / "s.zarr").symlink_to(target)
    with pytest.raises(NowcastError, match="lock file"):
        with st.ingest_lock(tmp_path / "s.zarr"):
            pass
    assert target.read_text() == "keep me"


# --------------------------------------------------------------------------- archive edge cases


def test_archive_edge_cases_are_reported_and_never_stored(hand_archive, tmp_path):
    from PIL import Image

    arch = hand_archive(20)
    root, ts = arch.root, arch.times_s()
    buf = io.BytesIO()
    Image.fromarray(arch.frames[ts[3]], mode="L").save(buf, format="JPEG")
    hko7.frame_path(root, ts[3]).write_bytes(buf.getvalue())  # a JPEG named .png
    day = hko7.frame_path(root, ts[0]).parent
    (day / "RAD150601110300.png").write_bytes(hko7.encode_frame(arch.frames[ts[0]]))  # 11:03, off the cadence
    (day / "RAD١٥٠٦٠١٠٠٠٠٠٠.png").write_bytes(hko7.encode_frame(arch.frames[ts[0]]))  # Arabic-Indic digits
    (day / "RAD150601230000.png").mkdir()  # a folder named like a frame
    res = run(root, tmp_path / "s.zarr")
    why = {b["path"]: b["reason"] for b in res.bad_files}
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    assert "not a PNG" in why[rel(hko7.frame_path(root, ts[3]))]
    assert "off the cadence" in why[rel(day / "RAD150601110300.png")]
    assert "does not parse" in why[rel(day / "RAD١٥٠٦٠١٠٠٠٠٠٠.png")]
    assert "folder" in why[rel(day / "RAD150601230000.png")]
    g = st.open_store(tmp_path / "s.zarr")
    times = g[st.TIME][:]
    np.testing.assert_array_equal(times, ts)  # nothing off the cadence on the axis
    assert not g[st.PRESENT][3] and not g[st.FRAMES][3].any()


# --------------------------------------------------------------------------- splits that match no frame


def test_a_split_that_matches_no_day_is_warned_about(hand_archive, tmp_path):
    arch = hand_archive(30)
    splits = {"train": ("2015-06-01", "2015-06-02"), "test": ("2030-01-01", "2030-02-01")}
    with pytest.warns(ing.IngestWarning, match="split 'test' matches no frame") as caught:
        res = run(arch.root, tmp_path / "s.zarr", splits=splits)
    assert res.clips["test"]["frames"] == 0
    assert not [w for w in caught if "'train'" in str(w.message)]
    result = runner.invoke(
        cli.app,
        [
            "ingest",
            str(arch.root),
            str(tmp_path / "c.zarr"),
            "--workers",
            "0",
            "--split",
            "train=2015-06-01..2015-06-02",
            "--split",
            "test=2030-01-01..2030-02-01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: split 'test' matches no frame" in result.output


# --------------------------------------------------------------------------- --workers 0


def test_ingest_workers_zero_runs_in_process_and_bad_worker_options_are_usage_errors(
    hand_archive, tmp_path, monkeypatch
):
    arch = hand_archive(12)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")  # nothing listens: Dask would fail
    result = runner.invoke(cli.app, ["ingest", str(arch.root), str(tmp_path / "s.zarr"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "12 frames" in result.output
    for args, message in (
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], "do not go together"),
        (["--format", "grib"], "unknown archive format"),
    ):
        result = runner.invoke(cli.app, ["ingest", str(arch.root), str(tmp_path / "t.zarr"), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
    assert not (tmp_path / "t.zarr").exists()
