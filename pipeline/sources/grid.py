"""Format-independent radar-grid knowledge: the grid a frame lies on, a frame as a reader returns it,
the Z-R relation with configurable coefficients, crop and block-average.

Conventions
-----------
- **Orientation:** every array is north-up, as ODIM_H5 Cartesian images are stored: row 0 is the top
  (northern) edge of the grid, column 0 the left (western) edge. Readers flip arrays that are stored
  otherwise (a CF-NetCDF ``y`` coordinate that increases with the row index).
- **Values:** readers return reflectivity in dBZ as float32 (H, W):
  ``NaN`` where the pixel is not valid (``mask`` False: outside the radar range, ``nodata``),
  ``-inf`` where the pixel is valid but holds no echo (ODIM ``undetect``, a rain rate of 0), so that
  ``Z = 10 ** (dBZ / 10) = 0`` and ``R = 0`` there.
- **Block averages** are taken in rain rate (mm/h, through the Z-R relation), over the valid pixels of
  each block: rain rate is the quantity the pipeline is scored on (CSI at mm/h thresholds, the
  balanced loss's mm/h weights), and its block mean conserves the water volume that fell, where a
  mean of dBZ (a geometric mean of Z) would underestimate it. See :func:`block_average_dbz`.
- **Time:** int seconds since the Unix epoch, UTC.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyproj

from pipeline.errors import NowcastError, Validated
from trajgru import units

#: Relative tolerance (in pixels) within which two grids are the same grid.
GRID_TOLERANCE_PX = 1e-3
#: Largest frame (H * W pixels) a reader accepts by default: 5000 x 5000, six times the OPERA composite
#: (1900 x 2200). A file declaring more is refused from its metadata, before any pixel is decompressed
#: (a few KB of gzip can declare 40000 x 40000).
MAX_FRAME_PIXELS = 25_000_000


def frame_size_problem(height: int, width: int, max_pixels: int = MAX_FRAME_PIXELS) -> str | None:
    """Why a declared (height, width) frame is refused (one line), or None when H * W <= ``max_pixels``."""
    if int(height) * int(width) <= max_pixels:
        return None
    return (
        f"declares {height}x{width} = {int(height) * int(width):,} pixels per frame, more than the limit "
        f"of {max_pixels:,} (--max-frame-pixels): refused before reading"
    )


# ---------------------------------------------------------------------------------------------------
# Z-R relation
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZR(Validated):
    """A Z-R relation ``Z = a * R ** b`` (Z in mm^6/m^3, R in mm/h).

    The default is the HKO-7 one of :mod:`trajgru.units` (a = 58.53, b = 1.56); Marshall-Palmer is
    ``ZR(200, 1.6)``.
    """

    a: float = units.ZR_A
    b: float = units.ZR_B

    def rules(self):
        yield self.a > 0 and self.b > 0, f"a Z-R relation needs a > 0 and b > 0, got a={self.a}, b={self.b}"

    @classmethod
    def parse(cls, text: str) -> ZR:
        """``"A,B"`` (as typed after ``--zr``) -> ZR. Raises NowcastError (exit code 2) otherwise."""
        try:
            a_text, b_text = text.split(",")
            return cls(float(a_text), float(b_text))
        except ValueError:
            raise NowcastError(
                f"cannot read the Z-R relation {text!r}: give A,B for Z = A*R^B, e.g. --zr 200,1.6",
                exit_code=2,
            ) from None

    def rain_to_dbz(self, rain_mm_h: np.ndarray) -> np.ndarray:
        """Rain rate (mm/h, any shape, >= 0) -> reflectivity (dBZ): ``10 log10(a) + 10 b log10(R)``
        (:func:`trajgru.units.rainfall_to_dbz`). R = 0 gives ``-inf`` (no echo); NaN stays NaN."""
        with np.errstate(divide="ignore"):
            return units.rainfall_to_dbz(np.asarray(rain_mm_h, dtype=np.float64), a=self.a, b=self.b)

    def dbz_to_rain(self, dbz: np.ndarray) -> np.ndarray:
        """Reflectivity (dBZ, any shape) -> rain rate (mm/h): ``(10 ** (dBZ / 10) / a) ** (1 / b)``
        (:func:`trajgru.units.dbz_to_rainfall`). ``-inf`` gives 0; NaN stays NaN."""
        return units.dbz_to_rainfall(np.asarray(dbz, dtype=np.float64), a=self.a, b=self.b)

    def to_attrs(self) -> dict[str, float]:
        """``{"zr_a": a, "zr_b": b}`` for store attributes and reports."""
        return {"zr_a": float(self.a), "zr_b": float(self.b)}


# ---------------------------------------------------------------------------------------------------
# Grid
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A regular, north-up 2-D grid in a map projection.

    Coordinates are in the CRS's axis unit: metres for a projected CRS (ODIM ``projdef``, CF
    ``projection_x_coordinate``), degrees for a geographic one (CF ``latitude_longitude``).

    Attributes
    ----------
    crs_wkt : str
        The projection as WKT2 (pyproj).
    shape : tuple of int
        (H, W) in pixels.
    x_left : float
        x of the left edge of column 0.
    y_top : float
        y of the top edge of row 0 (y decreases with the row index).
    x_step : float
        Pixel width, > 0.
    y_step : float
        Pixel height, > 0.
    projdef : str
        The projection as a PROJ string, as the source wrote it (ODIM ``where/projdef``) or as pyproj
        derives it; informative only (``crs_wkt`` is the definition).
    """

    crs_wkt: str
    shape: tuple[int, int]
    x_left: float
    y_top: float
    x_step: float
    y_step: float
    projdef: str = ""

    @classmethod
    def from_crs(
        cls,
        crs: Any,
        shape: tuple[int, int],
        x_left: float,
        y_top: float,
        x_step: float,
        y_step: float,
        projdef: str | None = None,
    ) -> Grid:
        """A grid from anything ``pyproj.CRS`` accepts (PROJ string, WKT, EPSG code, CRS)."""
        crs = pyproj.CRS(crs)
        if projdef is None:
            projdef = _proj4(crs)
        return cls(
            crs.to_wkt(),
            (int(shape[0]), int(shape[1])),
            float(x_left),
            float(y_top),
            float(x_step),
            float(y_step),
            projdef,
        )

    @property
    def crs(self) -> pyproj.CRS:
        """The projection as a ``pyproj.CRS``."""
        return pyproj.CRS.from_wkt(self.crs_wkt)

    @property
    def x_right(self) -> float:
        """x of the right edge of the last column."""
        return self.x_left + self.shape[1] * self.x_step

    @property
    def y_bottom(self) -> float:
        """y of the bottom edge of the last row."""
        return self.y_top - self.shape[0] * self.y_step

    def x_centres(self) -> np.ndarray:
        """float64 (W,) x of the column centres, increasing (west -> east)."""
        return self.x_left + (np.arange(self.shape[1]) + 0.5) * self.x_step

    def y_centres(self) -> np.ndarray:
        """float64 (H,) y of the row centres, decreasing (row 0 = north)."""
        return self.y_top - (np.arange(self.shape[0]) + 0.5) * self.y_step

    def corners_lonlat(self) -> dict[str, float]:
        """Longitude/latitude (degrees) of the outer corners, named as ODIM does
        (``LL_lon``, ``LL_lat``, ``UL_lon``, ... ``LR_lat``)."""
        to_lonlat = pyproj.Transformer.from_crs(self.crs, "OGC:CRS84", always_xy=True)
        corners = {
            "LL": (self.x_left, self.y_bottom),
            "UL": (self.x_left, self.y_top),
            "UR": (self.x_right, self.y_top),
            "LR": (self.x_right, self.y_bottom),
        }
        out = {}
        for name, (x, y) in corners.items():
            lon, lat = to_lonlat.transform(x, y)
            out[f"{name}_lon"], out[f"{name}_lat"] = float(lon), float(lat)
        return out

    def difference(self, other: Grid, tol_px: float = GRID_TOLERANCE_PX) -> str | None:
        """None when ``other`` is the same grid (shape, projection, origin and pixel size within
        ``tol_px`` pixels), else one line saying how it differs (a reason for a bad frame)."""
        if tuple(self.shape) != tuple(other.shape):
            return (
                f"grid is {other.shape[0]}x{other.shape[1]} pixels, expected {self.shape[0]}x{self.shape[1]}"
            )
        # all four edges within tol_px pixels: the origin and the pixel size (times the grid size)
        mine = (self.x_left, self.y_top, self.x_right, self.y_bottom)
        theirs = (other.x_left, other.y_top, other.x_right, other.y_bottom)
        step = min(self.x_step, self.y_step)
        if any(abs(a - b) > tol_px * step for a, b in zip(mine, theirs)):
            return (
                "grid origin or pixel size differs: x_left, y_top, x_step, y_step = "
                f"{_fmt((other.x_left, other.y_top, other.x_step, other.y_step))}, expected "
                f"{_fmt((self.x_left, self.y_top, self.x_step, self.y_step))}"
            )
        if not _same_projection(self, other, tol_px):
            return (
                f"grid projection differs: {other.projdef or other.crs_wkt!r}, "
                f"expected {self.projdef or self.crs_wkt!r}"
            )
        return None

    def matches(self, other: Grid, tol_px: float = GRID_TOLERANCE_PX) -> bool:
        """True when :meth:`difference` finds none."""
        return self.difference(other, tol_px) is None

    def crop(self, box: tuple[int, int, int, int]) -> Grid:
        """The grid of pixels ``[y0:y1, x0:x1]`` for ``box = (x0, y0, x1, y1)`` (see :func:`check_box`)."""
        x0, y0, x1, y1 = check_box(box, self.shape)
        return replace(
            self,
            shape=(y1 - y0, x1 - x0),
            x_left=self.x_left + x0 * self.x_step,
            y_top=self.y_top - y0 * self.y_step,
        )

    def block(self, n: int) -> Grid:
        """The grid of N x N blocks (see :func:`block_average_dbz`): trailing rows/columns that do not
        fill a whole block are dropped."""
        h, w = check_block(n, self.shape)
        return replace(self, shape=(h // n, w // n), x_step=self.x_step * n, y_step=self.y_step * n)

    def to_attrs(self) -> dict[str, Any]:
        """A JSON-serialisable description (for store attributes): the fields plus the corner
        longitudes/latitudes and the coordinate unit."""
        attrs = {
            "crs_wkt": self.crs_wkt,
            "projdef": self.projdef,
            "shape": [int(s) for s in self.shape],
            "x_left": self.x_left,
            "y_top": self.y_top,
            "x_step": self.x_step,
            "y_step": self.y_step,
            "xy_unit": self.xy_unit,
        }
        attrs.update(self.corners_lonlat())
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Grid:
        """The inverse of :meth:`to_attrs` (extra keys are ignored)."""
        return cls(
            attrs["crs_wkt"],
            (int(attrs["shape"][0]), int(attrs["shape"][1])),
            float(attrs["x_left"]),
            float(attrs["y_top"]),
            float(attrs["x_step"]),
            float(attrs["y_step"]),
            attrs.get("projdef", ""),
        )

    @property
    def xy_unit(self) -> str:
        """``"m"`` for a projected CRS, ``"degrees"`` for a geographic one (the unit of x/y)."""
        return "degrees" if self.crs.is_geographic else "m"

    def to_cf(self) -> tuple[str, dict[str, Any]]:
        """The CF grid-mapping variable for this grid: ``(variable name, attributes)``.

        The name is the CF ``grid_mapping_name`` (``polar_stereographic``, ``lambert_azimuthal_equal_area``,
        ...) or ``"crs"`` when CF has no name for the projection; the attributes always include
        ``crs_wkt`` (CF 1.7+).
        """
        attrs = self.crs.to_cf()
        name = str(attrs.get("grid_mapping_name", "crs"))
        if name == "polar_stereographic" and "latitude_of_projection_origin" not in attrs:
            # CF requires it (+90 or -90); pyproj leaves it out for variant B (standard_parallel).
            attrs["latitude_of_projection_origin"] = (
                90.0 if attrs.get("standard_parallel", 90.0) >= 0 else -90.0
            )
        return name, attrs


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in values) + ")"


def _proj4(crs: pyproj.CRS) -> str:
    """A PROJ string for ``crs`` (informative), without pyproj's lossy-conversion warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return crs.to_proj4() or ""


def _same_projection(a: Grid, b: Grid, tol_px: float) -> bool:
    """True when both grids' projections put the same longitude/latitude at the same x/y: checked on
    the corners and the centre of ``a`` (robust to WKT differences that do not change the maths,
    such as axis names from a CF round trip)."""
    crs_a, crs_b = a.crs, b.crs
    if crs_a.equals(crs_b, ignore_axis_order=True):
        return True
    xs = np.array([a.x_left, a.x_right, a.x_left, a.x_right, (a.x_left + a.x_right) / 2])
    ys = np.array([a.y_top, a.y_top, a.y_bottom, a.y_bottom, (a.y_top + a.y_bottom) / 2])
    try:
        lon, lat = pyproj.Transformer.from_crs(crs_a, "OGC:CRS84", always_xy=True).transform(xs, ys)
        xb, yb = pyproj.Transformer.from_crs("OGC:CRS84", crs_b, always_xy=True).transform(lon, lat)
    except pyproj.exceptions.ProjError:
        return False
    err = np.maximum(np.abs(xb - xs), np.abs(yb - ys))
    return bool(np.all(np.isfinite(err)) and err.max() <= tol_px * min(a.x_step, a.y_step))


# ---------------------------------------------------------------------------------------------------
# A frame as a reader returns it
# ---------------------------------------------------------------------------------------------------


@dataclass
class RawFrame:
    """One time of one file as a format reader returns it, before the store's pixel encoding.

    Attributes
    ----------
    time_s : int or None
        Nominal time, seconds since the Unix epoch (UTC); None when it could not be read.
    dbz : numpy.ndarray or None
        float32 (H, W) reflectivity in dBZ, north-up; NaN where ``mask`` is False, ``-inf`` for a
        valid pixel with no echo. None for a bad frame.
    mask : numpy.ndarray or None
        bool (H, W), True = valid. None for a bad frame.
    grid : Grid or None
        Where the pixels are. None for a bad frame.
    quantity : str
        What the file held (``"DBZH"``, ``"TH"``, ``"RATE"``, ``"ACRR"``, or a NetCDF variable name).
    reason : str or None
        One line saying why the frame cannot be used; None for a good frame.
    """

    time_s: int | None
    dbz: np.ndarray | None
    mask: np.ndarray | None
    grid: Grid | None
    quantity: str = ""
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True for a usable frame."""
        return self.reason is None

    @classmethod
    def bad(cls, reason: str, time_s: int | None = None, quantity: str = "") -> RawFrame:
        """A frame that cannot be used, and why."""
        return cls(time_s, None, None, None, quantity, reason)


@dataclass(frozen=True)
class FileInfo:
    """What a file holds, read from its metadata only (no pixel data): for listing an archive.

    Attributes
    ----------
    times_s : tuple of int
        Nominal time of each frame in the file (seconds since the epoch, UTC), in file order.
    grid : Grid or None
        The file's grid.
    quantity : str
        The quantity or variable that will be read.
    reason : str or None
        Why the file cannot be used (then ``times_s`` is empty); None for a good file.
    """

    times_s: tuple[int, ...] = ()
    grid: Grid | None = None
    quantity: str = ""
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True for a usable file."""
        return self.reason is None

    @classmethod
    def bad(cls, reason: str) -> FileInfo:
        """A file that cannot be used, and why."""
        return cls((), None, "", reason)


# ---------------------------------------------------------------------------------------------------
# Crop and block average
# ---------------------------------------------------------------------------------------------------


def check_box(box: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Validate a crop box in pixels: ``(x0, y0, x1, y1)``, columns ``x0 <= x < x1`` and rows
    ``y0 <= y < y1``, counted from the top-left (north-west) pixel, inside ``shape`` (H, W).

    Returns the box as ints; raises NowcastError (exit code 2) saying what is allowed otherwise.
    """
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise NowcastError(f"a crop box is x0,y0,x1,y1 in pixels, got {box!r}", exit_code=2) from None
    h, w = shape
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise NowcastError(
            f"crop box {x0},{y0},{x1},{y1} does not fit the {h}x{w} grid: need "
            f"0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (x = column, y = row from the top)",
            exit_code=2,
        )
    return x0, y0, x1, y1


def check_block(n: int, shape: tuple[int, int]) -> tuple[int, int]:
    """Validate a block size N for a grid of ``shape`` (H, W); returns the (H, W) that whole blocks
    cover (``H - H % N``, ``W - W % N``). Raises NowcastError (exit code 2) otherwise."""
    h, w = shape
    if int(n) != n or n < 1 or n > min(h, w):
        raise NowcastError(
            f"block size must be an integer from 1 to {min(h, w)} for a {h}x{w} grid, got {n}", exit_code=2
        )
    n = int(n)
    return h - h % n, w - w % n


def crop_frame(frame: RawFrame, box: tuple[int, int, int, int]) -> RawFrame:
    """``frame`` cut to ``box = (x0, y0, x1, y1)`` (pixels, see :func:`check_box`); bad frames pass."""
    if not frame.ok:
        return frame
    x0, y0, x1, y1 = check_box(box, frame.dbz.shape)
    return replace(
        frame,
        dbz=frame.dbz[y0:y1, x0:x1].copy(),
        mask=frame.mask[y0:y1, x0:x1].copy(),
        grid=frame.grid.crop(box),
    )


def block_average_dbz(
    dbz: np.ndarray, mask: np.ndarray, n: int, zr: ZR = ZR()
) -> tuple[np.ndarray, np.ndarray]:
    """Average N x N blocks of pixels, in rain rate, over the valid pixels of each block.

    ``R = zr.dbz_to_rain(dbz)`` (mm/h; no echo = 0) is averaged over the pixels of each block whose
    mask is True, and the mean goes back to dBZ. A block with no valid pixel is masked (NaN, False).
    Trailing rows/columns that do not fill a whole block are dropped. The result depends on ``zr.b``
    only (``a`` cancels): it is the power mean of Z with exponent 1/b.

    Parameters
    ----------
    dbz : float (H, W) reflectivity in dBZ; ``-inf`` = no echo; values under a False mask are ignored.
    mask : bool (H, W), True = valid.
    n : block size in pixels.
    zr : the Z-R relation.

    Returns
    -------
    dbz : float32 (H // n, W // n), NaN where masked, ``-inf`` where the block has valid pixels but no echo.
    mask : bool (H // n, W // n).
    """
    h, w = check_block(n, dbz.shape)
    rain_mm_h = np.where(mask, zr.dbz_to_rain(dbz), 0.0)[:h, :w]
    valid = np.asarray(mask, dtype=bool)[:h, :w]
    rain_sum = rain_mm_h.reshape(h // n, n, w // n, n).sum(axis=(1, 3))
    count = valid.reshape(h // n, n, w // n, n).sum(axis=(1, 3))
    out_mask = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_mm_h = rain_sum / count
    out_dbz = np.where(out_mask, zr.rain_to_dbz(np.where(out_mask, mean_mm_h, 1.0)), np.nan)
    return out_dbz.astype(np.float32), out_mask


def block_frame(frame: RawFrame, n: int, zr: ZR = ZR()) -> RawFrame:
    """``frame`` block-averaged N x N (:func:`block_average_dbz`) on the coarser grid; bad frames pass."""
    if not frame.ok or n == 1:
        return frame
    dbz, mask = block_average_dbz(frame.dbz, frame.mask, n, zr)
    return replace(frame, dbz=dbz, mask=mask, grid=frame.grid.block(n))


def fit_frame(
    frame: RawFrame,
    grid: Grid | None = None,
    box: tuple[int, int, int, int] | None = None,
    n: int = 1,
    zr: ZR = ZR(),
) -> RawFrame:
    """Crop (``box``), then block-average (``n``), then check the result lies on ``grid``.

    A frame whose grid differs from ``grid`` (when given) becomes bad with the difference as reason.
    """
    if box is not None:
        frame = crop_frame(frame, box)
    frame = block_frame(frame, n, zr)
    if frame.ok and grid is not None:
        diff = grid.difference(frame.grid)
        if diff is not None:
            return RawFrame.bad(diff, frame.time_s, frame.quantity)
    return frame
