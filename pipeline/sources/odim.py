"""ODIM_H5 (OPERA Data Information Model, HDF5, v2.x) 2-D Cartesian products: composites (``COMP``)
and single-radar images (``IMAGE``), read with h5py.

What is read
------------
- ``/what/object`` must be ``COMP`` or ``IMAGE``; polar volumes, scans and profiles are refused.
- The quantity: the ``/datasetN/dataM`` (``qualityK`` groups ignored) whose ``what/quantity`` is the
  requested one, or, with none requested, the first of :data:`QUANTITIES` present (reflectivity first:
  the store keeps dBZ; the listing then asks every file for the archive's most common quantity),
  wherever it is in the file. When several datasets hold that quantity, the one whose period ends at
  the nominal time is read; when that does not single one out (e.g. several heights), the file is bad
  with a reason naming them.
- Values: ``value = offset + gain * raw`` with ``gain``/``offset``/``nodata``/``undetect`` from the
  dataset-level ``what`` overridden by the data-level ``what`` (spec defaults gain 1, offset 0).
  ``nodata`` (and non-finite raw values) -> not valid (mask False); ``undetect`` -> valid, no echo.
  A gain of 0, a non-finite gain or offset, or values beyond :data:`PLAUSIBLE_RANGE` (a saturating
  gain) make the file bad. Float data without these attributes (RMI's QPE RATE) are read as they are.
- Size: a data array larger than ``max_pixels`` (H * W, :data:`~pipeline.sources.grid.MAX_FRAME_PIXELS`)
  is refused from its declared shape, before any of it is decompressed.
- DBZH and TH are dBZ. RATE (mm/h) and ACRR (mm, divided by the accumulation period from the
  ``startdate``/``starttime`` - ``enddate``/``endtime`` of the ``what`` groups, in hours) go to dBZ
  through the Z-R relation (:class:`~pipeline.sources.grid.ZR`); negative rain rates count as 0.
- Time: the product's nominal time, top-level ``/what/date`` + ``/what/time`` (UTC), never the file
  name. The dataset-level start/end times serve only as the ACRR accumulation period.
- Grid: ``/where/projdef`` (PROJ string), ``xsize``/``ysize`` (pixels), ``xscale``/``yscale``
  (metres), and the outer corners ``LL_lon/LL_lat`` and ``UR_lon/UR_lat`` projected with
  ``projdef``; a dataset-level ``where`` overrides the top-level one. Cartesian ODIM images are
  stored north-up (the first row is the northern edge), as the store keeps them.

Every function here reports a bad file as a reason string, never as an exception.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyproj

from pipeline.sources.base import one_line
from pipeline.sources.grid import MAX_FRAME_PIXELS, ZR, FileInfo, Grid, RawFrame, frame_size_problem
from pipeline.sources.gridded import GridSource

#: Quantities that can be read, in the default order of preference.
QUANTITIES = ("DBZH", "TH", "RATE", "ACRR")
#: Quantities already in dBZ.
DBZ_QUANTITIES = ("DBZH", "TH")
#: Values (dBZ, mm/h, mm) no radar product holds, far beyond the physical ones (about -30..80 dBZ,
#: 0..2000 mm/h): a value beyond them comes from broken scaling (e.g. a gain of 1e30).
PLAUSIBLE_RANGE = {"DBZH": (-1e3, 1e3), "TH": (-1e3, 1e3), "RATE": (-1e5, 1e5), "ACRR": (-1e5, 1e6)}
#: ODIM ``what/object`` values of 2-D Cartesian products.
CARTESIAN_OBJECTS = ("COMP", "IMAGE")
#: How far (pixels) the corner coordinates may disagree with xsize * xscale.
CORNER_TOLERANCE_PX = 1.0
#: The attributes read (h5py reads each attribute for ~0.1 ms: the others are left alone).
_TOP_WHAT_KEYS = ("object", "date", "time")
_WHAT_KEYS = (
    "quantity",
    "gain",
    "offset",
    "nodata",
    "undetect",
    "startdate",
    "starttime",
    "enddate",
    "endtime",
)
_WHERE_KEYS = ("projdef", "xsize", "ysize", "xscale", "yscale", "LL_lon", "LL_lat", "UR_lon", "UR_lat")


class _Bad(Exception):
    """A file that cannot be used; the message is the reason."""


def is_odim(path: str | PathLike) -> bool:
    """True if ``path`` is an HDF5 file that declares ODIM_H5 (root ``Conventions`` ``ODIM_H5/...``,
    or a ``/what/object`` attribute). A cheap check for format detection; never raises."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            conventions = _text(f.attrs.get("Conventions", b""))
            return conventions.startswith("ODIM_H5") or ("what" in f and "object" in f["what"].attrs)
    except Exception:
        return False


