"""The Zarr v3 store of radar sequences: layout, the :class:`Store` handle, and frame reads.

Every stage after ingest opens the store once as a :class:`Store` (``Store.open(path)``): it validates
the store and is the one owner of its rules -- path, cadence (``interval_s``), frame size, splits,
clip starts and the frame reader. A Store pickles as its path, so Ray and DataLoader workers reopen it.

Layout (a Zarr v3 group)::

    frames   uint8 (T, H, W)   pixel = round(255 * (dBZ + 10) / 70); 0 where a slot is unusable
    masks    bool  (T, H, W)   True = valid pixel; all False where a slot is unusable
    time     int64 (T,)        seconds since the Unix epoch (UTC), strictly ascending
    present  bool  (T,)        False for a slot whose input file was bad (stored as zeros / False)
    catalog/<split>/random_starts_s   int64 (N,)  clip starts for random sampling (training)
    catalog/<split>/sequent_starts_s  int64 (M,)  clip starts of the HKO-7 sequential protocol
    _ingest/units/u<NNNNNNNN>         one empty group per written unit (its attrs: bad files)

Group attributes: ``source``, ``pixel_encoding``, ``interval_s`` (the cadence, from the data: see
:func:`infer_interval_s`), ``ingest_version``, ``layout``,
``height``, ``width``, ``n_frames``, ``n_present``, ``bad_files`` (count + list),
``frames_without_mask``, ``splits``, ``ingest_state`` ("complete" once usable).

Chunking (see benchmarks/bench_dataset.py): the time axis is cut into chunks of ``chunk_frames``
whole frames (default 5), grouped into shards of ``shard_frames`` frames (default 120, one file per
shard), compressed with zstd level 1 (about the size of the PNG archive). A random 25-frame clip then
touches one or two shard files and 5-6 chunks; :class:`ShardFileReader` reads them with one
``pread`` + one zstd decode per chunk, bypassing zarr-python's per-call overhead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

from pipeline import catalog, files
from pipeline.catalog import INTERVAL_S
from pipeline.errors import NowcastError, check
from pipeline.times import iso_utc

log = logging.getLogger("nowcast.store")

# 2: crc32c after every chunk of frames and masks (StoreLayout.checksum);
# 3: crc32c after every chunk of every array, and a digest of every array file in the attrs (FILE_DIGESTS)
INGEST_VERSION = 3
FRAMES, MASKS, TIME, PRESENT, CATALOG, INGEST_GROUP = (
    "frames",
    "masks",
    "time",
    "present",
    "catalog",
    "_ingest",
)
UNITS_GROUP = f"{INGEST_GROUP}/units"
PROTOCOLS = ("random", "sequent")
COMPRESSORS = ("zstd", "blosc-lz4", "blosc-zstd", "none")
STATE_COMPLETE = "complete"
STATE_IN_PROGRESS = "in_progress"
_VECTOR_CHUNK = 1 << 16  # entries per chunk of the 1-D arrays (time, present, catalogs)
FILE_DIGESTS = "file_digests"  # group attribute: {"<array>/<chunk key>": file_digest of the file}


def _vector_codecs() -> tuple:
    """The bytes-to-bytes codecs of a 1-D array's chunk: zstd, then a crc32c checksum."""
    return (ZstdCodec(level=0), Crc32cCodec())


@dataclass(frozen=True)
class StoreLayout:
    """Chunking/compression of ``frames`` and ``masks`` along time.

    chunk_frames : frames per (inner) chunk, each chunk holds whole (H, W) frames.
    shard_frames : frames per shard file (a multiple of chunk_frames), or None for no sharding.
    compressor : "zstd", "blosc-lz4", "blosc-zstd" or "none".
    level : compression level.
    checksum : a crc32c checksum after each chunk (Zarr's ``crc32c`` codec), so that a damaged chunk is
        an error instead of wrong frames. Stores of ingest version 1 have none.
    """

    chunk_frames: int = 5
    shard_frames: int | None = 120
    compressor: str = "zstd"
    level: int = 1
    checksum: bool = True

    def __post_init__(self):
        check(self.chunk_frames >= 1, f"chunk_frames must be >= 1, got {self.chunk_frames}")
        check(
            self.shard_frames is None
            or (self.shard_frames >= self.chunk_frames and self.shard_frames % self.chunk_frames == 0),
            f"shard_frames ({self.shard_frames}) must be a multiple of chunk_frames ({self.chunk_frames})",
        )
        check(
            self.compressor in COMPRESSORS,
            f"unknown compressor {self.compressor!r}: use zstd, blosc-lz4, blosc-zstd or none",
        )

    @property
    def unit_frames(self) -> int:
        """Frames per independently writable unit (a shard, or a chunk when unsharded)."""
        return self.shard_frames or self.chunk_frames

    def compressors(self) -> tuple:
        """The zarr v3 bytes-to-bytes codecs of a chunk for this layout: the compressor, then crc32c."""
        codecs = []
        if self.compressor == "zstd":
            codecs.append(ZstdCodec(level=self.level))
        elif self.compressor != "none":
            cname = self.compressor.split("-")[1]
            codecs.append(BloscCodec(cname=cname, clevel=self.level, shuffle="bitshuffle"))
        if self.checksum:
            codecs.append(Crc32cCodec())
        return tuple(codecs)

    def to_dict(self) -> dict:
        return asdict(self)


def _frame_array_kwargs(layout: StoreLayout, height: int, width: int) -> dict:
    kw = dict(chunks=(layout.chunk_frames, height, width), compressors=layout.compressors())
    if layout.shard_frames:
        kw["shards"] = (layout.shard_frames, height, width)
    return kw


