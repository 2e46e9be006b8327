"""CF-NetCDF reader and forecast writer: values, units, time and calendars, grid and orientation, bad
files; cross-checked against plain netCDF4, the ODIM reader and pysteps' NetCDF importer."""

from __future__ import annotations

import math
import warnings

import h5py
import netCDF4
import numpy as np
import pyproj
import pytest
import xarray as xr

from pipeline.errors import NowcastError
from pipeline.sources import netcdf, odim
from pipeline.sources.grid import ZR, Grid
from tests.pipeline.sources._files import (
    LAEA,
    STERE,
    CfSpec,
    GridSpec,
    OdimData,
    epoch_s,
    write_cf,
    write_odim,
)

H, W = 12, 16
T0 = "2024-06-01 12:00:00"
T0_S = epoch_s("20240601120000")


def dbz_field(n_times: int = 3, seed: int = 0) -> np.ndarray:
    """(T, H, W) dBZ, north-first, with NaN holes."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(-5.0, 55.0, size=(n_times, H, W)).round(2)
    values[:, 0, :4] = np.nan
    values[-1, 5, 5] = np.nan
    return values


def times_minutes(n: int = 3, step: int = 5) -> np.ndarray:
    return np.arange(n) * float(step)


def test_reflectivity_north_up_with_times_and_mask(tmp_path):
    values = dbz_field()
    path = write_cf(tmp_path / "a.nc", CfSpec(values, times_minutes(), time_units=f"minutes since {T0}"))
    frames = netcdf.read_file(path)
    assert [f.time_s for f in frames] == [T0_S, T0_S + 300, T0_S + 600]
    for frame, expected in zip(frames, values):
        assert frame.ok, frame.reason
        assert frame.quantity == "reflectivity"
        assert frame.dbz.dtype == np.float32 and frame.dbz.shape == (H, W)
        np.testing.assert_array_equal(frame.mask, np.isfinite(expected))
        np.testing.assert_allclose(frame.dbz, expected.astype(np.float32), equal_nan=True)
    info = netcdf.scan_file(path)
    assert info.ok and info.times_s == (T0_S, T0_S + 300, T0_S + 600) and info.grid == frames[0].grid
    assert netcdf.read_frame(path, 2).time_s == T0_S + 600


def test_matches_plain_netcdf4(tmp_path):
    """Independent reader: netCDF4 with its own masking/unpacking, rows put north-first by the y values."""
    values = dbz_field(2, seed=3)
    path = write_cf(
        tmp_path / "p.nc",
        CfSpec(values, times_minutes(2), time_units=f"minutes since {T0}", packed=(0.01, 20.0)),
    )
    with netCDF4.Dataset(path) as nc:
        data = nc["reflectivity"][:]  # masked array, unpacked with scale_factor/add_offset
        y = nc["y"][:]
        times = netCDF4.num2date(nc["time"][:], nc["time"].units, only_use_cftime_datetimes=False)
    order = np.argsort(-y)  # north first
    expected = np.ma.filled(data.astype(np.float64), np.nan)[:, order, :]
    frames = netcdf.read_file(path)
    for frame, exp, when in zip(frames, expected, times):
        np.testing.assert_array_equal(frame.mask, np.isfinite(exp))
        np.testing.assert_allclose(frame.dbz[frame.mask], exp[frame.mask], rtol=1e-6)
        assert frame.time_s == epoch_s(when.strftime("%Y%m%d%H%M%S"))
    np.testing.assert_allclose(frames[0].dbz[frames[0].mask], values[0][np.isfinite(values[0])], atol=0.006)


# Rain-rate units -> factor to mm/h, hand-made: 1 kg m-2 of water is 1 mm.
UNITS_TABLE = [
    ("mm/h", 1.0),
    ("mm h-1", 1.0),
    ("mm hr-1", 1.0),
    ("kg m-2 h-1", 1.0),
    ("mm/min", 60.0),
    ("kg m-2 s-1", 3600.0),
    ("kg m**-2 s**-1", 3600.0),
    ("mm s-1", 3600.0),
    ("m s-1", 3.6e6),
    ("m/s", 3.6e6),
    ("mm/day", 1 / 24),
]


@pytest.mark.parametrize("units,to_mm_h", UNITS_TABLE)
def test_rain_rate_units_converted_then_zr(tmp_path, units, to_mm_h):
    rain_mm_h = np.array([0.0, 0.5, 1.0, 10.0, 100.0])
    values = np.zeros((1, H, W))
    values[0, 0, :5] = rain_mm_h / to_mm_h
    values[0, 1, 0] = np.nan
    values[0, 1, 1] = -1.0 / to_mm_h  # negative: no rain
    path = write_cf(
        tmp_path / "r.nc",
        CfSpec(
            values,
            [0.0],
            time_units=f"seconds since {T0}",
            name="rr",
            standard_name="rainfall_rate",
            units=units,
        ),
    )
    zr = ZR(200.0, 1.6)
    frame = netcdf.read_frame(path, zr=zr)
    assert frame.ok, frame.reason
    expected = [-math.inf, 18.19382, 23.01030, 39.01030, 55.01030]  # 10 log10(200) + 16 log10(R), by hand
    np.testing.assert_allclose(frame.dbz[0, :5], expected, atol=1e-3)
    assert not frame.mask[1, 0] and np.isnan(frame.dbz[1, 0])
    assert frame.mask[1, 1] and frame.dbz[1, 1] == -np.inf
    assert netcdf.rain_units_to_mm_h(units) == pytest.approx(to_mm_h)


def test_rain_recognised_by_units_without_standard_name(tmp_path):
    values = np.ones((1, H, W))
    path = write_cf(tmp_path / "r.nc", CfSpec(values, [0.0], name="precip", standard_name=None, units="mm/h"))
    frame = netcdf.read_frame(path)
    assert frame.quantity == "precip" and frame.dbz[0, 0] == pytest.approx(ZR().rain_to_dbz(1.0), abs=1e-5)


def test_linear_z_goes_to_dbz(tmp_path):
    values = np.full((1, H, W), 1000.0)
    values[0, 0, 0] = 0.0
    path = write_cf(tmp_path / "z.nc", CfSpec(values, [0.0], name="z", units="mm6 m-3"))
    frame = netcdf.read_frame(path)
    assert frame.dbz[1, 1] == pytest.approx(30.0) and frame.dbz[0, 0] == -np.inf and frame.mask[0, 0]


# Time decoding, hand-computed expectations: (units, calendar, values, epoch seconds)
TIME_TABLE = [
    (f"minutes since {T0}", "standard", [0.0, 6.0], [T0_S, T0_S + 360]),
    (f"seconds since {T0}", None, [0.0, 900.0], [T0_S, T0_S + 900]),  # no calendar: standard
    ("hours since 2024-06-01 14:00:00 +02:00", "gregorian", [0.0, 0.25], [T0_S, T0_S + 900]),
    (
        "days since 1970-01-01 00:00:00",
        "proleptic_gregorian",
        [19875.5, 19875.5 + 5 / 1440],
        [epoch_s("20240601120000"), epoch_s("20240601120500")],
    ),
    ("days since 2024-01-01", "noleap", [151.5], [epoch_s("20240601120000")]),  # no 29 Feb in noleap
    ("days since 2024-01-01", "360_day", [150.5], [epoch_s("20240601120000")]),  # 5 months of 30 days
    ("days since 2024-01-01", "julian", [0.0], [epoch_s("20240114000000")]),  # Julian is 13 days behind
    ("milliseconds since 2024-06-01T12:00:00Z", "standard", [300_000.4], [T0_S + 300]),
]


@pytest.mark.parametrize("units,calendar,values,expected", TIME_TABLE)
def test_time_decoding(tmp_path, units, calendar, values, expected):
    assert netcdf.decode_times_s(np.array(values), units, calendar or "standard").tolist() == expected
    field = np.zeros((len(values), H, W))
    path = write_cf(tmp_path / "t.nc", CfSpec(field, np.array(values), time_units=units, calendar=calendar))
    assert netcdf.scan_file(path).times_s == tuple(expected)


def test_scalar_time_coordinate(tmp_path):
    path = write_cf(
        tmp_path / "s.nc", CfSpec(dbz_field(1), [30.0], time_units=f"minutes since {T0}", time_dim=False)
    )
    frames = netcdf.read_file(path)
    assert len(frames) == 1 and frames[0].ok and frames[0].time_s == T0_S + 1800


def test_size_one_extra_dimension_is_squeezed(tmp_path):
    values = dbz_field(2)
    path = write_cf(tmp_path / "h.nc", CfSpec(values, times_minutes(2), extra_dim=1))
    frame = netcdf.read_frame(path, 1)
    np.testing.assert_allclose(frame.dbz, values[1].astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("y_ascending", [True, False])
def test_same_field_from_odim_and_netcdf_is_identical(tmp_path, y_ascending):
    """Both formats, same field and grid: identical dBZ, mask and grid, whatever the NetCDF row order."""
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
    spec = GridSpec(projdef=LAEA, x_left=1_000_000.0, y_top=3_000_000.0, step=2000.0, shape=(H, W))
    path_h5 = write_odim(
        tmp_path / "a.h5",
        [OdimData("DBZH", raw, gain=0.5, offset=-32.0, nodata=255.0, undetect=None)],
        grid=spec,
    )
    values = np.where(raw == 255, np.nan, -32.0 + 0.5 * raw)[None]
    path_nc = write_cf(
        tmp_path / "a.nc",
        CfSpec(values, [0.0], time_units=f"seconds since {T0}", grid=spec, y_ascending=y_ascending),
    )
    a, b = odim.read_frame(path_h5), netcdf.read_frame(path_nc)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.dbz, b.dbz)
    assert a.time_s == b.time_s == T0_S
    assert a.grid.matches(b.grid), a.grid.difference(b.grid)


def test_grid_from_grid_mapping(tmp_path):
    spec = GridSpec()
    frame = netcdf.read_frame(write_cf(tmp_path / "g.nc", CfSpec(dbz_field(1), [0.0], grid=spec)))
    g = frame.grid
    assert g.shape == (H, W)
    assert (g.x_left, g.y_top, g.x_step, g.y_step) == pytest.approx(
        (spec.x_left, spec.y_top, spec.step, spec.step)
    )
    assert g.crs.to_cf()["grid_mapping_name"] == "polar_stereographic"
    xy = pyproj.Transformer.from_crs("OGC:CRS84", pyproj.CRS.from_proj4(STERE), always_xy=True)
    corners = g.corners_lonlat()
    x, y = xy.transform(corners["UL_lon"], corners["UL_lat"])
    assert (x, y) == pytest.approx((spec.x_left, spec.y_top), abs=1e-3)


def test_crs_wkt_in_grid_mapping_and_km_coordinates(tmp_path):
    spec = GridSpec()
    path = write_cf(
        tmp_path / "k.nc", CfSpec(dbz_field(1), [0.0], grid=spec, xy_units="km", wkt_in_grid_mapping=True)
    )
    g = netcdf.read_frame(path).grid
    assert (g.x_left, g.y_top, g.x_step) == pytest.approx((spec.x_left, spec.y_top, spec.step))


def test_x_decreasing_is_flipped_west_to_east(tmp_path):
    values = dbz_field(1)
    path = write_cf(tmp_path / "x.nc", CfSpec(values, [0.0]))
    with netCDF4.Dataset(path, "a") as nc:
        nc["x"][:] = nc["x"][::-1]
        nc["reflectivity"][:] = nc["reflectivity"][:, :, ::-1]
    frame = netcdf.read_frame(path)
    np.testing.assert_allclose(frame.dbz, values[0].astype(np.float32), equal_nan=True)
    assert frame.grid.x_left == pytest.approx(GridSpec().x_left)


def test_lat_lon_grid_without_grid_mapping(tmp_path):
    path = tmp_path / "ll.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", 1)
        nc.createDimension("lat", 4)
        nc.createDimension("lon", 5)
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t[:] = f"minutes since {T0}", [0.0]
        lat = nc.createVariable("lat", "f8", ("lat",))
        lat.units, lat.standard_name, lat[:] = "degrees_north", "latitude", [50.0, 50.5, 51.0, 51.5]
        lon = nc.createVariable("lon", "f8", ("lon",))
        lon.units, lon.standard_name, lon[:] = "degrees_east", "longitude", [4.0, 4.5, 5.0, 5.5, 6.0]
        v = nc.createVariable("dbz", "f4", ("time", "lat", "lon"))
        v.units = "dBZ"
        v[:] = np.arange(20, dtype=np.float32).reshape(1, 4, 5)
    frame = netcdf.read_frame(path)
    assert frame.ok, frame.reason
    assert frame.grid.crs.is_geographic and frame.grid.xy_unit == "degrees"
    assert (frame.grid.x_left, frame.grid.y_top, frame.grid.x_step) == pytest.approx((3.75, 51.75, 0.5))
    assert frame.dbz[0, 0] == 15.0  # northernmost row first


# ---------------------------------------------------------------------------------------------------
# Bad files: a reason, never an exception
# ---------------------------------------------------------------------------------------------------


def _good(tmp_path, file_name="good.nc", **kwargs):
    spec = dict(values=dbz_field(3), times=times_minutes(3), time_units=f"minutes since {T0}")
    spec.update(kwargs)
    return write_cf(tmp_path / file_name, CfSpec(**spec))


def _truncated(tmp_path):
    path = _good(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _edit(path, fn):
    with netCDF4.Dataset(path, "a") as nc:
        fn(nc)
    return path


def _two_rain_variables(tmp_path):
    path = _good(tmp_path, file_name="rr.nc", name="rr", standard_name="rainfall_rate", units="mm/h")

    def add(nc):
        v = nc.createVariable("rr2", "f4", ("time", "y", "x"))
        v.units = "mm/h"

    return _edit(path, add)


def _irregular_x(nc):
    x = nc["x"][:]
    x[-1] += 700.0
    nc["x"][:] = x


BAD_CASES = {
    "truncated": (_truncated, "unreadable NetCDF"),
    "garbage": (lambda p: (p / "g.nc").write_bytes(b"CDF\x01garbage") or p / "g.nc", "unreadable NetCDF"),
    "not netcdf": (lambda p: (p / "t.nc").write_text("hello") or p / "t.nc", "unreadable NetCDF"),
    "no recognised variable": (
        lambda p: _good(p, standard_name=None, units="K"),
        "no reflectivity or rain-rate",
    ),
    "units not convertible": (
        lambda p: _good(p, standard_name="rainfall_rate", units="mm"),
        "has units 'mm'",
    ),
    "two candidates": (_two_rain_variables, "several variables"),
    "non-monotonic time": (lambda p: _good(p, times=np.array([0.0, 10.0, 5.0])), "not strictly increasing"),
    "repeated time": (lambda p: _good(p, times=np.array([0.0, 5.0, 5.0])), "not strictly increasing"),
    "bad time units": (lambda p: _good(p, time_units="minutes"), "no time"),
    "undecodable time": (lambda p: _good(p, time_units="fortnights since 2024-01-01"), "cannot decode time"),
    "360_day date not gregorian": (
        lambda p: _good(
            p, times=np.array([59.0, 59.5, 60.0]), calendar="360_day", time_units="days since 2024-01-01"
        ),
        "not a date of the Gregorian",
    ),
    "no grid mapping": (lambda p: _good(p, grid_mapping=False), "no grid_mapping"),
    "missing grid mapping variable": (
        lambda p: _edit(_good(p), lambda nc: nc["reflectivity"].setncattr("grid_mapping", "crs")),
        "not in the file",
    ),
    "bad grid mapping": (
        lambda p: _edit(
            _good(p), lambda nc: nc["polar_stereographic"].setncattr("grid_mapping_name", "nonsense")
        ),
        "cannot read the projection",
    ),
    "irregular x": (lambda p: _edit(_good(p), _irregular_x), "not regularly spaced"),
    "xy units": (lambda p: _good(p, xy_units="furlong"), "need a length"),
    "extra dimension": (lambda p: _good(p, extra_dim=2), "height=2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_give_a_reason(tmp_path, case):
    make, words = BAD_CASES[case]
    path = make(tmp_path)
    info = netcdf.scan_file(path)
    frames = netcdf.read_file(path)
    assert not info.ok and info.times_s == () and words in info.reason, info.reason
    assert len(frames) == 1 and not frames[0].ok and frames[0].reason == info.reason
    assert netcdf.read_frame(path, 0).reason == info.reason


def test_missing_named_variable_and_index_out_of_range(tmp_path):
    path = _good(tmp_path)
    assert "no variable 'rain'" in netcdf.read_frame(path, variable="rain").reason
    assert "frame 3 asked for" in netcdf.read_frame(path, 3).reason
    assert [f.ok for f in netcdf.read_frames(path, [2, 0, 5])] == [True, True, False]


def test_is_netcdf(tmp_path):
    assert netcdf.is_netcdf(_good(tmp_path))
    with netCDF4.Dataset(tmp_path / "c.nc", "w", format="NETCDF3_CLASSIC") as nc:
        nc.createDimension("x", 2)
    assert netcdf.is_netcdf(tmp_path / "c.nc")
    assert not netcdf.is_netcdf(
        write_odim(tmp_path / "o.h5", [OdimData("DBZH", np.zeros((12, 16), np.uint8))])
    )
    (tmp_path / "t.txt").write_text("x")
    assert not netcdf.is_netcdf(tmp_path / "t.txt")
    assert not netcdf.is_netcdf(tmp_path / "missing.nc")
    with h5py.File(tmp_path / "plain.h5", "w") as f:  # HDF5, but neither netCDF-4 nor ODIM_H5
        f["x"] = np.zeros(3)
    assert not netcdf.is_netcdf(tmp_path / "plain.h5")


# ---------------------------------------------------------------------------------------------------
# Forecast writer
# ---------------------------------------------------------------------------------------------------


def _forecast(grid_spec=GridSpec(), n_lead=4):
    grid = Grid.from_crs(
        pyproj.CRS.from_proj4(grid_spec.projdef),
        grid_spec.shape,
        grid_spec.x_left,
        grid_spec.y_top,
        grid_spec.step,
        grid_spec.step,
        projdef=grid_spec.projdef,
    )
    rng = np.random.default_rng(11)
    rain = rng.gamma(0.5, 2.0, size=(n_lead,) + grid_spec.shape).astype(np.float32)
    rain[:, 0, 0] = 0.0
    mask = np.ones(grid_spec.shape, dtype=bool)
    mask[2, 3] = False
    return grid, rain, mask, np.arange(1, n_lead + 1) * 360


@pytest.mark.parametrize("projdef", [STERE, LAEA])
def test_forecast_file_read_by_xarray(tmp_path, projdef):
    grid, rain, mask, lead_s = _forecast(GridSpec(projdef=projdef, x_left=1_000_000.0, y_top=3_000_000.0))
    path = netcdf.write_forecast(
        tmp_path / "f.nc", rain, grid, T0_S, lead_s, mask=mask, attrs={"institution": "test"}
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nc"]  # no temporary left
    with xr.open_dataset(path, decode_coords="all") as ds:
        p = ds["precip_intensity"]
        assert p.dims == ("time", "y", "x") and p.attrs["units"] == "mm h-1"
        assert p.attrs["standard_name"] == "rainfall_rate"
        expected = np.where(mask, rain, np.nan)
        np.testing.assert_allclose(p.values, expected, equal_nan=True)
        valid = (ds["time"].values - np.datetime64(T0)).astype("timedelta64[s]").astype(int)
        assert valid.tolist() == lead_s.tolist()
        assert ds["forecast_reference_time"].values == np.datetime64(T0)
        assert ds["lead_time"].values.tolist() == lead_s.tolist()
        np.testing.assert_allclose(ds["x"].values, grid.x_centres())
        np.testing.assert_allclose(ds["y"].values, grid.y_centres())
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["institution"] == "test"
        gm = ds[p.encoding.get("grid_mapping") or p.attrs["grid_mapping"]]
        assert pyproj.CRS.from_cf(gm.attrs).equals(grid.crs)
        lon, lat = pyproj.Transformer.from_crs(grid.crs, "OGC:CRS84", always_xy=True).transform(
            grid.x_centres()[5], grid.y_centres()[2]
        )
        assert (float(ds["lon"][2, 5]), float(ds["lat"][2, 5])) == pytest.approx((lon, lat), abs=1e-4)
    frames = netcdf.read_file(path, zr=ZR())  # our own reader reads it back
    assert [f.time_s for f in frames] == (T0_S + lead_s).tolist()
    assert frames[0].grid.matches(grid)
    np.testing.assert_allclose(
        ZR().dbz_to_rain(frames[1].dbz), np.where(mask, rain[1], np.nan), rtol=1e-5, equal_nan=True
    )


def test_forecast_file_read_by_pysteps(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pysteps.io.nowcast_importers import import_netcdf_pysteps
    grid, rain, mask, lead_s = _forecast()
    path = netcdf.write_forecast(tmp_path / "f.nc", rain, grid, T0_S, lead_s, mask=mask)
    precip, meta = import_netcdf_pysteps(str(path), onerror="raise")
    np.testing.assert_allclose(precip, np.where(mask, rain, np.nan), rtol=1e-6, equal_nan=True)
    assert meta["leadtimes"].tolist() == (lead_s / 60).tolist()
    assert meta["timestamps"][0].strftime("%Y-%m-%d %H:%M:%S") == "2024-06-01 12:06:00"
    assert (meta["x1"], meta["y1"], meta["x2"], meta["y2"]) == pytest.approx(
        (grid.x_left, grid.y_bottom, grid.x_right, grid.y_top)
    )
    assert meta["xpixelsize"] == grid.x_step and meta["unit"] == "mm/h"
    assert pyproj.CRS.from_proj4(meta["projection"]).equals(grid.crs) or Grid.from_crs(
        meta["projection"], grid.shape, grid.x_left, grid.y_top, grid.x_step, grid.y_step
    ).matches(grid)


def test_forecast_writer_refuses_to_replace_and_checks_shapes(tmp_path):
    grid, rain, mask, lead_s = _forecast()
    path = netcdf.write_forecast(tmp_path / "f.nc", rain, grid, T0_S, lead_s)
    with pytest.raises(NowcastError, match="exists"):
        netcdf.write_forecast(path, rain, grid, T0_S, lead_s)
    netcdf.write_forecast(path, rain * 2, grid, T0_S, lead_s, overwrite=True)
    with xr.open_dataset(path) as ds:
        np.testing.assert_allclose(ds["precip_intensity"].values, rain * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="must be"):
        netcdf.write_forecast(tmp_path / "g.nc", rain[:, :-1], grid, T0_S, lead_s)
    assert not (tmp_path / "g.nc").exists()


def test_values_outside_the_valid_range_are_masked(tmp_path):
    """valid_min/valid_max on a float variable, and valid_range in packed units on a packed one."""
    values = np.array([[[-40.0, -10.0, 20.0, 70.0, 95.0, np.nan]] * 2])
    grid = GridSpec(shape=(2, 6))
    path = write_cf(tmp_path / "f.nc", CfSpec(values, np.array([0.0]), grid=grid))
    with netCDF4.Dataset(path, "a") as nc:
        nc["reflectivity"].valid_min = np.float32(-32.0)
        nc["reflectivity"].valid_max = np.float32(80.0)
    frame = netcdf.read_frame(path)
    np.testing.assert_array_equal(frame.mask[0], [False, True, True, True, False, False])
    packed = write_cf(tmp_path / "p.nc", CfSpec(values, np.array([0.0]), grid=grid, packed=(0.5, 0.0)))
    with netCDF4.Dataset(packed, "a") as nc:
        nc["reflectivity"].valid_range = np.array([-64, 160], dtype=np.int16)  # -32 .. 80 dBZ packed
    frame = netcdf.read_frame(packed)
    np.testing.assert_array_equal(frame.mask[0], [False, True, True, True, False, False])
    np.testing.assert_allclose(frame.dbz[0, 1:4], [-10.0, 20.0, 70.0])


# --------------------------------------------------------------------------- accumulations


def _amounts(n_times: int = 2, seed: int = 5) -> np.ndarray:
    """(T, H, W) accumulations (mm), some zero, with NaN holes."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 4.0, size=(n_times, H, W)).round(2)
    values[:, 2, :3] = 0.0
    values[:, 0, :4] = np.nan
    return values


