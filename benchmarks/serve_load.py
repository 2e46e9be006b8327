"""Throughput of the served nowcaster: requests/s and latency of ``nowcast serve`` (Ray Serve) and
``mlflow models serve``, at 1 and 8 concurrent clients, on loopback.

Each server runs as the user runs it (a subprocess of the real command) on a registered model; the
clients are threads that each keep one HTTP connection and send the same forecast request (one radar
domain: ``in_len`` frames of rain rate) back to back. Every answer is checked (HTTP 200, ``out_len``
frames). :func:`measure_servers` is what ``bench_service.py --part serving`` calls;
:func:`load` measures one URL.

    python benchmarks/serve_load.py                     # tiny model at 96x96 -> results/serving.json
    python benchmarks/serve_load.py --requests 200 --time-limit-s 120
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_skill import machine  # noqa: E402

from pipeline import tracking  # noqa: E402
from pipeline.ingest import IngestConfig, ingest  # noqa: E402
from pipeline.serving import METADATA_KEY, NowcasterSpec  # noqa: E402
from pipeline.store import Store  # noqa: E402
from pipeline.synth import SynthConfig, synth_archive  # noqa: E402
from trajgru import build_model  # noqa: E402

#: The servers measured, by the name the results use.
SERVERS = ("nowcast serve", "mlflow models serve")


def request_body(in_len: int, height: int, width: int, interval_s: int, seed: int = 0) -> bytes:
    """One forecast request (batch 1) of synthetic rain rates (mm/h, two decimals) as JSON bytes."""
    rng = np.random.default_rng(seed)
    rain_mm_h = np.round(rng.gamma(0.3, 4.0, size=(1, in_len, height, width)), 2)
    time_s = 1_433_160_000 + interval_s * np.arange(in_len, dtype=np.int64)
    body = {"inputs": {"frames": rain_mm_h.tolist(), "time_s": [time_s.tolist()]}, "params": {"unit": "mm/h"}}
    return json.dumps(body).encode()


def load(url: str, body: bytes, clients: int, requests: int, time_limit_s: float, out_len: int) -> dict:
    """POST ``body`` to ``url`` from ``clients`` threads until ``requests`` answers (in all) or
    ``time_limit_s`` -> ``{"clients", "requests", "errors", "seconds", "requests_per_s", "p50_ms",
    "p95_ms"}``. An answer counts when it is HTTP 200 with ``out_len`` forecast frames; any other is an
    error (the first one's message is kept under ``"first_error"``)."""
    parts = urllib.parse.urlsplit(url)
    latencies_s: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit_s
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=max(time_limit_s, 1.0))
        try:
            while time.monotonic() < deadline:
                with lock:
                    if next(counter, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    conn.request("POST", parts.path, body=body, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    ok = resp.status == 200 and len(json.loads(data)["predictions"]["time_s"][0]) == out_len
                    problem = None if ok else f"HTTP {resp.status}: {data[:200]!r}"
                except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    conn.close()
                    conn = http.client.HTTPConnection(
                        parts.hostname, parts.port, timeout=max(time_limit_s, 1.0)
                    )
                with lock:
                    (errors.append(problem) if problem else latencies_s.append(time.perf_counter() - t0))
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    ms = np.asarray(latencies_s) * 1e3
    result = {
        "clients": clients,
        "requests": len(latencies_s),
        "errors": len(errors),
        "seconds": round(seconds, 3),
        "requests_per_s": round(len(latencies_s) / seconds, 3) if seconds > 0 else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 1) if ms.size else None,
    }
    if errors:
        result["first_error"] = errors[0]
    return result


# --------------------------------------------------------------------------- servers
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, model_uri: str, port: int, replicas: int = 1, max_batch_size: int = 8) -> list:
    """The command line that serves ``model_uri`` on 127.0.0.1:``port`` (``kind`` in :data:`SERVERS`)."""
    if kind == "nowcast serve":
        return [
            *(sys.executable, "-m", "cli", "serve", "--model", model_uri, "--port", str(port)),
            *("--replicas", str(replicas), "--max-batch-size", str(max_batch_size)),
        ]
    if kind == "mlflow models serve":
        return [
            *(sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri),
            *("--host", "127.0.0.1", "--port", str(port), "--env-manager", "local", "--workers", "1"),
        ]
    raise ValueError(f"unknown server {kind!r}; choose one of {SERVERS}")