def create_store(path: str | Path, height: int, width: int, layout: StoreLayout, attrs: dict):
    """Create an empty store (T = 0) at ``path`` and return its zarr.Group (mode r+)."""
    try:
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
    except OSError as exc:
        raise NowcastError(f"cannot create the store at {path}: {exc}; choose a writable location") from exc
    for name, dtype in ((FRAMES, "uint8"), (MASKS, "bool")):
        group.create_array(
            name,
            shape=(0, height, width),
            dtype=dtype,
            fill_value=0 if dtype == "uint8" else False,
            **_frame_array_kwargs(layout, height, width),
        )
    for name, dtype in ((TIME, "int64"), (PRESENT, "bool")):
        group.create_array(
            name, shape=(0,), dtype=dtype, chunks=(_VECTOR_CHUNK,), fill_value=0, compressors=_vector_codecs()
        )
    group.require_group(UNITS_GROUP)
    group.attrs.update(
        {
            **attrs,
            "height": int(height),
            "width": int(width),
            "layout": layout.to_dict(),
            "ingest_state": STATE_IN_PROGRESS,
            "n_frames": 0,
            "n_present": 0,
        }
    )
    return group


def write_vector(group, name: str, values: np.ndarray) -> None:
    """(Re)write a 1-D array of the group in full (resizing it to ``len(values)``)."""
    values = np.asarray(values)
    if name in group and group[name].dtype == values.dtype:
        arr = group[name]
        arr.resize(values.shape)
    else:
        arr = group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(_VECTOR_CHUNK,),
            fill_value=0,
            compressors=_vector_codecs(),
            overwrite=True,
        )
    if values.size:
        arr[:] = values


def infer_interval_s(time_s: np.ndarray) -> int:
    """The cadence of a time axis, in seconds: the most common step between consecutive distinct times
    (the smallest such step on a tie), so gaps and outages do not change it. With fewer than two
    times there is no step: the HKO-7 cadence (``pipeline.catalog.INTERVAL_S``, 360 s).

    This is the one rule for a store's cadence: ingest records it as the ``interval_s`` attribute.
    """
    steps = np.diff(np.unique(np.asarray(time_s, dtype=np.int64)))
    if steps.size == 0:
        return INTERVAL_S
    counts = Counter(steps.tolist())
    best = max(counts.values())
    return int(min(step for step, n in counts.items() if n == best))


@dataclass(frozen=True)
class Cadence:
    """The time step of an archive or a store.

    Attributes
    ----------
    interval_s : int
        Seconds between consecutive frames (HKO-7 360, OPERA 900, DWD 300).
    phase_s : int
        Times on the cadence satisfy ``time_s % interval_s == phase_s`` (0 for frames on the clock).
    off_times_s : numpy.ndarray
        int64 (K,) the given times that are not on the cadence, ascending.
    """

    interval_s: int
    phase_s: int
    off_times_s: np.ndarray

    def on_cadence(self, times_s: np.ndarray) -> np.ndarray:
        """bool, same shape as ``times_s``: True where a time is on the cadence."""
        return np.mod(np.asarray(times_s, dtype=np.int64), self.interval_s) == self.phase_s


def infer_cadence(times_s: np.ndarray, interval_s: int | None = None) -> Cadence:
    """The cadence of frame times, and the times off it.

    ``interval_s`` (when not given) is :func:`infer_interval_s` of the times (the store's one rule);
    pass a store's ``interval_s`` to check new times against it. ``phase_s`` is the most common
    ``time_s % interval_s`` (the smallest on a tie); times with another phase are in ``off_times_s``.

    Parameters
    ----------
    times_s : int (N,) frame times, seconds since the epoch, any order, duplicates allowed.
    interval_s : the cadence in seconds, if already known.

    Raises NowcastError when ``interval_s`` is not given and fewer than two distinct times are.
    """
    times_s = np.unique(np.asarray(times_s, dtype=np.int64))
    if interval_s is None:
        if times_s.size < 2:
            raise NowcastError(
                f"the archive holds {times_s.size} frame time(s): at least two are needed to tell its cadence"
            )
        interval_s = infer_interval_s(times_s)
    if interval_s < 1:
        raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s}")
    phases_s, counts = np.unique(np.mod(times_s, interval_s), return_counts=True)
    phase_s = int(phases_s[np.argmax(counts)]) if phases_s.size else 0
    off = times_s[np.mod(times_s, interval_s) != phase_s]
    return Cadence(int(interval_s), phase_s, off)


def open_store(path: str | Path, mode: str = "r", require_complete: bool = True):
    """Open a nowcast store -> zarr.Group (see :class:`Store` for the validated handle stages use).

    Raises NowcastError (with what to do) when ``path`` does not exist, is not a Zarr group, lacks
    the frames/masks/time arrays, or (``require_complete``) its ingest has not finished.
    """
    p = Path(path)
    if not p.exists():
        raise NowcastError(f"no store at {p}: create it with `nowcast ingest ARCHIVE {p}`")
    try:
        group = zarr.open_group(str(p), mode=mode)
    except Exception as exc:  # zarr raises several types for non-stores
        raise NowcastError(
            f"{p} is not a Zarr store ({exc}); point to a store made by `nowcast ingest` "
            "(or give `nowcast ingest` a new store path)"
        ) from exc
    missing = [n for n in (FRAMES, MASKS, TIME) if n not in group] + [
        f"attribute {key}" for key in ("layout", "interval_s") if key not in group.attrs
    ]
    if missing:
        raise NowcastError(
            f"{p} is a Zarr group but not a nowcast store (missing {', '.join(missing)}); "
            "create one with `nowcast ingest ARCHIVE STORE` (or give `nowcast ingest` a new store path)"
        )
    if require_complete and group.attrs.get("ingest_state") != STATE_COMPLETE:
        raise NowcastError(
            f"the ingest into {p} did not finish: re-run `nowcast ingest ARCHIVE {p}` "
            "(it resumes where it stopped)"
        )
    return group


