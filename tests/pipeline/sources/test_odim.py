"""ODIM_H5 reader: values, quantities, time, grid, bad files; cross-checked against pysteps' reader."""

from __future__ import annotations

import math
import warnings

import h5py
import numpy as np
import pytest

from pipeline.sources import odim
from pipeline.sources.grid import ZR
from tests.pipeline.sources._files import LAEA, GridSpec, OdimData, epoch_s, write_odim

H, W = 12, 16


def dbzh_raw(seed: int = 0) -> np.ndarray:
    """uint8 DBZH raw values with nodata (255) and undetect (0) pixels."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(1, 255, size=(H, W), dtype=np.uint8)
    raw[0, :5] = 255  # nodata
    raw[3, 2:9] = 0  # undetect
    raw[-1, -1] = 255
    return raw


def rate_raw(seed: int = 1) -> np.ndarray:
    """uint16 raw rain rates (gain 0.01 mm/h) with nodata (65535) and undetect (0)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(1, 10_000, size=(H, W), dtype=np.uint16)
    raw[5, :] = 65535
    raw[:, 7] = 0
    return raw


def reference_values(raw, gain, offset, nodata, undetect):
    """Slow per-pixel reference of the ODIM scaling: (value or None for nodata or 'undetect')."""
    out = []
    for row in np.asarray(raw).tolist():
        out_row = []
        for r in row:
            if nodata is not None and r == nodata:
                out_row.append(None)
            elif undetect is not None and r == undetect:
                out_row.append("undetect")
            else:
                out_row.append(offset + gain * r)
        out.append(out_row)
    return out


def assert_dbz_matches_reference(frame, reference, to_dbz=lambda v: v):
    for i, row in enumerate(reference):
        for j, ref in enumerate(row):
            if ref is None:
                assert not frame.mask[i, j] and math.isnan(frame.dbz[i, j])
            elif ref == "undetect":
                assert frame.mask[i, j] and frame.dbz[i, j] == -math.inf
            else:
                assert frame.mask[i, j]
                assert frame.dbz[i, j] == pytest.approx(to_dbz(ref), abs=1e-4)


@pytest.mark.parametrize("level", ["data", "dataset"])
def test_dbzh_scaled_with_gain_offset_nodata_undetect(tmp_path, level):
    raw = dbzh_raw()
    path = write_odim(tmp_path / "a.h5", [OdimData("DBZH", raw, gain=0.5, offset=-32.0, level=level)])
    frame = odim.read_frame(path)
    assert frame.ok, frame.reason
    assert frame.quantity == "DBZH"
    assert frame.dbz.dtype == np.float32 and frame.dbz.shape == (H, W) and frame.mask.dtype == bool
    assert_dbz_matches_reference(frame, reference_values(raw, 0.5, -32.0, 255, 0))


def test_data_level_what_overrides_dataset_level(tmp_path):
    raw = dbzh_raw()
    path = write_odim(
        tmp_path / "a.h5",
        [OdimData("DBZH", raw, gain=0.5, offset=-30.0, level="split", dataset_offset=-32.0)],
    )
    frame = odim.read_frame(path)
    assert_dbz_matches_reference(frame, reference_values(raw, 0.5, -30.0, 255, 0))
    assert frame.dbz[1, 1] == pytest.approx(-30.0 + 0.5 * float(raw[1, 1]))


def test_no_nodata_or_undetect_attributes_means_every_pixel_is_a_value(tmp_path):
    raw = dbzh_raw()
    path = write_odim(
        tmp_path / "a.h5", [OdimData("DBZH", raw, gain=0.5, offset=-32.0, nodata=None, undetect=None)]
    )
    frame = odim.read_frame(path)
    assert frame.mask.all()
    np.testing.assert_allclose(frame.dbz, -32.0 + 0.5 * raw.astype(np.float64), atol=1e-5)


def test_float_data_with_nan_is_masked(tmp_path):
    raw = np.full((H, W), 20.0)
    raw[2, 3] = np.nan
    path = write_odim(tmp_path / "a.h5", [OdimData("TH", raw, nodata=-9999.0, undetect=-8888.0)])
    frame = odim.read_frame(path)
    assert frame.quantity == "TH"
    assert not frame.mask[2, 3] and frame.mask.sum() == H * W - 1
    assert np.all(frame.dbz[frame.mask] == 20.0)


