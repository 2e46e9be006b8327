"""Store layout, open/validate errors, read_frames by timestamp, describe and fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import ingest as ing
from pipeline import store as st
from pipeline.errors import NowcastError
from pipeline.times import iso_utc

IV = 360


@pytest.fixture
def small_store(hand_archive, tmp_path):
    arch = hand_archive(30, missing=[4, 5, 6])
    ing.ingest(
        ing.IngestConfig(arch.root, tmp_path / "s.zarr", workers=0, chunk_frames=2, shard_frames=6),
        progress=False,
    )
    return tmp_path / "s.zarr", arch


def test_read_frames_arbitrary_times(small_store):
    path, arch = small_store
    g = st.open_store(path)
    t = arch.times_s()
    query = np.array([t[7], t[0] - IV, t[3] + IV, t[7], t[-1], t[0] + 5, t[2]])  # repeats, absent, any order
    frames, masks = st.read_frames(g, query)
    assert frames.shape == (7, 64, 64) and frames.dtype == np.uint8 and masks.dtype == bool
    for i, q in enumerate(query.tolist()):
        if q in arch.frames:
            np.testing.assert_array_equal(frames[i], arch.frames[q])
            np.testing.assert_array_equal(masks[i], arch.masks[q])
        else:
            assert not frames[i].any() and not masks[i].any()
    # far-apart timestamps use the scattered read path
    spread = np.array([t[-1], t[0], t[-1]])
    frames, _ = st.read_frames(g, spread)
    np.testing.assert_array_equal(frames[1], arch.frames[int(t[0])])
    np.testing.assert_array_equal(frames[2], arch.frames[int(t[-1])])
    assert st.read_frames(g, np.array([], np.int64))[0].shape == (0, 64, 64)


def test_layout_and_attrs(small_store):
    path, _ = small_store
    g = st.open_store(path)
    assert g[st.FRAMES].shape == (27, 64, 64) and g[st.FRAMES].chunks == (2, 64, 64)
    assert g[st.FRAMES].shards == (6, 64, 64) and g[st.TIME].dtype == np.int64
    for key in ("source", "pixel_encoding", "interval_s", "ingest_version", "bad_files", "layout"):
        assert key in g.attrs
    assert g["catalog/train"].attrs["seq_len"] == 25 and g["catalog/train/sequent_starts_s"].dtype == np.int64


def test_describe_and_fingerprint(small_store):
    path, arch = small_store
    d = st.Store.open(path).describe()
    assert d["frames"] == 27 and d["present_frames"] == 27 and (d["height"], d["width"]) == (64, 64)
    assert d["gaps"] == 1 and d["missing_slots"] == 3 and d["time_start"] == "2015-06-01T00:00:00Z"
    assert set(d["splits"]) == {"train", "valid", "test"} and d["bad_files"] == 0
    fp = st.Store.open(path).fingerprint()
    json.dumps(fp)
    assert (
        fp["path"] == str(path.resolve())
        and fp["ingest_version"] == st.INGEST_VERSION
        and fp["n_frames"] == 27
    )


def test_open_store_errors(tmp_path, small_store):
    import zarr

    with pytest.raises(NowcastError, match="nowcast ingest"):
        st.open_store(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NowcastError, match="not a Zarr store|not a nowcast store"):
        st.open_store(tmp_path / "plain")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(NowcastError, match="not a nowcast store"):
        st.open_store(tmp_path / "other.zarr")
    path, _ = small_store
    g = zarr.open_group(str(path), mode="r+")
    g.attrs["ingest_state"] = st.STATE_IN_PROGRESS
    with pytest.raises(NowcastError, match="did not finish"):
        st.open_store(path)
    assert st.open_store(path, require_complete=False) is not None
    with pytest.raises(NowcastError, match="split 'nope'"):
        st.read_catalog(st.open_store(path, require_complete=False), "nope")


def test_layout_validation():
    with pytest.raises(NowcastError, match=r"shard_frames \(10\) must be a multiple of chunk_frames \(3\)"):
        st.StoreLayout(chunk_frames=3, shard_frames=10)
    with pytest.raises(NowcastError, match="unknown compressor 'lzma'"):
        st.StoreLayout(compressor="lzma")
    assert st.StoreLayout(chunk_frames=5, shard_frames=None).unit_frames == 5
    assert st.StoreLayout(chunk_frames=1, shard_frames=120).unit_frames == 120


def _zarr_array(path, data, chunk, shard, compressor, level=1, write_empty=True, checksum=True):
    """A (T, H, W) zarr v3 array holding ``data`` with the store's codecs, written shard by shard."""
    import zarr

    layout = st.StoreLayout(chunk, shard, compressor, level, checksum)
    kw = st._frame_array_kwargs(layout, *data.shape[1:])
    arr = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, fill_value=0, **kw)
    arr = arr.with_config({"write_empty_chunks": write_empty})
    unit = layout.unit_frames
    for i0 in range(0, data.shape[0], unit):
        arr[i0 : i0 + unit] = data[i0 : i0 + unit]
    return zarr.open_array(str(path), mode="r")


