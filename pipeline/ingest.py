"""Dask stage: a radar archive -> the Zarr v3 store (see pipeline.store).

Ingest knows archives only through the source interface (``pipeline.sources``): the format is
detected (or named in ``IngestConfig.source``), the source lists the frames with their times, and
each Dask task asks the source for its frames. A new archive format needs no change here.

How it runs
-----------
0. Take the store's lock (``store.ingest_lock``) for the whole run: a second ingest into the same
   store fails at once with a message, instead of racing the first.
1. List the archive's frames (``Source.list_frames``); files that cannot be listed are reported as bad.
   The source is configured with the options (crop, block, Z-R, variable) given now or recorded in
   the store, which must agree. Frames dated outside the accepted window (``earliest_time`` ..
   ``latest_time``: by default 1990-01-01 .. now + 1 day) are reported as bad: one bogus date would
   otherwise stretch the time axis over centuries. Frames whose time is off the cadence
   (``store.infer_cadence``: the store's ``interval_s``, or the archive's for a new store) are
   reported and skipped.
2. Plan the time axis: the stored times plus every new frame time after the last stored time
   (frames older than the store's last time are refused with a warning and counted in
   ``IngestResult.n_skipped_old``; ``nowcast ingest`` then exits 1: ingest into a fresh store to
   include them). Files already ingested whose bytes changed since (size and mtime differ, and so does
   their digest, recorded per file in the unit markers) are reported: the store keeps what it read.
   The axis is cut into *units* = whole shards (or whole chunks when unsharded), so no two tasks ever
   write the same shard/chunk file.
3. One Dask task per unit reads that unit's frames and masks (``Source.read_frames``) and writes the
   whole region ``frames[i0:i1]``, ``masks[i0:i1]`` directly; then it writes a done marker (an empty
   Zarr group ``_ingest/units/u<N>`` whose attributes list the unit's bad files and the size, mtime and
   digest of each file it read, and the digests of the shard files it wrote). A bad frame or mask makes
   the whole slot zeros / mask False (never a half-written frame).
   The store's cadence (``interval_s``) is derived from the listed frame times when the store is
   created (``store.infer_interval_s``).
4. Finalise in the driver: ``present``, the bad-file report (attrs + a JSON report file), the clip
   catalog per split, and ``ingest_state = "complete"``.

Re-running is idempotent: units with a marker are skipped, so a run killed with ``kill -9`` resumes
where it stopped and ends byte-identical to an uninterrupted run; on a grown archive only the new
frames (and the last, partial unit) are written.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import dask
import google_crc32c
import numpy as np
import zarr
from dask.distributed import Client, LocalCluster, as_completed

from pipeline import catalog as cat
from pipeline import store as st
from pipeline.errors import NowcastError, check
from pipeline.progress import track
from pipeline.sources import PIXEL_ENCODING, SOURCES, Listing, Source, detect_format, get_source
from pipeline.times import iso_utc, parse_time_s

log = logging.getLogger("nowcast.ingest")
_MAX_LISTED = 1000  # bad files listed in the store attrs (all of them go to the report file)
#: Default earliest accepted frame time (digital radar composites are younger), and how far after now
#: the latest accepted frame time lies by default (clock skew, files named for the end of a period).
EARLIEST_TIME = "1990-01-01"
LATEST_AHEAD_S = 86400


class IngestWarning(UserWarning):
    """Non-fatal ingest problems (frames without masks, skipped old frames)."""


@dataclass
class IngestConfig:
    """What to ingest and how.

    archive : archive root (any format of ``pipeline.sources``; optional <split>_days.txt day lists).
    store : output Zarr v3 store path (created, resumed or appended to).
    scheduler : address of an existing dask.distributed scheduler; None -> env DASK_SCHEDULER_ADDRESS
        (when ``workers`` is None), else a LocalCluster of ``workers`` single-threaded processes.
    workers : local worker processes (None = CPU cores; 0 = run in this process without Dask). A number
        means a local cluster (or none), whatever DASK_SCHEDULER_ADDRESS says; it cannot be combined with
        ``scheduler`` (that cluster has its own workers).
    splits : {split: [days] | (start, end) | {"start":..., "end":...}}; None -> the archive's
        <split>_days.txt files, else chronological fractions (valid_fraction, test_fraction of days).
    chunk_frames, shard_frames, compressor, level : the store layout (new stores only).
    seq_len, stride, max_consecutive_missing : the clip catalog rule (HKO-7: 25, 5, 2).
    report_path : JSON report (default ``<store>.ingest_report.json`` next to the store).
    source : archive format, a name of ``pipeline.sources.SOURCES``; None = detected from the archive.
    crop, block, zr, variable : options of gridded formats (ODIM_H5, CF-NetCDF; see
        ``pipeline.sources.gridded.GridSource``): crop box ``"x0,y0,x1,y1"`` (pixels), N x N block
        average, Z-R relation ``"A,B"``, quantity/variable to read. None = the store's recorded value
        (on resume/append), else the default. HKO-7 archives take none of them.
    max_frame_pixels : gridded formats: the largest frame (H * W) read; a file declaring more is bad.
        None = ``pipeline.sources.grid.MAX_FRAME_PIXELS`` (25 M, 5000 x 5000).
    earliest_time, latest_time : the accepted frame times (ISO 8601 UTC or epoch s); frames outside
        are reported as bad files. None for ``latest_time`` = now + 1 day.
    """

    archive: str | Path
    store: str | Path
    scheduler: str | None = None
    workers: int | None = None
    splits: dict | None = None
    valid_fraction: float = cat.VALID_FRACTION
    test_fraction: float = cat.TEST_FRACTION
    chunk_frames: int = st.StoreLayout.chunk_frames
    shard_frames: int | None = st.StoreLayout.shard_frames
    compressor: str = st.StoreLayout.compressor
    level: int = st.StoreLayout.level
    seq_len: int = cat.SEQ_LEN
    stride: int = cat.STRIDE
    max_consecutive_missing: int = cat.MAX_CONSECUTIVE_MISSING
    report_path: str | Path | None = None
    source: str | None = None
    crop: str | tuple | None = None
    block: int | None = None
    zr: str | tuple | None = None
    variable: str | None = None
    max_frame_pixels: int | None = None
    earliest_time: str | int | None = EARLIEST_TIME
    latest_time: str | int | None = None
    until_s: int | None = None

    def __post_init__(self):
        check(
            self.workers is None or self.workers >= 0,
            f"--workers must be >= 0 (0: ingest in this process, without Dask), got {self.workers}",
        )
        check(
            self.workers is None or not self.scheduler,
            f"--workers {self.workers} and --scheduler {self.scheduler} do not go together: --workers "
            "sizes the local cluster (0: no cluster), a scheduler's cluster has its own workers; "
            "give one of them",
        )
        check(
            self.source is None or self.source in SOURCES,
            f"unknown archive format {self.source!r}: use {' | '.join(SOURCES)}",
        )
        for name in ("valid_fraction", "test_fraction"):
            check(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class IngestResult:
    """Outcome of :func:`ingest`. ``bad_files``: [{"path", "reason"}] (paths relative to the archive)."""

    n_frames: int
    n_new_frames: int
    n_bad: int
    bad_files: list
    seconds: float
    frames_per_s: float
    store: str = ""
    report_path: str = ""
    n_units_written: int = 0
    n_units_skipped: int = 0
    n_without_mask: int = 0
    n_skipped_old: int = 0
    first_skipped_old: str = ""  # the first refused frame's file, when n_skipped_old > 0
    clips: dict = field(default_factory=dict)
    cluster_seconds: float = 0.0  # starting/connecting and closing the Dask cluster (part of ``seconds``)
    write_seconds: float = 0.0  # decoding + writing the units (part of ``seconds``)
    task_stats: list = field(default_factory=list)  # per written unit: see :func:`_timed_unit`

    @property
    def write_frames_per_s(self) -> float:
        """Frames written per second of the unit phase (excludes scan, cluster start-up, catalog)."""
        n = self.frames_per_s * self.seconds
        return n / self.write_seconds if self.write_seconds > 0 else 0.0


# ------------------------------------------------------------------------------------------ units


def _unit_name(unit: int) -> str:
    return f"{st.UNITS_GROUP}/u{unit:08d}"


def ingest_unit(store_path: str, source: Source, archive: str, unit: int, i0: int, slots: list) -> dict:
    """Read one unit's frames and write rows ``[i0, i0 + len(slots))`` of frames/masks, then its marker.

    slots : per row a FrameRef, or None = keep the stored row (a frame already in the store whose file
        left the archive). Runs on a Dask worker; returns the marker dict.
    """
    group = zarr.open_group(store_path, mode="r+")
    # write_empty_chunks=True: zarr's default (False) compares every chunk with the fill value before
    # writing it (np.array_equal), which cost more than the zstd compression itself (~3 ms per frame).
    frames_arr, masks_arr = (
        group[name].with_config({"write_empty_chunks": True}) for name in (st.FRAMES, st.MASKS)
    )
    shape = tuple(frames_arr.shape[1:])
    n = len(slots)
    frames = np.zeros((n,) + shape, dtype=np.uint8)
    masks = np.zeros((n,) + shape, dtype=bool)
    bad, no_mask, files = [], [], {}
    rows = [j for j, ref in enumerate(slots) if ref is not None]
    kept = [j for j, ref in enumerate(slots) if ref is None]
    for j, frame in zip(rows, source.read_frames(Path(archive), [slots[j] for j in rows], shape)):
        ref = slots[j]
        for rel in filter(None, (ref.path, ref.mask_path)):
            files[rel] = file_stamp(Path(archive) / rel)
        if not frame.ok:
            bad.append({"path": frame.bad_path or ref.path, "reason": frame.reason, "row": i0 + j})
            continue
        frames[j] = frame.pixels
        if frame.mask is None:
            masks[j] = True
            no_mask.append(ref.path)
        else:
            masks[j] = frame.mask
    if kept:  # rows whose file left the archive: the stored frame, checked like every read
        reader = st.StoreReader(group)
        for j in kept:
            reader.read_rows(i0 + j, i0 + j + 1, frames[j : j + 1], masks[j : j + 1])
        rows = np.asarray(kept) + i0
        present = np.asarray(group[st.PRESENT][:], dtype=bool)
        bad += [
            {"path": f"row {r}", "reason": "kept from the store (file gone); was unusable", "row": int(r)}
            for r in rows
            if r >= present.size or not present[r]
        ]
    frames_arr[i0 : i0 + n] = frames
    masks_arr[i0 : i0 + n] = masks
    marker = {
        "i0": int(i0),
        "n": int(n),
        "bad": bad,
        "no_mask": no_mask,
        "files": files,
        "digests": st.unit_file_digests(group, unit),
    }
    group.create_group(_unit_name(unit), attributes=marker, overwrite=True)
    return marker


def file_stamp(path: Path) -> list | None:
    """``[size, mtime_ns, crc32c of the bytes]`` of a file as ingest read it (crc32c: hardware-accelerated,
    a fraction of the file's decode time; it detects changes, not tampering); None when it is gone."""
    try:
        info = os.stat(path, follow_symlinks=False)
        digest = int(google_crc32c.value(path.read_bytes()))
    except OSError:
        return None
    return [int(info.st_size), int(info.st_mtime_ns), digest]


def _changed_files(group, units: list[int], root: Path) -> list[dict]:
    """Bad-file entries for the files of already-written ``units`` whose bytes changed since they were
    ingested: size or mtime differ from the unit marker's stamp, and so does the digest (a ``touch``
    alone is not a change). Files gone from the archive are not reported (their rows are kept)."""
    changed = []
    for unit in units:
        for rel, stamp in group[_unit_name(unit)].attrs.get("files", {}).items():
            path = root / rel
            try:
                info = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            if stamp is None or [int(info.st_size), int(info.st_mtime_ns)] == stamp[:2]:
                continue
            now = file_stamp(path)
            if now is not None and now[2] != stamp[2]:
                changed.append(
                    {
                        "path": rel,
                        "reason": "changed since it was ingested (other bytes): the store keeps the frame "
                        "it read then; ingest into a new store to use the new data",
                    }
                )
    return changed


def _timed_unit(store_path: str, source: Source, archive: str, unit: int, i0: int, slots: list) -> dict:
    """:func:`ingest_unit` plus where and how long it ran -> {"unit", "n", "pid", "start_s", "end_s"
    (wall clock, time.time), "cpu_s" (CPU seconds of the task's process during the task)}."""
    start_s, cpu0 = time.time(), time.process_time()
    ingest_unit(store_path, source, archive, unit, i0, slots)
    return {
        "unit": int(unit),
        "n": len(slots),
        "pid": os.getpid(),
        "start_s": start_s,
        "end_s": time.time(),
        "cpu_s": time.process_time() - cpu0,
    }


@dataclass
class _Plan:
    time_s: np.ndarray  # (T,) the full axis after this run
    n_committed: int  # rows already finalised by an earlier run
    slots: list  # (T,) FrameRef | None (None: keep the stored row)
    unit_frames: int
    n_skipped_old: int
    first_skipped_old: str = ""

    @property
    def n_units(self) -> int:
        return -(-len(self.time_s) // self.unit_frames)

    def unit_slots(self, unit: int) -> tuple[int, list]:
        i0 = unit * self.unit_frames
        return i0, self.slots[i0 : i0 + self.unit_frames]


def _plan(listing: Listing, group) -> _Plan:
    """Stored rows + new frames after the last stored time -> the axis and per-row frames."""
    layout = st.StoreLayout(**group.attrs["layout"])
    old_time = np.asarray(group[st.TIME][:], dtype=np.int64)
    n_committed = min(int(group.attrs.get("n_committed", 0)), old_time.size)
    kept_time = old_time[:n_committed]
    last = kept_time[-1] if n_committed else None
    listed = listing.times_s()
    new_times = listed if last is None else listed[listed > last]
    stored = set(kept_time.tolist())
    refused = [
        ref for ref in listing.frames if last is not None and ref.time_s <= last and ref.time_s not in stored
    ]
    time_s = np.concatenate([kept_time, new_times])
    by_time = {ref.time_s: ref for ref in listing.frames}
    slots = [by_time.get(t) for t in time_s.tolist()]
    first = f"{refused[0].path} ({iso_utc(refused[0].time_s)})" if refused else ""
    return _Plan(time_s, n_committed, slots, layout.unit_frames, len(refused), first)


def _apply_plan(group, plan: _Plan) -> list[int]:
    """Resize the arrays to the planned axis, drop stale markers; -> the units still to write."""
    old_time = np.asarray(group[st.TIME][:], dtype=np.int64)
    first_dirty = plan.n_committed // plan.unit_frames  # the partial last unit is rewritten
    same_axis = old_time.size == plan.time_s.size and np.array_equal(old_time, plan.time_s)
    done = _done_units(group)
    if not same_axis:
        group.attrs.update({"ingest_state": st.STATE_IN_PROGRESS})
        for unit in sorted(u for u in done if u >= first_dirty):
            del group[_unit_name(unit)]
        done = {u for u in done if u < first_dirty}
        shape = (plan.time_s.size,) + tuple(group[st.FRAMES].shape[1:])
        group[st.FRAMES].resize(shape)
        group[st.MASKS].resize(shape)
        st.write_vector(group, st.TIME, plan.time_s)
    return [u for u in range(plan.n_units) if u not in done]


def _done_units(group) -> set[int]:
    units = group.require_group(st.UNITS_GROUP)
    return {int(name[1:]) for name in units.group_keys()}


# ------------------------------------------------------------------------------------------ dask


def _run_local(todo, plan, store_path, source, archive, progress) -> list[dict]:
    stats = []
    for unit in track(todo, "ingest (units)", enabled=progress):
        i0, slots = plan.unit_slots(unit)
        stats.append(_timed_unit(store_path, source, archive, unit, i0, slots))
    return stats


# glibc malloc settings for the local cluster's workers. Dask's nanny starts workers with
# MALLOC_TRIM_THRESHOLD_=65536 (to hand memory back to the OS); setting it also switches off glibc's
# dynamic mmap threshold, so every buffer >= 128 KiB (each decoded 480x480 frame and mask, the unit
# arrays, zstd buffers) became a fresh mmap that page-faults on first touch. Measured: ingest_unit
# 5.0-5.9 CPU ms/frame under that setting vs 2.9-3.3 without (benchmarks/bench_ingest.py); it was
# most of the gap between the serial and the LocalCluster ingest. Buffers up to 32 MiB come from
# the heap and up to 128 MiB of free heap is kept (memory stays bounded by the window of units).
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def _client(cfg: IngestConfig):
    """-> (client, cluster or None): the given scheduler, DASK_SCHEDULER_ADDRESS, or a LocalCluster."""
    address = cfg.scheduler or (os.environ.get("DASK_SCHEDULER_ADDRESS") if cfg.workers is None else None)
    if address:
        try:
            return Client(address, timeout="20s"), None
        except OSError as exc:
            raise NowcastError(
                f"cannot reach the Dask scheduler at {address}: {exc}; check the address "
                "(or omit --scheduler for a local cluster)"
            ) from exc
    n = cfg.workers or os.cpu_count() or 1
    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC_ENV}
    # The nanny lets this process's environment override the config (and writes its values into this
    # process's environment when it spawns, so an earlier LocalCluster leaves Dask's 65536 behind):
    # set both while the cluster starts.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), _environ(WORKER_MALLOC_ENV):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster


@contextlib.contextmanager
def _environ(values: dict):
    """Set environment variables for the duration of the block, then restore the previous state."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _warm_up_worker() -> None:
    """Nothing to do: unpickling this function on a worker imports this module, and with it what
    :func:`ingest_unit` needs (zarr, numcodecs, the sources' decoders), so those imports count as
    start-up rather than as the first units' time."""


def _run_dask(todo, plan, store_path, source, archive, cfg, progress) -> tuple[float, float, list]:
    """Submit one task per unit with a bounded window (bounded memory) and wait for all.

    Tasks return only a small timing dict. -> (cluster seconds: start/connect + close, unit seconds,
    per-unit stats of :func:`_timed_unit`).
    """
    t0 = time.perf_counter()
    client, cluster = _client(cfg)
    client.run(_warm_up_worker)  # imports count as start-up, not as the first units' time
    t1 = time.perf_counter()
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        window = 4 * n_workers
        pending = iter(todo)
        stats = []

        def submit(unit):
            i0, slots = plan.unit_slots(unit)
            return client.submit(_timed_unit, store_path, source, archive, unit, i0, slots, pure=False)

        running = as_completed([submit(u) for u in itertools.islice(pending, window)])
        for fut in track(running, "ingest (units)", total=len(todo), enabled=progress):
            stats.append(fut.result())  # re-raises a worker's error (e.g. store not writable)
            nxt = next(pending, None)
            if nxt is not None:
                running.add(submit(nxt))
        t2 = time.perf_counter()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return (t1 - t0) + (time.perf_counter() - t2), t2 - t1, stats


# ------------------------------------------------------------------------------------------ finalise


def _resolve_splits(cfg: IngestConfig, root: Path, times_s: np.ndarray) -> dict:
    """-> {split: JSON-able spec}: explicit, the archive's day lists, or chronological fractions."""
    if cfg.splits is not None:
        return {name: _jsonable_spec(spec) for name, spec in cfg.splits.items()}
    lists = {s: root / f"{s}_days.txt" for s in cat.SPLITS}
    if any(p.exists() for p in lists.values()):
        return {s: [str(d) for d in cat.read_day_list(p)] for s, p in lists.items() if p.exists()}
    days = np.unique(times_s.astype("datetime64[s]").astype("datetime64[D]"))
    parts = cat.split_days_by_fraction(days, cfg.valid_fraction, cfg.test_fraction)
    return {s: [str(d) for d in parts[s]] for s in cat.SPLITS}


def _jsonable_spec(spec):
    if isinstance(spec, dict):
        return {k: (None if v is None else str(np.datetime64(v))) for k, v in spec.items()}
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], (list, np.ndarray)):
        return {
            "start": None if spec[0] is None else str(np.datetime64(spec[0])),
            "end": None if spec[1] is None else str(np.datetime64(spec[1])),
        }
    return [str(np.datetime64(d, "D")) for d in spec]