# Z-R hand-computed table: dBZ = 10 log10(a) + 10 b log10(R).
#   HKO-7 (58.53, 1.56): 10 log10(58.53) = 17.67379
#   Marshall-Palmer (200, 1.6): 10 log10(200) = 23.01030
ZR_TABLE = [
    (ZR(), 0.1, 2.07379),
    (ZR(), 1.0, 17.67379),
    (ZR(), 10.0, 33.27379),
    (ZR(), 100.0, 48.87379),
    (ZR(200.0, 1.6), 0.5, 18.19382),
    (ZR(200.0, 1.6), 1.0, 23.01030),
    (ZR(200.0, 1.6), 10.0, 39.01030),
]


@pytest.mark.parametrize("zr,rain_mm_h,dbz", ZR_TABLE)
def test_rate_goes_to_dbz_through_the_zr_relation(tmp_path, zr, rain_mm_h, dbz):
    raw = np.full((H, W), round(rain_mm_h / 0.01), dtype=np.uint16)
    raw[0, 0] = 0  # undetect: no rain
    raw[0, 1] = 65535  # nodata
    path = write_odim(tmp_path / "r.h5", [OdimData("RATE", raw, gain=0.01, nodata=65535.0, undetect=0.0)])
    frame = odim.read_frame(path, zr=zr)
    assert frame.quantity == "RATE"
    assert frame.dbz[5, 5] == pytest.approx(dbz, abs=1e-4)
    assert frame.dbz[0, 0] == -np.inf and frame.mask[0, 0]
    assert np.isnan(frame.dbz[0, 1]) and not frame.mask[0, 1]


def test_negative_rain_rate_counts_as_no_rain(tmp_path):
    raw = np.full((H, W), 10, dtype=np.uint16)
    path = write_odim(tmp_path / "r.h5", [OdimData("RATE", raw, gain=0.01, offset=-0.5, undetect=None)])
    frame = odim.read_frame(path)
    assert frame.mask.all() and np.all(frame.dbz == -np.inf)


# ACRR periods, hand-computed: (start, end, accumulation mm, rain rate mm/h)
ACRR_TABLE = [
    ("20240601114500", "20240601120000", 1.0, 4.0),  # 15 min (OPERA)
    ("20240601110000", "20240601120000", 2.5, 2.5),  # 1 h
    ("20240531235500", "20240601000500", 0.5, 3.0),  # 10 min across midnight
    ("20240601115500", "20240601120000", 0.25, 3.0),  # 5 min (DWD)
]


@pytest.mark.parametrize("start,end,acc_mm,rain_mm_h", ACRR_TABLE)
def test_acrr_is_divided_by_its_accumulation_period(tmp_path, start, end, acc_mm, rain_mm_h):
    raw = np.full((H, W), round(acc_mm / 0.01), dtype=np.uint16)
    path = write_odim(
        tmp_path / "acrr.h5",
        [OdimData("ACRR", raw, gain=0.01, nodata=65535.0, undetect=0.0, start=start, end=end, product="RR")],
    )
    zr = ZR(200.0, 1.6)
    frame = odim.read_frame(path, zr=zr)
    assert frame.ok, frame.reason
    assert frame.dbz[4, 4] == pytest.approx(10 * math.log10(200.0) + 16.0 * math.log10(rain_mm_h), abs=1e-4)


def test_acrr_without_a_positive_period_is_bad(tmp_path):
    raw = np.full((H, W), 100, dtype=np.uint16)
    path = write_odim(
        tmp_path / "acrr.h5", [OdimData("ACRR", raw, gain=0.01, start="20240601120000", end="20240601120000")]
    )
    frame = odim.read_frame(path)
    assert not frame.ok and "accumulation period" in frame.reason