def _rain_dbz(rain_mm_h: np.ndarray) -> np.ndarray:
    """The reference: rain rate (mm/h) -> dBZ with Z = 58.53 R^1.56 written out (0 -> -inf)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(58.53 * rain_mm_h**1.56)


def _assert_rate(frame, amount_mm: np.ndarray, period_h: float) -> None:
    assert frame.ok, frame.reason
    np.testing.assert_array_equal(frame.mask, np.isfinite(amount_mm))
    expected = _rain_dbz(amount_mm[frame.mask] / period_h).astype(np.float32)
    np.testing.assert_allclose(frame.dbz[frame.mask], expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("standard_name", "units", "to_mm"),
    [
        ("precipitation_amount", "kg m-2", 1.0),
        ("lwe_thickness_of_precipitation_amount", "mm", 1.0),
        ("thickness_of_rainfall_amount", "m", 1000.0),
    ],
)
def test_accumulation_over_time_bounds_is_a_rate_at_the_period_end(tmp_path, standard_name, units, to_mm):
    """An accumulation with CF time bounds (time at the middle of each 10-minute period, as CF allows)
    becomes amount / period as rain rate, at the end of its period."""
    amounts = _amounts()
    mid = np.array([5.0, 15.0])
    spec = CfSpec(
        amounts / to_mm,
        mid,
        time_units=f"minutes since {T0}",
        name="precip",
        standard_name=standard_name,
        units=units,
        bounds=np.stack([mid - 5.0, mid + 5.0], axis=1),
    )
    path = write_cf(tmp_path / "acc.nc", spec)
    info = netcdf.scan_file(path)
    assert info.ok and info.times_s == (T0_S + 600, T0_S + 1200), info.reason
    for frame, amount in zip(netcdf.read_file(path), amounts):
        _assert_rate(frame, amount, 10 / 60)


@pytest.mark.parametrize("marked", [True, False])
def test_accumulation_with_scalar_valid_time_and_start_time(tmp_path, marked):
    """The BoM Rainfields layout: no time dimension, a scalar ``valid_time`` (standard_name time, or no
    standard name: the one scalar time besides start_time; not in the variable's coordinates) and a
    ``start_time``: one frame at valid_time, rate over the 6 minutes."""
    amounts = _amounts(1)
    spec = CfSpec(
        amounts,
        np.array([1800.0]),
        time_units=f"seconds since {T0}",
        name="precipitation",
        standard_name="precipitation_amount",
        units="kg m-2",
        time_dim=False,
        time_name="valid_time",
        time_coordinate=False,
        time_standard_name=marked,
        start_time=np.array([1440.0]),
        xy_units="km",
    )
    path = write_cf(tmp_path / "rf3.nc", spec)
    (frame,) = netcdf.read_file(path)
    assert frame.time_s == T0_S + 1800
    _assert_rate(frame, amounts[0], 0.1)


def test_accumulation_without_a_period_takes_the_cadence(tmp_path):
    """Without bounds or start_time, the period is the cadence given (the listing settles the archive's);
    with no cadence either, the frame is bad with the reason."""
    amounts = _amounts(3)
    spec = CfSpec(
        amounts,
        times_minutes(3, step=15),
        time_units=f"minutes since {T0}",
        name="rain",
        standard_name="lwe_thickness_of_precipitation_amount",
        units="mm",
    )
    path = write_cf(tmp_path / "a.nc", spec)
    for frame, amount in zip(netcdf.read_file(path, cadence_s=900), amounts):
        _assert_rate(frame, amount, 0.25)
    assert "period is unknown" in netcdf.read_frame(path).reason
    source = netcdf.NetcdfSource()
    listing = source.list_frames(tmp_path)
    assert listing.settled["cadence_s"] == 900
    frames = list(source.configure(**listing.settled).read_frames(tmp_path, listing.frames))
    assert all(frame.ok for frame in frames)


def test_grid_coordinates_in_km_and_m_give_one_grid(tmp_path):
    """The same grid written with x/y in km, in m and in 'kilometers' is one grid (metres in the store)."""
    values = dbz_field(1)
    grids = [
        netcdf.scan_file(write_cf(tmp_path / f"{u}.nc", CfSpec(values, times_minutes(1), xy_units=u))).grid
        for u in ("m", "km")
    ]
    path = write_cf(tmp_path / "long.nc", CfSpec(values, times_minutes(1), xy_units="km"))
    _edit(path, lambda nc: [nc[name].setncattr("units", "kilometers") for name in ("x", "y")])
    grids.append(netcdf.scan_file(path).grid)
    assert grids[0] is not None and grids[0].difference(grids[1]) is None
    assert grids[0].difference(grids[2]) is None and grids[0].x_step == GridSpec().step


# --------------------------------------------------------------------------- size guard


def _declared_bomb(path, size: int = 40_000):
    """A small NetCDF-4 file declaring a (size, size) float32 variable (no chunk written)."""
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("y", size)
        nc.createDimension("x", size)
        for name, axis in (("x", "X"), ("y", "Y")):
            coord = nc.createVariable(name, "f4", (name,))
            coord.setncatts({"standard_name": f"projection_{name}_coordinate", "units": "m", "axis": axis})
            coord[:] = np.arange(size, dtype=np.float32) * 1000.0
        gm = nc.createVariable("crs", "i4", ())
        gm.setncatts(pyproj.CRS.from_proj4(STERE).to_cf())
        t = nc.createVariable("time", "f8", ())
        t.setncatts({"standard_name": "time", "units": f"seconds since {T0}"})
        t.assignValue(0.0)
        var = nc.createVariable("dbz", "f4", ("y", "x"), zlib=True, chunksizes=(1000, 1000))
        var.setncatts({"units": "dBZ", "grid_mapping": "crs", "coordinates": "time"})
    return path


def test_huge_declared_frame_is_refused_before_reading(tmp_path):
    """A file declaring 40000 x 40000 float32 (6 GB) is bad from its metadata; reading it allocates
    nothing near the frame's size (numpy allocations traced), and the limit is configurable."""
    import tracemalloc

    path = _declared_bomb(tmp_path / "bomb.nc")
    assert path.stat().st_size < 2_000_000
    info = netcdf.scan_file(path)
    assert not info.ok and "refused before reading" in info.reason and "40000x40000" in info.reason
    tracemalloc.start()
    try:
        frame = netcdf.read_frame(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not frame.ok and "refused before reading" in frame.reason
    assert peak < 50_000_000
    small = write_cf(tmp_path / "small.nc", CfSpec(dbz_field(1), times_minutes(1)))
    assert netcdf.scan_file(small).ok
    assert "more than the limit of 100" in netcdf.scan_file(small, max_pixels=100).reason
    times = write_cf(tmp_path / "times.nc", CfSpec(dbz_field(3), times_minutes(3)))
    with netCDF4.Dataset(times) as nc:
        assert nc["reflectivity"].chunking() == [3, H, W]  # one chunk holds every time
    assert netcdf.scan_file(times, max_pixels=H * W).reason.startswith(
        f"variable reflectivity is stored in chunks of {3 * H * W:,} values"
    )
    assert netcdf.scan_file(times, max_pixels=3 * H * W).ok