@contextlib.contextmanager
def running_server(
    kind: str, command: list, workdir: Path, env: dict, timeout_s: float = 180
) -> Iterator[str]:
    """Run ``command`` (a server, in its own process group) until it answers on its port -> the
    ``/invocations`` URL; on exit SIGTERM (then SIGKILL after 60 s) to its process group. The log is
    ``workdir/<kind>.log``; a server that dies or does not answer in ``timeout_s`` raises RuntimeError
    with the log's tail."""
    port = int(command[command.index("--port") + 1])
    log_path = workdir / f"{kind.replace(' ', '_')}.log"
    health = f"http://127.0.0.1:{port}/{'metadata' if kind == 'nowcast serve' else 'health'}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait_answers(health, proc, timeout_s, log_path)
            yield f"http://127.0.0.1:{port}/invocations"
        finally:
            _stop(proc)


def _wait_answers(url: str, proc: subprocess.Popen, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the server exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server (it shuts down what it started), SIGKILL to it after 60 s; then SIGKILL to
    whatever of its process group is left."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def measure_servers(
    model_uri: str,
    tracking_uri: str,
    workdir: Path,
    spec: dict | None = None,
    *,
    clients: tuple[int, ...] = (1, 8),
    requests: int = 40,
    time_limit_s: float = 60.0,
    replicas: int = 1,
    max_batch_size: int = 8,
    servers: tuple[str, ...] = SERVERS,
) -> list[dict]:
    """Serve ``model_uri`` (a registered version with a nowcaster at ``tracking_uri``) with each of
    ``servers`` in turn and :func:`load` it at each client count -> one row per (server, clients).

    Each server first gets a warm-up of 2 requests per client at the most clients. ``requests`` and
    ``time_limit_s`` bound each row (and the warm-up). ``spec``: the model's ``metadata["nowcaster"]``
    (None: read from the registry)."""
    if spec is None:
        mlflow.set_tracking_uri(tracking_uri)
        spec = mlflow.models.get_model_info(model_uri).metadata[METADATA_KEY]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(REPO)}
    body = request_body(spec["in_len"], spec["height"], spec["width"], spec["interval_s"])
    rows = []
    for kind in servers:
        command = server_command(kind, model_uri, free_port(), replicas, max_batch_size)
        with running_server(kind, command, workdir, env) as url:
            # warm-up: the first requests after a start are slow (lazy loading, thread pools)
            load(url, body, max(clients), 2 * max(clients), time_limit_s, spec["out_len"])
            for n in clients:
                row = load(url, body, n, requests, time_limit_s, spec["out_len"])
                rows.append({"server": kind, **row})
                print(json.dumps(rows[-1]), flush=True)
    return rows


# --------------------------------------------------------------------------- standalone run
def register_tiny(workdir: Path, size_px: int = 96) -> tuple[str, str, dict]:
    """A freshly initialised ``tiny`` TrajGRU at ``size_px``, registered with its nowcaster in a SQLite
    store under ``workdir`` (from one synthetic day ingested at that size) -> (model URI, tracking URI,
    the nowcaster's spec). Untrained weights: the speed is the same."""
    archive, store_path = workdir / "archive", workdir / "store.zarr"
    synth_archive(SynthConfig(archive, days=1, frames_per_day=30, size_px=size_px, workers=1), progress=False)
    ingest(IngestConfig(archive=archive, store=store_path, workers=0), progress=False)
    store = Store.open(store_path)
    torch.manual_seed(0)
    model = build_model("tiny", "trajgru", height=size_px, width=size_px).eval()
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    experiment_id = tracking.setup_experiment(tracking_uri, "serve-load")
    example = np.random.default_rng(0).random((model.config.in_len, 2, 1, size_px, size_px), dtype=np.float32)
    with mlflow.start_run(experiment_id=experiment_id):
        logged = tracking.log_and_register_model(model, example, "serve-load", store=store)
    spec = NowcasterSpec.from_store(store, model.config.to_dict()).to_dict()
    return f"models:/serve-load/{logged.registered_version}", tracking_uri, spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=96, help="frame side of the tiny model (pixels)")
    p.add_argument("--requests", type=int, default=40, help="requests per (server, clients) row, at most")
    p.add_argument("--time-limit-s", type=float, default=60.0, help="seconds per row, at most")
    p.add_argument("--replicas", type=int, default=1, help="nowcast serve --replicas")
    p.add_argument("--max-batch-size", type=int, default=8, help="nowcast serve --max-batch-size")
    p.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        model_uri, tracking_uri, spec = register_tiny(Path(tmp), args.size)
        rows = measure_servers(
            model_uri,
            tracking_uri,
            Path(tmp),
            spec,
            requests=args.requests,
            time_limit_s=args.time_limit_s,
            replicas=args.replicas,
            max_batch_size=args.max_batch_size,
        )
    result = {
        "command": " ".join(
            ["python benchmarks/serve_load.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "model": {
            "preset": "tiny",
            "cell": "trajgru",
            "size_px": args.size,
            **{k: spec[k] for k in ("in_len", "out_len")},
        },
        "replicas": args.replicas,
        "max_batch_size": args.max_batch_size,
        "machine": machine(),
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # before, after
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