def test_quantity_preference_and_explicit_choice(tmp_path):
    path = write_odim(
        tmp_path / "multi.h5",
        [
            OdimData("RATE", rate_raw(), gain=0.01, nodata=65535.0),
            OdimData("DBZH", dbzh_raw(), gain=0.5, offset=-32.0),
        ],
    )
    assert odim.read_frame(path).quantity == "DBZH"  # reflectivity first by default
    assert odim.scan_file(path).quantity == "DBZH"
    assert odim.read_frame(path, quantity="RATE").quantity == "RATE"
    missing = odim.read_frame(path, quantity="TH")
    assert not missing.ok and "no TH data" in missing.reason and "DBZH, RATE" in missing.reason
    assert not odim.read_frame(path, quantity="VRAD").ok


def test_time_is_the_nominal_time_from_metadata_not_the_file_name(tmp_path):
    path = write_odim(
        tmp_path / "T_PAAH21_C_EUOC_20000101000000.h5",
        [OdimData("DBZH", dbzh_raw())],
        date="20240601",
        time="121500",
    )
    assert odim.read_frame(path).time_s == epoch_s("20240601121500")
    assert odim.scan_file(path).times_s == (epoch_s("20240601121500"),)


@pytest.mark.parametrize(
    "spec",
    [GridSpec(), GridSpec(projdef=LAEA, x_left=1_000_000.0, y_top=3_000_000.0, step=1000.0, shape=(H, W))],
)
def test_grid_from_where(tmp_path, spec):
    path = write_odim(tmp_path / "g.h5", [OdimData("DBZH", dbzh_raw())], grid=spec)
    grid = odim.read_frame(path).grid
    assert grid.shape == (H, W)
    assert grid.x_left == pytest.approx(spec.x_left, abs=1e-3)
    assert grid.y_top == pytest.approx(spec.y_top, abs=1e-3)
    assert (grid.x_step, grid.y_step) == (spec.step, spec.step)
    assert grid.projdef == spec.projdef
    corners = grid.corners_lonlat()
    for key, value in spec.corners_lonlat().items():
        assert corners[key] == pytest.approx(value, abs=1e-9)
    assert odim.scan_file(path).grid == grid


def test_first_row_is_north(tmp_path):
    raw = np.zeros((H, W), dtype=np.uint8)
    raw[0, :] = 100  # northern edge, as ODIM stores it
    frame = odim.read_frame(write_odim(tmp_path / "n.h5", [OdimData("DBZH", raw, gain=0.5, offset=-32.0)]))
    assert np.all(frame.dbz[0] == 18.0) and np.all(frame.dbz[1:] == -np.inf)
    assert frame.grid.y_centres()[0] > frame.grid.y_centres()[-1]


def test_image_object_and_float_sizes(tmp_path):
    path = write_odim(tmp_path / "i.h5", [OdimData("DBZH", dbzh_raw())], obj="IMAGE", where_ints=False)
    assert odim.read_frame(path).ok


# ---------------------------------------------------------------------------------------------------
# Cross-check with pysteps.io.importers.import_odim_hdf5 (an independent reader of the same file)
# ---------------------------------------------------------------------------------------------------


def _pysteps_odim(path, qty):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pysteps.io.importers import import_odim_hdf5

        return import_odim_hdf5(str(path), qty=qty)


