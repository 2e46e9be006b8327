"""Archive -> Zarr ingest: round trip, bad inputs, shard alignment, kill-and-resume, append, Dask."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline import catalog as cat
from pipeline import ingest as ing
from pipeline import store as st
from pipeline.catalog import INTERVAL_S
from pipeline.errors import NowcastError
from pipeline.sources import hko7
from tests.pipeline._ingest_helpers import kill_after_units, slow_ingest_script, tree_bytes

IV = INTERVAL_S
T0_S = int(np.datetime64("2015-06-01T00:00:00", "s").astype(np.int64))  # as in conftest


def run(archive, store, **kw) -> ing.IngestResult:
    kw.setdefault("workers", 0)
    kw.setdefault("chunk_frames", 2)
    kw.setdefault("shard_frames", 8)
    return ing.ingest(ing.IngestConfig(archive, store, **kw), progress=False)


def assert_store_matches(store, arch, bad_times=()):
    """Every archive frame reads back exactly; bad times read as zeros / False and are not present."""
    g = st.open_store(store)
    t = np.asarray(g[st.TIME][:])
    assert np.all(np.diff(t) > 0)
    want_t = np.asarray(sorted(set(arch.frames) | set(bad_times)), dtype=np.int64)
    np.testing.assert_array_equal(t, want_t)
    frames, masks = st.read_frames(g, t)
    present = g[st.PRESENT][:]
    for i, ts in enumerate(t.tolist()):
        if ts in bad_times:
            assert not present[i] and not frames[i].any() and not masks[i].any()
        else:
            assert present[i]
            np.testing.assert_array_equal(frames[i], arch.frames[ts])
            np.testing.assert_array_equal(masks[i], arch.masks[ts])


@pytest.mark.parametrize("chunk, shard", [(2, 8), (3, None), (1, 5), (4, 4)])
def test_round_trip_layouts(hand_archive, tmp_path, chunk, shard):
    arch = hand_archive(37, missing=[5, 6, 20])
    res = run(arch.root, tmp_path / "s.zarr", chunk_frames=chunk, shard_frames=shard)
    assert res.n_frames == 34 and res.n_new_frames == 34 and res.n_bad == 0
    assert_store_matches(tmp_path / "s.zarr", arch)
    g = st.open_store(tmp_path / "s.zarr")
    assert (
        g[st.FRAMES].chunks == (chunk, 64, 64)
        and g[st.FRAMES].dtype == np.uint8
        and g[st.MASKS].dtype == bool
    )
    assert g.attrs["interval_s"] == 360 and g.attrs["ingest_version"] == st.INGEST_VERSION
    assert "dBZ" in g.attrs["pixel_encoding"] and g.attrs["source"]["format"] == "HKO-7"


def _png(arr, mode=None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_bad_input_is_reported_and_missing(hand_archive, tmp_path):
    arch = hand_archive(30)
    ts = arch.times_s()
    good = hko7.frame_path(arch.root, ts[0]).read_bytes()
    cases = {  # slot -> (file to damage, new bytes)
        3: ("frame", b"\x89PNG\r\n\x1a\n this is not a png"),  # corrupt
        5: ("frame", good[: len(good) // 2]),  # truncated
        8: ("frame", hko7.encode_frame(np.zeros((32, 32), np.uint8))),  # wrong size
        11: ("frame", _png(np.zeros((64, 64), np.uint16) + 300)),  # 16-bit
        13: ("frame", _png(np.zeros((64, 64, 3), np.uint8))),  # RGB
        17: ("mask", b"garbage, not zlib"),  # unreadable mask
        19: ("mask", hko7.encode_mask(np.ones((10, 10), bool))),  # mask of wrong size
    }
    for slot, (kind, data) in cases.items():
        path = (
            hko7.frame_path(arch.root, ts[slot]) if kind == "frame" else hko7.mask_path(arch.root, ts[slot])
        )
        path.write_bytes(data)
        del arch.frames[int(ts[slot])]
    day_dir = hko7.frame_path(arch.root, ts[0]).parent
    for name in ("RADbad.png", "notes.txt", "RAD150601006000.png"):  # unparseable (minute 60) names
        (day_dir / name).write_bytes(good)
    hko7.mask_path(arch.root, ts[22]).unlink()  # frame without mask -> all-valid mask + warning
    arch.masks[int(ts[22])] = np.ones((64, 64), bool)

    with pytest.warns(ing.IngestWarning, match="no mask"):
        res = run(arch.root, tmp_path / "s.zarr")
    assert res.n_bad == len(cases) + 3 and res.n_without_mask == 1
    reported = {b["path"] for b in res.bad_files}
    for slot, (kind, _) in cases.items():
        p = hko7.frame_path(arch.root, ts[slot]) if kind == "frame" else hko7.mask_path(arch.root, ts[slot])
        assert p.relative_to(arch.root).as_posix() in reported
    assert {
        f"{day_dir.relative_to(arch.root).as_posix()}/{n}"
        for n in ("RADbad.png", "notes.txt", "RAD150601006000.png")
    } <= reported
    bad_times = {int(ts[s]) for s in cases}
    assert_store_matches(tmp_path / "s.zarr", arch, bad_times)
    g = st.open_store(tmp_path / "s.zarr")
    assert g.attrs["bad_files"]["count"] == res.n_bad and g.attrs["frames_without_mask"]["count"] == 1
    report = json.loads(Path(res.report_path).read_text())
    assert {b["path"] for b in report["bad_files"]} == reported
    # the catalog treats bad frames as missing
    good_t = np.asarray(sorted(arch.frames), dtype=np.int64).astype("datetime64[s]")
    want = cat.valid_clip_starts(
        good_t[cat.select_split(good_t, g.attrs["splits"]["train"])], interval=np.timedelta64(IV, "s")
    )
    np.testing.assert_array_equal(st.read_catalog(g, "train", "random"), want.astype(np.int64))


def test_nothing_usable_and_unwritable(tmp_path):
    root = tmp_path / "arch"
    with pytest.raises(NowcastError, match="not an HKO-7 archive"):
        run(root, tmp_path / "s.zarr")
    p = hko7.frame_path(root, T0_S)
    p.parent.mkdir(parents=True)
    with pytest.raises(NowcastError, match="nothing to ingest"):
        run(root, tmp_path / "s.zarr")
    for k in range(3):
        hko7.frame_path(root, T0_S + k * IV).write_bytes(b"broken")
    with pytest.raises(NowcastError, match="no readable PNG frame found in .*nothing to ingest"):
        run(root, tmp_path / "s2.zarr")
    p.write_bytes(hko7.encode_frame(np.ones((16, 16), np.uint8)))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(NowcastError, match="writable|cannot create"):
        run(root, blocker / "s.zarr")


def test_units_are_whole_shards(hand_archive, tmp_path, monkeypatch):
    """The sharding-corruption guard: every task writes whole shards and each shard exactly once."""
    arch = hand_archive(45)
    calls = []
    real = ing.ingest_unit

    def spy(store_path, source, archive, unit, i0, slots):
        calls.append((i0, len(slots)))
        return real(store_path, source, archive, unit, i0, slots)

    monkeypatch.setattr(ing, "ingest_unit", spy)
    run(arch.root, tmp_path / "s.zarr", chunk_frames=3, shard_frames=12)
    assert [c[0] for c in calls] == [0, 12, 24, 36]
    assert all(i0 % 12 == 0 and (n == 12 or i0 + n == 45) for i0, n in calls)
    assert_store_matches(tmp_path / "s.zarr", arch)


def test_each_unit_writes_whole_shard_files_of_its_own(hand_archive, tmp_path):
    """Why two ingest tasks never write the same file at once: every unit starts on a shard boundary,
    holds at most one shard of rows, the units tile the time axis, and each unit's recorded digests name
    exactly its own frames and masks shard files (which exist on disk, one per unit)."""
    arch = hand_archive(19)
    store = tmp_path / "s.zarr"
    run(arch.root, store, chunk_frames=2, shard_frames=4)
    group = st.open_store(store)
    markers = [
        dict(group[f"{st.UNITS_GROUP}/{name}"].attrs) for name in sorted(group[st.UNITS_GROUP].group_keys())
    ]
    assert [(m["i0"], m["n"]) for m in markers] == [(0, 4), (4, 4), (8, 4), (12, 4), (16, 3)]
    for unit, marker in enumerate(markers):
        assert set(marker["digests"]) == {f"frames/c/{unit}/0/0", f"masks/c/{unit}/0/0"}
    on_disk = {k for name in (st.FRAMES, st.MASKS) for k in st.array_files(group, name)}
    assert on_disk == {key for m in markers for key in m["digests"]}


KILL_SCRIPT = slow_ingest_script("pipeline.sources.hko7:Hko7Source._read", 0.04)


def test_kill_and_resume_is_byte_identical(hand_archive, tmp_path):
    arch = hand_archive(64, missing=[10])
    hko7.frame_path(arch.root, T0_S + 30 * IV).write_bytes(b"corrupt")  # bad files are resumed too
    ref = run(arch.root, tmp_path / "ref.zarr", chunk_frames=1, shard_frames=4)
    store = tmp_path / "killed.zarr"
    n_done = kill_after_units(KILL_SCRIPT, [arch.root, store], store, 4)
    assert 4 <= n_done < 16, "the kill must land mid-run"
    with pytest.raises(NowcastError, match="did not finish"):
        st.open_store(store)
    res = run(arch.root, store, chunk_frames=1, shard_frames=4)
    assert res.n_units_skipped >= n_done and res.n_units_written == 16 - res.n_units_skipped
    assert res.n_bad == ref.n_bad == 1
    assert tree_bytes(store) == tree_bytes(tmp_path / "ref.zarr")
    again = run(arch.root, store, chunk_frames=1, shard_frames=4)  # idempotent: nothing to redo
    assert again.n_units_written == 0 and tree_bytes(store) == tree_bytes(tmp_path / "ref.zarr")


def test_grown_archive_appends(hand_archive, archive_tools, tmp_path):
    add_frame = archive_tools.add_frame
    arch = hand_archive(30, missing=[12])
    first = run(arch.root, tmp_path / "s.zarr")
    assert first.n_frames == 29
    for k in range(30, 50):
        add_frame(arch, T0_S + k * IV)
    add_frame(arch, T0_S + 12 * IV)  # an older frame appearing later is not inserted
    old_t = arch.frames.pop(T0_S + 12 * IV)
    with pytest.warns(ing.IngestWarning, match="older than the store"):
        res = run(arch.root, tmp_path / "s.zarr")
    assert res.n_frames == 49 and res.n_new_frames == 20 and res.n_skipped_old == 1
    # 29 stored rows = units [0,8) [8,16) [16,24) + partial [24,29): rewritten are [24,32) [32,40) [40,48) [48,49)
    assert res.n_units_written == 4 and res.n_units_skipped == 3
    assert old_t is not None
    assert_store_matches(tmp_path / "s.zarr", arch)


def test_day_lists_define_splits(hand_archive, tmp_path):
    day = 86400
    arch = hand_archive(
        3 * 240,
        day_lists={"train": ["2015-06-01"], "valid": ["2015-06-02"], "test": ["2015-06-03"]},
        size=16,
        missing=[300, 301, 302, 500],
    )
    res = run(arch.root, tmp_path / "s.zarr", chunk_frames=20, shard_frames=240)
    g = st.open_store(tmp_path / "s.zarr")
    good = arch.times_s().astype("datetime64[s]")
    for i, split in enumerate(("train", "valid", "test")):
        sel = (arch.times_s() >= T0_S + i * day) & (arch.times_s() < T0_S + (i + 1) * day)
        want_seq = cat.sequent_clips(good[sel], interval=np.timedelta64(IV, "s")).astype(np.int64)
        np.testing.assert_array_equal(st.read_catalog(g, split, "sequent"), want_seq)
        assert res.clips[split]["sequent_clips"] == want_seq.size > 0
    assert (
        g["catalog/test"].attrs["seq_len"] == 25 and g["catalog/test"].attrs["max_consecutive_missing"] == 2
    )


@pytest.mark.slow
def test_ingest_on_a_real_dask_scheduler(hand_archive, tmp_path):
    """Ingest through an external dask.distributed scheduler (given by address) with 2 worker processes."""
    from dask.distributed import LocalCluster

    arch = hand_archive(60, missing=[7])
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = run(
            arch.root,
            tmp_path / "s.zarr",
            scheduler=cluster.scheduler_address,
            workers=None,
            chunk_frames=1,
            shard_frames=4,
        )
    assert res.n_units_written == 15 and res.n_frames == 59
    assert_store_matches(tmp_path / "s.zarr", arch)
    local = run(arch.root, tmp_path / "serial.zarr", chunk_frames=1, shard_frames=4)
    assert local.n_frames == 59
    assert tree_bytes(tmp_path / "s.zarr") == tree_bytes(tmp_path / "serial.zarr")


@pytest.mark.slow
def test_ingest_default_local_cluster_via_env(hand_archive, tmp_path, monkeypatch):
    """Default path: a LocalCluster of worker processes (workers=2 here)."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    arch = hand_archive(24)
    res = run(arch.root, tmp_path / "s.zarr", workers=2, chunk_frames=2, shard_frames=4)
    assert res.n_units_written == 6 and res.frames_per_s > 0
    assert_store_matches(tmp_path / "s.zarr", arch)


