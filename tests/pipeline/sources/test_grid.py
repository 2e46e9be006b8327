"""Grid helpers: Z-R relation, crop, block average, grid equality and attributes, cadence."""

from __future__ import annotations

import json
import math

import numpy as np
import pyproj
import pytest

from pipeline.errors import NowcastError
from pipeline.sources.grid import ZR, Grid, RawFrame, block_average_dbz, block_frame, crop_frame, fit_frame
from pipeline.store import infer_cadence
from tests.pipeline.sources._files import LAEA, STERE
from trajgru import units


def stere_grid(shape=(12, 16), x_left=-200_000.0, y_top=-3_900_000.0, step=2000.0) -> Grid:
    return Grid.from_crs(pyproj.CRS.from_proj4(STERE), shape, x_left, y_top, step, step, projdef=STERE)


# ---------------------------------------------------------------------------------------------------
# Z-R
# ---------------------------------------------------------------------------------------------------

# Hand-computed: dBZ = 10 log10(a) + 10 b log10(R); 10 log10(58.53) = 17.67379, 10 log10(200) = 23.01030.
ZR_TABLE = [
    (ZR(), 1.0, 17.67379),
    (ZR(), 10.0, 33.27379),
    (ZR(), 0.1, 2.07379),
    (ZR(200.0, 1.6), 1.0, 23.01030),
    (ZR(200.0, 1.6), 10.0, 39.01030),
    (ZR(200.0, 1.6), 0.5, 18.19382),
    (ZR(300.0, 1.4), 10.0, 38.77121),
]  # 10 log10(300) = 24.77121, + 14


@pytest.mark.parametrize("zr,rain_mm_h,dbz", ZR_TABLE)
def test_zr_hand_table(zr, rain_mm_h, dbz):
    assert float(zr.rain_to_dbz(rain_mm_h)) == pytest.approx(dbz, abs=1e-5)
    assert float(zr.dbz_to_rain(dbz)) == pytest.approx(rain_mm_h, rel=1e-5)


def test_default_zr_is_the_one_of_trajgru_units():
    rain_mm_h = np.array([0.1, 0.5, 2.0, 5.0, 30.0, 150.0])
    np.testing.assert_allclose(ZR().rain_to_dbz(rain_mm_h), units.rainfall_to_dbz(rain_mm_h), rtol=1e-12)
    dbz = np.linspace(-10, 60, 15)
    np.testing.assert_allclose(ZR().dbz_to_rain(dbz), units.dbz_to_rainfall(dbz), rtol=1e-12)


def test_zr_zero_rain_is_minus_inf_and_back():
    assert ZR().rain_to_dbz(np.array([0.0]))[0] == -np.inf
    assert ZR().dbz_to_rain(np.array([-np.inf]))[0] == 0.0
    assert np.isnan(ZR().rain_to_dbz(np.array([np.nan]))[0])


def test_zr_parse():
    assert ZR.parse("200,1.6") == ZR(200.0, 1.6)
    assert ZR().to_attrs() == {"zr_a": 58.53, "zr_b": 1.56}
    for text in ("200", "a,b", "200,1.6,3", "-1,1.6", "200,0"):
        with pytest.raises(NowcastError, match=r"cannot read the Z-R relation|needs a > 0 and b > 0"):
            ZR.parse(text)


# ---------------------------------------------------------------------------------------------------
# Block average (in rain rate) against a naive loop
# ---------------------------------------------------------------------------------------------------


def naive_block_average(dbz, mask, n, a, b):
    """Per block: mean of R = (10^(dBZ/10) / a)^(1/b) over valid pixels, back to dBZ; None if none valid."""
    h, w = len(dbz) // n, len(dbz[0]) // n
    out = [[None] * w for _ in range(h)]
    for bi in range(h):
        for bj in range(w):
            rates = []
            for i in range(bi * n, bi * n + n):
                for j in range(bj * n, bj * n + n):
                    if mask[i][j]:
                        d = dbz[i][j]
                        rates.append(0.0 if d == -math.inf else (10 ** (d / 10) / a) ** (1 / b))
            if rates:
                mean = sum(rates) / len(rates)
                out[bi][bj] = -math.inf if mean == 0 else 10 * math.log10(a * mean**b)
    return out