def _write_catalogs(group, splits: dict, good_time_s: np.ndarray, cfg: IngestConfig, interval_s: int) -> dict:
    rule = {
        "seq_len": cfg.seq_len,
        "stride": cfg.stride,
        "max_consecutive_missing": cfg.max_consecutive_missing,
        "interval_s": interval_s,
    }
    times = good_time_s.astype("datetime64[s]")
    counts = {}
    for name, spec in splits.items():
        rnd, seq = cat.split_clip_starts(good_time_s, spec, **rule)
        st.write_catalog(group, name, rnd, seq, rule)
        counts[name] = {
            "random_clips": int(rnd.size),
            "sequent_clips": int(seq.size),
            "frames": int(cat.select_split(times, spec).sum()),
        }
    return counts


def _collect_markers(group, n_units: int) -> tuple[list, list, dict]:
    """The units' markers -> (bad files, files without a mask, file digests)."""
    bad, no_mask, digests = [], [], {}
    missing = sorted(set(range(n_units)) - _done_units(group))
    if missing:
        raise NowcastError(
            f"{len(missing)} unit(s) of the store were not written (first: {missing[0]}); "
            "re-run `nowcast ingest` to finish them"
        )
    for unit in range(n_units):
        attrs = group[_unit_name(unit)].attrs
        bad += list(attrs.get("bad", []))
        no_mask += list(attrs.get("no_mask", []))
        digests.update(attrs.get("digests", {}))  # none in the markers of an ingest before version 3
    return bad, no_mask, digests


