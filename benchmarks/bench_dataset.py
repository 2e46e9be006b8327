"""Store layouts for the access pattern "25 consecutive frames at a random time", and clip throughput.

    python benchmarks/bench_dataset.py [--frames 480] [--size 480] [--clips 60]

For each layout (chunk frames / shard frames / compressor) it writes the same radar-like frames
and masks, then prints store MB, ms per random 25-frame clip (StoreReader.read: frames + masks),
and, for the default layout, ClipDataset clips/s (single process and DataLoader with 2 workers).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline import hko7
from pipeline import store as st

LAYOUTS = [  # (chunk_frames, shard_frames, compressor)
    (1, None, "zstd"),
    (5, None, "zstd"),
    (25, None, "zstd"),
    (1, 120, "zstd"),
    (5, 120, "zstd"),
    (1, 240, "zstd"),
    (1, 120, "blosc-lz4"),
    (1, 120, "none"),
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
        frames[i] = np.where(disc, hko7.dbz_to_u8(dbz), 0)
        masks[i] = disc & (rng.random((size, size)) > 0.001)
    return frames, masks


def write_store(path: Path, frames, masks, layout: st.StoreLayout) -> None:
    n, h, w = frames.shape
    g = st.create_store(path, h, w, layout, {"interval_s": hko7.INTERVAL_S})
    g[st.FRAMES].resize((n, h, w))
    g[st.MASKS].resize((n, h, w))
    unit = layout.unit_frames
    for i0 in range(0, n, unit):  # whole shards / chunks, as the ingest writes them
        g[st.FRAMES][i0:i0 + unit] = frames[i0:i0 + unit]
        g[st.MASKS][i0:i0 + unit] = masks[i0:i0 + unit]
    t0 = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))
    st.write_vector(g, st.TIME, t0 + hko7.INTERVAL_S * np.arange(n, dtype=np.int64))
    st.write_vector(g, st.PRESENT, np.ones(n, bool))
    g.attrs["ingest_state"] = st.STATE_COMPLETE


def clip_read_ms(path: Path, n_clips: int, seq_len: int = 25, seed: int = 1) -> float:
    reader = st.StoreReader(st.open_store(path))
    rng = np.random.default_rng(seed)
    starts = reader.time_s[rng.integers(0, reader.time_s.size - seq_len, n_clips)]
    reader.read(starts[0] + hko7.INTERVAL_S * np.arange(seq_len))  # warm-up
    t = time.perf_counter()
    for s in starts:
        reader.read(s + hko7.INTERVAL_S * np.arange(seq_len))
    return (time.perf_counter() - t) / n_clips * 1e3


def dataset_clips_per_s(path: Path, n_clips: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    from pipeline.dataset import ClipDataset

    reader = st.StoreReader(st.open_store(path))
    starts = np.random.default_rng(2).choice(reader.time_s[:-25], n_clips)
    ds = ClipDataset(path, starts)
    loader = DataLoader(ds, batch_size=4, num_workers=workers, shuffle=False)
    t = time.perf_counter()
    n = sum(x.shape[0] for x, _ in loader)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=480)
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--clips", type=int, default=60)
    args = ap.parse_args()
    frames, masks = radar_frames(args.frames, args.size)
    png_mb = sum(len(hko7.encode_frame(f)) for f in frames[:20]) / 20 * args.frames / 1e6
    print(f"{args.frames} frames {args.size}x{args.size}; the same frames as PNG: {png_mb:.1f} MB")
    tmp = Path(tempfile.mkdtemp(prefix="bench_dataset_"))
    try:
        print("| chunk frames | shard frames | compressor | files | store MB | random 25-frame clip ms |")
        print("|---|---|---|---|---|---|")
        for chunk, shard, comp in LAYOUTS:
            path = tmp / f"c{chunk}_s{shard}_{comp}.zarr"
            t = time.perf_counter()
            write_store(path, frames, masks, st.StoreLayout(chunk, shard, comp, 1))
            write_s = time.perf_counter() - t
            files = sum(1 for p in path.rglob("*") if p.is_file())
            mb = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
            ms = clip_read_ms(path, args.clips)
            print(f"| {chunk} | {shard or '-'} | {comp} | {files} | {mb:.1f} | {ms:.1f} |  (write {write_s:.1f} s)")
        default = st.StoreLayout()
        path = tmp / "default.zarr"
        write_store(path, frames, masks, default)
        for workers in (0, 2):
            cps = dataset_clips_per_s(path, args.clips, workers)
            print(f"ClipDataset default layout {default.to_dict()}: {cps:.1f} clips/s (DataLoader workers={workers})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