def test_repeated_masks_ingest_exactly(tmp_path, archive_tools):
    """Runs of byte-identical masks (as in HKO-7), a changed mask, and a corrupt mask between two
    identical ones: every slot reads back as its own file says; the corrupt slot is missing."""
    root = tmp_path / "archive"
    arch = archive_tools.build_archive(root, 12, size=16)
    times = arch.times_s().tolist()
    shared = archive_tools.mask_pixels(times[0], 16)
    other = ~shared
    for k, t in enumerate(times):
        m = other if k in (4, 5) else shared
        hko7.mask_path(root, t).write_bytes(hko7.encode_mask(m))
        arch.masks[t] = m
    hko7.mask_path(root, times[8]).write_bytes(b"\x78\x9c broken")
    del arch.frames[times[8]], arch.masks[times[8]]
    res = run(root, tmp_path / "s.zarr", chunk_frames=2, shard_frames=12)
    assert res.n_bad == 1 and res.bad_files[0]["path"].endswith(".mask")
    assert_store_matches(tmp_path / "s.zarr", arch, bad_times={times[8]})


@pytest.mark.slow
def test_local_cluster_workers_get_the_malloc_settings(monkeypatch):
    """The LocalCluster's workers run with WORKER_MALLOC_ENV (not Dask's MALLOC_TRIM_THRESHOLD_=65536,
    which made every large buffer page-fault), even when the driver's environment has Dask's value."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    client, cluster = ing._client(ing.IngestConfig("unused", "unused", workers=1))
    try:
        envs = client.run(lambda: {k: os.environ.get(k) for k in ing.WORKER_MALLOC_ENV})
    finally:
        client.close()
        cluster.close()
    assert list(envs.values()) == [ing.WORKER_MALLOC_ENV]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # the driver's environment is restored
    assert ing.WORKER_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"] != "65536"