def _finalise(group, plan: _Plan, listing: Listing, cfg: IngestConfig, root: Path, report_path: Path) -> dict:
    unit_bad, no_mask, digests = _collect_markers(group, plan.n_units)
    present = np.ones(plan.time_s.size, dtype=bool)
    rows = np.asarray([b["row"] for b in unit_bad], dtype=np.int64)
    present[rows] = False
    if not present.any():
        raise NowcastError(
            f"none of the {plan.time_s.size} frames in {root} could be decoded "
            f"(bad files: {len(unit_bad) + len(listing.bad)}, e.g. {unit_bad[0]['path']}: "
            f"{unit_bad[0]['reason']}); check the archive"
        )
    st.write_vector(group, st.PRESENT, present)
    bad = sorted(
        [{"path": b["path"], "reason": b["reason"]} for b in unit_bad] + listing.bad, key=lambda b: b["path"]
    )
    splits = _resolve_splits(cfg, root, plan.time_s[present])
    interval_s = int(group.attrs["interval_s"])
    counts = _write_catalogs(group, splits, plan.time_s[present], cfg, interval_s)
    report = {
        "archive": str(root),
        "store": str(Path(cfg.store).resolve()),
        "source": group.attrs.get("source"),
        "interval_s": interval_s,
        "n_frames": int(plan.time_s.size),
        "n_present": int(present.sum()),
        "bad_files": bad,
        "frames_without_mask": sorted(no_mask),
        "skipped_older_than_store": plan.n_skipped_old,
        "clips": counts,
    }
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    group.attrs.update(
        {
            "n_frames": int(plan.time_s.size),
            "n_present": int(present.sum()),
            "n_committed": int(plan.time_s.size),
            "time_start_s": int(plan.time_s[0]) if plan.time_s.size else None,
            "time_end_s": int(plan.time_s[-1]) if plan.time_s.size else None,
            "bad_files": {"count": len(bad), "files": bad[:_MAX_LISTED], "truncated": len(bad) > _MAX_LISTED},
            "frames_without_mask": {"count": len(no_mask), "files": sorted(no_mask)[:_MAX_LISTED]},
            "splits": splits,
            "catalog_rule": {
                "seq_len": cfg.seq_len,
                "stride": cfg.stride,
                "max_consecutive_missing": cfg.max_consecutive_missing,
            },
            st.FILE_DIGESTS: {**digests, **st.vector_file_digests(group)},
            "ingest_state": st.STATE_COMPLETE,
        }
    )
    return {"bad": bad, "no_mask": no_mask, "clips": counts, "present": present}


