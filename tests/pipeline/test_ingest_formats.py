"""Ingest of ODIM_H5 and CF-NetCDF archives: values, bad files mixed in, cadence from the
data, duplicates, crop/block/Z-R recorded and reused, format detection, kill-and-resume, append and
Dask -- everything the HKO-7 path has, for each format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline import ingest as ing
from pipeline import store as st
from pipeline.errors import NowcastError
from pipeline.sources import detect_format, get_source
from pipeline.sources.grid import ZR
from tests.pipeline import _gridded as gd
from tests.pipeline._ingest_helpers import kill_after_units, slow_ingest_script, tree_bytes
from tests.pipeline.sources._files import GridSpec, OdimData, write_odim

FORMATS = ("odim", "netcdf")


def run(archive, store, **kw) -> ing.IngestResult:
    kw.setdefault("workers", 0)
    kw.setdefault("chunk_frames", 2)
    kw.setdefault("shard_frames", 8)
    return ing.ingest(ing.IngestConfig(archive, store, **kw), progress=False)


def make_archive(fmt: str, root: Path, n: int, **kw) -> gd.GriddedArchive:
    return gd.odim_archive(root, n, **kw) if fmt == "odim" else gd.netcdf_archive(root, n, **kw)


def assert_store_holds(store: Path, arch: gd.GriddedArchive, absent=()) -> None:
    """The store's axis is the archive's good times; every frame and mask reads back exactly."""
    g = st.open_store(store)
    t = np.asarray(g[st.TIME][:])
    np.testing.assert_array_equal(t, arch.times_s())
    assert not set(absent) & set(t.tolist())
    frames, masks = st.read_frames(g, t)
    assert g[st.PRESENT][:].all()
    for i, ts in enumerate(t.tolist()):
        np.testing.assert_array_equal(frames[i], arch.frames[ts], err_msg=str(ts))
        np.testing.assert_array_equal(masks[i], arch.masks[ts], err_msg=str(ts))


def reasons(result: ing.IngestResult) -> dict[str, str]:
    return {b["path"]: b["reason"] for b in result.bad_files}


# --------------------------------------------------------------------------- values and bad files


def test_odim_archive_with_bad_files(tmp_path):
    arch = gd.odim_archive(tmp_path / "odim", 40, missing=[7])
    root, size = arch.root, arch.size
    t = lambda k: gd.T0_S + k * gd.IV  # noqa: E731
    good = gd.odim_path(root, t(0)).read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "truncated.h5").write_bytes(good[: len(good) // 2])
    (root / "bad" / "notes.txt").write_text("radar maintenance on Tuesday")
    with h5py.File(root / "bad" / "plain.h5", "w") as f:  # HDF5, not ODIM
        f["x"] = np.zeros(3)
    gd.write_odim_frame(
        root / "bad" / "shifted.h5", t(50), size, GridSpec(shape=(size, size), x_left=-150_000.0)
    )
    gd.write_odim_frame(root / "bad" / "offcadence.h5", t(30) + 60, size)
    write_odim(
        root / "bad" / "rate_only.h5",
        [OdimData("RATE", np.ones((size, size), np.uint16), gain=0.01)],
        grid=arch.grid,
        date=gd.stamp(t(51))[:8],
        time=gd.stamp(t(51))[8:],
    )
    shutil.copy(gd.odim_path(root, t(3)), root / "bad" / "copy_of_3.h5")  # identical duplicate: fine
    pix, mask = gd.pixels(t(20), size)
    gd.write_odim_frame(
        root / "bad" / "other_20.h5", t(20), size, pix=255 - pix, mask=mask
    )  # differs: neither
    del arch.frames[t(20)], arch.masks[t(20)]

    res = run(root, tmp_path / "s.zarr")
    why = reasons(res)
    assert "unreadable ODIM_H5" in why["bad/truncated.h5"] and "bad/notes.txt" in why
    assert "what/object" in why["bad/plain.h5"]
    assert "grid origin" in why["bad/shifted.h5"]
    assert "off the cadence" in why["bad/offcadence.h5"]
    assert "no DBZH" in why["bad/rate_only.h5"]
    assert (
        "duplicate time" in why["bad/copy_of_3.h5"]
        and gd.odim_path(root, t(3)).relative_to(root).as_posix() in why["bad/copy_of_3.h5"]
    )
    first_20 = gd.odim_path(root, t(20)).relative_to(root).as_posix()
    assert "differ" in why["bad/other_20.h5"] and "differ" in why[first_20]
    assert res.n_bad == len(why) == 9
    assert_store_holds(tmp_path / "s.zarr", arch, absent=[t(20), t(30) + 60])
    g = st.open_store(tmp_path / "s.zarr")
    assert g.attrs["interval_s"] == gd.IV  # from the data, not assumed
    settings = g.attrs["source"]["settings"]
    assert g.attrs["source"]["format"] == "ODIM_H5" and settings["variable"] == "DBZH"
    assert settings["grid"]["shape"] == [size, size] and settings["zr"] == ZR().to_attrs()
    assert (
        "+proj=stere" in settings["grid"]["projdef"] and settings["crop"] is None and settings["block"] == 1
    )
    report = json.loads(Path(res.report_path).read_text())
    assert {b["path"] for b in report["bad_files"]} == set(why) and report["interval_s"] == gd.IV


def test_netcdf_archive_with_bad_files(tmp_path):
    arch = gd.netcdf_archive(tmp_path / "nc", 36, per_file=12, missing=[5])
    root, size = arch.root, arch.size
    t = lambda k: gd.T0_S + k * gd.IV  # noqa: E731
    files = sorted((root / "hourly").glob("*.nc"))
    good = files[0].read_bytes()
    (root / "bad").mkdir()
    (root / "bad" / "truncated.nc").write_bytes(good[: len(good) // 3])
    gd.write_netcdf_file(root / "bad" / "backwards.nc", [t(41), t(40)], size)  # time not increasing
    gd.write_netcdf_file(
        root / "bad" / "shifted.nc", [t(42)], size, GridSpec(shape=(size, size), y_top=-3_800_000.0)
    )
    gd.write_netcdf_file(root / "bad" / "overlap.nc", [t(10), t(11)], size)  # identical duplicates
    gd.add_netcdf(arch, [t(38), t(39) + 120])  # one time off the cadence
    del arch.frames[t(39) + 120], arch.masks[t(39) + 120]

    res = run(root, tmp_path / "s.zarr")
    why = reasons(res)
    assert "unreadable NetCDF" in why["bad/truncated.nc"]
    assert "not strictly increasing" in why["bad/backwards.nc"]
    assert "grid origin" in why["bad/shifted.nc"]
    first_hour = (root / "hourly" / f"radar_{gd.stamp(t(0))}.nc").relative_to(root).as_posix()
    assert why[first_hour].startswith("duplicate time") and why[first_hour].endswith("bad/overlap.nc is used")
    off = (root / "hourly" / f"radar_{gd.stamp(t(38))}.nc").relative_to(root).as_posix()
    assert "off the cadence" in why[off]
    assert_store_holds(tmp_path / "s.zarr", arch, absent=[t(39) + 120])
    g = st.open_store(tmp_path / "s.zarr")
    assert g.attrs["interval_s"] == gd.IV and g.attrs["source"]["settings"]["variable"] == "reflectivity"
    assert g.attrs["source"]["format"] == "CF-NetCDF"


def test_rain_rate_through_the_given_z_r_relation(tmp_path):
    """An ODIM RATE archive ingested with --zr 200,1.6: dBZ = 10 log10(200) + 16 log10(R), recorded."""
    root, size = tmp_path / "rate", 16
    root.mkdir()
    rng = np.random.default_rng(0)
    want = {}
    for k in range(6):
        time_s = gd.T0_S + k * 900  # an OPERA-like 15-minute cadence
        raw = rng.integers(0, 5000, (size, size)).astype(np.uint16)  # 0.01 mm/h steps; raw 0 = undetect
        raw[0] = 65535
        when = gd.stamp(time_s)
        write_odim(
            root / f"{when}.h5",
            [OdimData("RATE", raw, gain=0.01, offset=0.0, nodata=65535, undetect=0)],
            grid=GridSpec(shape=(size, size)),
            date=when[:8],
            time=when[8:],
        )
        rain = raw * 0.01
        with np.errstate(divide="ignore"):
            dbz = 10 * np.log10(200.0) + 16.0 * np.log10(rain)
        want[time_s] = np.where(raw == 65535, 0, np.clip(np.rint(255 * (dbz + 10) / 70), 0, 255)).astype(
            np.uint8
        )
    run(root, tmp_path / "s.zarr", zr="200,1.6")
    g = st.open_store(tmp_path / "s.zarr")
    assert g.attrs["interval_s"] == 900 and g.attrs["source"]["settings"]["zr"] == {
        "zr_a": 200.0,
        "zr_b": 1.6,
    }
    assert g.attrs["source"]["settings"]["variable"] == "RATE"
    frames, masks = st.read_frames(g, np.asarray(sorted(want)))
    for i, time_s in enumerate(sorted(want)):
        np.testing.assert_array_equal(frames[i], want[time_s])
        assert not masks[i][0].any() and masks[i][1:].all()


def _block_reference(pix: np.ndarray, mask: np.ndarray, box, n: int, zr: ZR) -> tuple[np.ndarray, np.ndarray]:
    """Crop, then average N x N blocks in rain rate over valid pixels, one block at a time."""
    x0, y0, x1, y1 = box
    pix, mask = pix[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    h, w = pix.shape[0] // n, pix.shape[1] // n
    out, valid = np.zeros((h, w), np.uint8), np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            p, m = (
                pix[i * n : (i + 1) * n, j * n : (j + 1) * n],
                mask[i * n : (i + 1) * n, j * n : (j + 1) * n],
            )
            if m.any():
                rain = (10 ** (gd.dbz(p[m]) / 10) / zr.a) ** (1 / zr.b)
                dbz = 10 * np.log10(zr.a * rain.mean() ** zr.b)
                out[i, j], valid[i, j] = np.clip(np.rint(255 * (dbz + 10) / 70), 0, 255), True
    return out, valid


@pytest.mark.parametrize("fmt", FORMATS)
def test_crop_block_and_z_r_are_applied_recorded_and_reused(fmt, tmp_path):
    arch = make_archive(fmt, tmp_path / "arch", 12)
    box, n, zr = (3, 5, 27, 29), 4, ZR(200.0, 1.6)
    res = run(arch.root, tmp_path / "s.zarr", crop="3,5,27,29", block=4, zr="200,1.6")
    g = st.open_store(tmp_path / "s.zarr")
    assert g[st.FRAMES].shape == (12, 6, 6)
    frames, masks = st.read_frames(g, arch.times_s())
    for i, time_s in enumerate(arch.times_s().tolist()):
        pix, mask = gd.pixels(time_s, arch.size)
        want, valid = _block_reference(pix, mask, box, n, zr)
        np.testing.assert_array_equal(masks[i], valid)
        assert (
            np.abs(frames[i].astype(int) - want).max() <= 1 and (frames[i] == want).mean() > 0.9
        )  # float rounding
    settings = st.Store.open(tmp_path / "s.zarr").source_settings
    assert settings["crop"] == list(box) and settings["block"] == n and settings["zr"] == zr.to_attrs()
    grid = settings["grid"]
    assert grid["shape"] == [6, 6] and grid["x_step"] == grid["y_step"] == 4 * arch.grid.step
    assert grid["x_left"] == pytest.approx(arch.grid.x_left + 3 * arch.grid.step)
    assert grid["y_top"] == pytest.approx(arch.grid.y_top - 5 * arch.grid.step)
    assert settings["source_grid"]["shape"] == [arch.size, arch.size]
    with pytest.raises(NowcastError, match="was ingested with crop"):
        run(arch.root, tmp_path / "s.zarr", crop="0,0,24,24")
    again = run(arch.root, tmp_path / "s.zarr")  # no options: the store's are used
    assert again.n_units_written == 0 and again.n_frames == res.n_frames
    with pytest.raises(NowcastError, match="does not fit"):
        run(arch.root, tmp_path / "other.zarr", crop="0,0,99,10")
    with pytest.raises(NowcastError, match="cannot be used with HKO-7"):
        ing.ingest(
            ing.IngestConfig(tmp_path / "arch", tmp_path / "h.zarr", source="hko7", block=2, workers=0)
        )


# --------------------------------------------------------------------------- format detection


def test_mixed_archive_is_an_error_naming_files_and_format_forces_one(tmp_path):
    root = tmp_path / "mixed"
    gd.odim_archive(root / "o", 6)
    gd.netcdf_archive(root / "n", 6)
    with pytest.raises(
        NowcastError,
        match=r"mixes archive formats: 6 ODIM_H5 file\(s\) \(o/.*\.h5.*1 CF-NetCDF "
        r"file\(s\) \(n/hourly/radar_.*\.nc\)",
    ):
        run(root, tmp_path / "s.zarr")
    res = run(root, tmp_path / "s.zarr", source="odim")
    assert res.n_frames == 6 and list(reasons(res)) == [f"n/hourly/radar_{gd.stamp(gd.T0_S)}.nc"]
    assert detect_format(root / "o").name == "odim" and detect_format(root / "n").name == "netcdf"
    with pytest.raises(NowcastError, match="holds frames of a ODIM_H5 archive"):
        run(root / "n", tmp_path / "s.zarr")


# --------------------------------------------------------------------------- resume, append, Dask


@pytest.mark.parametrize("fmt", FORMATS)
def test_kill_and_resume_is_byte_identical(fmt, tmp_path):
    arch = make_archive(fmt, tmp_path / "arch", 64, missing=[10])
    (arch.root / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n broken")  # bad files are resumed too
    ref = run(arch.root, tmp_path / "ref.zarr", chunk_frames=1, shard_frames=4, source=fmt)
    store = tmp_path / "killed.zarr"
    script = slow_ingest_script("pipeline.sources.gridded:GridSource._to_frame", 0.05, source=fmt)
    n_done = kill_after_units(script, [arch.root, store], store, 4)
    assert 4 <= n_done < 16, "the kill must land mid-run"
    with pytest.raises(NowcastError, match="did not finish"):
        st.open_store(store)
    res = run(arch.root, store, chunk_frames=1, shard_frames=4, source=fmt)
    assert res.n_units_skipped >= n_done and res.n_units_written == 16 - res.n_units_skipped
    assert res.n_bad == ref.n_bad == 1
    assert tree_bytes(store) == tree_bytes(tmp_path / "ref.zarr")
    assert_store_holds(store, arch)


@pytest.mark.parametrize("fmt", FORMATS)
def test_grown_archive_appends_and_reruns_are_byte_identical(fmt, tmp_path):
    arch = make_archive(fmt, tmp_path / "arch", 20)
    first = run(arch.root, tmp_path / "s.zarr")
    assert first.n_frames == 20
    snapshot = tree_bytes(tmp_path / "s.zarr")
    again = run(arch.root, tmp_path / "s.zarr")
    assert again.n_units_written == 0 and tree_bytes(tmp_path / "s.zarr") == snapshot
    new = [gd.T0_S + k * gd.IV for k in range(20, 30)]
    if fmt == "odim":
        for time_s in new:
            gd.add_odim(arch, time_s)
    else:
        gd.add_netcdf(arch, new)
    res = run(arch.root, tmp_path / "s.zarr")
    assert res.n_frames == 30 and res.n_new_frames == 10 and res.n_units_written == 2  # [16, 24) and [24, 30)
    assert_store_holds(tmp_path / "s.zarr", arch)
    fresh = run(arch.root, tmp_path / "fresh.zarr")
    assert fresh.n_frames == 30
    assert tree_bytes(tmp_path / "fresh.zarr") == tree_bytes(tmp_path / "s.zarr")


@pytest.mark.slow
def test_dask_local_cluster_and_external_scheduler(tmp_path, monkeypatch):
    """ODIM through a local cluster of 2 processes, NetCDF through an external scheduler: both byte-identical
    to the in-process ingest (the configured source travels to the workers)."""
    from dask.distributed import LocalCluster

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    odim = gd.odim_archive(tmp_path / "odim", 24)
    res = run(odim.root, tmp_path / "o.zarr", workers=2, crop="0,0,24,24", block=2)
    assert res.n_units_written == 3
    run(odim.root, tmp_path / "o_serial.zarr", crop="0,0,24,24", block=2)
    assert tree_bytes(tmp_path / "o.zarr") == tree_bytes(tmp_path / "o_serial.zarr")
    nc = gd.netcdf_archive(tmp_path / "nc", 24)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = run(nc.root, tmp_path / "n.zarr", scheduler=cluster.scheduler_address, workers=None)
    assert res.n_units_written == 3
    assert_store_holds(tmp_path / "n.zarr", nc)
    run(nc.root, tmp_path / "n_serial.zarr")
    assert tree_bytes(tmp_path / "n.zarr") == tree_bytes(tmp_path / "n_serial.zarr")


def test_sources_are_configured_by_name():
    odim = get_source("odim").configure(crop="1, 2, 3, 4", block=2, zr="200,1.6", variable="TH")
    assert (odim.crop, odim.block, odim.zr, odim.variable) == ((1, 2, 3, 4), 2, ZR(200.0, 1.6), "TH")
    for bad, message in (
        ({"crop": "1,2,3"}, "cannot read the crop box"),
        ({"block": 0}, "--block must be a whole number"),
        ({"zr": "200"}, "cannot read the Z-R relation"),
        ({"block": 1.5}, "--block must be a whole number"),
    ):
        with pytest.raises(NowcastError, match=message) as info:
            get_source("netcdf").configure(**bad)
        assert info.value.exit_code == 2
    assert get_source("odim").configure(**odim.settings()) == odim


def test_an_archive_without_a_usable_file_says_why(tmp_path):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "a.h5").write_bytes(b"\x89HDF\r\n\x1a\n not really")
    (root / "b.h5").write_bytes(b"nothing")
    with pytest.raises(
        NowcastError, match=r"none of the 2 file\(s\) under .* holds a usable ODIM_H5 frame \(e.g. a.h5: "
    ):
        run(root, tmp_path / "s.zarr", source="odim")
    assert not (tmp_path / "s.zarr").exists()
