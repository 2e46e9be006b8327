"""The operational service: latency of ``nowcast watch`` and throughput of the served model.

    python benchmarks/bench_service.py --part latency|serving|all [--cycles 12] [--cases tiny,hko7]

``--part latency``: from a file landing in the archive to its forecast written, through the real
``nowcast watch`` process (the code users run): for each case it writes a short history, ingests it,
saves an untrained model of the preset (latency does not depend on the weights), starts
``nowcast watch`` (``--poll-s 0.2``), then lands one file at a time (written under a hidden name and
renamed into the archive, as a feed would) and waits for its cycle record. Per cycle: total latency
= record ``written_s`` - landing time, split into notice (landing -> seen by a poll), ingest (seen ->
in the store: listing, the append through ``pipeline.ingest``), forecast (reading the inputs + the
model) and write (output files, publishing, ``latest``). Median and p95 over the cycles.

- ``tiny``: the tiny TrajGRU at 96x96 on an HKO-7 PNG archive, PNG output; target <= 2 s median.
- ``hko7``: the HKO-7 TrajGRU at 480x480 on an ODIM_H5 archive, CF-NetCDF output; target <= 10 s.

``--part serving``: requests/s and p95 latency of ``nowcast serve`` and ``mlflow models serve`` at 1
and 8 concurrent clients, measured by ``benchmarks/serve_load.py`` (see :func:`serving`; options this
script does not know are passed to it).

Results: ``benchmarks/results/service_latency.json`` (and ``serving.json``, written by serve_load);
the README tables come from them (``benchmarks/update_readme.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from bench_dataset import radar_frames  # noqa: E402

from pipeline import checkpoints  # noqa: E402
from pipeline.catalog import INTERVAL_S  # noqa: E402
from pipeline.ingest import IngestConfig, ingest  # noqa: E402
from pipeline.sources import hko7  # noqa: E402
from pipeline.watch import read_records  # noqa: E402
from tests.pipeline.sources._files import GridSpec, OdimData, write_odim  # noqa: E402  (ODIM_H5 per the spec)
from trajgru.model import build_model  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
T0_S = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))
HISTORY = 6  # frames in the store before the service starts (the model takes 5)
POLL_S = 0.2
#: case -> (preset, frame size, archive format, output format, target median seconds)
CASES = {
    "tiny": ("tiny", 96, "hko7", "png", 2.0),
    "hko7": ("hko7", 480, "odim", "netcdf", 10.0),
}
START_TIMEOUT_S = 300
CYCLE_TIMEOUT_S = 300


def _land(path: Path, data: bytes) -> None:
    """Write ``data`` under a hidden name beside ``path``, then rename it into place (as a feed does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _hko7_files(root: Path, time_s: int, frame: np.ndarray, mask: np.ndarray) -> list[tuple[Path, bytes]]:
    """The mask first: a frame is complete when its PNG lands."""
    return [
        (hko7.mask_path(root, time_s), hko7.encode_mask(mask)),
        (hko7.frame_path(root, time_s), hko7.encode_frame(frame)),
    ]


def _odim_files(root: Path, time_s: int, frame: np.ndarray, mask: np.ndarray) -> list[tuple[Path, bytes]]:
    """One ODIM_H5 composite (DBZH uint8, gain 0.5, offset -32, nodata 255, undetect 0)."""
    dbz = frame.astype(np.float64) * 70.0 / 255.0 - 10.0
    raw = np.clip(np.rint((dbz + 32.0) / 0.5), 1, 254).astype(np.uint8)
    raw[frame == 0] = 0
    raw[~mask] = 255
    when = np.datetime64(time_s, "s").astype(object).strftime("%Y%m%d%H%M%S")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        write_odim(
            path,
            [OdimData("DBZH", raw, gain=0.5, offset=-32.0, nodata=255.0, undetect=0.0)],
            grid=GridSpec(shape=frame.shape, step=1000.0),
            date=when[:8],
            time=when[8:],
        )
        data = path.read_bytes()
    return [(root / when[:8] / f"T_PAAH21_C_EUOC_{when}.h5", data)]


FILES = {"hko7": _hko7_files, "odim": _odim_files}


def _wait(predicate, timeout_s: float, proc: subprocess.Popen, log: Path, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise SystemExit(f"nowcast watch exited while waiting for {what}:\n{log.read_text()}")
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}:\n{log.read_text()}")


def _stats(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def latency_case(name: str, cycles: int, workdir: Path, threads: int | None) -> dict:
    """Run one case (see the module doc) -> its result dict."""
    preset, size, archive_format, out_format, target_s = CASES[name]
    root, store, out = workdir / "archive", workdir / "store.zarr", workdir / "out"
    frames, masks = radar_frames(HISTORY + cycles, size, seed=1)
    times = [T0_S + k * INTERVAL_S for k in range(HISTORY + cycles)]
    for k in range(HISTORY):
        for path, data in FILES[archive_format](root, times[k], frames[k], masks[k]):
            _land(path, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short history has no valid/test clips
        ingest(IngestConfig(archive=root, store=store, workers=0), progress=False)
    model_dir = workdir / "model"
    checkpoints.save_model_files(build_model(preset, "trajgru", height=size, width=size).eval(), model_dir)
    log = workdir / "watch.log"
    cmd = [sys.executable, "-m", "cli", "watch", str(root), str(store), "--model", str(model_dir)]
    cmd += ["--out-dir", str(out), "--format", out_format, "--poll-s", str(POLL_S), "--device", "cpu"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    try:
        _wait(lambda: len(read_records(out)) >= 1, START_TIMEOUT_S, proc, log, "the first cycle")
        rows = []
        for k in range(HISTORY, HISTORY + cycles):
            files = FILES[archive_format](root, times[k], frames[k], masks[k])
            for path, data in files:
                _land(path, data)
            landed_s = time.time()
            rec = _wait(
                lambda t=times[k]: next((r for r in read_records(out) if r["frame_time_s"] == t), None),
                CYCLE_TIMEOUT_S,
                proc,
                log,
                f"cycle {k}",
            )
            if rec["status"] != "forecast":
                raise SystemExit(f"cycle {k} was not forecast: {rec}")
            rows.append(
                {
                    "total_s": rec["written_s"] - landed_s,
                    "notice_s": rec["seen_s"] - landed_s,
                    "ingest_s": rec["ingest_s"],
                    "forecast_s": rec["forecast_s"],
                    "write_s": rec["write_s"],
                }
            )
            print(
                f"{name} cycle {k - HISTORY + 1}/{cycles}: "
                + ", ".join(f"{a} {b:.2f}" for a, b in rows[-1].items())
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return {
        "preset": preset,
        "size": size,
        "archive_format": archive_format,
        "output_format": out_format,
        "target_median_s": target_s,
        "cycles": cycles,
        "poll_s": POLL_S,
        "threads": threads,
        **{key: _stats([r[key] for r in rows]) for key in rows[0]},
        "rows": rows,
    }


def _machine() -> dict:
    import torch

    return {
        "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "load_average_1min_at_end": os.getloadavg()[0],
    }


def latency(args) -> dict:
    results = {"command": " ".join(["python benchmarks/bench_service.py", *sys.argv[1:]]), "cases": {}}
    for name in args.cases.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench_service_{name}_") as tmp:
            results["cases"][name] = latency_case(name, args.cycles, Path(tmp), args.threads)
    results["machine"] = _machine()
    return results


def serving(argv: list[str]) -> int:
    """Throughput of ``nowcast serve`` and ``mlflow models serve`` at 1 and 8 concurrent clients:
    ``benchmarks/serve_load.py`` (the serving engineer's HTTP load measurement, its own options and
    result file ``benchmarks/results/serving.json``); ``argv`` are the options this script did not know.

    HOOK for merging: until ``serve_load.py`` is on this branch the serving part stops with this
    message (no numbers are made up)."""
    try:
        import serve_load
    except ImportError:
        raise SystemExit(
            "benchmarks/serve_load.py is not on this branch yet: --part serving runs serve_load.main(argv)"
        ) from None
    return serve_load.main(argv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("latency", "serving", "all"), default="all")
    p.add_argument("--cycles", type=int, default=12, help="cycles measured per case")
    p.add_argument("--threads", type=int, default=None, help="nowcast watch --threads (default: torch's)")
    p.add_argument("--cases", default="tiny,hko7", help=f"comma-separated, of {', '.join(CASES)}")
    args, serving_argv = p.parse_known_args(argv)
    if serving_argv and args.part == "latency":
        p.error(f"unknown options for --part latency: {' '.join(serving_argv)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part in ("latency", "all"):
        result = latency(args)
        (RESULTS / "service_latency.json").write_text(json.dumps(result, indent=1) + "\n")
        for name, case in result["cases"].items():
            print(
                f"{name}: median {case['total_s']['median']:.2f} s, p95 {case['total_s']['p95']:.2f} s "
                f"(target <= {case['target_median_s']:.0f} s median)"
            )
    if args.part in ("serving", "all"):
        return serving(serving_argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
