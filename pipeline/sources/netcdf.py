"""CF-NetCDF radar grids: read 2-D reflectivity or rain-rate fields (one or more times per file) with
xarray, and write forecasts back out as CF-NetCDF.

What is read
------------
- The variable: the one named by ``variable=``, or the only data variable (of 2 or more dimensions)
  recognised as reflectivity or rain rate; with several, reflectivity wins, and a remaining tie is
  a reason naming them. Recognised by ``standard_name`` (:data:`REFLECTIVITY_NAMES`,
  :data:`RAIN_NAMES`) or, without one, by ``units``:
  reflectivity in dBZ (or linear Z in mm6 m-3, taken to dBZ), rain rate in mm/h, kg m-2 s-1, mm s-1,
  m s-1, ... (:data:`RAIN_UNITS_TO_MM_H`), taken to dBZ through the Z-R relation (negative rates count
  as 0; a rate of 0 is "valid, no echo", -inf dBZ). Accumulations (:data:`ACCUMULATION_NAMES`, in mm,
  kg m-2, cm or m; without a standard name, units mm or kg m-2) become rates over their period: from the
  time variable's CF ``bounds``, else a ``start_time`` variable (BoM Rainfields), else the archive's
  cadence (``cadence_s``, settled by the listing); a frame's time is the END of its period, as pysteps
  and the providers label it.
- Values are decoded by xarray (``scale_factor``, ``add_offset``); NaN, ``_FillValue`` and
  ``missing_value`` mean not valid (mask False), and so do values outside ``valid_min``/``valid_max``
  or ``valid_range`` (given in the packed units, as CF says: compared with the packed values).
- Dimensions: an optional time dimension, a y and an x dimension (recognised by their coordinate
  variables' ``axis``, ``standard_name`` or name; else the last two, as CF recommends T, Z, Y, X
  order), and any others only of size 1. Anything else is a reason.
- Time: the time coordinate's values, ``units`` (``<unit> since <date>``, a UTC offset in it is
  honoured) and ``calendar``, decoded with cftime. Real-world calendars (standard, gregorian,
  proleptic_gregorian, julian) give the true instant; for model calendars (noleap, all_leap,
  360_day, ...) the date as written is taken as a Gregorian date, and one that does not exist there
  (360_day's 30 February) is a reason. Times within a file must be strictly increasing.
  A variable without a time dimension takes a scalar time: one of its coordinates, else a scalar
  variable CF marks as time (``standard_name: time``, ``axis: T`` or named ``time``; BoM's
  ``valid_time``). A time dimension of length 1 is one frame too.
- Size: a variable whose y x x size, or whose storage chunk, exceeds ``max_pixels``
  (:data:`~pipeline.sources.grid.MAX_FRAME_PIXELS`) is refused from its declared shape, before reading.
- Grid: the CF ``grid_mapping`` variable (``pyproj.CRS.from_cf``; with none, longitude/latitude
  coordinates mean a regular lon/lat grid and projection coordinates are a reason), the x/y
  coordinates (cell centres in any length unit PROJ knows: m, km, kilometers, ft, ...; they must be
  regularly spaced). Arrays are returned north-up
  (row 0 = largest y) and west-to-east, whatever order the file stores.

The forecast writer :func:`write_forecast` writes rain rate in mm/h with CF time, forecast reference
time, lead time, the grid and its grid-mapping variable; xarray, GIS tools and
``pysteps.io.import_netcdf_pysteps`` read it.

Readers report a bad file as a reason string, never as an exception.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

import cftime
import h5py
import netCDF4
import numpy as np
import pyproj
import xarray as xr

from pipeline import files
from pipeline.errors import NowcastError
from pipeline.sources.base import one_line
from pipeline.sources.grid import MAX_FRAME_PIXELS, ZR, FileInfo, Grid, RawFrame, frame_size_problem
from pipeline.sources.gridded import GridSource

#: CF standard names of reflectivity.
REFLECTIVITY_NAMES = ("equivalent_reflectivity_factor",)
#: CF standard names of rain rates (liquid-water-equivalent precipitation per time).
RAIN_NAMES = ("rainfall_rate", "lwe_precipitation_rate", "precipitation_flux", "rainfall_flux")
#: Rain-rate units (normalised: lower case, no spaces, ``**``/``^`` removed, ``hr`` -> ``h``) -> factor
#: to mm/h. 1 kg m-2 of water is 1 mm.
RAIN_UNITS_TO_MM_H = {
    "mm/h": 1.0,
    "mmh-1": 1.0,
    "kgm-2h-1": 1.0,
    "kg/m2/h": 1.0,
    "mm/min": 60.0,
    "mmmin-1": 60.0,
    "mm/s": 3600.0,
    "mms-1": 3600.0,
    "kgm-2s-1": 3600.0,
    "kg/m2/s": 3600.0,
    "m/s": 3.6e6,
    "ms-1": 3.6e6,
    "mm/d": 1 / 24,
    "mmd-1": 1 / 24,
    "mm/day": 1 / 24,
    "mmday-1": 1 / 24,
}
#: CF standard names of precipitation accumulations (water depth or mass per area over a period).
ACCUMULATION_NAMES = (
    "precipitation_amount",
    "rainfall_amount",
    "thickness_of_rainfall_amount",
    "lwe_thickness_of_precipitation_amount",
    "lwe_thickness_of_rainfall_amount",
)
#: Accumulation units (normalised) -> factor to mm. 1 kg m-2 of water is 1 mm.
AMOUNT_UNITS_TO_MM = {
    "mm": 1.0,
    "millimetre": 1.0,
    "millimetres": 1.0,
    "kgm-2": 1.0,
    "kg/m2": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "metre": 1000.0,
    "metres": 1000.0,
}
#: Accumulation units recognised without a standard name (``m`` alone could be anything).
_AMOUNT_UNITS_ALONE = ("mm", "millimetre", "millimetres", "kgm-2", "kg/m2")
#: Reflectivity units (normalised) in dBZ, and linear Z in mm^6 m^-3.
DBZ_UNITS = ("dbz",)
LINEAR_Z_UNITS = ("mm6m-3", "mm6/m3")
#: Calendars whose dates are real instants (converted exactly).
REAL_CALENDARS = ("standard", "gregorian", "proleptic_gregorian", "julian")
#: Relative tolerance for regularly spaced coordinates (fraction of a pixel).
SPACING_TOLERANCE = 1e-2
#: Fill value of the forecast writer's rain-rate variable.
FILL_VALUE = -9999.0

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_X_NAMES = ("projection_x_coordinate", "longitude", "grid_longitude")
_Y_NAMES = ("projection_y_coordinate", "latitude", "grid_latitude")


class _Bad(Exception):
    """A file that cannot be used; the message is the reason."""


def is_netcdf(path: str | PathLike) -> bool:
    r"""True if ``path`` is a NetCDF file: classic (``CDF\x01``, ``\x02``, ``\x05``), or NetCDF-4 (an HDF5
    file with netCDF-4's marks: the ``_NCProperties`` attribute or dimension scales at the root, and
    not ODIM_H5). A cheap check for format detection; never raises."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic in (b"CDF\x01", b"CDF\x02", b"CDF\x05"):
            return True
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            conventions = f.attrs.get("Conventions", b"")
            conventions = (
                conventions.decode("ascii", "replace") if isinstance(conventions, bytes) else str(conventions)
            )
            if conventions.startswith("ODIM_H5") or ("what" in f and "object" in f["what"].attrs):
                return False
            return "_NCProperties" in f.attrs or any(
                isinstance(item, h5py.Dataset) and item.attrs.get("CLASS") == b"DIMENSION_SCALE"
                for item in f.values()
            )
    except Exception:
        return False