# ------------------------------------------------------------------------------------------ entry


def _remove_partial_files(store_path: Path) -> None:
    """Delete temp files an interrupted zarr write may have left (``*.partial``)."""
    if store_path.is_dir():
        for p in store_path.rglob("*.partial"):
            p.unlink(missing_ok=True)


def _existing_group(store_path: Path):
    """The store's zarr.Group (mode r+) when ``store_path`` exists (validated by ``Store``), else None."""
    if not store_path.exists():
        return None
    return st.Store.open(store_path, require_complete=False, mode="r+").group


def _configured_source(cfg: IngestConfig, root: Path, group) -> Source:
    """The archive's source with the options given now, checked against those the store recorded."""
    options = {
        "crop": cfg.crop,
        "block": cfg.block,
        "zr": cfg.zr,
        "variable": cfg.variable,
        "max_pixels": cfg.max_frame_pixels,
    }
    source = get_source(cfg.source) if cfg.source else None
    if group is None:
        source = source or detect_format(root)
        return source.configure(**options)
    recorded = dict(group.attrs.get("source", {}))
    stored = next((s for s in SOURCES.values() if s.title == recorded.get("format")), None)
    if stored is None:
        raise NowcastError(
            f"{cfg.store} records an unknown archive format {recorded.get('format')!r}; "
            "ingest into a new store"
        )
    if source is None:
        source = detect_format(root)
    if source.name != stored.name:
        raise NowcastError(
            f"{cfg.store} holds frames of a {stored.title} archive, but {root} is {source.title}; "
            "ingest it into a new store"
        )
    settings = recorded.get("settings", {})
    before = stored.configure(**{k: v for k, v in settings.items() if k in stored.options})
    after = before.configure(**options)
    changed = sorted(k for k, v in after.settings().items() if before.settings().get(k) != v)
    if changed:
        was = ", ".join(f"{k}={settings.get(k)!r}" for k in changed)
        raise NowcastError(
            f"{cfg.store} was ingested with {was}; re-run with the same options (or none: the "
            "store's are used), or ingest into a new store"
        )
    return before


