"""Ingest throughput vs the raw Pillow PNG-decode rate of the same machine.

    python benchmarks/bench_ingest.py [--frames 1200] [--size 480] [--workers N]

Writes a radar-like HKO-7 archive (frames + masks), measures the single-core decode rate
(hko7.decode_frame on in-memory PNG bytes) and then times `ingest` with a LocalCluster of
``workers`` processes (default: all cores). Target: ingest frames/s >= 0.8 x cores x decode rate.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dataset import radar_frames  # noqa: E402

from pipeline import hko7  # noqa: E402
from pipeline.ingest import IngestConfig, ingest  # noqa: E402

T0_S = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))


def _write_day(args) -> int:
    root, k0, n, size, seed = args
    frames, masks = radar_frames(n, size, seed)
    for i in range(n):
        t = T0_S + (k0 + i) * hko7.INTERVAL_S
        for path, data in ((hko7.frame_path(root, t), hko7.encode_frame(frames[i])),
                           (hko7.mask_path(root, t), hko7.encode_mask(masks[i]))):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return n


def make_archive(root: Path, n_frames: int, size: int) -> None:
    jobs = [(root, k0, min(240, n_frames - k0), size, k0) for k0 in range(0, n_frames, 240)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_day, jobs))


def decode_rate(root: Path, n: int = 200) -> float:
    """Frames/s for one core decoding PNG bytes already in memory (the issue's reference)."""
    paths = sorted((root / hko7.FRAME_DIR).rglob("*.png"))[:n]
    blobs = [p.read_bytes() for p in paths]
    t = time.perf_counter()
    for b in blobs:
        hko7.decode_frame(b)
    return len(blobs) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1200)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    cores = args.workers or os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=args.tmp))
    try:
        t = time.perf_counter()
        make_archive(tmp / "archive", args.frames, args.size)
        print(f"archive: {args.frames} frames {args.size}x{args.size} in {time.perf_counter() - t:.1f} s")
        rate = decode_rate(tmp / "archive")
        print(f"Pillow decode, 1 core: {rate:.0f} frames/s; x {cores} workers = {rate * cores:.0f} frames/s")
        res = ingest(IngestConfig(tmp / "archive", tmp / "store.zarr", workers=cores), progress=False)
        print(f"ingest (LocalCluster, {cores} workers, incl. cluster start + catalog): {res.seconds:.1f} s, "
              f"{res.frames_per_s:.0f} frames/s = {res.frames_per_s / (rate * cores):.0%} of cores x decode rate")
        t = time.perf_counter()
        again = ingest(IngestConfig(tmp / "archive", tmp / "store.zarr", workers=cores), progress=False)
        print(f"re-run on the finished store: {time.perf_counter() - t:.1f} s, units written {again.n_units_written}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
