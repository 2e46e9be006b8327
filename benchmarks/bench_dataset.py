"""Store layouts for the access pattern "25 consecutive frames at a random time", and clip throughput.

    python benchmarks/bench_dataset.py [--frames 480] [--size 480] [--clips 60] [--loader-clips 200]

For each layout (chunk frames / shard frames / compressor) it writes the same radar-like frames and
masks the way the ingest does (whole shards), then prints: store MB, write CPU ms per frame, and the
time for one random 25-frame clip -- ``StoreReader.read`` (uint8 frames + bool masks) and
``ClipDataset[i]`` (float32 tensors) -- as CPU ms (robust on a loaded machine) and wall ms. The
clips/s/core column is 1000 / ClipDataset CPU ms. Then, for the default layout, DataLoader clips/s
with 0, 1 and 2 worker processes (batch 4), item by item with the default collation (the old path)
and batched (``ClipDataset.__getitems__`` + ``collate_clips``), and the zarr-only read path.
``--loader-only`` skips the layout table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import store as st
from pipeline.catalog import INTERVAL_S
from pipeline.dataset import ClipDataset, collate_clips
from pipeline.sources import dbz_to_u8, hko7
from pipeline.store import Store

LAYOUTS = [  # (chunk_frames, shard_frames, compressor, level)
    (1, 120, "zstd", 1),
    (5, 120, "zstd", 1),
    (10, 120, "zstd", 1),
    (25, 150, "zstd", 1),
    (5, 240, "zstd", 1),
    (5, 120, "zstd", -3),
    (5, 120, "blosc-lz4", 1),
    (5, 120, "none", 0),
    (1, None, "zstd", 1),
    (5, None, "zstd", 1),
]


def radar_frames(n: int, size: int = 480, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """-> frames uint8 (n, size, size): smooth echoes (about a quarter of the disc) advected frame to
    frame, with noise inside echoes, in the HKO-7 dBZ encoding; masks bool (n, size, size): a disc
    with sparse clutter holes. Independent of pipeline.synth."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / (k + 1e-4) ** 1.2
    field = np.real(np.fft.ifft2(spectrum))
    field = (field - field.mean()) / field.std()
    y, x = np.mgrid[0:size, 0:size]
    disc = (x - size / 2) ** 2 + (y - size / 2) ** 2 <= (size / 2) ** 2
    frames = np.empty((n, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i in range(n):
        moved = np.roll(field, (i // 2, i), axis=(0, 1)) * (1 + 0.1 * np.sin(i / 20))
        echo = moved > 0.7
        dbz = np.where(echo, 10 + 20 * moved + rng.normal(0, 1.5, (size, size)), -10)
        frames[i] = np.where(disc, dbz_to_u8(dbz), 0)
        masks[i] = disc & (rng.random((size, size)) > 0.001)
    return frames, masks


def write_store(path: Path, frames, masks, layout: st.StoreLayout) -> None:
    """A complete store holding ``frames``/``masks`` at the HKO-7 cadence, written whole shards at a time."""
    n, h, w = frames.shape
    g = st.create_store(path, h, w, layout, {"interval_s": INTERVAL_S})
    g[st.FRAMES].resize((n, h, w))
    g[st.MASKS].resize((n, h, w))
    fa, ma = (g[k].with_config({"write_empty_chunks": True}) for k in (st.FRAMES, st.MASKS))  # as the ingest
    unit = layout.unit_frames
    for i0 in range(0, n, unit):  # whole shards / chunks, as the ingest writes them
        fa[i0 : i0 + unit] = frames[i0 : i0 + unit]
        ma[i0 : i0 + unit] = masks[i0 : i0 + unit]
    t0 = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))
    st.write_vector(g, st.TIME, t0 + INTERVAL_S * np.arange(n, dtype=np.int64))
    st.write_vector(g, st.PRESENT, np.ones(n, bool))
    g.attrs["ingest_state"] = st.STATE_COMPLETE


def _timed(fn, items, repeats: int = 3) -> tuple[float, float]:
    """-> (best CPU ms, best wall ms) per item of ``fn(item)`` over ``repeats`` passes."""
    fn(items[0])  # warm-up
    cpu = wall = float("inf")
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        for it in items:
            fn(it)
        cpu = min(cpu, (time.process_time() - c) / len(items) * 1e3)
        wall = min(wall, (time.perf_counter() - w) / len(items) * 1e3)
    return cpu, wall


def random_starts(path: Path, n_clips: int, seq_len: int = 25, seed: int = 1) -> np.ndarray:
    time_s = Store.open(path).time_s
    return time_s[np.random.default_rng(seed).integers(0, time_s.size - seq_len, n_clips)]


def clip_costs(path: Path, n_clips: int, fast: bool = True) -> dict:
    """CPU/wall ms per random 25-frame clip: StoreReader.read and ClipDataset.__getitem__."""

    starts = random_starts(path, n_clips)
    store = Store.open(path)
    reader = store.reader() if fast else st.StoreReader(store.group, fast=False)  # fast=False: through zarr
    read_cpu, read_wall = _timed(lambda s: reader.read(s + INTERVAL_S * np.arange(25)), list(starts))
    ds = ClipDataset(store, starts)
    ds._reader, ds._pid = reader, os.getpid()
    item_cpu, item_wall = _timed(ds.__getitem__, list(range(len(ds))))
    return {
        "read_cpu": read_cpu,
        "read_wall": read_wall,
        "item_cpu": item_cpu,
        "item_wall": item_wall,
        "fast": reader.uses_fast_path,
    }


def _cpu_s_self_and_children() -> float:
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


class _PerItemDataset:
    """ClipDataset without ``__getitems__``: the DataLoader fetches item by item (the old path)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def dataset_clips_per_s(
    path: Path, n_clips: int, workers: int, batch_size: int = 4, batched: bool = True
) -> tuple[float, float]:
    """-> (clips/s wall incl. worker start-up, CPU ms per clip of this process + its finished workers),
    through a DataLoader (shuffled random starts). batched: ``ClipDataset.__getitems__`` +
    ``collate_clips``; else item by item + the default collation (stacking)."""
    import torch
    from torch.utils.data import DataLoader

    ds = ClipDataset(Store.open(path), random_starts(path, n_clips, seed=2))
    kw = dict(collate_fn=collate_clips) if batched else {}
    loader = DataLoader(
        ds if batched else _PerItemDataset(ds),
        batch_size=batch_size,
        num_workers=workers,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
        **kw,
    )
    c, t = _cpu_s_self_and_children(), time.perf_counter()
    n = 0
    for x, m in loader:
        n += x.shape[0]
        float(x[:, -1, 0, 0, 0].sum() + m[:, -1, 0, 0, 0].sum())  # touch the batch, as a consumer would
    wall = time.perf_counter() - t
    del loader  # workers exit and are reaped: their CPU time lands in RUSAGE_CHILDREN
    return n / wall, (_cpu_s_self_and_children() - c) / n * 1e3


def loader_table(path: Path, n_clips: int, batch_size: int = 4) -> None:
    """DataLoader clips/s, old (per item + default collation) vs new (batched), 0/1/2 workers."""
    print(
        f"| DataLoader (batch {batch_size}) | num_workers | clips/s (wall, incl. worker start) "
        "| CPU ms per clip (all processes) | clips/s per core of CPU |"
    )
    print("|---|---|---|---|---|")
    for workers in (0, 1, 2):
        for batched in (False, True):
            cps, cpu_ms = dataset_clips_per_s(path, n_clips, workers, batch_size, batched)
            name = "__getitems__ + collate_clips" if batched else "per item + default collation"
            print(f"| {name} | {workers} | {cps:.1f} | {cpu_ms:.1f} | {1e3 / cpu_ms:.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--clips", type=int, default=60, help="random clips timed per layout")
    ap.add_argument("--loader-clips", type=int, default=200, help="clips through the DataLoader")
    ap.add_argument("--loader-only", action="store_true", help="skip the layout table")
    args = ap.parse_args()
    frames, masks = radar_frames(args.frames, args.size)
    png_mb = sum(len(hko7.encode_frame(f)) for f in frames[:20]) / 20 * args.frames / 1e6
    print(
        f"{args.frames} frames {args.size}x{args.size}; the same frames as PNG: {png_mb:.1f} MB; "
        f"os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    default = st.StoreLayout()
    try:
        if not args.loader_only:
            print(
                "| chunk frames | shard frames | compressor | files | store MB | write CPU ms/frame "
                "| clip read CPU ms (wall) | ClipDataset item CPU ms (wall) | clips/s/core |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
        for chunk, shard, comp, level in [] if args.loader_only else LAYOUTS:
            layout = st.StoreLayout(chunk, shard, comp, level)
            path = tmp / f"c{chunk}_s{shard}_{comp}{level}.zarr"
            c = time.process_time()
            write_store(path, frames, masks, layout)
            write_ms = (time.process_time() - c) / args.frames * 1e3
            files = sum(1 for p in path.rglob("*") if p.is_file())
            mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
            r = clip_costs(path, args.clips)
            mark = " (default)" if layout == default else ""
            comp_txt = f"{comp} {level}" if comp != "none" else comp
            print(
                f"| {chunk} | {shard or '-'} | {comp_txt}{mark} | {files} | {mb:.1f} | {write_ms:.2f} "
                f"| {r['read_cpu']:.1f} ({r['read_wall']:.1f}) | {r['item_cpu']:.1f} ({r['item_wall']:.1f}) "
                f"| {1e3 / r['item_cpu']:.0f} |" + ("" if r["fast"] else " zarr path")
            )
        path = tmp / "default.zarr"
        write_store(path, frames, masks, default)
        if not args.loader_only:
            z = clip_costs(path, args.clips, fast=False)
            print(
                f"default layout read through zarr only (no shard-file reader): read {z['read_cpu']:.1f} ms CPU "
                f"({z['read_wall']:.1f} wall), item {z['item_cpu']:.1f} ms CPU ({z['item_wall']:.1f} wall)"
            )
        loader_table(path, args.loader_clips)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
