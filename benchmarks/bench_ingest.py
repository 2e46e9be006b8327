"""Ingest throughput vs the raw Pillow PNG-decode rate of the same machine, on the same frames; and
the same frames as ODIM_H5 composites.

    python benchmarks/bench_ingest.py [--frames 1200] [--size 480] [--workers N] [--units 4] [--formats hko7,odim]

1. Writes a radar-like HKO-7 archive (frames + masks).
2. Per-core efficiency, serial, interleaved unit by unit (robust on a shared machine): CPU time to
   decode a unit's PNG bytes (already in memory: the issue's reference) vs CPU time of
   ``ingest_unit`` on the same unit (read files + decode PNGs + unzip masks + compress + write), for
   several compressors, with a breakdown of where a frame's time goes.
3. The real thing: ``ingest`` on a LocalCluster of ``workers`` processes (default: all cores), reported
   against cores x single-core decode rate (wall clock, decode rate measured in the same run),
   including and excluding the cluster start-up.
   Then, from inside the workers (per-unit task timings): task CPU ms/frame, CPU/wall share in the
   tasks (below 100% = waiting for a core or I/O) and how many tasks ran at once.
   ``--skip-table`` skips step 2.
4. ODIM_H5 (``--formats`` has odim): the same frames written as ODIM_H5 COMP files (DBZH uint8, gain 0.5,
   offset -32, nodata 255, undetect 0, gzip 6, a QIND quality field, the OPERA layout), then: the
   one-core rate of reading the pixel array with h5py (the analogue of PNG decode), where a frame's
   CPU time goes in the source (metadata, pixel array, scaling + encoding), and ``ingest`` on the same
   LocalCluster next to the PNG archive's.
Target: ingest frames/s >= 0.8 x cores x decode rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_dataset import radar_frames  # noqa: E402

from pipeline import ingest as ing  # noqa: E402
from pipeline import store as st  # noqa: E402
from pipeline.catalog import INTERVAL_S  # noqa: E402
from pipeline.sources import get_source, hko7, odim  # noqa: E402
from tests.pipeline.sources._files import GridSpec, OdimData, write_odim  # noqa: E402  (ODIM_H5 per the spec)

T0_S = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))
COMPRESSORS = [("zstd", 1), ("zstd", -3), ("blosc-lz4", 1), ("none", 0)]


def _write_day(args) -> int:
    root, k0, n, size, seed = args
    frames, masks = radar_frames(n, size, seed)
    for i in range(n):
        t = T0_S + (k0 + i) * INTERVAL_S
        for path, data in (
            (hko7.frame_path(root, t), hko7.encode_frame(frames[i])),
            (hko7.mask_path(root, t), hko7.encode_mask(masks[i])),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return n


def make_archive(root: Path, n_frames: int, size: int) -> None:
    jobs = [(root, k0, min(240, n_frames - k0), size, k0) for k0 in range(0, n_frames, 240)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_day, jobs))


def _write_odim_day(args) -> int:
    root, k0, n, size, seed = args
    frames, masks = radar_frames(n, size, seed)
    grid = GridSpec(shape=(size, size), step=1000.0)
    for i in range(n):
        t = T0_S + (k0 + i) * INTERVAL_S
        dbz = frames[i].astype(np.float64) * 70.0 / 255.0 - 10.0
        raw = np.clip(np.rint((dbz + 32.0) / 0.5), 1, 254).astype(np.uint8)
        raw[frames[i] == 0] = 0  # undetect
        raw[~masks[i]] = 255  # nodata
        when = np.datetime64(t, "s").astype(object).strftime("%Y%m%d%H%M%S")
        path = root / when[:8] / f"T_PAAH21_C_EUOC_{when}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_odim(
            path,
            [OdimData("DBZH", raw, gain=0.5, offset=-32.0, nodata=255.0, undetect=0.0)],
            grid=grid,
            date=when[:8],
            time=when[8:],
        )
    return n


def make_odim_archive(root: Path, n_frames: int, size: int) -> None:
    """The frames of :func:`make_archive` (same seeds) as ODIM_H5 composites."""
    jobs = [(root, k0, min(240, n_frames - k0), size, k0) for k0 in range(0, n_frames, 240)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_odim_day, jobs))


def odim_read_rate(root: Path, n: int = 200) -> float:
    """Frames/s (wall) for one core reading the pixel array of ODIM files with h5py (the PNG-decode analogue)."""
    import h5py

    paths = sorted(root.rglob("*.h5"))[:n]
    t = time.perf_counter()
    for p in paths:
        with h5py.File(p, "r") as f:
            f["dataset1/data1/data"][()]
    return len(paths) / (time.perf_counter() - t)


def odim_breakdown(root: Path, size: int, n: int = 60) -> str:
    """Where a frame's CPU time goes in the ODIM source (ms per frame)."""
    import h5py

    source = get_source("odim")
    listing = source.list_frames(root)
    source = source.configure(**listing.settled)
    refs = listing.frames[:n]
    paths = [root / ref.path for ref in refs]
    t_scan = _cpu(lambda: [odim.scan_file(p) for p in paths])
    t_data = _cpu(lambda: [h5py.File(p, "r")["dataset1/data1/data"][()] for p in paths])
    t_all = _cpu(lambda: list(source.read_frames(root, refs, (size, size))))
    return (
        f"ODIM source, CPU ms per frame: metadata (scan_file) {t_scan / n * 1e3:.2f}, pixel array (h5py + gzip) "
        f"{t_data / n * 1e3:.2f}, whole read_frames (metadata + array + scaling + encoding) {t_all / n * 1e3:.2f}"
    )


