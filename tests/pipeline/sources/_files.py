"""Writers of ODIM_H5 and CF-NetCDF test files, written from the published specifications with h5py and
netCDF4 directly (independently of the readers under test).

ODIM_H5 v2.3 (EUMETNET OPERA, "ODIM_H5 information model"), 2-D Cartesian product:
    /                 attribute Conventions = "ODIM_H5/V2_3"
    /what             object (COMP | IMAGE), version ("H5rad 2.3"), date (YYYYMMDD), time (HHmmss), source
    /where            projdef (PROJ string), xsize, ysize (long), xscale, yscale (double, m),
                      LL_lon, LL_lat, UL_lon, UL_lat, UR_lon, UR_lat, LR_lon, LR_lat (double, degrees;
                      outer corners of the corner pixels)
    /how              (optional)
    /datasetN/what    product, startdate, starttime, enddate, endtime
                      [+ quantity, gain, offset, nodata, undetect]
    /datasetN/dataM/what   quantity, gain, offset, nodata, undetect (override the dataset level)
    /datasetN/dataM/data   the 2-D array, first row = northern edge; attributes CLASS = "IMAGE",
                           IMAGE_VERSION = "1.2"
Strings are fixed-length null-terminated ASCII; sizes are 64-bit integers; the rest doubles.

CF-1.8 NetCDF: a (time, y, x) variable with standard_name/units, a grid-mapping variable named by its
``grid_mapping`` attribute, x/y coordinate variables with axis/standard_name/units, a time coordinate
with units "<unit> since <date>" and a calendar.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pyproj

#: DWD/KNMI-like polar stereographic projection (ODIM projdef).
STERE = "+proj=stere +lat_0=90 +lon_0=10 +lat_ts=60 +a=6378137 +b=6356752 +x_0=0 +y_0=0 +units=m"
#: The OPERA composite's Lambert azimuthal equal-area projection.
LAEA = "+proj=laea +lat_0=55.0 +lon_0=10.0 +x_0=1950000.0 +y_0=-2100000.0 +units=m +ellps=WGS84"


@dataclass
class GridSpec:
    """A test grid: projection, top-left outer corner (m), pixel size (m), shape (H, W)."""

    projdef: str = STERE
    x_left: float = -200_000.0
    y_top: float = -3_900_000.0
    step: float = 2000.0
    shape: tuple[int, int] = (12, 16)

    def corners_lonlat(self) -> dict[str, float]:
        h, w = self.shape
        x_right, y_bottom = self.x_left + w * self.step, self.y_top - h * self.step
        inv = pyproj.Transformer.from_crs(pyproj.CRS.from_proj4(self.projdef), "OGC:CRS84", always_xy=True)
        out = {}
        for name, (x, y) in {
            "LL": (self.x_left, y_bottom),
            "UL": (self.x_left, self.y_top),
            "UR": (x_right, self.y_top),
            "LR": (x_right, y_bottom),
        }.items():
            lon, lat = inv.transform(x, y)
            out[f"{name}_lon"], out[f"{name}_lat"] = float(lon), float(lat)
        return out

    def x_centres(self) -> np.ndarray:
        return self.x_left + (np.arange(self.shape[1]) + 0.5) * self.step

    def y_centres(self) -> np.ndarray:
        """North-first (decreasing)."""
        return self.y_top - (np.arange(self.shape[0]) + 0.5) * self.step


@dataclass
class OdimData:
    """One /datasetN/dataM of an ODIM file.

    ``level`` says where quantity/gain/offset/nodata/undetect go: ``"data"`` (dataM/what),
    ``"dataset"`` (datasetN/what) or ``"split"`` (quantity, gain, nodata, undetect at the dataset
    level; ``offset`` at the data level, which overrides ``dataset_offset`` written at the dataset level).
    """

    quantity: str
    raw: np.ndarray
    gain: float = 1.0
    offset: float = 0.0
    nodata: float | None = 255.0
    undetect: float | None = 0.0
    level: str = "data"
    dataset_offset: float = 0.0
    start: str = "20240601114500"  # YYYYMMDDHHmmss
    end: str = "20240601120000"
    product: str = "PCAPPI"


def b(text: str) -> np.bytes_:
    """An ODIM string attribute: fixed-length ASCII."""
    return np.bytes_(text)


def write_odim(
    path: Path,
    datas: list[OdimData],
    *,
    grid: GridSpec = GridSpec(),
    date: str = "20240601",
    time: str = "120000",
    obj: str = "COMP",
    quality: bool = True,
    where_ints: bool = True,
) -> Path:
    """Write an ODIM_H5 v2.3 Cartesian product: one ``datasetN`` per entry of ``datas`` (data1 in each),
    plus a QIND quality field when ``quality``."""
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = b("ODIM_H5/V2_3")
        what = f.create_group("what")
        what.attrs.update(
            {
                "object": b(obj),
                "version": b("H5rad 2.3"),
                "date": b(date),
                "time": b(time),
                "source": b("ORG:247,CMT:nowcast test"),
            }
        )
        where = f.create_group("where")
        h, w = grid.shape
        size_type = np.int64 if where_ints else np.float64
        where.attrs.update(
            {
                "projdef": b(grid.projdef),
                "xsize": size_type(w),
                "ysize": size_type(h),
                "xscale": np.float64(grid.step),
                "yscale": np.float64(grid.step),
            }
        )
        where.attrs.update({k: np.float64(v) for k, v in grid.corners_lonlat().items()})
        f.create_group("how").attrs["software"] = b("nowcast tests")
        for n, spec in enumerate(datas, start=1):
            dataset = f.create_group(f"dataset{n}")
            d_what = dataset.create_group("what")
            d_what.attrs.update(
                {
                    "product": b(spec.product),
                    "startdate": b(spec.start[:8]),
                    "starttime": b(spec.start[8:]),
                    "enddate": b(spec.end[:8]),
                    "endtime": b(spec.end[8:]),
                }
            )
            data = dataset.create_group("data1")
            scaling = {
                "quantity": b(spec.quantity),
                "gain": np.float64(spec.gain),
                "offset": np.float64(spec.offset),
            }
            if spec.nodata is not None:
                scaling["nodata"] = np.float64(spec.nodata)
            if spec.undetect is not None:
                scaling["undetect"] = np.float64(spec.undetect)
            if spec.level == "data":
                data.create_group("what").attrs.update(scaling)
            elif spec.level == "dataset":
                d_what.attrs.update(scaling)
            else:  # split: the data level overrides the dataset level's offset
                d_what.attrs.update({**scaling, "offset": np.float64(spec.dataset_offset)})
                data.create_group("what").attrs["offset"] = np.float64(spec.offset)
            array = data.create_dataset("data", data=spec.raw, compression="gzip", compression_opts=6)
            array.attrs["CLASS"] = b("IMAGE")
            array.attrs["IMAGE_VERSION"] = b("1.2")
            if quality:
                q = data.create_group("quality1")
                q.create_group("what").attrs.update(
                    {"quantity": b("QIND"), "gain": np.float64(1 / 255), "offset": np.float64(0.0)}
                )
                q.create_dataset("data", data=np.full(spec.raw.shape, 200, dtype=np.uint8))
    return path


def epoch_s(text: str) -> int:
    """``YYYYMMDDHHmmss`` -> epoch seconds (UTC)."""
    return int(datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=UTC).timestamp())


@dataclass
class CfSpec:
    """What :func:`write_cf` writes."""

    values: np.ndarray  # (T, H, W) physical values, NaN = missing, north-first rows
    times: np.ndarray  # (T,) numbers in time_units
    time_units: str = "seconds since 1970-01-01 00:00:00"
    calendar: str | None = "standard"
    name: str = "reflectivity"
    standard_name: str | None = "equivalent_reflectivity_factor"
    units: str = "dBZ"
    grid: GridSpec = field(default_factory=GridSpec)
    y_ascending: bool = True  # store rows south -> north (y increasing), as many CF files do
    xy_units: str = "m"
    packed: tuple[float, float] | None = None  # (scale_factor, add_offset) into int16
    fill_value: float = -9999.0
    time_dim: bool = True  # False: a 2-D variable with a scalar time coordinate
    grid_mapping: bool = True
    wkt_in_grid_mapping: bool = False  # write crs_wkt beside the CF parameters
    extra_dim: int | None = None  # a "height" dimension of this size between time and y
    bounds: np.ndarray | None = None  # (T, 2) time bounds in time_units: a "time_bnds" variable
    start_time: np.ndarray | None = None  # (T,) a "start_time" variable in time_units (BoM Rainfields)
    time_name: str = "time"  # the time variable's name (BoM: valid_time)
    time_coordinate: bool = True  # a scalar time is named in the variable's ``coordinates``
    time_standard_name: bool = True  # the time variable has standard_name "time"


def write_cf(path: Path, spec: CfSpec) -> Path:
    """Write a CF-1.8 NetCDF-4 radar grid with netCDF4."""
    g = spec.grid
    h, w = g.shape
    values = np.asarray(spec.values, dtype=np.float64)
    x = g.x_centres()
    y = g.y_centres()
    if spec.y_ascending:
        y = y[::-1]
        values = values[:, ::-1, :]
    scale = 1000.0 if spec.xy_units == "km" else 1.0
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.Conventions = "CF-1.8"
        nc.title = "nowcast test radar grid"
        if spec.time_dim:
            nc.createDimension("time", len(spec.times))
        if spec.extra_dim:
            nc.createDimension("height", spec.extra_dim)
        nc.createDimension("y", h)
        nc.createDimension("x", w)
        tdims = ("time",) if spec.time_dim else ()
        t = nc.createVariable(spec.time_name, "f8", tdims)
        if spec.time_standard_name:
            t.standard_name = "time"
        t.units = spec.time_units
        if spec.calendar is not None:
            t.calendar = spec.calendar
        if spec.time_dim:
            t[:] = spec.times
        else:
            t.assignValue(spec.times[0])
        if spec.bounds is not None:
            nc.createDimension("nv", 2)
            t.bounds = "time_bnds"
            tb = nc.createVariable("time_bnds", "f8", tdims + ("nv",))
            tb[:] = spec.bounds if spec.time_dim else spec.bounds[0]
        if spec.start_time is not None:
            st = nc.createVariable("start_time", "f8", tdims)
            st.setncatts({"long_name": "accumulation start time", "units": spec.time_units})
            st[:] = spec.start_time if spec.time_dim else spec.start_time[0]
        xv = nc.createVariable("x", "f8", ("x",))
        xv.setncatts({"standard_name": "projection_x_coordinate", "units": spec.xy_units, "axis": "X"})
        xv[:] = x / scale
        yv = nc.createVariable("y", "f8", ("y",))
        yv.setncatts({"standard_name": "projection_y_coordinate", "units": spec.xy_units, "axis": "Y"})
        yv[:] = y / scale
        if spec.extra_dim:
            hv = nc.createVariable("height", "f8", ("height",))
            hv.setncatts({"standard_name": "height", "units": "m", "axis": "Z"})
            hv[:] = np.arange(spec.extra_dim) * 500.0
        if spec.grid_mapping:
            cf = pyproj.CRS.from_proj4(g.projdef).to_cf()
            if not spec.wkt_in_grid_mapping:
                cf.pop("crs_wkt", None)
            gm_name = cf["grid_mapping_name"]
            gm = nc.createVariable(gm_name, "i4", ())
            gm.setncatts(cf)
        dims = tdims + (("height",) if spec.extra_dim else ()) + ("y", "x")
        if spec.packed:
            var = nc.createVariable(spec.name, "i2", dims, fill_value=np.int16(-32768), zlib=True)
            var.scale_factor, var.add_offset = spec.packed
        else:
            var = nc.createVariable(spec.name, "f4", dims, fill_value=np.float32(spec.fill_value), zlib=True)
        if spec.standard_name:
            var.standard_name = spec.standard_name
        var.units = spec.units
        if spec.grid_mapping:
            var.grid_mapping = gm_name
        if not spec.time_dim and spec.time_coordinate:
            var.coordinates = spec.time_name
        data = values if spec.time_dim else values[0]
        if spec.extra_dim:
            data = np.repeat(data[:, None], spec.extra_dim, axis=1)
        var[:] = np.ma.masked_array(np.nan_to_num(data), mask=~np.isfinite(data))
    return path