def _in_time_window(listing: Listing, cfg: IngestConfig) -> Listing:
    """``listing`` without the frames dated outside ``cfg.earliest_time`` .. ``cfg.latest_time`` (default
    now + 1 day), which are reported as bad files."""
    earliest_s = parse_time_s(cfg.earliest_time) if cfg.earliest_time is not None else None
    latest_s = (
        parse_time_s(cfg.latest_time) if cfg.latest_time is not None else int(time.time()) + LATEST_AHEAD_S
    )
    window = f"{iso_utc(earliest_s) if earliest_s is not None else '...'}..{iso_utc(latest_s)}"
    inside = [
        (earliest_s is None or ref.time_s >= earliest_s) and ref.time_s <= latest_s for ref in listing.frames
    ]
    if all(inside):
        return listing
    bad = [
        {
            "path": ref.path,
            "reason": f"time {iso_utc(ref.time_s)} is outside the accepted window {window} "
            "(--earliest/--latest): a wrong date in the file?",
        }
        for ref, ok in zip(listing.frames, inside)
        if not ok
    ]
    frames = [ref for ref, ok in zip(listing.frames, inside) if ok]
    return Listing(frames, listing.bad + bad, listing.settled)


def _on_cadence(listing: Listing, group) -> tuple[Listing, int]:
    """``listing`` without the frames off the cadence (reported as bad) -> (listing, interval_s).

    The cadence is the store's (its ``interval_s``, the phase of its times) or, for a new store, the
    archive's (``store.infer_interval_s``: the one rule)."""
    times = listing.times_s()
    stored = np.zeros(0, np.int64)
    if group is not None and int(group.attrs.get("n_committed", 0)):
        stored = np.asarray(group[st.TIME][: int(group.attrs["n_committed"])], dtype=np.int64)
    interval_s = int(group.attrs["interval_s"]) if group is not None else st.infer_interval_s(times)
    cadence = st.infer_cadence(np.concatenate([stored, times]), interval_s)
    on = cadence.on_cadence(times)
    if on.all():
        return listing, interval_s
    phase = f" + {cadence.phase_s} s" if cadence.phase_s else ""
    bad = [
        {
            "path": ref.path,
            "reason": f"time {iso_utc(ref.time_s)} is off the cadence (every {interval_s} s{phase}); skipped",
        }
        for ref, ok in zip(listing.frames, on)
        if not ok
    ]
    return Listing(
        [ref for ref, ok in zip(listing.frames, on) if ok], listing.bad + bad, listing.settled
    ), interval_s