def odim_section(tmp: Path, n_frames: int, size: int, cores: int, png_res) -> None:
    t = time.perf_counter()
    make_odim_archive(tmp / "odim", n_frames, size)
    mb = sum(p.stat().st_size for p in (tmp / "odim").rglob("*.h5")) / 1e6
    print(f"ODIM archive: {n_frames} files {size}x{size} ({mb:.0f} MB) in {time.perf_counter() - t:.1f} s")
    print(odim_breakdown(tmp / "odim", size))
    rate = odim_read_rate(tmp / "odim")
    res = ing.ingest(ing.IngestConfig(tmp / "odim", tmp / "odim.zarr", workers=cores), progress=False)
    rate = (rate + odim_read_rate(tmp / "odim")) / 2
    ref = rate * cores
    print(
        f"h5py pixel-array read, 1 core (wall, mean of before/after the ingest): {rate:.0f} frames/s; "
        f"x {cores} cores = {ref:.0f} frames/s"
    )
    print(
        f"ODIM ingest, LocalCluster of {cores} processes, all stages incl. listing ({n_frames} files scanned), "
        f"cluster start/stop ({res.cluster_seconds:.1f} s) and catalog: {res.seconds:.1f} s, "
        f"{res.frames_per_s:.0f} frames/s (PNG archive, same frames: {png_res.frames_per_s:.0f} frames/s)"
    )
    print(
        f"ODIM ingest, unit phase only: {res.write_seconds:.1f} s, {res.write_frames_per_s:.0f} frames/s = "
        f"{res.write_frames_per_s / ref:.0%} of cores x h5py read rate (PNG archive: "
        f"{png_res.write_frames_per_s:.0f} frames/s)"
    )
    print(task_report(res))


def decode_rate(root: Path, n: int = 200) -> float:
    """Frames/s (wall) for one core decoding PNG bytes already in memory (the issue's reference)."""
    paths = sorted((root / hko7.FRAME_DIR).rglob("*.png"))[:n]
    blobs = [p.read_bytes() for p in paths]
    t = time.perf_counter()
    for b in blobs:
        hko7.decode_frame(b)
    return len(blobs) / (time.perf_counter() - t)


def _cpu(fn) -> float:
    c = time.process_time()
    fn()
    return time.process_time() - c


def _prepared_store(root: Path, store: Path, compressor: str, level: int):
    """An empty store sized for the archive (as `ingest` leaves it before the units run) and its plan."""
    shutil.rmtree(store, ignore_errors=True)
    cfg = ing.IngestConfig(root, store, workers=0, compressor=compressor, level=level)
    source = get_source("hko7")
    listing = source.list_frames(root)
    group = ing._create(cfg, Path(store), root, source, listing, st.infer_interval_s(listing.times_s()))
    plan = ing._plan(listing, group)
    ing._apply_plan(group, plan)
    return plan


def per_core_table(root: Path, tmp: Path, n_units: int) -> None:
    """Interleaved CPU timings per unit: PNG decode (reference) vs ingest_unit, per compressor."""
    print(
        "| compressor | store MB per 1000 frames | ingest CPU ms/frame | PNG decode CPU ms/frame "
        "| decode / ingest (per-core efficiency) |"
    )
    print("|---|---|---|---|---|")
    for comp, level in COMPRESSORS:
        store = tmp / f"unit_{comp}{level}.zarr"
        plan = _prepared_store(root, store, comp, level)
        dec = unit = 0.0
        n = 0
        for u in range(min(n_units, plan.n_units)):
            i0, slots = plan.unit_slots(u)
            blobs = [(root / ref.path).read_bytes() for ref in slots]
            dec += _cpu(lambda: [hko7.decode_frame(b) for b in blobs])  # noqa: B023 (called at once)
            unit += _cpu(lambda: ing.ingest_unit(str(store), get_source("hko7"), str(root), u, i0, slots))  # noqa: B023
            n += len(slots)
        mb = sum(p.stat().st_size for p in (store / st.FRAMES).rglob("*") if p.is_file())
        mb += sum(p.stat().st_size for p in (store / st.MASKS).rglob("*") if p.is_file())
        name = f"{comp} {level}" if comp != "none" else comp
        print(
            f"| {name} | {mb / n * 1000 / 1e6:.1f} | {unit / n * 1e3:.2f} | {dec / n * 1e3:.2f} | {dec / unit:.0%} |"
        )