def scan_file(
    path: str | PathLike, variable: str | None = None, *, max_pixels: int = MAX_FRAME_PIXELS
) -> FileInfo:
    """The times, grid and variable of a CF-NetCDF file, from its metadata (no pixel data is read).

    Parameters
    ----------
    path : the file.
    variable : the variable to read, or None to recognise it (see the module docstring).
    max_pixels : largest H * W accepted (:func:`~pipeline.sources.grid.frame_size_problem`).

    Returns
    -------
    FileInfo : the time of each frame in file order, the grid, the variable name; or ``reason``.
    """
    try:
        with _open(path) as ds:
            layout = _Layout(ds, variable, max_pixels)
            return FileInfo(tuple(layout.times_s), layout.grid, layout.name)
    except _Bad as exc:
        return FileInfo.bad(str(exc))
    except Exception as exc:
        return FileInfo.bad(f"unreadable NetCDF file: {one_line(exc)}")


def read_frames(
    path: str | PathLike,
    indices: list[int] | None = None,
    *,
    variable: str | None = None,
    zr: ZR = ZR(),
    cadence_s: int | None = None,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> list[RawFrame]:
    """Read frames of a CF-NetCDF file as dBZ + validity mask, opening the file once.

    Parameters
    ----------
    path : the file.
    indices : positions along the file's time axis (as listed by :func:`scan_file`); None for all.
    variable : the variable to read, or None to recognise it.
    zr : the Z-R relation for rain rates.
    cadence_s : the archive's cadence in seconds: the accumulation period of an accumulation whose file
        has no time bounds and no ``start_time`` (None: such a frame is bad).
    max_pixels : largest H * W accepted, checked before any pixel is read.

    Returns
    -------
    list of RawFrame : one per index (every one bad, with the reason, when the file is bad):
        ``dbz`` float32 (H, W) north-up (NaN = not valid, -inf = no echo), ``mask`` bool (H, W), the
        time and the grid. Never raises.
    """
    try:
        with _open(path) as ds:
            layout = _Layout(ds, variable, max_pixels)
            if indices is None:
                indices = list(range(len(layout.times_s)))
            return [layout.read(ds, index, zr, cadence_s) for index in indices]
    except _Bad as exc:
        reason = str(exc)
    except Exception as exc:
        reason = f"unreadable NetCDF file: {one_line(exc)}"
    return [RawFrame.bad(reason) for _ in (indices if indices is not None else [0])]


def read_frame(path: str | PathLike, index: int = 0, **options) -> RawFrame:
    """Read frame ``index`` (position along the time axis) of a CF-NetCDF file; ``options`` as for
    :func:`read_frames`."""
    return read_frames(path, [index], **options)[0]


def read_file(path: str | PathLike, **options) -> list[RawFrame]:
    """Every frame of a CF-NetCDF file; ``options`` as for :func:`read_frames`."""
    return read_frames(path, None, **options)


def decode_times_s(values: np.ndarray, units: str, calendar: str = "standard") -> np.ndarray:
    """CF time values -> int64 seconds since the Unix epoch (UTC), rounded to the second.

    Parameters
    ----------
    values : (N,) numbers in ``units``.
    units : ``"<unit> since <reference date>"`` (a UTC offset in the date is honoured).
    calendar : a CF calendar; see the module docstring for model calendars.

    Raises ValueError with a one-line message when the values cannot be decoded.
    """
    calendar = (calendar or "standard").strip().lower()
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not np.isfinite(values).all():
        raise ValueError("time holds missing or non-finite values")
    dates = cftime.num2date(values, units, calendar=calendar, only_use_cftime_datetimes=True)
    out = np.empty(values.shape, dtype=np.int64)
    for i, date in enumerate(np.ravel(dates)):
        if calendar in REAL_CALENDARS:
            date = date.change_calendar("proleptic_gregorian")
        try:
            when = datetime(date.year, date.month, date.day, date.hour, date.minute, date.second, tzinfo=UTC)
        except ValueError:
            raise ValueError(
                f"time {date} ({calendar} calendar) is not a date of the Gregorian calendar"
            ) from None
        out[i] = round((when - _EPOCH).total_seconds() + date.microsecond / 1e6)
    return out


def rain_units_to_mm_h(units: str) -> float | None:
    """The factor that takes a rain rate in ``units`` to mm/h, or None if ``units`` is not a rain rate."""
    return RAIN_UNITS_TO_MM_H.get(_normalise_units(units))


def _normalise_units(units: Any) -> str:
    text = str(units).strip().lower().replace("**", "").replace("^", "").replace(" ", "")
    return text.replace("hour", "h").replace("hr", "h")


def _open(path: str | PathLike) -> xr.Dataset:
    return xr.open_dataset(path, decode_times=False, decode_timedelta=False, mask_and_scale=True, cache=False)


@dataclass
class _Kind:
    """How a variable's values become dBZ: ``"dbz"``, ``"z"`` (linear mm6 m-3), ``"rain"`` (x ``factor`` ->
    mm/h) or ``"amount"`` (x ``factor`` -> mm over the frame's accumulation period)."""

    kind: str
    factor: float = 1.0


def _kind(var: xr.DataArray) -> _Kind | None:
    """How ``var`` becomes dBZ, None if it is not reflectivity or rain rate; raises _Bad when its
    standard name says what it is but its units cannot be converted."""
    standard_name = str(var.attrs.get("standard_name", "")).strip()
    units = _normalise_units(var.attrs.get("units", ""))
    if units in DBZ_UNITS:
        return _Kind("dbz")
    if units in LINEAR_Z_UNITS:
        return _Kind("z")
    if units in RAIN_UNITS_TO_MM_H:
        return _Kind("rain", RAIN_UNITS_TO_MM_H[units])
    if units in AMOUNT_UNITS_TO_MM and (
        standard_name in ACCUMULATION_NAMES or (not standard_name and units in _AMOUNT_UNITS_ALONE)
    ):
        return _Kind("amount", AMOUNT_UNITS_TO_MM[units])
    if standard_name in REFLECTIVITY_NAMES + RAIN_NAMES + ACCUMULATION_NAMES:
        raise _Bad(
            f"variable {var.name} ({standard_name}) has units {var.attrs.get('units', '(none)')!r}: "
            "need dBZ or mm6 m-3 for reflectivity, a rain rate such as mm/h or kg m-2 s-1 for rain, "
            "mm or kg m-2 for an accumulation"
        )
    return None


class _Layout:
    """Where the frames of an open CF-NetCDF file are (raises _Bad with a reason)."""

    def __init__(self, ds: xr.Dataset, variable: str | None, max_pixels: int = MAX_FRAME_PIXELS):
        self.name, self.kind = _choose_variable(ds, variable)
        var = ds[self.name]
        self.time_dim, time_var, self.times_s = _times(ds, var)
        self.period_s = None  # (T,) accumulation periods in s, None: from the cadence
        if self.kind.kind == "amount":
            self.times_s, self.period_s = _accumulation_periods(ds, time_var, self.times_s)
        _check_increasing(self.times_s)
        self.y_dim, self.x_dim = _spatial_dims(ds, var, self.time_dim)
        too_large = frame_size_problem(var.sizes[self.y_dim], var.sizes[self.x_dim], max_pixels)
        if too_large:
            raise _Bad(f"variable {self.name}: {too_large}")
        chunk = int(np.prod(var.encoding.get("chunksizes") or (1,)))
        if chunk > max_pixels:  # reading one frame decompresses whole chunks (several times each)
            raise _Bad(
                f"variable {self.name} is stored in chunks of {chunk:,} values, more than the limit of "
                f"{max_pixels:,} (--max-frame-pixels): refused before reading"
            )
        self.other_dims = [d for d in var.dims if d not in (self.time_dim, self.y_dim, self.x_dim)]
        big = [f"{d}={var.sizes[d]}" for d in self.other_dims if var.sizes[d] != 1]
        if big:
            raise _Bad(
                f"variable {self.name} has dimensions {var.dims}: only time, y, x (and others of size 1) "
                f"are allowed, not {', '.join(big)}"
            )
        self.grid, self.flip_y, self.flip_x = _grid(ds, var, self.y_dim, self.x_dim)
        self.valid_min, self.valid_max = _valid_limits(var)

    def read(self, ds: xr.Dataset, index: int, zr: ZR, cadence_s: int | None = None) -> RawFrame:
        """Frame ``index`` as dBZ + mask (a bad frame for an index out of range, or an accumulation
        whose period neither the file nor ``cadence_s`` gives)."""
        if not 0 <= index < len(self.times_s):
            return RawFrame.bad(
                f"frame {index} asked for, the file holds {len(self.times_s)}", quantity=self.name
            )
        period_s = self.period_s[index] if self.period_s is not None else cadence_s
        if self.kind.kind == "amount" and not period_s:
            return RawFrame.bad(
                f"{self.name} is an accumulation, but its period is unknown: the file has no time bounds "
                "and no start_time, and the archive has a single time (no cadence)",
                self.times_s[index],
                self.name,
            )
        var = ds[self.name]
        select = {d: 0 for d in self.other_dims}
        if self.time_dim is not None:
            select[self.time_dim] = index
        try:
            value = np.asarray(var.isel(select).transpose(self.y_dim, self.x_dim).values, dtype=np.float64)
        except Exception as exc:
            return RawFrame.bad(
                f"cannot read {self.name}[{index}]: {one_line(exc)}", self.times_s[index], self.name
            )
        if self.flip_y:
            value = value[::-1]
        if self.flip_x:
            value = value[:, ::-1]
        valid = np.isfinite(value)
        if self.valid_min is not None:
            valid &= value >= self.valid_min
        if self.valid_max is not None:
            valid &= value <= self.valid_max
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind.kind == "dbz":
                dbz = value
            elif self.kind.kind == "z":
                dbz = 10.0 * np.log10(np.maximum(value, 0.0))
            elif self.kind.kind == "rain":
                dbz = zr.rain_to_dbz(np.maximum(value * self.kind.factor, 0.0))
            else:  # an amount over period_s -> mm/h
                dbz = zr.rain_to_dbz(np.maximum(value * self.kind.factor * 3600.0 / period_s, 0.0))
        dbz = np.where(valid, dbz, np.nan).astype(np.float32)
        return RawFrame(int(self.times_s[index]), np.ascontiguousarray(dbz), valid, self.grid, self.name)


def _valid_limits(var: xr.DataArray) -> tuple[float | None, float | None]:
    """(lowest, highest) valid decoded value from ``valid_range`` or ``valid_min``/``valid_max`` (None: no
    limit). CF gives them in the packed units: they are unpacked with the variable's scale and offset."""
    attrs = var.attrs
    if "valid_range" in attrs:
        limits = [float(v) for v in np.ravel(attrs["valid_range"])[:2]]
    else:
        limits = [float(np.ravel(attrs[k])[0]) if k in attrs else None for k in ("valid_min", "valid_max")]
    scale = float(var.encoding.get("scale_factor", 1.0))
    offset = float(var.encoding.get("add_offset", 0.0))
    lo, hi = (None if v is None else v * scale + offset for v in limits)
    return (hi, lo) if scale < 0 else (lo, hi)


def _choose_variable(ds: xr.Dataset, variable: str | None) -> tuple[str, _Kind]:
    if variable is not None:
        if variable not in ds.variables:
            raise _Bad(
                f"no variable {variable!r} in the file "
                f"(it holds {', '.join(map(str, ds.data_vars)) or 'none'})"
            )
        kind = _kind(ds[variable])
        if kind is None:
            raise _Bad(
                f"variable {variable} has units {ds[variable].attrs.get('units', '(none)')!r}: need "
                "dBZ, mm6 m-3 or a rain rate such as mm/h, kg m-2 s-1"
            )
        return variable, kind
    found = {}
    for name, var in ds.data_vars.items():
        if var.ndim >= 2:
            kind = _kind(var)
            if kind is not None:
                found[str(name)] = kind
    if not found:
        raise _Bad(
            "no reflectivity or rain-rate variable: need standard_name "
            f"{' or '.join(REFLECTIVITY_NAMES + RAIN_NAMES)}, or units dBZ, mm/h, kg m-2 s-1"
        )
    reflectivity = {n: k for n, k in found.items() if k.kind in ("dbz", "z")}
    if len(found) > 1 and len(reflectivity) == 1:
        found = reflectivity
    if len(found) > 1:
        raise _Bad(f"several variables could be read ({', '.join(sorted(found))}): name one")
    return next(iter(found.items()))


def _is_time(var: xr.DataArray) -> bool:
    return " since " in str(var.attrs.get("units", ""))


#: Scalar times that are not the frame's time (the start of its period, the forecast's issue time).
_NOT_THE_TIME = ("start_time", "forecast_reference_time", "reference_time")


def _names_time(var: xr.DataArray) -> bool:
    """True for a variable CF marks as the time coordinate (standard_name time, axis T, or named time)."""
    return (
        str(var.attrs.get("standard_name", "")).strip() == "time"
        or str(var.attrs.get("axis", "")).strip().upper() == "T"
        or var.name == "time"
    )


def _times(ds: xr.Dataset, var: xr.DataArray) -> tuple[str | None, xr.DataArray, np.ndarray]:
    """(time dimension or None, the time variable, int64 (T,) epoch seconds).

    The time is the coordinate variable of one of ``var``'s dimensions; else a scalar time: one of
    ``var``'s coordinates, else a scalar variable of the file CF marks as time (a file per time, e.g.
    BoM Rainfields' ``valid_time``), else the only other scalar with time units that is not a start
    or reference time."""
    time_dim = next((d for d in var.dims if d in ds.variables and _is_time(ds[d])), None)
    if time_dim is not None:
        time_var = ds[time_dim]
    else:
        scalars = [ds[c] for c in var.coords if ds[c].ndim == 0 and _is_time(ds[c])]
        timed = [ds[n] for n, v in ds.variables.items() if v.ndim == 0 and _is_time(v)]
        scalars += [v for v in timed if _names_time(v)]
        unmarked = [
            v
            for v in timed
            if not ({v.name, v.attrs.get("standard_name")} & set(_NOT_THE_TIME) or _names_time(v))
        ]
        scalars += unmarked if len(unmarked) == 1 else []  # the one other scalar time, even unmarked
        if not scalars:
            raise _Bad(
                f"variable {var.name} has no time: need a time coordinate with units '<unit> since <date>'"
            )
        time_var = scalars[0]
    return time_dim, time_var, _decode_time_var(time_var, time_var.values)


def _decode_time_var(time_var: xr.DataArray, values, units_from: xr.DataArray | None = None) -> np.ndarray:
    """``values`` in the units and calendar of ``units_from`` (default ``time_var``) -> int64 epoch s."""
    ref = time_var if units_from is None else units_from
    units, calendar = ref.attrs.get("units"), ref.attrs.get("calendar", "standard")
    try:
        return decode_times_s(values, units, calendar)
    except Exception as exc:
        raise _Bad(
            f"cannot decode {time_var.name} ({units!r}, calendar {calendar!r}): {one_line(exc)}"
        ) from exc


def _check_increasing(times_s: np.ndarray) -> None:
    if times_s.size > 1 and not np.all(np.diff(times_s) > 0):
        i = int(np.argmin(np.diff(times_s) > 0))
        raise _Bad(
            f"time is not strictly increasing: {_iso(times_s[i])} is followed by {_iso(times_s[i + 1])}"
        )


def _accumulation_periods(
    ds: xr.Dataset, time_var: xr.DataArray, times_s: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """(end time of each frame's accumulation period, its length in s or None) for an accumulation,
    both int64 (T,). From the time variable's CF ``bounds``, else a ``start_time`` variable (the
    period ends at the time), else None: the archive's cadence gives it, ending at the time."""
    bounds_name = time_var.attrs.get("bounds") or time_var.encoding.get("bounds")
    if bounds_name:
        if bounds_name not in ds.variables:
            raise _Bad(f"{time_var.name}:bounds names {bounds_name}, which is not in the file")
        bounds = ds[bounds_name]
        values = np.asarray(bounds.values, dtype=np.float64)
        if values.size != 2 * times_s.size:
            raise _Bad(f"{bounds_name} has shape {values.shape}: need 2 bounds per time ({times_s.size})")
        units_from = bounds if "units" in bounds.attrs else time_var
        edges = _decode_time_var(bounds, values.reshape(-1), units_from).reshape(-1, 2)
        start_s, end_s = edges.min(axis=1), edges.max(axis=1)
    elif "start_time" in ds.variables and _is_time(ds["start_time"]):
        start = ds["start_time"]
        if start.size != times_s.size:
            raise _Bad(f"start_time holds {start.size} values for {times_s.size} times")
        start_s, end_s = _decode_time_var(start, np.ravel(start.values)), times_s
    else:
        return times_s, None
    period_s = end_s - start_s
    if np.any(period_s <= 0):
        i = int(np.argmin(period_s))
        raise _Bad(
            f"accumulation period {_iso(start_s[i])}..{_iso(end_s[i])} is not positive: need start < end"
        )
    return end_s, period_s


def _iso(time_s: int) -> str:
    return str(np.datetime64(int(time_s), "s")) + "Z"


def _axis_of(ds: xr.Dataset, dim: str) -> str | None:
    """``"x"``, ``"y"`` or None for a dimension, from its coordinate variable (axis, standard_name) or
    its name."""
    attrs = ds[dim].attrs if dim in ds.variables else {}
    axis = str(attrs.get("axis", "")).upper()
    standard_name = str(attrs.get("standard_name", ""))
    if axis == "X" or standard_name in _X_NAMES or dim.lower() in ("x", "lon", "longitude"):
        return "x"
    if axis == "Y" or standard_name in _Y_NAMES or dim.lower() in ("y", "lat", "latitude"):
        return "y"
    return None


def _spatial_dims(ds: xr.Dataset, var: xr.DataArray, time_dim: str | None) -> tuple[str, str]:
    dims = [str(d) for d in var.dims if d != time_dim]
    xs = [d for d in dims if _axis_of(ds, d) == "x"]
    ys = [d for d in dims if _axis_of(ds, d) == "y"]
    if len(xs) != 1 or len(ys) != 1:
        if len(dims) < 2 or xs or ys:
            raise _Bad(
                f"variable {var.name} has dimensions {var.dims}: need one y and one x dimension "
                "(coordinates with axis Y/X or projection_y/x_coordinate, latitude/longitude)"
            )
        ys, xs = [dims[-2]], [dims[-1]]  # CF recommends the order T, Z, Y, X
    for d in (ys[0], xs[0]):
        if d not in ds.variables:
            raise _Bad(f"dimension {d} of {var.name} has no coordinate variable: cannot place the grid")
    return ys[0], xs[0]


def _grid_mapping_crs(ds: xr.Dataset, var: xr.DataArray, x_var: xr.DataArray) -> pyproj.CRS:
    name = var.attrs.get("grid_mapping") or var.encoding.get("grid_mapping")
    if name:
        name = str(name).split(":")[0].split()[0]  # the extended form "crs: x y" names it first
        if name not in ds.variables:
            raise _Bad(f"{var.name}:grid_mapping names {name}, which is not in the file")
        try:
            return _crs_from_cf(_hashable(dict(ds[name].attrs)))
        except Exception as exc:
            raise _Bad(f"cannot read the projection of grid mapping {name}: {one_line(exc)}") from exc
    standard_name = str(x_var.attrs.get("standard_name", ""))
    units = _normalise_units(x_var.attrs.get("units", ""))
    if standard_name == "longitude" or units.startswith("degree"):
        return _crs84()
    raise _Bad(f"variable {var.name} has no grid_mapping: cannot tell the projection of its x/y coordinates")


def _hashable(attrs: dict[str, Any]) -> tuple:
    """Attributes as a sorted tuple of (name, value) with arrays as tuples (a cache key)."""
    return tuple(
        sorted((k, tuple(np.ravel(v).tolist()) if isinstance(v, np.ndarray) else v) for k, v in attrs.items())
    )


@functools.lru_cache(maxsize=64)
def _crs_from_cf(attrs: tuple) -> pyproj.CRS:
    """``pyproj.CRS.from_cf`` of grid-mapping attributes (cached: an archive repeats one projection,
    and building it costs milliseconds)."""
    return pyproj.CRS.from_cf({k: list(v) if isinstance(v, tuple) else v for k, v in attrs})


@functools.lru_cache(maxsize=1)
def _crs84() -> pyproj.CRS:
    """Longitude/latitude on WGS 84, x = longitude (CF's latitude_longitude without a grid mapping)."""
    return pyproj.CRS("OGC:CRS84")


@functools.lru_cache(maxsize=64)
def _make_grid(
    crs: pyproj.CRS, shape: tuple[int, int], x_left: float, y_top: float, x_step: float, y_step: float
) -> Grid:
    return Grid.from_crs(crs, shape, x_left, y_top, x_step, y_step)


#: Abbreviations of length units (PROJ's unit table names them in full).
_LENGTH_ABBREVIATIONS = {"": "metre", "m": "metre", "km": "kilometre", "cm": "centimetre", "ft": "foot"}


@functools.lru_cache(maxsize=64)
def _metres_per_unit(units: str) -> float | None:
    """Metres per coordinate unit (``m``, ``km``, ``kilometers``, ``US survey foot``, ...; none: metres),
    from PROJ's unit table (``pyproj.get_units_map``); None when ``units`` is not a length."""
    name = str(units).strip().lower().replace("meter", "metre")
    name = _LENGTH_ABBREVIATIONS.get(name, name)
    table = {k.lower(): u for k, u in pyproj.get_units_map().items() if u.category == "linear"}
    unit = table.get(name) or table.get(name.removesuffix("s"))
    return float(unit.conv_factor) if unit is not None else None


def _grid(ds: xr.Dataset, var: xr.DataArray, y_dim: str, x_dim: str) -> tuple[Grid, bool, bool]:
    """(north-up grid, flip rows?, flip columns?)."""
    crs = _grid_mapping_crs(ds, var, ds[x_dim])
    centres = {}
    for axis, dim in (("x", x_dim), ("y", y_dim)):
        coord = ds[dim]
        values = np.asarray(coord.values, dtype=np.float64)
        if values.ndim != 1 or values.size < 2 or not np.isfinite(values).all():
            raise _Bad(f"coordinate {dim} needs at least 2 finite values to give the pixel size")
        if crs.is_projected:
            factor = _metres_per_unit(coord.attrs.get("units", ""))
            if factor is None:
                raise _Bad(
                    f"coordinate {dim} has units {coord.attrs.get('units')!r}: need a length (m, km, ...)"
                )
            values = values * factor
        step = (values[-1] - values[0]) / (values.size - 1)
        if step == 0 or np.abs(np.diff(values) - step).max() > SPACING_TOLERANCE * abs(step):
            raise _Bad(f"coordinate {dim} is not regularly spaced: the grid must be regular")
        centres[axis] = values
    x, y = centres["x"], centres["y"]
    x_step, y_step = abs(x[-1] - x[0]) / (x.size - 1), abs(y[-1] - y[0]) / (y.size - 1)
    grid = _make_grid(
        crs,
        (y.size, x.size),
        float(x.min() - x_step / 2),
        float(y.max() + y_step / 2),
        float(x_step),
        float(y_step),
    )
    return grid, bool(y[-1] > y[0]), bool(x[-1] < x[0])


# ---------------------------------------------------------------------------------------------------
# Forecast writer
# ---------------------------------------------------------------------------------------------------


def write_forecast(
    path: str | PathLike,
    rain_mm_h: np.ndarray,
    grid: Grid,
    issue_time_s: int,
    lead_times_s: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    overwrite: bool = False,
    attrs: dict[str, str] | None = None,
) -> Path:
    """Write a rain-rate forecast as a CF-1.8 NetCDF-4 file.

    Contents: ``precip_intensity`` (time, y, x) float32 in mm h-1 (standard_name ``rainfall_rate``,
    fill value :data:`FILL_VALUE` where not valid; the name pysteps' NetCDF importer reads),
    ``time`` (valid times as seconds since the issue time, the way pysteps writes them),
    ``forecast_reference_time`` (scalar, seconds since the epoch), ``lead_time`` (time; standard_name
    ``forecast_period``, seconds), ``x``/``y`` pixel-centre coordinates (y decreasing: north-up), 2-D
    ``lat``/``lon`` for projected grids, and the grid-mapping variable (:meth:`Grid.to_cf`, with ``crs_wkt``).

    Parameters
    ----------
    path : the file to write. It is written to a temporary file beside it and renamed into place.
    rain_mm_h : float (L, H, W) forecast rain rate in mm/h, north-up on ``grid``.
    grid : the grid of the frames (H, W).
    issue_time_s : the analysis time the forecast starts from, seconds since the epoch (UTC).
    lead_times_s : int (L,) lead time of each frame, seconds after ``issue_time_s``.
    mask : bool (L, H, W) or (H, W), True = valid; None = all valid.
    overwrite : replace an existing file at ``path`` (otherwise NowcastError).
    attrs : extra global attributes (``title``, ``institution``, ``source``, ``history``, ...).

    Returns
    -------
    Path : ``path``.
    """
    path = Path(path)
    rain_mm_h = np.asarray(rain_mm_h, dtype=np.float32)
    lead_times_s = np.asarray(lead_times_s, dtype=np.int64).reshape(-1)
    if (
        rain_mm_h.ndim != 3
        or rain_mm_h.shape[1:] != tuple(grid.shape)
        or rain_mm_h.shape[0] != lead_times_s.size
    ):
        raise ValueError(
            f"rain_mm_h {rain_mm_h.shape} must be (L, H, W) with L = {lead_times_s.size} lead times "
            f"and (H, W) = {tuple(grid.shape)}"
        )
    valid = np.isfinite(rain_mm_h)
    if mask is not None:
        valid &= np.broadcast_to(np.asarray(mask, dtype=bool), rain_mm_h.shape)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise NowcastError(f"{path} exists: remove it or choose another output path")
    fd, tmp = files.temp_file(path)  # a new file (no symlink), with the umask's mode
    os.close(fd)
    try:
        _write(
            tmp,
            np.where(valid, rain_mm_h, FILL_VALUE).astype(np.float32),
            grid,
            int(issue_time_s),
            lead_times_s,
            attrs or {},
        )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write(
    path: Path,
    rain_mm_h: np.ndarray,
    grid: Grid,
    issue_time_s: int,
    lead_times_s: np.ndarray,
    attrs: dict[str, str],
) -> None:
    n_lead, height, width = rain_mm_h.shape
    issue = datetime.fromtimestamp(issue_time_s, UTC).strftime("%Y-%m-%d %H:%M:%S")
    gm_name, gm_attrs = grid.to_cf()
    geographic = grid.crs.is_geographic
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.setncatts(
            {
                "Conventions": "CF-1.8",
                "title": "precipitation nowcast",
                "source": "nowcast",
                **{k: str(v) for k, v in attrs.items()},
            }
        )
        nc.createDimension("time", n_lead)
        nc.createDimension("y", height)
        nc.createDimension("x", width)

        time = nc.createVariable("time", "i8", ("time",))
        time.setncatts(
            {
                "standard_name": "time",
                "long_name": "forecast valid time",
                "units": f"seconds since {issue}",
                "calendar": "standard",
                "axis": "T",
            }
        )
        time[:] = lead_times_s
        ref = nc.createVariable("forecast_reference_time", "i8", ())
        ref.setncatts(
            {
                "standard_name": "forecast_reference_time",
                "long_name": "forecast issue time",
                "units": "seconds since 1970-01-01 00:00:00",
                "calendar": "standard",
            }
        )
        ref.assignValue(issue_time_s)
        lead = nc.createVariable("lead_time", "i8", ("time",))
        lead.setncatts({"standard_name": "forecast_period", "long_name": "lead time", "units": "s"})
        lead[:] = lead_times_s

        for name, dim, values, axis in (("x", "x", grid.x_centres(), "X"), ("y", "y", grid.y_centres(), "Y")):
            coord = nc.createVariable(name, "f8", (dim,))
            if geographic:
                coord.setncatts(
                    {
                        "standard_name": "longitude" if axis == "X" else "latitude",
                        "units": "degrees_east" if axis == "X" else "degrees_north",
                        "axis": axis,
                    }
                )
            else:
                coord.setncatts(
                    {
                        "standard_name": f"projection_{name}_coordinate",
                        "units": "m",
                        "axis": axis,
                        "long_name": f"{name} of the pixel centre in the projection",
                    }
                )
            coord[:] = values

        coordinates = None
        if not geographic:
            xx, yy = np.meshgrid(grid.x_centres(), grid.y_centres())
            lon, lat = pyproj.Transformer.from_crs(grid.crs, "OGC:CRS84", always_xy=True).transform(xx, yy)
            for name, values, units in (("lat", lat, "degrees_north"), ("lon", lon, "degrees_east")):
                aux = nc.createVariable(name, "f4", ("y", "x"), zlib=True, complevel=4)
                aux.setncatts({"standard_name": "latitude" if name == "lat" else "longitude", "units": units})
                aux[:] = values
            coordinates = "lat lon"

        gm = nc.createVariable(gm_name, "i4", ())
        gm.setncatts(gm_attrs)

        precip = nc.createVariable(
            "precip_intensity",
            "f4",
            ("time", "y", "x"),
            zlib=True,
            complevel=4,
            chunksizes=(1, height, width),
            fill_value=np.float32(FILL_VALUE),
        )
        precip.setncatts(
            {
                "standard_name": "rainfall_rate",
                "long_name": "forecast rain rate",
                "units": "mm h-1",
                "grid_mapping": gm_name,
            }
        )
        if coordinates:
            precip.coordinates = coordinates
        precip.set_auto_mask(False)
        precip[:] = rain_mm_h


class NetcdfSource(GridSource):
    """Archives of CF-NetCDF files holding a 2-D reflectivity or rain-rate field, one or more times per
    file, any folder layout; options: ``variable``, crop, block, Z-R relation (see
    :class:`~pipeline.sources.gridded.GridSource`)."""

    name = "netcdf"
    title = "CF-NetCDF"
    hint = "a CF-NetCDF archive (NetCDF files with a reflectivity or rain-rate variable)"
    write_forecast = staticmethod(write_forecast)  # predict's CF-NetCDF output, through the registry
    fill_value = FILL_VALUE  # what write_forecast stores where a value is missing

    def claims(self, root: Path, rel: str) -> bool:
        return is_netcdf(Path(root) / rel)

    def scan(self, path: Path, variable: str | None) -> FileInfo:
        return scan_file(path, variable=variable, max_pixels=self.max_pixels)

    def read_raw(self, path: Path, indices: list[int]) -> list[RawFrame]:
        return read_frames(
            path,
            indices,
            variable=self.variable,
            zr=self.zr,
            cadence_s=self.cadence_s,
            max_pixels=self.max_pixels,
        )