def _create(
    cfg: IngestConfig, store_path: Path, root: Path, source: Source, listing: Listing, interval_s: int
):
    height, width = source.frame_shape(root, listing)
    layout = st.StoreLayout(cfg.chunk_frames, cfg.shard_frames, cfg.compressor, cfg.level)
    attrs = {
        "source": {"format": source.title, "archive": str(root), "settings": source.settings()},
        "pixel_encoding": PIXEL_ENCODING,
        "interval_s": int(interval_s),
        "ingest_version": st.INGEST_VERSION,
        "n_committed": 0,
    }
    return st.create_store(store_path, height, width, layout, attrs)


def ingest(cfg: IngestConfig, progress: bool = True) -> IngestResult:
    """Ingest (or resume, or append to) ``cfg.store`` from ``cfg.archive``. See the module docstring.

    Raises NowcastError when the archive holds no usable frame, the store cannot be written, another
    ingest holds the store's lock, or the options disagree with those the store was ingested with.
    """
    t0 = time.perf_counter()
    root = Path(cfg.archive).resolve()
    store_path = Path(cfg.store).resolve()
    try:
        store_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NowcastError(f"cannot create {store_path.parent}: {exc}; choose a writable location") from exc
    with st.ingest_lock(store_path):
        return _ingest_locked(cfg, root, store_path, t0, progress)