def read_catalog(group, split: str, protocol: str = "random") -> np.ndarray:
    """Clip starts (int64 epoch s) of ``split`` for ``protocol`` "random" or "sequent"."""
    if protocol not in PROTOCOLS:
        raise NowcastError(f"unknown protocol {protocol!r}: use 'random' or 'sequent'", exit_code=2)
    splits = list_splits(group)
    if split not in splits:
        raise NowcastError(
            f"split {split!r} is not in the store's catalog (available: {', '.join(splits) or 'none'})",
            exit_code=2,
        )
    return read_vector(group, f"{CATALOG}/{split}/{protocol}_starts_s").astype(np.int64)


def _read_problem(exc: Exception) -> str:
    """Why a chunk of a 1-D array cannot be read, in a few words."""
    return "a chunk fails its crc32c checksum" if "checksum" in str(exc) else " ".join(str(exc).split())


def read_vector(group, name: str) -> np.ndarray:
    """The whole 1-D array ``name`` (time, present, a catalog) of the store's group.

    Raises NowcastError (what is damaged, what to do) when a chunk fails its checksum or does not decode.
    """
    try:
        return np.asarray(group[name][:])
    except Exception as exc:  # noqa: BLE001 - a checksum mismatch or a codec error
        root = Path(getattr(group.store, "root", "")).as_posix()
        raise NowcastError(
            f"the store {root} is damaged: array {name} cannot be read ({_read_problem(exc)}); "
            f"`nowcast info --verify {root}` lists the damage; re-ingest the archive into a new store"
        ) from exc


def vector_names(group) -> list[str]:
    """The 1-D arrays of the store: time, present and every split's two catalogs."""
    names = [n for n in (TIME, PRESENT) if n in group]
    if CATALOG in group:
        for split in sorted(group[CATALOG].group_keys()):
            names += [f"{CATALOG}/{split}/{protocol}_starts_s" for protocol in PROTOCOLS]
    return names


def array_files(group, name: str) -> dict[str, Path]:
    """The chunk (or shard) files of array ``name`` on disk -> {"<name>/<chunk key>": path}
    (metadata excluded; symlinks are not followed)."""
    root = Path(group.store.root) / group.path
    folder = root / name
    if not folder.is_dir() or folder.is_symlink():
        return {}
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink() and path.name != "zarr.json"
    }


def file_digest(path: Path) -> str:
    """The BLAKE2b digest (16 bytes, hex) of a file's bytes.

    Not a crc32c: a chunk file ends with the crc32c of its content, and the crc32c of data followed by its
    own crc32c is the same constant for every file."""
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def unit_file_digests(group, unit: int) -> dict[str, str]:
    """Digests of the files of write unit ``unit`` (its frames and masks shard, or chunk, files), keyed by
    their position: ``{"frames/c/<unit>/0/0": file_digest, ...}``. Recorded in the store's attrs
    (:data:`FILE_DIGESTS`), they bind each file's content to its position, so a shard copied over
    another is found by :meth:`Store.verify`."""
    root = Path(group.store.root) / group.path
    digests = {}
    for name in (FRAMES, MASKS):
        key = f"{name}/{group[name].metadata.encode_chunk_key((int(unit), 0, 0))}"
        digests[key] = file_digest(root / key)
    return digests


def vector_file_digests(group) -> dict[str, str]:
    """Digests of every chunk file of the 1-D arrays (see :func:`unit_file_digests`)."""
    return {
        key: file_digest(path)
        for name in vector_names(group)
        for key, path in array_files(group, name).items()
    }


def list_splits(group) -> list[str]:
    """Names of the splits that have a catalog in the store."""
    return sorted(group.attrs.get("splits", {}).keys()) if CATALOG in group else []


def write_catalog(
    group, split: str, random_starts_s: np.ndarray, sequent_starts_s: np.ndarray, rule: dict
) -> None:
    """Store one split's clip starts (int64 epoch s) and the clip rule (seq_len, stride, ...) as attrs."""
    sub = group.require_group(f"{CATALOG}/{split}")
    write_vector(sub, "random_starts_s", np.asarray(random_starts_s, dtype=np.int64))
    write_vector(sub, "sequent_starts_s", np.asarray(sequent_starts_s, dtype=np.int64))
    sub.attrs.update(rule)


