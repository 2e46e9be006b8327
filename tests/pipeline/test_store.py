"""Store layout, open/validate errors, read_frames by timestamp, describe and fingerprint."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import ingest as ing
from pipeline import store as st
from pipeline.errors import NowcastError

IV = 360


@pytest.fixture
def small_store(hand_archive, tmp_path):
    arch = hand_archive(30, missing=[4, 5, 6])
    ing.ingest(ing.IngestConfig(arch.root, tmp_path / "s.zarr", workers=0, chunk_frames=2, shard_frames=6),
               progress=False)
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
    d = st.describe_store(path)
    assert d["frames"] == 27 and d["present_frames"] == 27 and (d["height"], d["width"]) == (64, 64)
    assert d["gaps"] == 1 and d["missing_slots"] == 3 and d["time_start"] == "2015-06-01T00:00:00Z"
    assert set(d["splits"]) == {"train", "valid", "test"} and d["bad_files"] == 0
    fp = st.store_fingerprint(path)
    json.dumps(fp)
    assert fp["path"] == str(path.resolve()) and fp["ingest_version"] == st.INGEST_VERSION and fp["n_frames"] == 27


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
    with pytest.raises(NowcastError):
        st.StoreLayout(chunk_frames=3, shard_frames=10)
    with pytest.raises(NowcastError):
        st.StoreLayout(compressor="lzma")
    assert st.StoreLayout(chunk_frames=5, shard_frames=None).unit_frames == 5
    assert st.StoreLayout(chunk_frames=1, shard_frames=120).unit_frames == 120