@pytest.mark.parametrize(
    "chunk, shard, compressor",
    [(1, 4, "zstd"), (2, 6, "zstd"), (5, 10, "blosc-lz4"), (3, 9, "none"), (4, 8, "blosc-zstd")],
)
@pytest.mark.parametrize("dtype", ["uint8", "bool"])
@pytest.mark.parametrize("checksum", [True, False])
def test_shard_file_reader_matches_zarr(tmp_path, chunk, shard, compressor, dtype, checksum):
    """The direct shard-file reader returns exactly what zarr returns, for every row range, including
    an all-fill chunk and a partial last shard; unlike zarr, a chunk or shard file that is missing is
    damage (ChunkDamage with its rows), not the fill value."""
    rng = np.random.default_rng(3)
    n = 2 * shard + chunk + 1  # a partial last shard and a partial last chunk
    data = rng.integers(0, 256, (n, 6, 5)).astype(np.uint8)
    if dtype == "bool":
        data = data > 100
    data[chunk : 2 * chunk] = 0  # an all-fill chunk (written: ingest writes every chunk)
    arr = _zarr_array(tmp_path / "a.zarr", data, chunk, shard, compressor, checksum=checksum)
    reader = st.ShardFileReader.for_array(arr)
    assert reader is not None and reader.checksum == checksum == st.has_checksums(arr)
    ranges = [(lo, hi) for lo in range(0, n, 1) for hi in (lo, lo + 1, lo + chunk + 1, n) if hi <= n]
    for lo, hi in ranges:
        out = np.empty((hi - lo, 6, 5), dtype=data.dtype)
        reader.read(lo, hi, out)
        np.testing.assert_array_equal(out, arr[lo:hi])
        np.testing.assert_array_equal(out, data[lo:hi])
    unwritten = _zarr_array(tmp_path / "b.zarr", data, chunk, shard, compressor, write_empty=False)
    with pytest.raises(st.ChunkDamage, match="missing") as info:  # the all-fill chunk was never written
        st.ShardFileReader.for_array(unwritten).read(0, n, np.empty((n, 6, 5), dtype=data.dtype))
    assert (info.value.lo, info.value.hi) == (chunk, 2 * chunk)
    import shutil

    shutil.rmtree(tmp_path / "a.zarr" / "c" / "1")  # shard 1 missing: damage naming its rows
    with pytest.raises(st.ChunkDamage, match="shard file a.zarr/c/1/0/0 is missing") as info:
        reader.read(0, n, np.empty((n, 6, 5), dtype=data.dtype))
    assert (info.value.lo, info.value.hi) == (shard, 2 * shard)
    with pytest.raises(ValueError, match="do not fit the array"):
        reader.read(0, n + 1, np.empty((n + 1, 6, 5), dtype=data.dtype))


def test_shard_file_reader_declines_other_layouts(tmp_path):
    data = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    unsharded = _zarr_array(tmp_path / "u.zarr", data, 2, None, "zstd")
    assert st.ShardFileReader.for_array(unsharded) is None
    import zarr

    partial_frames = zarr.create_array(
        str(tmp_path / "p.zarr"), shape=(4, 4, 4), dtype="uint8", chunks=(1, 2, 4), shards=(2, 4, 4)
    )
    assert st.ShardFileReader.for_array(partial_frames) is None
    wide = zarr.create_array(
        str(tmp_path / "w.zarr"), shape=(4, 4, 4), dtype="int16", chunks=(1, 4, 4), shards=(2, 4, 4)
    )
    assert st.ShardFileReader.for_array(wide) is None