def breakdown(root: Path, tmp: Path) -> None:
    """Where one unit's time goes (CPU ms per frame), default layout."""
    plan = _prepared_store(root, tmp / "breakdown.zarr", "zstd", 1)
    i0, slots = plan.unit_slots(0)
    store = st.Store.open(tmp / "breakdown.zarr", require_complete=False, mode="r+")
    shape = store.frame_size
    reads = {}
    t_read = _cpu(
        lambda: reads.update(
            {ref.path: ((root / ref.path).read_bytes(), (root / ref.mask_path).read_bytes()) for ref in slots}
        )
    )
    frames = np.stack([hko7.decode_frame(b, shape) for b, _ in reads.values()])
    masks = np.stack([hko7.decode_mask(m, shape) for _, m in reads.values()])
    t_png = _cpu(lambda: [hko7.decode_frame(b, shape) for b, _ in reads.values()])
    t_mask = _cpu(lambda: [hko7.decode_mask(m, shape) for _, m in reads.values()])
    fa, ma = (store.group[k].with_config({"write_empty_chunks": True}) for k in (st.FRAMES, st.MASKS))
    t_write = _cpu(
        lambda: (
            fa.__setitem__(slice(i0, i0 + len(slots)), frames),
            ma.__setitem__(slice(i0, i0 + len(slots)), masks),
        )
    )
    n = len(slots)
    parts = {
        "read files": t_read,
        "PNG decode": t_png,
        "mask unzip": t_mask,
        "zarr compress+write (zstd 1)": t_write,
    }
    total = sum(parts.values())
    print(
        "breakdown of one unit (CPU ms per frame): "
        + ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in parts.items())
        + f"; sum {total / n * 1e3:.2f} -> PNG decode is {t_png / total:.0%} of it "
        f"(the ceiling for 'ingest / decode rate' with this output)"
    )


def task_report(res: ing.IngestResult) -> str:
    """Inside the Dask workers: are the units running in parallel, and at what CPU share?"""
    st_ = res.task_stats
    if not st_:
        return "no unit tasks ran"
    n = sum(t["n"] for t in st_)
    cpu = sum(t["cpu_s"] for t in st_)
    busy = sum(t["end_s"] - t["start_s"] for t in st_)
    span = max(t["end_s"] for t in st_) - min(t["start_s"] for t in st_)
    pids = Counter(t["pid"] for t in st_)
    return (
        f"{len(st_)} unit tasks on {len(pids)} worker process(es) {sorted(pids.values())}: task CPU "
        f"{cpu / n * 1e3:.2f} ms/frame, task wall {busy / n * 1e3:.2f} ms/frame (CPU/wall in tasks "
        f"{cpu / busy:.0%}: the rest is waiting for a core or I/O); tasks in flight on average "
        f"{busy / span:.2f}; first start -> last end {span:.2f} s of a {res.write_seconds:.2f} s unit phase"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1200)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--units", type=int, default=4, help="units timed per compressor in the per-core table")
    ap.add_argument("--tmp", default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--skip-table", action="store_true", help="skip the per-core table and breakdown")
    ap.add_argument(
        "--formats", default="hko7,odim", help="hko7 (PNG) always; add odim for the ODIM_H5 section"
    )
    args = ap.parse_args()
    cores = args.workers or os.cpu_count()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_", dir=args.tmp))
    try:
        t = time.perf_counter()
        make_archive(tmp / "archive", args.frames, args.size)
        print(
            f"archive: {args.frames} frames {args.size}x{args.size} in {time.perf_counter() - t:.1f} s; "
            f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
        )
        if not args.skip_table:
            per_core_table(tmp / "archive", tmp, args.units)
            breakdown(tmp / "archive", tmp)
        rate = decode_rate(tmp / "archive")
        res = ing.ingest(ing.IngestConfig(tmp / "archive", tmp / "store.zarr", workers=cores), progress=False)
        rate_after = decode_rate(tmp / "archive")
        rate = (rate + rate_after) / 2
        ref = rate * cores
        print(
            f"Pillow decode, 1 core (wall, mean of before/after the ingest): {rate:.0f} frames/s; "
            f"x {cores} cores = {ref:.0f} frames/s"
        )
        print(
            f"ingest, LocalCluster of {cores} processes, all stages incl. cluster start/stop "
            f"({res.cluster_seconds:.1f} s) and catalog: {res.seconds:.1f} s, {res.frames_per_s:.0f} frames/s "
            f"= {res.frames_per_s / ref:.0%} of cores x decode rate"
        )
        print(
            f"ingest, unit phase only (decode + write, excl. cluster start-up): {res.write_seconds:.1f} s, "
            f"{res.write_frames_per_s:.0f} frames/s = {res.write_frames_per_s / ref:.0%} of cores x decode rate"
        )
        print(task_report(res))
        t = time.perf_counter()
        again = ing.ingest(
            ing.IngestConfig(tmp / "archive", tmp / "store.zarr", workers=cores), progress=False
        )
        print(
            f"re-run on the finished store: {time.perf_counter() - t:.1f} s, units written {again.n_units_written}"
        )
        if "odim" in args.formats.split(","):
            odim_section(tmp, args.frames, args.size, cores, res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