def scan_file(
    path: str | PathLike, quantity: str | None = None, *, max_pixels: int = MAX_FRAME_PIXELS
) -> FileInfo:
    """The time, grid and quantity of an ODIM_H5 file, from its metadata (no pixel data is read).

    Parameters
    ----------
    path : the file.
    quantity : one of :data:`QUANTITIES`, or None for the first present in that order.
    max_pixels : largest H * W accepted (:func:`~pipeline.sources.grid.frame_size_problem`).

    Returns
    -------
    FileInfo : one time (the nominal time), the grid, the quantity; or ``reason`` for a bad file.
    """
    try:
        with h5py.File(path, "r") as f:
            product = _Product(f, quantity, max_pixels)
            return FileInfo((product.time_s,), product.grid, product.quantity)
    except _Bad as exc:
        return FileInfo.bad(str(exc))
    except Exception as exc:
        return FileInfo.bad(f"unreadable ODIM_H5 file: {one_line(exc)}")


def read_frame(
    path: str | PathLike,
    index: int = 0,
    *,
    quantity: str | None = None,
    zr: ZR = ZR(),
    max_pixels: int = MAX_FRAME_PIXELS,
) -> RawFrame:
    """Read the frame of an ODIM_H5 file as dBZ + validity mask.

    Parameters
    ----------
    path : the file.
    index : must be 0 (an ODIM_H5 product holds one nominal time).
    quantity : one of :data:`QUANTITIES`, or None for the first present in that order.
    zr : the Z-R relation for RATE and ACRR.
    max_pixels : largest H * W accepted, checked from the declared shape before reading.

    Returns
    -------
    RawFrame : ``dbz`` float32 (ysize, xsize) north-up (NaN = not valid, -inf = no echo), ``mask``
        bool (ysize, xsize), the nominal time and the grid; or ``reason`` for a bad file. Never raises.
    """
    if index != 0:
        return RawFrame.bad(f"an ODIM_H5 product holds one frame, asked for frame {index}")
    try:
        with h5py.File(path, "r") as f:
            product = _Product(f, quantity, max_pixels)
            try:
                raw = np.asarray(product.data[()])
            except Exception as exc:
                raise _Bad(f"cannot read {product.data.name}: {one_line(exc)}") from exc
        dbz, mask = product.to_dbz(raw, zr)
    except _Bad as exc:
        return RawFrame.bad(str(exc))
    except Exception as exc:
        return RawFrame.bad(f"unreadable ODIM_H5 file: {one_line(exc)}")
    return RawFrame(product.time_s, dbz, mask, product.grid, product.quantity)


def read_file(path: str | PathLike, **options) -> list[RawFrame]:
    """Every frame of an ODIM_H5 file (one), as :func:`read_frame` returns it (same ``options``)."""
    return [read_frame(path, 0, **options)]