def test_store_reader_fast_and_zarr_paths_agree(small_store):
    """StoreReader with and without the shard-file reader: same bytes for clips, gaps and scattered times."""
    path, arch = small_store
    g = st.open_store(path)
    fast, slow = st.StoreReader(g), st.StoreReader(g, fast=False)
    assert fast.uses_fast_path and not slow.uses_fast_path
    t = arch.times_s()
    queries = [
        t[0] + IV * np.arange(25),
        t[2] + IV * np.arange(10),
        np.array([t[-1], t[0], t[5]]),
        t[7:20],
        np.array([t[0] - IV]),
    ]
    for q in queries:
        for a, b in zip(fast.read(q), slow.read(q)):
            np.testing.assert_array_equal(a, b)
    f_out, m_out = np.full((3, 64, 64), 7, np.uint8), np.ones((3, 64, 64), bool)  # stale buffer contents
    f, m = fast.read(np.array([t[0], t[0] - IV, t[1]]), f_out, m_out)
    assert f is f_out and m is m_out and not f[1].any() and not m[1].any()
    np.testing.assert_array_equal(f[2], arch.frames[int(t[1])])


def test_store_handle(small_store, tmp_path, monkeypatch):
    """Store: opened and validated once, the owner of cadence, frame size, splits, clip starts and the
    reader; pickles as its path (absolute, so a worker in another directory reopens the same store)."""
    import pickle

    path, arch = small_store
    monkeypatch.chdir(path.parent)
    store = st.Store.open(path.name)
    assert store.path == path.resolve() and store.interval_s == IV and store.frame_size == (64, 64)
    assert store.splits == ["test", "train", "valid"]
    np.testing.assert_array_equal(
        store.clip_starts("train", "sequent"), st.read_catalog(store.group, "train", "sequent")
    )
    np.testing.assert_array_equal(store.time_s, arch.times_s())
    assert store.present.all() and store.reader() is store.reader()
    np.testing.assert_array_equal(
        store.slot_times_s(int(store.time_s[0]), 3), store.time_s[0] + IV * np.arange(3)
    )
    monkeypatch.chdir(tmp_path)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.path == store.path and clone._reader is None and len(pickle.dumps(store)) < 500
    np.testing.assert_array_equal(
        clone.reader().read(store.time_s[:2])[0], store.reader().read(store.time_s[:2])[0]
    )
    with pytest.raises(NowcastError, match="split 'nope'"):
        store.clip_starts("nope")
    with pytest.raises(NowcastError, match="protocol"):
        store.clip_starts("train", "shuffled")
    with pytest.raises(NowcastError, match="nowcast ingest"):
        st.Store.open(tmp_path / "missing.zarr")


def test_infer_interval_s_is_the_most_common_step():
    t = 1_000_000 + 360 * np.array([0, 1, 2, 3, 7, 8, 9, 30])
    assert st.infer_interval_s(t) == 360
    assert (
        st.infer_interval_s(np.array([0, 300, 600, 1200, 1500, 2100])) == 300
    )  # tie 300 vs 600: the smaller
    assert st.infer_interval_s(np.array([5, 5, 65])) == 60  # repeats ignored
    assert st.infer_interval_s(np.array([7])) == st.INTERVAL_S == 360  # no step: the HKO-7 cadence


def test_shard_reader_checks_the_index_crc_and_store_reader_names_the_frames(small_store, tmp_path):
    """A damaged shard index fails the crc32c check; StoreReader turns it into an error naming the frames."""
    import shutil

    path, arch = small_store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    g = st.open_store(copy)
    reader = st.ShardFileReader.for_array(g[st.FRAMES])
    shard = reader.shard_path(0)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # a bit of the index (the last 4 bytes are its crc32c)
    shard.write_bytes(bytes(data))
    with pytest.raises(st.ChunkDamage, match="index checksum"):
        reader.read(0, 2, np.empty((2, 64, 64), np.uint8))
    t = arch.times_s()
    with pytest.raises(
        NowcastError,
        match=f"damaged at frames 0-5 .{iso_utc(t[0])} to {iso_utc(t[5])}., array "
        "frames: .*index checksum.*info --verify",
    ):
        st.StoreReader(g).read(t[:2])


def test_store_reader_logs_when_the_layout_is_not_the_fast_one(tmp_path, caplog):
    import logging

    g = st.create_store(
        tmp_path / "u.zarr", 4, 4, st.StoreLayout(chunk_frames=2, shard_frames=None), {"interval_s": IV}
    )
    with caplog.at_level(logging.INFO, logger="nowcast.store"):
        reader = st.StoreReader(g)
    assert not reader.uses_fast_path and "reading through zarr" in caplog.text