@pytest.mark.parametrize("n,shape", [(2, (8, 12)), (3, (10, 11)), (4, (8, 8))])
@pytest.mark.parametrize("zr", [ZR(), ZR(200.0, 1.6)])
def test_block_average_matches_naive_loop(n, shape, zr):
    rng = np.random.default_rng(n)
    dbz = rng.uniform(-10.0, 60.0, size=shape).astype(np.float32)
    dbz[rng.random(shape) < 0.2] = -np.inf  # valid, no echo
    mask = rng.random(shape) > 0.3
    mask[:n, :n] = False  # a block with no valid pixel
    dbz[0, n : 2 * n] = -np.inf
    mask[0, n : 2 * n] = True
    mask[1:n, n : 2 * n] = False  # a block whose valid pixels hold no echo
    dbz = np.where(mask, dbz, np.nan).astype(np.float32)
    out_dbz, out_mask = block_average_dbz(dbz, mask, n, zr)
    ref = naive_block_average(dbz.astype(np.float64).tolist(), mask.tolist(), n, zr.a, zr.b)
    assert out_dbz.shape == out_mask.shape == (shape[0] // n, shape[1] // n)
    assert not out_mask[0, 0] and np.isnan(out_dbz[0, 0])
    assert out_mask[0, 1] and out_dbz[0, 1] == -np.inf
    for i, row in enumerate(ref):
        for j, value in enumerate(row):
            if value is None:
                assert not out_mask[i, j] and np.isnan(out_dbz[i, j])
            else:
                assert out_mask[i, j]
                assert out_dbz[i, j] == pytest.approx(value, abs=1e-4)


def test_block_average_hand_example():
    """Valid pixels at R = 1 and 3 mm/h, two masked: the block is R = 2 mm/h (not the dBZ mean)."""
    zr = ZR(200.0, 1.6)
    dbz = np.array([[zr.rain_to_dbz(1.0), zr.rain_to_dbz(3.0)], [np.nan, np.nan]])
    mask = np.array([[True, True], [False, False]])
    out, out_mask = block_average_dbz(dbz, mask, 2, zr)
    assert out_mask[0, 0]
    assert out[0, 0] == pytest.approx(23.01030 + 16 * math.log10(2.0), abs=1e-4)  # 27.82678 dBZ
    assert out[0, 0] > (dbz[0, 0] + dbz[0, 1]) / 2  # dBZ mean is lower


def test_block_grid_and_frame():
    grid = stere_grid((10, 11))
    frame = RawFrame(0, np.zeros((10, 11), np.float32), np.ones((10, 11), bool), grid, "DBZH")
    out = block_frame(frame, 3)
    assert out.dbz.shape == out.grid.shape == (3, 3)
    assert (out.grid.x_left, out.grid.y_top, out.grid.x_step, out.grid.y_step) == (
        grid.x_left,
        grid.y_top,
        6000.0,
        6000.0,
    )
    # each block centre is the mean of its pixels' centres
    assert out.grid.x_centres()[1] == pytest.approx(grid.x_centres()[3:6].mean())
    assert out.grid.y_centres()[2] == pytest.approx(grid.y_centres()[6:9].mean())
    assert block_frame(frame, 1) is frame
    with pytest.raises(NowcastError, match="block size"):
        block_frame(frame, 0)
    with pytest.raises(NowcastError, match="block size"):
        block_frame(frame, 11)


# ---------------------------------------------------------------------------------------------------
# Crop
# ---------------------------------------------------------------------------------------------------


def test_crop_arrays_and_grid():
    grid = stere_grid((12, 16))
    dbz = np.arange(12 * 16, dtype=np.float32).reshape(12, 16)
    mask = dbz % 7 != 0
    frame = RawFrame(5, dbz, mask, grid, "DBZH")
    out = crop_frame(frame, (2, 3, 10, 8))  # x0, y0, x1, y1
    np.testing.assert_array_equal(out.dbz, dbz[3:8, 2:10])
    np.testing.assert_array_equal(out.mask, mask[3:8, 2:10])
    assert out.grid.shape == (5, 8)
    np.testing.assert_allclose(out.grid.x_centres(), grid.x_centres()[2:10])
    np.testing.assert_allclose(out.grid.y_centres(), grid.y_centres()[3:8])
    assert out.time_s == 5 and frame.dbz.shape == (12, 16)


@pytest.mark.parametrize(
    "box", [(0, 0, 17, 12), (0, 0, 16, 13), (5, 0, 5, 12), (-1, 0, 4, 4), (0, 0, 4), "a,b,c,d"]
)
def test_crop_box_outside_the_grid_is_a_user_error(box):
    grid = stere_grid((12, 16))
    frame = RawFrame(0, np.zeros((12, 16), np.float32), np.ones((12, 16), bool), grid)
    with pytest.raises(NowcastError, match="crop box"):
        crop_frame(frame, box)


def test_bad_frames_pass_through_crop_and_block():
    bad = RawFrame.bad("broken")
    assert crop_frame(bad, (0, 0, 1, 1)) is bad and block_frame(bad, 2) is bad
    assert fit_frame(bad, stere_grid(), (0, 0, 1, 1), 2).reason == "broken"


def test_fit_frame_crops_blocks_then_checks_the_grid():
    grid = stere_grid((12, 16))
    frame = RawFrame(0, np.zeros((12, 16), np.float32), np.ones((12, 16), bool), grid, "DBZH")
    target = grid.crop((4, 2, 12, 10)).block(2)
    assert fit_frame(frame, target, (4, 2, 12, 10), 2).ok
    moved = RawFrame(0, frame.dbz, frame.mask, stere_grid((12, 16), x_left=-198_000.0), "DBZH")
    out = fit_frame(moved, target, (4, 2, 12, 10), 2)
    assert not out.ok and "origin" in out.reason and out.time_s == 0


# ---------------------------------------------------------------------------------------------------
# Grid equality and attributes
# ---------------------------------------------------------------------------------------------------


def test_grid_difference():
    grid = stere_grid()
    assert grid.matches(stere_grid())
    assert "12x17" in grid.difference(stere_grid((12, 17)))
    assert "origin" in grid.difference(stere_grid(x_left=-199_000.0))
    assert grid.matches(stere_grid(x_left=-200_000.0 + 1e-3))  # within 1e-3 pixel
    assert "pixel size" in grid.difference(stere_grid(step=2001.0))
    other = Grid.from_crs(
        pyproj.CRS.from_proj4(LAEA), grid.shape, grid.x_left, grid.y_top, grid.x_step, grid.y_step
    )
    assert "projection" in grid.difference(other)


def test_grid_matches_itself_through_cf_parameters_without_wkt():
    grid = stere_grid()
    _, cf = grid.to_cf()
    cf.pop("crs_wkt")
    again = Grid.from_crs(
        pyproj.CRS.from_cf(cf), grid.shape, grid.x_left, grid.y_top, grid.x_step, grid.y_step
    )
    assert not again.crs.equals(grid.crs)  # pyproj sees different WKT (axis names) ...
    assert grid.matches(again)  # ... for the same projection


def test_grid_attrs_round_trip_through_json():
    grid = stere_grid()
    attrs = json.loads(json.dumps(grid.to_attrs()))
    assert Grid.from_attrs(attrs) == grid
    assert attrs["xy_unit"] == "m" and attrs["shape"] == [12, 16]
    for key in ("LL_lon", "LL_lat", "UL_lon", "UL_lat", "UR_lon", "UR_lat", "LR_lon", "LR_lat"):
        assert isinstance(attrs[key], float)


def test_grid_to_cf_polar_stereographic_has_the_cf_required_origin():
    name, attrs = stere_grid().to_cf()
    assert name == "polar_stereographic"
    assert attrs["latitude_of_projection_origin"] == 90.0 and attrs["standard_parallel"] == 60.0
    assert "crs_wkt" in attrs


# ---------------------------------------------------------------------------------------------------
# Cadence
# ---------------------------------------------------------------------------------------------------

T0 = 1_717_243_200  # 2024-06-01T12:00:00Z, on every cadence below


@pytest.mark.parametrize("interval_s", [360, 900, 300])  # HKO-7, OPERA, DWD
def test_cadence_with_gaps_and_stray_times(interval_s):
    times = T0 + interval_s * np.array([0, 1, 2, 3, 5, 6, 9, 10, 11, 12, 20])
    stray = np.array([T0 + interval_s * 4 + 37, T0 + interval_s * 7 + 120])
    cadence = infer_cadence(np.concatenate([stray, times[::-1], times[:2]]))  # any order, duplicates
    assert cadence.interval_s == interval_s
    assert cadence.phase_s == 0
    assert cadence.off_times_s.tolist() == sorted(stray.tolist())
    assert cadence.on_cadence(times).all() and not cadence.on_cadence(stray).any()


def test_cadence_phase_and_tie():
    times = T0 + 30 + 300 * np.arange(6)
    cadence = infer_cadence(times)
    assert (cadence.interval_s, cadence.phase_s, cadence.off_times_s.size) == (300, 30, 0)
    assert infer_cadence(np.array([0, 300, 600, 1200, 1800])).interval_s == 300  # 300 x2 vs 600 x2: smaller


def test_cadence_needs_two_times_unless_the_interval_is_given():
    with pytest.raises(NowcastError, match="at least two"):
        infer_cadence(np.array([T0, T0]))
    assert infer_cadence(np.array([T0]), interval_s=900).off_times_s.size == 0


def test_cadence_with_a_known_interval_reports_off_times():
    times = np.array([T0, T0 + 300, T0 + 600, T0 + 660])  # 5-min data checked against a 10-min store
    cadence = infer_cadence(times, interval_s=600)
    assert cadence.interval_s == 600 and cadence.phase_s == 0
    assert cadence.off_times_s.tolist() == [T0 + 300, T0 + 660]