@pytest.mark.parametrize("level", ["data", "dataset"])
@pytest.mark.parametrize(
    "grid",
    [GridSpec(), GridSpec(projdef=LAEA, x_left=1_000_000.0, y_top=3_000_000.0, step=1000.0, shape=(H, W))],
)
def test_matches_pysteps_reader(tmp_path, level, grid):
    path = write_odim(
        tmp_path / "x.h5",
        [
            OdimData("DBZH", dbzh_raw(3), gain=0.5, offset=-32.0, level=level),
            OdimData("RATE", rate_raw(4), gain=0.01, nodata=65535.0, level=level),
            OdimData(
                "ACRR",
                rate_raw(5),
                gain=0.01,
                nodata=65535.0,
                level=level,
                start="20240601114500",
                end="20240601120000",
                product="RR",
            ),
        ],
        grid=grid,
    )
    zr = ZR(200.0, 1.6)

    ours = odim.read_frame(path, quantity="DBZH", zr=zr)
    theirs, _, meta = _pysteps_odim(path, "DBZH")
    detected = ours.mask & np.isfinite(ours.dbz)
    np.testing.assert_array_equal(ours.mask, np.isfinite(theirs))
    np.testing.assert_allclose(ours.dbz[detected], theirs[detected], atol=1e-5)
    assert np.all(theirs[ours.mask & ~detected] == -30.0)  # pysteps' undetect value; ours is -inf dBZ

    for qty, per_hour in (("RATE", 1.0), ("ACRR", 4.0)):  # 15-min accumulation: mm -> mm/h is x4
        ours = odim.read_frame(path, quantity=qty, zr=zr)
        theirs, _, _ = _pysteps_odim(path, qty)
        np.testing.assert_array_equal(ours.mask, np.isfinite(theirs))
        np.testing.assert_allclose(
            zr.dbz_to_rain(ours.dbz[ours.mask]), theirs[ours.mask] * per_hour, rtol=1e-5
        )

    g = ours.grid
    assert meta["x1"] == pytest.approx(g.x_left, abs=1e-3) and meta["x2"] == pytest.approx(
        g.x_right, abs=1e-3
    )
    assert meta["y1"] == pytest.approx(g.y_bottom, abs=1e-3) and meta["y2"] == pytest.approx(
        g.y_top, abs=1e-3
    )
    assert (meta["xpixelsize"], meta["ypixelsize"]) == (g.x_step, g.y_step)
    assert meta["yorigin"] == "upper" and meta["projection"] == g.projdef


# ---------------------------------------------------------------------------------------------------
# Bad files: a reason, never an exception
# ---------------------------------------------------------------------------------------------------


def _good(tmp_path, name="good.h5", **kwargs):
    return write_odim(tmp_path / name, [OdimData("DBZH", dbzh_raw(), gain=0.5, offset=-32.0)], **kwargs)