def scale(
    raw: np.ndarray, gain: float, offset: float, nodata: float | None, undetect: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ODIM raw values -> physical values.

    Parameters
    ----------
    raw : (H, W) stored values.
    gain, offset : ``value = offset + gain * raw``.
    nodata : raw value of pixels void of data (never radiated), or None.
    undetect : raw value of pixels radiated with nothing detected, or None.

    Returns
    -------
    value : float64 (H, W) physical values, NaN where not valid.
    valid : bool (H, W), False at ``nodata`` and non-finite raw values.
    undetected : bool (H, W), True at ``undetect`` (valid, no echo).
    """
    raw = np.asarray(raw, dtype=np.float64)
    valid = np.isfinite(raw)
    if nodata is not None:
        valid &= raw != nodata
    undetected = valid & (raw == undetect) if undetect is not None else np.zeros(raw.shape, dtype=bool)
    value = np.where(valid, offset + gain * raw, np.nan)
    return value, valid, undetected


class _Product:
    """The metadata of the chosen quantity of an open ODIM_H5 file (raises _Bad with a reason)."""

    def __init__(self, f: h5py.File, quantity: str | None, max_pixels: int = MAX_FRAME_PIXELS):
        if quantity is not None and quantity not in QUANTITIES:
            raise _Bad(f"quantity {quantity!r} cannot be ingested; use one of {', '.join(QUANTITIES)}")
        cache: dict = {}  # attributes of each group, read once (h5py attribute reads cost ~0.1 ms each)
        top_what = _attrs(f, "what", cache, _TOP_WHAT_KEYS)
        obj = _text(top_what.get("object", b""))
        if obj not in CARTESIAN_OBJECTS:
            raise _Bad(
                f"what/object is {obj or 'missing'!r}: only 2-D Cartesian products "
                f"({', '.join(CARTESIAN_OBJECTS)}) can be ingested"
            )
        self.time_s = _datetime_s(top_what, "date", "time", "what")
        dataset, data, self.quantity = _choose(f, quantity, cache, self.time_s)
        self.what = {**_attrs(dataset, "what", cache, _WHAT_KEYS), **_attrs(data, "what", cache, _WHAT_KEYS)}
        if "data" not in data or not isinstance(data["data"], h5py.Dataset):
            raise _Bad(f"{data.name} holds no 'data' array")
        self.data = data["data"]
        if self.data.ndim != 2:
            raise _Bad(f"{self.data.name} has shape {self.data.shape}: a 2-D Cartesian image is needed")
        if not np.issubdtype(self.data.dtype, np.number):
            raise _Bad(f"{self.data.name} holds {self.data.dtype}, not numbers")
        too_large = frame_size_problem(*self.data.shape, max_pixels)
        if too_large:
            raise _Bad(f"{self.data.name} {too_large}")
        self.gain, self.offset = _number(self.what, "gain", 1.0), _number(self.what, "offset", 0.0)
        if not (np.isfinite(self.gain) and self.gain != 0 and np.isfinite(self.offset)):
            raise _Bad(
                f"{data.name}/what gain = {self.gain:g}, offset = {self.offset:g}: need a finite, "
                "non-zero gain and a finite offset"
            )
        self.grid = _grid(f, dataset, cache)
        if tuple(self.data.shape) != self.grid.shape:
            raise _Bad(
                f"{self.data.name} is {self.data.shape[0]}x{self.data.shape[1]} but where/ysize x xsize "
                f"says {self.grid.shape[0]}x{self.grid.shape[1]}"
            )
        self.period_h = _accumulation_h(self.what) if self.quantity == "ACRR" else None

    def to_dbz(self, raw: np.ndarray, zr: ZR) -> tuple[np.ndarray, np.ndarray]:
        """Raw values -> (dBZ float32 (H, W) with NaN = not valid and -inf = no echo, mask bool (H, W)).
        Raises _Bad when a valid value is beyond :data:`PLAUSIBLE_RANGE` (broken scaling).

        Integer images of up to 16 bits (the usual ODIM storage) go through a table of every raw level,
        computed with the same arithmetic: the same result at a fraction of the per-pixel cost."""
        raw = np.asarray(raw)
        if (
            raw.dtype.kind in "ui"
            and raw.dtype.itemsize <= 2
            and raw.size > 4 * 2 ** (8 * raw.dtype.itemsize)
        ):
            info = np.iinfo(raw.dtype)
            levels = np.arange(info.min, info.max + 1, dtype=np.int64)
            index = raw.astype(np.int64) - info.min if info.min else raw
            present = np.bincount(index.ravel(), minlength=levels.size) > 0
            dbz_table, valid_table = self._to_dbz(levels.astype(np.float64), zr, present)
            return dbz_table[index], valid_table[index]
        return self._to_dbz(raw.astype(np.float64), zr)

    def _to_dbz(
        self, raw: np.ndarray, zr: ZR, present: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``to_dbz`` of float raw values; ``present`` (same shape, bool) marks the values that occur in
        the image (all by default), the ones checked against :data:`PLAUSIBLE_RANGE`."""
        value, valid, undetected = scale(
            raw,
            self.gain,
            self.offset,
            _number(self.what, "nodata", None),
            _number(self.what, "undetect", None),
        )
        measured = valid & ~undetected if present is None else valid & ~undetected & present
        self._check_plausible(value[measured])
        if self.quantity in DBZ_QUANTITIES:
            dbz = value
        else:
            rain_mm_h = value / self.period_h if self.quantity == "ACRR" else value
            dbz = zr.rain_to_dbz(np.where(valid, np.maximum(rain_mm_h, 0.0), np.nan))
        dbz = np.where(undetected, -np.inf, dbz)
        return dbz.astype(np.float32), valid

    def _check_plausible(self, values: np.ndarray) -> None:
        """Raise _Bad when ``values`` (the measured physical values) leave the quantity's plausible range."""
        if not values.size:
            return
        low, high = PLAUSIBLE_RANGE[self.quantity]
        lowest, highest = float(values.min()), float(values.max())
        if not (np.isfinite(lowest) and np.isfinite(highest) and low <= lowest and highest <= high):
            raise _Bad(
                f"{self.quantity} values span {lowest:.4g}..{highest:.4g} with gain {self.gain:g} and offset "
                f"{self.offset:g}, beyond any real {self.quantity} ({low:g}..{high:g}): the scaling is broken"
            )


def _choose(
    f: h5py.File, quantity: str | None, cache: dict, time_s: int
) -> tuple[h5py.Group, h5py.Group, str]:
    """(datasetN, dataM, quantity) of the quantity to read (see the module docstring); ``time_s`` is the
    nominal time, which singles out one of several datasets of the quantity."""
    found: list[tuple[h5py.Group, h5py.Group, str]] = []
    for dataset in _numbered(f, "dataset"):
        dataset_quantity = _text(_attrs(dataset, "what", cache, _WHAT_KEYS).get("quantity", b""))
        for data in _numbered(dataset, "data"):
            q = _text(_attrs(data, "what", cache, _WHAT_KEYS).get("quantity", b"")) or dataset_quantity
            found.append((dataset, data, q))
    wanted = (quantity,) if quantity else QUANTITIES
    for q in wanted:
        candidates = [(dataset, data) for dataset, data, found_q in found if found_q == q]
        if len(candidates) > 1:
            candidates = [(d, m) for d, m in candidates if _ends_at(d, m, cache, time_s)] or candidates
        if len(candidates) > 1:
            names = ", ".join(data.name for _, data in candidates)
            raise _Bad(
                f"{len(candidates)} datasets hold {q} ({names}) and none alone ends at the nominal time: "
                "cannot tell which to read"
            )
        if candidates:
            return candidates[0][0], candidates[0][1], q
    held = sorted({q for _, _, q in found if q}) or ["nothing"]
    raise _Bad(f"no {' or '.join(wanted)} data in the file (it holds {', '.join(held)})")


def _ends_at(dataset: h5py.Group, data: h5py.Group, cache: dict, time_s: int) -> bool:
    """True when the dataset's period (what/enddate + endtime) ends at ``time_s``."""
    what = {**_attrs(dataset, "what", cache, _WHAT_KEYS), **_attrs(data, "what", cache, _WHAT_KEYS)}
    try:
        return _datetime_s(what, "enddate", "endtime", "dataset what") == time_s
    except _Bad:
        return False


def _numbered(group: h5py.Group, prefix: str) -> list[h5py.Group]:
    """Subgroups ``prefix1``, ``prefix2``, ... of ``group`` in numeric order."""
    items = []
    for name, item in group.items():
        suffix = name[len(prefix) :]
        if name.startswith(prefix) and suffix.isdigit() and isinstance(item, h5py.Group):
            items.append((int(suffix), item))
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


def _grid(f: h5py.File, dataset: h5py.Group, cache: dict) -> Grid:
    """The grid from ``/where`` (overridden by ``datasetN/where``)."""
    where = {**_attrs(f, "where", cache, _WHERE_KEYS), **_attrs(dataset, "where", cache, _WHERE_KEYS)}
    projdef = _text(where.get("projdef", b""))
    if not projdef:
        raise _Bad("where/projdef is missing: cannot place the grid")
    return _grid_from_where(
        projdef,
        int(_required(where, "xsize")),
        int(_required(where, "ysize")),
        _number(where, "xscale", None),
        _number(where, "yscale", None),
        *(_required(where, key) for key in ("LL_lon", "LL_lat", "UR_lon", "UR_lat")),
    )


@functools.lru_cache(maxsize=64)
def _grid_from_where(
    projdef: str,
    width: int,
    height: int,
    x_step: float | None,
    y_step: float | None,
    ll_lon: float,
    ll_lat: float,
    ur_lon: float,
    ur_lat: float,
) -> Grid:
    """The grid of ``where`` attributes (cached: an archive repeats one grid, and building a pyproj
    transformation costs tens of milliseconds)."""
    try:
        crs = pyproj.CRS.from_proj4(projdef) if projdef.lstrip().startswith("+") else pyproj.CRS(projdef)
    except pyproj.exceptions.CRSError as exc:
        raise _Bad(f"where/projdef {projdef!r} is not a projection: {one_line(exc)}") from exc
    if width < 1 or height < 1:
        raise _Bad(f"where/xsize, ysize = {width}, {height}: need positive sizes")
    to_xy = pyproj.Transformer.from_crs("OGC:CRS84", crs, always_xy=True)
    x_left, y_bottom = to_xy.transform(ll_lon, ll_lat)
    x_right, y_top = to_xy.transform(ur_lon, ur_lat)
    x_step = (x_right - x_left) / width if x_step is None else x_step
    y_step = (y_top - y_bottom) / height if y_step is None else y_step
    if not (np.isfinite([x_left, x_right, y_top, y_bottom]).all() and x_step > 0 and y_step > 0):
        raise _Bad("where: corner coordinates cannot be projected, or xscale/yscale is not positive")
    for axis, extent, size, step in (
        ("x", x_right - x_left, width, x_step),
        ("y", y_top - y_bottom, height, y_step),
    ):
        if abs(extent - size * step) > CORNER_TOLERANCE_PX * step:
            raise _Bad(
                f"where: the corners span {extent:.6g} in {axis} but {axis}size * {axis}scale = "
                f"{size * step:.6g}"
            )
    return Grid.from_crs(crs, (height, width), x_left, y_top, x_step, y_step, projdef=projdef)


def _accumulation_h(what: dict[str, Any]) -> float:
    """ACRR accumulation period in hours, from startdate/starttime to enddate/endtime."""
    start_s = _datetime_s(what, "startdate", "starttime", "dataset what")
    end_s = _datetime_s(what, "enddate", "endtime", "dataset what")
    if end_s <= start_s:
        raise _Bad(
            f"ACRR accumulation period ends {end_s - start_s} s after it starts: need a positive period"
        )
    return (end_s - start_s) / 3600.0


def _datetime_s(what: dict[str, Any], date_key: str, time_key: str, where: str) -> int:
    """``YYYYMMDD`` + ``HHmmss`` attributes -> epoch seconds (UTC)."""
    date, time = _text(what.get(date_key, b"")), _text(what.get(time_key, b""))
    try:
        when = datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise _Bad(f"{where} {date_key}/{time_key} = {date!r}/{time!r}: need YYYYMMDD and HHmmss") from None
    return int(when.timestamp())


def _attrs(
    group: h5py.Group, name: str, cache: dict | None = None, keys: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """The attributes of ``group[name]`` as a dict ({} when there is no such group): all of them, or
    those of ``keys`` that exist; ``cache`` keeps them by path for the next call (with the same keys)."""
    key = f"{group.name}/{name}"
    if cache is not None and key in cache:
        return cache[key]
    item = group.get(name)
    if not isinstance(item, h5py.Group):
        attrs = {}
    elif keys is None:
        attrs = dict(item.attrs)
    else:
        manager = item.attrs
        attrs = {k: manager[k] for k in keys if k in manager}
    if cache is not None:
        cache[key] = attrs
    return attrs


def _text(value: Any) -> str:
    """An HDF5 string attribute (fixed-length bytes, as ODIM writes them, or str) -> str."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("ascii", errors="replace").rstrip("\x00").strip()
    return str(value).strip()


def _number(attrs: dict[str, Any], key: str, default):
    """A numeric attribute as float, or ``default`` when absent."""
    if key not in attrs:
        return default
    try:
        return float(np.asarray(attrs[key]).reshape(()))
    except (TypeError, ValueError):
        raise _Bad(f"attribute {key} = {attrs[key]!r} is not a number") from None


def _required(attrs: dict[str, Any], key: str) -> float:
    value = _number(attrs, key, None)
    if value is None:
        raise _Bad(f"where/{key} is missing: cannot place the grid")
    return value


class OdimSource(GridSource):
    """Archives of ODIM_H5 Cartesian products (``COMP``/``IMAGE``), any folder layout, one nominal time
    per file; options: ``variable`` (the quantity, :data:`QUANTITIES`), crop, block, Z-R relation
    (see :class:`~pipeline.sources.gridded.GridSource`)."""

    name = "odim"
    title = "ODIM_H5"
    hint = "an ODIM_H5 archive (HDF5 files with what/object COMP or IMAGE)"
    variable_label = "quantity"

    def claims(self, root: Path, rel: str) -> bool:
        return is_odim(Path(root) / rel)

    def scan(self, path: Path, variable: str | None) -> FileInfo:
        return scan_file(path, quantity=variable, max_pixels=self.max_pixels)

    def read_raw(self, path: Path, indices: list[int]) -> list[RawFrame]:
        return [
            read_frame(path, index, quantity=self.variable, zr=self.zr, max_pixels=self.max_pixels)
            for index in indices
        ]
