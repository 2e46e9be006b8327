"""Helpers shared by the ingest tests: a store's bytes, and an ingest killed with -9 mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_bytes(root: Path) -> dict:
    """{relative path: bytes} of every file under ``root`` (two stores are byte-identical when equal)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kill_after_units(script: str, args: list, store: Path, min_units: int, timeout_s: float = 120) -> int:
    """Run ``python -c script *args`` (an ingest into ``store``) and ``kill -9`` it once ``min_units`` unit
    markers exist -> the number of markers left. The script runs in its own session from the repository."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    units_dir = store / "_ingest" / "units"
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if units_dir.is_dir() and len(list(units_dir.glob("u*"))) >= min_units:
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return len(list(units_dir.glob("u*")))


def slow_ingest_script(target: str, delay_s: float, **config) -> str:
    """A ``python -c`` script: ingest ``sys.argv[1]`` into ``sys.argv[2]`` in-process, with shards of 4
    frames, sleeping ``delay_s`` in each call of ``target`` (``"module:Class.method"``) so that a test can
    act mid-run. ``config`` adds IngestConfig fields."""
    module, attribute = target.split(":")
    cls, method = attribute.split(".")
    extra = "".join(f", {k}={v!r}" for k, v in config.items())
    return f"""
import sys, time
import pipeline.ingest as ing
from {module} import {cls}
real = {cls}.{method}
def slow(*a):
    time.sleep({delay_s})
    return real(*a)
{cls}.{method} = slow
ing.ingest(ing.IngestConfig(sys.argv[1], sys.argv[2], workers=0, chunk_frames=1, shard_frames=4{extra}), progress=False)
"""