def _ingest_locked(
    cfg: IngestConfig, root: Path, store_path: Path, t0: float, progress: bool
) -> IngestResult:
    group = _existing_group(store_path)
    source = _configured_source(cfg, root, group)
    listing = _in_time_window(source.list_frames(root), cfg)
    source = source.configure(**listing.settled)
    listing, interval_s = _on_cadence(listing, group)
    if cfg.until_s is not None:
        listing = Listing(
            [f for f in listing.frames if f.time_s <= cfg.until_s], listing.bad, listing.settled
        )
    if not listing.frames:
        if listing.bad:
            first = listing.bad[0]
            raise NowcastError(
                f"none of the {len(listing.bad)} file(s) under {root} holds a usable {source.title} "
                f"frame (e.g. {first['path']}: {first['reason']}); check the archive and --format"
            )
        raise NowcastError(f"no {source.title} frame files found under {root}: nothing to ingest")
    _remove_partial_files(store_path)
    if group is None:
        group = _create(cfg, store_path, root, source, listing, interval_s)
    plan = _plan(listing, group)
    todo = _apply_plan(group, plan)
    listing.bad.extend(_changed_files(group, sorted(_done_units(group) - set(todo)), root))
    n_new = plan.time_s.size - plan.n_committed
    cluster_s = write_s = 0.0
    stats = []
    try:
        if cfg.workers == 0:
            t_w = time.perf_counter()
            stats = _run_local(todo, plan, str(store_path), source, str(root), progress)
            write_s = time.perf_counter() - t_w
        elif todo:
            cluster_s, write_s, stats = _run_dask(
                todo, plan, str(store_path), source, str(root), cfg, progress
            )
    except OSError as exc:
        raise NowcastError(f"cannot write the store {store_path}: {exc}; choose a writable location") from exc
    report_path = (
        Path(cfg.report_path)
        if cfg.report_path
        else store_path.with_name(store_path.name + ".ingest_report.json")
    )
    final = _finalise(group, plan, listing, cfg, root, report_path)
    _warn(final["no_mask"], plan.n_skipped_old, final["bad"], final["clips"])
    seconds = time.perf_counter() - t0
    written = sum(min(plan.unit_frames, plan.time_s.size - u * plan.unit_frames) for u in todo)
    return IngestResult(
        n_frames=int(plan.time_s.size),
        n_new_frames=int(n_new),
        n_bad=len(final["bad"]),
        bad_files=final["bad"],
        seconds=seconds,
        frames_per_s=written / seconds if seconds > 0 else 0.0,
        store=str(store_path),
        report_path=str(report_path),
        n_units_written=len(todo),
        n_units_skipped=plan.n_units - len(todo),
        n_without_mask=len(final["no_mask"]),
        n_skipped_old=plan.n_skipped_old,
        first_skipped_old=plan.first_skipped_old,
        clips=final["clips"],
        cluster_seconds=cluster_s,
        write_seconds=write_s,
        task_stats=stats,
    )


def _warn(no_mask: list, n_skipped_old: int, bad: list, clips: dict) -> None:
    if no_mask:
        warnings.warn(
            f"{len(no_mask)} frame(s) have no mask file and got an all-valid mask (first: {no_mask[0]})",
            IngestWarning,
            stacklevel=4,
        )
    if n_skipped_old:
        warnings.warn(
            f"{n_skipped_old} frame(s) are older than the store's last time and were not added; "
            "ingest into a new store to include them",
            IngestWarning,
            stacklevel=4,
        )
    for split, counts in clips.items():
        if not counts["frames"]:
            warnings.warn(
                f"split {split!r} matches no frame of the store, so training or evaluating on it "
                "will have nothing to use: check its --split range or day list (or, without --split, "
                "give the archive more days or pass --split ranges)",
                IngestWarning,
                stacklevel=4,
            )
    if bad:
        log.warning(
            "%d bad input file(s) treated as missing (first: %s: %s)",
            len(bad),
            bad[0]["path"],
            bad[0]["reason"],
        )