def _edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def _truncated(tmp_path):
    path = _good(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not an HDF5 file\n")
    return path


def _replace_data(f, array):
    del f["dataset1/data1/data"]
    f["dataset1/data1"].create_dataset("data", data=array)


BAD_CASES = {
    "truncated": (_truncated, "unreadable ODIM_H5"),
    "not hdf5": (_text_file, "unreadable ODIM_H5"),
    "empty file": (lambda p: (p / "empty.h5").write_bytes(b"") or p / "empty.h5", "unreadable ODIM_H5"),
    "polar volume": (lambda p: _good(p, obj="PVOL"), "only 2-D Cartesian"),
    "no object": (
        lambda p: _edit(_good(p), lambda f: f["what"].attrs.__delitem__("object")),
        "only 2-D Cartesian",
    ),
    "missing quantity": (
        lambda p: write_odim(p / "q.h5", [OdimData("VRADH", dbzh_raw())]),
        "no DBZH or TH or RATE",
    ),
    "3-D data": (lambda p: _edit(_good(p), lambda f: _replace_data(f, np.zeros((2, H, W), np.uint8))), "2-D"),
    "size mismatch": (
        lambda p: _edit(_good(p), lambda f: _replace_data(f, np.zeros((H, W + 1), np.uint8))),
        "where/ysize x xsize",
    ),
    "string data": (
        lambda p: _edit(_good(p), lambda f: _replace_data(f, np.full((H, W), b"x"))),
        "not numbers",
    ),
    "bad date": (lambda p: _good(p, date="2024-06-01"), "YYYYMMDD"),
    "no date": (lambda p: _edit(_good(p), lambda f: f["what"].attrs.__delitem__("date")), "what date/time"),
    "no projdef": (lambda p: _edit(_good(p), lambda f: f["where"].attrs.__delitem__("projdef")), "projdef"),
    "bad projdef": (
        lambda p: _edit(_good(p), lambda f: f["where"].attrs.__setitem__("projdef", b"+proj=nonsense")),
        "not a projection",
    ),
    "no corners": (lambda p: _edit(_good(p), lambda f: f["where"].attrs.__delitem__("UR_lat")), "UR_lat"),
    "corners disagree": (
        lambda p: _edit(_good(p), lambda f: f["where"].attrs.__setitem__("xscale", 3000.0)),
        "the corners span",
    ),
    "no data array": (
        lambda p: _edit(_good(p), lambda f: f["dataset1/data1"].__delitem__("data")),
        "no 'data'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_give_a_reason(tmp_path, case):
    make, words = BAD_CASES[case]
    path = make(tmp_path)
    frame = odim.read_frame(path)
    info = odim.scan_file(path)
    assert not frame.ok and frame.dbz is None and frame.mask is None
    assert words in frame.reason, frame.reason
    assert not info.ok and info.times_s == () and words in info.reason
    assert odim.read_file(path)[0].reason == frame.reason


def test_frame_index_other_than_zero_is_bad(tmp_path):
    assert "one frame" in odim.read_frame(_good(tmp_path), 1).reason


def test_is_odim(tmp_path):
    assert odim.is_odim(_good(tmp_path))
    assert not odim.is_odim(_text_file(tmp_path))
    assert not odim.is_odim(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    assert not odim.is_odim(tmp_path / "plain.h5")


def test_scale_reference_loop():
    raw = np.array([[0, 1, 2], [254, 255, 7]], dtype=np.uint8)
    value, valid, undetected = odim.scale(raw, 0.5, -32.0, 255.0, 0.0)
    ref = reference_values(raw, 0.5, -32.0, 255, 0)
    for i in range(2):
        for j in range(3):
            if ref[i][j] is None:
                assert not valid[i, j] and np.isnan(value[i, j])
            elif ref[i][j] == "undetect":
                assert valid[i, j] and undetected[i, j]
            else:
                assert valid[i, j] and not undetected[i, j] and value[i, j] == ref[i][j]


@pytest.mark.parametrize(
    "quantity, dtype, gain, offset, nodata, undetect",
    [
        ("DBZH", np.uint8, 0.5, -32.0, 255.0, 0.0),
        ("RATE", np.uint16, 0.01, 0.0, 65535.0, 0.0),
        ("TH", np.int16, 0.01, 0.0, -32768.0, -32767.0),
    ],
)
def test_integer_images_through_the_level_table_equal_the_pixelwise_scaling(
    tmp_path, quantity, dtype, gain, offset, nodata, undetect
):
    """Large integer images are scaled through a table of every raw level: the same values, NaN, -inf
    and mask as scaling each pixel."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(5)
    raw = rng.integers(info.min, info.max, size=(600, 600), endpoint=True).astype(dtype)
    raw[0, :10] = nodata
    raw[1, :10] = undetect
    path = write_odim(
        tmp_path / "big.h5",
        [OdimData(quantity, raw[:H, :W], gain=gain, offset=offset, nodata=nodata, undetect=undetect)],
    )
    with h5py.File(path) as f:
        product = odim._Product(f, quantity)
        table_dbz, table_valid = product.to_dbz(raw, ZR(200.0, 1.6))
        pixel_dbz, pixel_valid = product._to_dbz(raw.astype(np.float64), ZR(200.0, 1.6))
    np.testing.assert_array_equal(table_valid, pixel_valid)
    np.testing.assert_array_equal(table_dbz, pixel_dbz)  # NaN and -inf in the same places too
    assert (
        table_dbz.dtype == np.float32
        and not table_valid[0, :10].any()
        and np.isneginf(table_dbz[1, :10]).all()
    )


# --------------------------------------------------------------------------- several datasets


def _expected_dbzh(raw, gain, offset):
    """Reference DBZH dBZ (NaN nodata 255, -inf undetect 0) written out per pixel."""
    values = [
        [v if isinstance(v, float) else math.nan for v in row]
        for row in reference_values(raw, gain, offset, 255, 0)
    ]
    out = np.array(values, dtype=np.float64)
    out[raw == 0] = -np.inf
    return out


def test_dataset_of_the_requested_quantity_not_the_first(tmp_path):
    """A file whose dataset1 is TH and dataset2 DBZH: the default (reflectivity DBZH first) and
    quantity="DBZH" read dataset2's values, quantity="TH" dataset1's."""
    th, dbzh = dbzh_raw(3), dbzh_raw(4)
    path = write_odim(
        tmp_path / "two.h5",
        [OdimData("TH", th, gain=0.5, offset=-32.0), OdimData("DBZH", dbzh, gain=0.4, offset=-30.0)],
    )
    for quantity, raw, gain, offset in (
        (None, dbzh, 0.4, -30.0),
        ("DBZH", dbzh, 0.4, -30.0),
        ("TH", th, 0.5, -32.0),
    ):
        frame = odim.read_frame(path, quantity=quantity)
        assert frame.ok and frame.quantity == (quantity or "DBZH"), frame.reason
        np.testing.assert_allclose(frame.dbz, _expected_dbzh(raw, gain, offset).astype(np.float32), rtol=1e-6)


def test_several_datasets_of_one_quantity(tmp_path):
    """Two DBZH datasets: the one whose period ends at the nominal time is read; when neither (or both)
    does, the file is bad with a reason naming them (not silently the first)."""
    early, late = dbzh_raw(5), dbzh_raw(6)
    path = write_odim(
        tmp_path / "periods.h5",
        [
            OdimData("DBZH", early, gain=0.5, offset=-32.0, start="20240601113000", end="20240601114500"),
            OdimData("DBZH", late, gain=0.5, offset=-32.0, start="20240601114500", end="20240601120000"),
        ],
    )
    frame = odim.read_frame(path)
    assert frame.ok, frame.reason
    np.testing.assert_allclose(frame.dbz, _expected_dbzh(late, 0.5, -32.0).astype(np.float32), rtol=1e-6)
    heights = write_odim(
        tmp_path / "heights.h5",
        [OdimData("DBZH", early, gain=0.5, offset=-32.0), OdimData("DBZH", late, gain=0.5, offset=-32.0)],
    )
    for result in (odim.read_frame(heights), odim.scan_file(heights)):
        assert not result.ok and "2 datasets hold DBZH" in result.reason
        assert "/dataset1/data1" in result.reason and "/dataset2/data1" in result.reason


# --------------------------------------------------------------------------- broken scaling, size guard


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ({"gain": 0.0}, "non-zero gain"),
        ({"gain": math.nan}, "non-zero gain"),
        ({"offset": math.inf}, "finite offset"),
        ({"gain": 1e30}, "the scaling is broken"),
    ],
)
def test_scaling_that_is_not_a_number_makes_the_file_bad(tmp_path, attrs, words):
    """gain 0 or NaN and an infinite offset are bad from the metadata (scan and read); a saturating gain
    (1e30: values no radar holds) is bad when read; none gives a frame marked valid."""
    path = _edit(_good(tmp_path), lambda f: f["dataset1/data1/what"].attrs.update(attrs))
    frame = odim.read_frame(path)
    assert not frame.ok and words in frame.reason, frame.reason
    if attrs.get("gain") != 1e30:
        assert words in odim.scan_file(path).reason


def test_huge_declared_dataset_is_refused_before_reading(tmp_path):
    """A few-KB ODIM file whose where/ and gzip dataset declare 40000 x 40000 is bad from its metadata:
    reading it allocates nothing near the frame's size (numpy allocations traced); the limit is
    configurable."""
    import tracemalloc

    big = GridSpec(shape=(40_000, 40_000), step=1000.0, x_left=-2e7, y_top=2e7, projdef=LAEA)
    path = _good(tmp_path, "bomb.h5")

    def inflate(f):
        del f["dataset1/data1/data"]
        f["dataset1/data1"].create_dataset(
            "data", shape=big.shape, dtype=np.uint8, chunks=(1000, 1000), compression="gzip"
        )
        f["where"].attrs.update({"projdef": np.bytes_(LAEA), "xsize": 40_000, "ysize": 40_000})
        f["where"].attrs.update({k: np.float64(v) for k, v in big.corners_lonlat().items()})

    _edit(path, inflate)
    assert path.stat().st_size < 100_000
    tracemalloc.start()
    try:
        frame = odim.read_frame(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not frame.ok and "40000x40000" in frame.reason and "refused before reading" in frame.reason
    assert peak < 50_000_000
    assert "refused before reading" in odim.scan_file(path).reason
    good = _good(tmp_path)
    assert odim.scan_file(good).ok and "limit of 100" in odim.scan_file(good, max_pixels=100).reason
