"""Helpers shared by the train/tracking tests: a small synthetic store, a local Ray cluster,
a real ``mlflow server`` subprocess on a loopback port, and a real ``ray start --head``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

#: Test store: 32x32 frames, 4 days of 40 frames (4 h) each -> train/valid/test days.
STORE_SIZE_PX = 32
STORE_DAYS = 4
STORE_FRAMES_PER_DAY = 40


def make_store(root: Path) -> Path:
    """Synthesise a small archive under ``root`` and ingest it in-process; returns the store path."""
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.synth import SynthConfig, synth_archive

    archive = root / "archive"
    store = root / "store.zarr"
    synth_archive(
        SynthConfig(
            out_dir=archive,
            days=STORE_DAYS,
            frames_per_day=STORE_FRAMES_PER_DAY,
            size_px=STORE_SIZE_PX,
            seed=3,
            missing_frame_rate=0.0,
            workers=1,
        ),
        progress=False,
    )
    ingest(IngestConfig(archive=archive, store=store, workers=0), progress=False)
    return store


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; RuntimeError after ``timeout_s`` or if ``proc`` dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def mlflow_server(workdir: Path):
    """Run ``mlflow server`` on 127.0.0.1:<free port> with a SQLite backend and served artifacts
    under ``workdir``; yields its http URI; stops the server's process group on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'server.db'}",
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--allowed-hosts",
        f"127.0.0.1:{port},localhost:{port},127.0.0.1,localhost",
    ]
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_health(uri + "/health", timeout_s=90, proc=proc)
        yield uri
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{(workdir / 'server.log').read_text()[-3000:]}") from exc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def local_ray(num_cpus: int = 4):
    """A local Ray cluster for the duration of the block (shut down afterwards)."""
    import ray

    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}},
    )
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def ray_head(workdir: Path, env: dict):
    """`ray start --head --block` on 127.0.0.1 with token auth; yields its address; stops it on exit."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    cmd = [
        "ray",
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        f"--temp-dir={temp_dir}",
    ]
    log = open(workdir / "ray-head.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(
            ["ray", "status", f"--address={address}"], env=env, capture_output=True
        ).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "ray head did not start:\n" + (workdir / "ray-head.log").read_text()[-3000:]
                )
            time.sleep(1)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