def lock_path(path: str | Path) -> Path:
    """The lock file of the store at ``path``: ``<store>.lock`` beside it (kept after use)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def ingest_lock(path: str | Path) -> Iterator[Path]:
    """Hold the exclusive write lock of the store at ``path`` for the duration of the block.

    An advisory ``flock`` on :func:`lock_path` (never through a symlink), released by the kernel when
    this process ends, however it ends (so a ``kill -9`` leaves no stale lock). The lock file holds the
    holder's pid, for the message another ingest gets.

    Raises NowcastError at once when another process holds the lock, or when the lock file cannot be
    created.
    """
    busy = (
        f"another `nowcast ingest` (pid {{pid}}) is writing {path}; wait for it to finish "
        "and re-run this one (it then resumes or appends)"
    )
    with files.exclusive_lock(lock_path(path), busy) as lock:
        yield lock


_NO_CHUNK = 2**64 - 1  # shard-index entry of a chunk that was never written (Zarr v3 sharding spec)


class ChunkDamage(ValueError):
    """Rows ``[lo, hi)`` of an array cannot be read as written: a missing shard or chunk file, a
    damaged shard index, a chunk whose checksum does not match, or one that does not decode."""

    def __init__(self, lo: int, hi: int, problem: str):
        super().__init__(problem)
        self.lo, self.hi, self.problem = int(lo), int(hi), problem


class ShardFileReader:
    """Reads whole-frame rows of a sharded Zarr v3 array straight from its local shard files.

    Why: a random 25-frame clip through zarr-python's async pipeline costs ~1.5 ms of fixed overhead
    per call plus ~0.3 ms per inner chunk (event-loop and thread hand-offs), 2-4x the decompression
    itself (benchmarks/bench_dataset.py). This reader implements only the layout that
    :func:`create_store` writes -- one ``ShardingCodec`` (index at the end, little-endian uint64
    (offset, nbytes) pairs + crc32c) over chunks of whole (H, W) frames, inner codecs ``bytes`` +
    optionally one zstd or blosc compressor + optionally ``crc32c``, on a local directory store -- and
    :meth:`for_array` returns None for anything else, so callers read through zarr. Tests compare it
    with zarr.

    Every check zarr would make is made: the shard index's crc32c and each chunk's crc32c (when the
    layout has one). Unlike zarr, a missing shard file or chunk is damage (:class:`ChunkDamage`), not
    the fill value: a finished ingest writes every chunk of every row.
    """

    def __init__(
        self,
        shard_dir: Path,
        separator: str,
        shape: tuple,
        shard_frames: int,
        chunk_frames: int,
        dtype: np.dtype,
        fill_value,
        decoder,
        checksum: bool = False,
    ):
        self.shard_dir, self.separator = shard_dir, separator
        self.n_frames, self.frame_shape = int(shape[0]), tuple(int(v) for v in shape[1:])
        self.shard_frames, self.chunk_frames = int(shard_frames), int(chunk_frames)
        self.chunks_per_shard = self.shard_frames // self.chunk_frames
        self.dtype, self.fill_value, self.decoder = np.dtype(dtype), fill_value, decoder
        self.checksum = bool(checksum)

    @classmethod
    def for_array(cls, arr) -> ShardFileReader | None:
        """A reader for ``arr`` (a zarr.Array) if it has the simple layout above, else None."""
        meta = arr.metadata
        codecs = getattr(meta, "codecs", ())
        if (
            not isinstance(arr.store, LocalStore)
            or len(codecs) != 1
            or not isinstance(codecs[0], ShardingCodec)
            or np.dtype(arr.dtype).itemsize != 1
            or arr.ndim != 3
        ):
            return None
        sharding = codecs[0]
        shard_shape = tuple(meta.chunk_grid.chunk_shape)
        index_ok = (
            sharding.index_location == ShardingCodecIndexLocation.end
            and len(sharding.index_codecs) == 2
            and isinstance(sharding.index_codecs[0], BytesCodec)
            and isinstance(sharding.index_codecs[1], Crc32cCodec)
        )
        whole_frames = tuple(sharding.chunk_shape[1:]) == tuple(arr.shape[1:]) == shard_shape[1:]
        inner = list(sharding.codecs)
        if not (index_ok and whole_frames and inner and isinstance(inner[0], BytesCodec)):
            return None
        checksum = isinstance(inner[-1], Crc32cCodec)
        middle = inner[1:-1] if checksum else inner[1:]
        decoder = None
        if len(middle) == 1 and isinstance(middle[0], ZstdCodec):
            decoder = numcodecs.Zstd()
        elif len(middle) == 1 and isinstance(middle[0], BloscCodec):
            decoder = numcodecs.Blosc()
        elif middle:
            return None
        encoding = meta.chunk_key_encoding
        if getattr(encoding, "name", None) != "default":
            return None
        return cls(
            Path(arr.store.root) / arr.path,
            encoding.separator,
            arr.shape,
            shard_shape[0],
            sharding.chunk_shape[0],
            arr.dtype,
            arr.fill_value,
            decoder,
            checksum,
        )

    def shard_path(self, shard: int) -> Path:
        """The file of shard number ``shard``."""
        return self.shard_dir / self.separator.join(["c", str(shard), "0", "0"])

    def read(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows ``[lo, hi)`` (0 <= lo <= hi <= T) into ``out`` (hi - lo, H, W) of the array's dtype.

        Raises ChunkDamage (with the damaged rows) when a shard or chunk is missing or damaged.
        """
        if not 0 <= lo <= hi <= self.n_frames or out.shape != (hi - lo,) + self.frame_shape:
            raise ValueError(
                f"rows [{lo}, {hi}) / out {out.shape} do not fit the array {self.n_frames}x{self.frame_shape}"
            )
        for shard in range(lo // self.shard_frames, -(-hi // self.shard_frames)):
            s0 = shard * self.shard_frames
            a, b = max(lo, s0), min(hi, s0 + self.shard_frames)
            self._read_shard(shard, a - s0, b - s0, out[a - lo : b - lo])

    def _read_shard(self, shard: int, r0: int, r1: int, out: np.ndarray) -> None:
        """Rows [r0, r1) of one shard (shard-relative) into ``out``."""
        s0 = shard * self.shard_frames
        name = self.shard_path(shard).relative_to(self.shard_dir.parent).as_posix()
        try:
            fd = os.open(self.shard_path(shard), os.O_RDONLY)
        except FileNotFoundError:
            raise ChunkDamage(s0 + r0, s0 + r1, f"shard file {name} is missing") from None
        try:
            index = self._read_index(fd, name, s0, s0 + min(self.shard_frames, self.n_frames - s0))
            cf = self.chunk_frames
            for c in range(r0 // cf, -(-r1 // cf)):
                a, b = max(r0, c * cf), min(r1, (c + 1) * cf)
                dest = out[a - r0 : b - r0]
                offset, nbytes = (int(v) for v in index[c])
                rows = (s0 + c * cf, min(s0 + (c + 1) * cf, self.n_frames))
                if offset == _NO_CHUNK:
                    raise ChunkDamage(*rows, f"chunk {c} of shard file {name} is missing")
                data = os.pread(fd, nbytes, offset)
                if len(data) != nbytes:
                    raise ChunkDamage(*rows, f"shard file {name} is truncated")
                try:
                    if a == c * cf and b == (c + 1) * cf:  # the whole chunk: decode in place
                        self._decode(data, dest)
                    else:
                        chunk = np.empty((cf,) + self.frame_shape, dtype=self.dtype)
                        self._decode(data, chunk)
                        dest[...] = chunk[a - c * cf : b - c * cf]
                except Exception as exc:  # noqa: BLE001 - a checksum mismatch, or a codec's own error
                    raise ChunkDamage(*rows, f"chunk {c} of shard file {name}: {exc}") from exc
        finally:
            os.close(fd)

    def _read_index(self, fd: int, name: str, lo: int, hi: int) -> np.ndarray:
        """The shard's chunk index, (chunks_per_shard, 2) uint64 (offset, nbytes), after checking its
        crc32c (ChunkDamage for rows [lo, hi) when the index is damaged or the file too short)."""
        n_index = 16 * self.chunks_per_shard
        size = os.fstat(fd).st_size
        if size < n_index + 4:
            raise ChunkDamage(lo, hi, f"shard file {name} is shorter than its index")
        raw = os.pread(fd, n_index + 4, size - n_index - 4)
        if len(raw) != n_index + 4 or google_crc32c.value(raw[:n_index]) != int.from_bytes(
            raw[n_index:], "little"
        ):
            raise ChunkDamage(lo, hi, f"shard file {name}: the index checksum does not match (damaged file)")
        return np.frombuffer(raw, dtype="<u8", count=2 * self.chunks_per_shard).reshape(
            self.chunks_per_shard, 2
        )

    def _decode(self, data: bytes, dest: np.ndarray) -> None:
        if self.checksum:
            if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
                raise ValueError("the chunk checksum does not match (damaged data)")
            data = data[:-4]
        flat = dest.reshape(-1).view(np.uint8)
        if self.decoder is None:
            if len(data) != flat.size:
                raise ValueError("uncompressed chunk of the wrong size")
            flat[...] = np.frombuffer(data, dtype=np.uint8)
        else:
            self.decoder.decode(data, out=flat)


def has_checksums(arr) -> bool:
    """True when every chunk of ``arr`` (a zarr.Array) carries a crc32c checksum."""
    codecs = list(getattr(arr.metadata, "codecs", ()))
    if len(codecs) == 1 and isinstance(codecs[0], ShardingCodec):
        codecs = list(codecs[0].codecs)
    return bool(codecs) and isinstance(codecs[-1], Crc32cCodec)


class StoreReader:
    """Reads frames of a store by timestamp; caches the arrays, the time axis and the shard readers.

    Use one per process (it holds open zarr arrays). Runs of rows are read straight from the shard
    files (:class:`ShardFileReader`) when the layout allows, else through zarr. Either way a missing or
    damaged chunk is a NowcastError naming the frames (never zeros or wrong values).
    """

    def __init__(self, group, fast: bool = True, time_s: np.ndarray | None = None):
        """time_s : the (T,) time axis when already read (else it is read from the group)."""
        self.group = group
        self.frames = group[FRAMES]
        self.masks = group[MASKS]
        self.time_s = np.asarray(read_vector(group, TIME) if time_s is None else time_s, dtype=np.int64)
        self.height, self.width = self.frames.shape[1:]
        self._arrays = {FRAMES: self.frames, MASKS: self.masks}
        self._fast = {}
        if fast:
            self._fast = {
                FRAMES: ShardFileReader.for_array(self.frames),
                MASKS: ShardFileReader.for_array(self.masks),
            }
            for name, reader in self._fast.items():
                if reader is None:
                    log.info(
                        "%s/%s: not the sharded layout of the fast shard reader; reading through zarr",
                        self.frames.store,
                        name,
                    )

    @property
    def uses_fast_path(self) -> bool:
        """True when both frames and masks are read from the shard files directly."""
        return all(self._fast.get(n) is not None for n in (FRAMES, MASKS))

    def rows(self, time_s) -> tuple[np.ndarray, np.ndarray]:
        """(S,) epoch s -> (row index (S,) int64, found (S,) bool); row is meaningless where not found."""
        t = np.asarray(time_s, dtype=np.int64).ravel()
        n = self.time_s.size
        if n == 0:
            return np.zeros(t.size, np.int64), np.zeros(t.size, bool)
        idx = np.searchsorted(self.time_s, t)
        found = (idx < n) & (self.time_s[np.minimum(idx, n - 1)] == t)
        return idx.astype(np.int64), found

    def read_array(self, name: str, lo: int, hi: int, out: np.ndarray) -> None:
        """Rows [lo, hi) of the array ``name`` (``frames`` or ``masks``) into ``out`` (hi-lo, H, W).

        Raises ChunkDamage (rows, what is wrong) for a missing or damaged chunk.
        """
        fast = self._fast.get(name)
        if fast is not None:
            fast.read(lo, hi, out)
            return
        arr = self._arrays[name]
        per_file = int(arr.metadata.chunk_grid.chunk_shape[0])  # rows per chunk (or shard) file
        for c in range(lo // per_file, -(-hi // per_file)):  # zarr reads a missing file as the fill value
            key = arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
            if isinstance(arr.store, LocalStore) and not (Path(arr.store.root) / arr.path / key).is_file():
                raise ChunkDamage(
                    c * per_file, min((c + 1) * per_file, arr.shape[0]), f"file {name}/{key} is missing"
                )
        try:
            out[...] = arr[lo:hi]
        except Exception as exc:  # noqa: BLE001 - a checksum mismatch or a codec error
            raise ChunkDamage(lo, hi, f"{name}: {exc}") from exc

    def read_rows(self, lo: int, hi: int, frames_out: np.ndarray, masks_out: np.ndarray) -> None:
        """Rows [lo, hi) into frames_out uint8 (hi-lo, H, W) and masks_out bool (hi-lo, H, W).

        Raises NowcastError naming the frames (times) when a chunk is missing or damaged.
        """
        for name, out in ((FRAMES, frames_out), (MASKS, masks_out)):
            try:
                self.read_array(name, lo, hi, out)
            except ChunkDamage as exc:
                raise self.damage_error(name, exc) from exc

    def damage_error(self, name: str, damage: ChunkDamage) -> NowcastError:
        """The user-facing error for damaged rows of array ``name``: which frames, what is wrong, what
        to do."""
        lo, hi = damage.lo, max(damage.hi - 1, damage.lo)
        when = (
            f" ({iso_utc(self.time_s[lo])} to {iso_utc(self.time_s[min(hi, self.time_s.size - 1)])})"
            if self.time_s.size
            else ""
        )
        path = Path(getattr(self.frames.store, "root", "")).as_posix()
        return NowcastError(
            f"the store {path} is damaged at frames {lo}-{hi}{when}, array {name}: {damage.problem}; "
            f"`nowcast info --verify {path}` lists every damaged chunk; re-ingest the archive "
            "into a new store"
        )

    def read(self, time_s, frames_out: np.ndarray | None = None, masks_out: np.ndarray | None = None):
        """(S,) epoch seconds -> (frames uint8 (S,H,W), masks bool (S,H,W)); absent -> 0 / False.

        frames_out / masks_out : optional preallocated C-contiguous outputs to fill (returned).
        Raises NowcastError naming the frames when a chunk they are in is missing or damaged.
        """
        t = np.asarray(time_s, dtype=np.int64).ravel()
        shape = (t.size, self.height, self.width)
        frames = np.empty(shape, np.uint8) if frames_out is None else frames_out
        masks = np.empty(shape, bool) if masks_out is None else masks_out
        if frames.shape != shape or masks.shape != shape:
            raise ValueError(f"outputs must have shape {shape}")
        rows, found = self.rows(t)
        if t.size == 0:
            return frames, masks
        if found.all() and np.array_equal(rows, rows[0] + np.arange(t.size)):  # the common clip: one run
            self.read_rows(int(rows[0]), int(rows[0]) + t.size, frames, masks)
            return frames, masks
        frames[...] = 0
        masks[...] = False
        if not found.any():
            return frames, masks
        sel = rows[found]
        uniq, inv = np.unique(sel, return_inverse=True)
        # contiguous runs of the rows asked for (one run for a clip over a gap), each read once
        breaks = np.flatnonzero(np.diff(uniq) > 1) + 1
        span_f = np.empty((uniq.size, self.height, self.width), np.uint8)
        span_m = np.empty((uniq.size, self.height, self.width), bool)
        for run in np.split(np.arange(uniq.size), breaks):
            lo = int(uniq[run[0]])
            self.read_rows(lo, lo + run.size, span_f[run[0] : run[-1] + 1], span_m[run[0] : run[-1] + 1])
        frames[found] = span_f[inv]
        masks[found] = span_m[inv]
        return frames, masks

    def verify(self, progress=None) -> list[dict]:
        """Read and check every chunk of frames and masks -> one entry per damaged chunk:
        ``{"array", "rows": [lo, hi], "times": [first, last] (ISO), "problem"}`` (empty: no damage).

        progress : optional callable wrapping the chunk iterator (e.g. a progress bar)."""
        damaged = []
        n = self.time_s.size
        for name, arr in self._arrays.items():
            cf = int(arr.chunks[0])
            out = np.empty((cf,) + tuple(arr.shape[1:]), dtype=arr.dtype)
            chunks = range(-(-n // cf))
            for c in progress(chunks, name) if progress else chunks:
                lo, hi = c * cf, min((c + 1) * cf, n)
                try:
                    self.read_array(name, lo, hi, out[: hi - lo])
                except ChunkDamage as exc:
                    last = damaged[-1] if damaged else None
                    if (
                        last
                        and last["array"] == name
                        and last["problem"] == exc.problem
                        and last["rows"][1] + 1 >= exc.lo
                    ):
                        last["rows"][1] = exc.hi - 1  # the next chunk of one missing shard file: one entry
                        last["times"][1] = iso_utc(self.time_s[exc.hi - 1])
                        continue
                    damaged.append(
                        {
                            "array": name,
                            "rows": [exc.lo, exc.hi - 1],
                            "times": [iso_utc(self.time_s[exc.lo]), iso_utc(self.time_s[exc.hi - 1])],
                            "problem": exc.problem,
                        }
                    )
        return damaged


def read_frames(group, time_s) -> tuple[np.ndarray, np.ndarray]:
    """Frames for arbitrary timestamps.

    group : an open store (``open_store``); time_s : (S,) int64 epoch seconds (any order, repeats ok).
    Returns frames uint8 (S, H, W) and masks bool (S, H, W); absent timestamps give zeros / False.
    For many reads, keep a :class:`StoreReader` (it caches the time axis).
    """
    return StoreReader(group).read(time_s)


def _du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Store:
    """An open, validated store: the one owner of the store's rules. Use :meth:`open`.

    Attributes
    ----------
    path : Path, absolute (Ray workers change directory).
    group : the zarr.Group (read-only unless opened with mode "r+").
    attrs : dict, the group's attributes as opened.
    interval_s : int, the cadence in seconds (the ``interval_s`` attribute ingest derived from the data).
    frame_size : (H, W) in pixels.
    splits : names of the splits with a clip catalog.

    Pickles as its path (and ``require_complete``): unpickling reopens and revalidates it, so a Ray or
    DataLoader worker gets its own handles.
    """

    def __init__(self, path: Path, group, require_complete: bool = True):
        self.path = Path(path)
        self.group = group
        self.require_complete = require_complete
        self.attrs = dict(group.attrs)
        try:
            self.interval_s = int(self.attrs["interval_s"])
        except (KeyError, TypeError, ValueError):
            raise NowcastError(
                f"{self.path} records no cadence (interval_s); re-ingest it with "
                f"`nowcast ingest ARCHIVE {self.path}`"
            ) from None
        if self.interval_s <= 0:
            raise NowcastError(f"{self.path} records a cadence of {self.interval_s} s; re-ingest it")
        _, height, width = group[FRAMES].shape
        self.frame_size = (int(height), int(width))
        self.splits = list_splits(group)
        self._pid = os.getpid()  # the process that opened ``group``
        self._reader: StoreReader | None = None
        self._reader_pid: int | None = None

    @classmethod
    def open(cls, path: str | Path, require_complete: bool = True, mode: str = "r") -> Store:
        """Open and validate the store at ``path`` (see :func:`open_store` for the errors).

        mode : "r", or "r+" for ingest's writer (it validates an existing store with the same rules).
        """
        path = Path(path).expanduser().resolve()
        return cls(path, open_store(path, mode=mode, require_complete=require_complete), require_complete)

    @classmethod
    def of(cls, store: Store | str | Path) -> Store:
        """``store`` itself when it is a Store (the handle an orchestrator opened once and hands to every
        stage), else the store at that path, opened (:meth:`open`)."""
        return store if isinstance(store, Store) else cls.open(store)

    def __reduce__(self):
        return (Store.open, (str(self.path), self.require_complete))

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        """A Store stands for its path wherever a path is taken (``Path(store)``, messages)."""
        return str(self.path)

    @property
    def time_s(self) -> np.ndarray:
        """(T,) int64 epoch seconds of the rows (the reader's cached copy)."""
        return self.reader().time_s

    @property
    def present(self) -> np.ndarray:
        """(T,) bool: False for a row whose input file was bad."""
        if PRESENT not in self.group:
            return np.ones(self.time_s.size, dtype=bool)
        return read_vector(self.group, PRESENT).astype(bool)

    def clip_starts(self, split: str, protocol: str = "random") -> np.ndarray:
        """Clip starts (int64 epoch seconds, ascending) of ``split`` from the catalog.

        protocol : "random" (every valid start: the training population) or "sequent" (the HKO-7
        sequential evaluation clips). NowcastError (exit code 2) for an unknown split or protocol.
        """
        return read_catalog(self.group, split, protocol)

    def slot_times_s(self, start_s: int, n: int) -> np.ndarray:
        """(n,) int64 epoch seconds of the n consecutive slots from ``start_s`` at the store's cadence."""
        return int(start_s) + self.interval_s * np.arange(n, dtype=np.int64)

    def reader(self) -> StoreReader:
        """This process's :class:`StoreReader` (opened on first use, reopened after a fork)."""
        if self._reader is None or self._reader_pid != os.getpid():
            group = self.group if os.getpid() == self._pid else open_store(self.path, require_complete=False)
            self._reader, self._reader_pid = StoreReader(group), os.getpid()
        return self._reader

    def describe(self) -> dict:
        """Summary (JSON-able): frames, H, W, time span, gaps, splits with clip counts, bad counts."""
        time_s, present = self.time_s, self.present
        good = time_s[present]
        steps = np.diff(good)
        gaps = steps[steps > self.interval_s]
        splits = {}
        for split in self.splits:
            sub = self.group[f"{CATALOG}/{split}"]
            splits[split] = {
                "random_clips": int(sub["random_starts_s"].shape[0]),
                "sequent_clips": int(sub["sequent_starts_s"].shape[0]),
            }
        return {
            "path": str(self.path),
            "frames": int(time_s.size),
            "present_frames": int(present.sum()),
            "height": self.frame_size[0],
            "width": self.frame_size[1],
            "interval_s": self.interval_s,
            "time_start": iso_utc(time_s[0]) if time_s.size else None,
            "time_end": iso_utc(time_s[-1]) if time_s.size else None,
            "days": int(np.unique(good // 86400).size),
            "gaps": int(gaps.size),
            "missing_slots": int(((gaps // self.interval_s) - 1).sum()) if gaps.size else 0,
            "splits": splits,
            "bad_files": int(self.attrs.get("bad_files", {}).get("count", 0)),
            "frames_without_mask": int(self.attrs.get("frames_without_mask", {}).get("count", 0)),
            "layout": self.attrs.get("layout"),
            "chunk_checksums": self.checksums,
            "source": self._source_summary(),
            "size_mb": round(_du_bytes(self.path) / 1e6, 3),
        }

    @property
    def checksums(self) -> bool:
        """True when every chunk of frames and masks carries a crc32c checksum (ingest version >= 2)."""
        return has_checksums(self.group[FRAMES]) and has_checksums(self.group[MASKS])

    @property
    def source_settings(self) -> dict:
        """How the archive was read (``Source.settings()`` as recorded at ingest): for gridded formats
        the grid (``grid``, ``source_grid``: ``Grid.to_attrs()``), ``crop``, ``block``, ``zr``
        (``{"zr_a", "zr_b"}``) and ``variable``; empty for HKO-7."""
        return dict(dict(self.attrs.get("source", {})).get("settings", {}))

    def verify(self, progress=None) -> dict:
        """Check the whole store: every chunk of every array, every file against the digest ingest recorded
        for its position, and the arrays against each other.

        Returns ``{"chunks_checked": int, "checksums": bool, "damaged": [...], "problems": [str],
        "unchecked": [str]}``: ``damaged`` lists the damaged frame/mask chunks
        (:meth:`StoreReader.verify`; their ``times`` are None when ``time`` itself cannot be read),
        ``problems`` one line per other damage (a 1-D array that fails its checksum, a file whose digest
        differs from the one recorded for its position, ``time`` not ascending or off the cadence,
        ``present`` or a catalog disagreeing with the rest), ``unchecked`` what this store's ingest
        version records too little to check.
        """
        problems, unchecked = [], []
        vectors = {}
        for name in vector_names(self.group):
            try:
                vectors[name] = np.asarray(self.group[name][:])
            except Exception as exc:  # noqa: BLE001 - a checksum mismatch or a codec error
                problems.append(f"{name}: cannot be read ({_read_problem(exc)})")
        time_s = vectors.get(TIME)
        n = int(self.group[FRAMES].shape[0])
        reader = StoreReader(self.group, time_s=np.zeros(n, np.int64) if time_s is None else time_s)
        damaged = reader.verify(progress)
        if time_s is None:
            for item in damaged:
                item["times"] = None
        chunks = sum(-(-n // int(self.group[name].chunks[0])) for name in (FRAMES, MASKS))
        no_crc = [name for name in vector_names(self.group) if not has_checksums(self.group[name])]
        if no_crc:
            unchecked.append(
                f"{', '.join(no_crc)} carry no checksums (ingested before version 3): a damaged value "
                "there is found only when it breaks the checks between arrays"
            )
        problems += self._check_digests(unchecked)
        if time_s is not None:
            problems += self._check_time(time_s)
            present = vectors.get(PRESENT)
            if present is not None:
                problems += self._check_present(time_s, present.astype(bool), vectors, unchecked)
        return {
            "chunks_checked": chunks,
            "checksums": self.checksums,
            "damaged": damaged,
            "problems": problems,
            "unchecked": unchecked,
        }

    def _check_digests(self, unchecked: list[str]) -> list[str]:
        """Every array file against the digest ingest recorded for its position -> problem lines."""
        recorded = self.attrs.get(FILE_DIGESTS)
        if not recorded:
            unchecked.append(
                "no per-file digests recorded (ingested before version 3): a shard file copied over "
                "another is not found"
            )
            return []
        problems, unknown = [], 0
        on_disk = {}
        for name in (FRAMES, MASKS, *vector_names(self.group)):
            on_disk.update(array_files(self.group, name))
        for key, path in on_disk.items():
            if key not in recorded:
                unknown += 1
            elif file_digest(path) != recorded[key]:
                problems.append(
                    f"{key}: not the content ingest wrote at this position (its digest differs: "
                    "changed, or another chunk file copied over it)"
                )
        problems += [f"{key}: the file is missing" for key in sorted(set(recorded) - set(on_disk))]
        if unknown:
            unchecked.append(f"{unknown} file(s) written by an ingest before version 3 have no digest")
        return problems

    def _check_time(self, time_s: np.ndarray) -> list[str]:
        """``time`` strictly ascending, on the store's cadence and as long as the frames -> problem lines."""
        problems = []
        n = int(self.group[FRAMES].shape[0])
        if time_s.size != n:
            problems.append(f"{TIME}: {time_s.size} times for {n} frames")
        back = np.flatnonzero(np.diff(time_s) <= 0)
        if back.size:
            r = int(back[0])
            problems.append(
                f"{TIME}: not strictly ascending at {back.size} row(s) (first: rows {r}-{r + 1}, "
                f"{iso_utc(time_s[r])} then {iso_utc(time_s[r + 1])})"
            )
        if time_s.size:
            phase_s = int(time_s[0]) % self.interval_s
            off = np.flatnonzero(np.mod(time_s, self.interval_s) != phase_s)
            if off.size:
                r = int(off[0])
                problems.append(
                    f"{TIME}: {off.size} time(s) off the store's cadence of {self.interval_s} s "
                    f"(first: row {r}, {iso_utc(time_s[r])})"
                )
            for key, value in (("time_start_s", time_s[0]), ("time_end_s", time_s[-1])):
                if key in self.attrs and self.attrs[key] != int(value):
                    problems.append(f"{TIME}: starts or ends at {iso_utc(value)}, ingest recorded otherwise")
        return problems

    def _check_present(
        self, time_s: np.ndarray, present: np.ndarray, vectors: dict, unchecked: list[str]
    ) -> list[str]:
        """``present`` against ingest's count, and each split's catalog against ``time[present]`` (the
        catalog recomputed with the recorded clip rule) -> problem lines."""
        problems = []
        if present.size != time_s.size:
            return [f"{PRESENT}: {present.size} entries for {time_s.size} times"]
        if "n_present" in self.attrs and int(self.attrs["n_present"]) != int(present.sum()):
            problems.append(
                f"{PRESENT}: {int(present.sum())} usable frames, but ingest recorded "
                f"{self.attrs['n_present']}"
            )
        specs = self.attrs.get("splits", {})
        for split in self.splits:
            rule = dict(self.group[f"{CATALOG}/{split}"].attrs)
            try:
                expected = catalog.split_clip_starts(
                    time_s[present],
                    specs[split],
                    int(rule["seq_len"]),
                    int(rule["stride"]),
                    int(rule["max_consecutive_missing"]),
                    int(rule.get("interval_s", self.interval_s)),
                )
            except KeyError:
                unchecked.append(f"{CATALOG}/{split}: no clip rule recorded, the catalog is not re-checked")
                continue
            for protocol, starts in zip(PROTOCOLS, expected):
                name = f"{CATALOG}/{split}/{protocol}_starts_s"
                stored = vectors.get(name)
                if stored is not None and not np.array_equal(stored, starts):
                    problems.append(
                        f"{name}: does not agree with {TIME} and {PRESENT} ({stored.size} clip starts "
                        f"stored, {starts.size} by the clip rule)"
                    )
        return problems

    def _source_summary(self) -> dict:
        """The archive format and how it was read, in short (the grid without its WKT)."""
        source = dict(self.attrs.get("source", {}))
        summary = {k: source[k] for k in ("format", "archive") if k in source}
        settings = self.source_settings
        for key in ("variable", "crop", "block"):
            if settings.get(key) is not None:
                summary[key] = settings[key]
        if settings.get("zr"):
            summary["zr"] = f"Z = {settings['zr']['zr_a']:g} R^{settings['zr']['zr_b']:g}"
        grid = settings.get("grid")
        if grid:
            summary["grid"] = (
                f"{grid['shape'][0]}x{grid['shape'][1]} pixels of {grid['x_step']:g} x {grid['y_step']:g} "
                f"{grid.get('xy_unit', '')}, top-left corner ({grid['x_left']:g}, {grid['y_top']:g}), "
                f"{grid.get('projdef') or 'projection in the store attributes'}"
            )
        return summary

    def fingerprint(self) -> dict:
        """JSON-able identity of the store for experiment tracking: absolute path + ingest attributes."""
        keys = (
            "source",
            "ingest_version",
            "interval_s",
            "height",
            "width",
            "n_frames",
            "n_present",
            "layout",
            "time_start_s",
            "time_end_s",
            "splits",
        )
        fp = {"path": str(self.path)}
        fp.update({k: self.attrs[k] for k in keys if k in self.attrs})
        fp["bad_files"] = int(self.attrs.get("bad_files", {}).get("count", 0))
        return fp
