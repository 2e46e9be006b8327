"""Small ODIM_H5 and CF-NetCDF archives for ingest tests, written with the spec-following writers of
``tests/pipeline/sources/_files.py``, and the frames a store must hold after ingesting them.

Values are chosen so that the stored pixel is known exactly: dBZ = -10 + 70 * p / 255 for an integer
p in 0..255 (ODIM: raw p, gain 70/255, offset -10; NetCDF: the dBZ as float32), so the store holds p
where the mask is True and 0 where it is False (``nodata`` / NaN).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.pipeline.sources._files import CfSpec, GridSpec, OdimData, epoch_s, write_cf, write_odim

T0_S = epoch_s("20240601000000")
IV = 300  # a DWD-like 5-minute cadence
NODATA = 65535


@dataclass
class GriddedArchive:
    """An archive's root and what the store must hold per time: (pixels uint8, mask bool)."""

    root: Path
    size: int
    grid: GridSpec
    frames: dict = field(default_factory=dict)  # time_s -> uint8 (H, W), 0 where masked
    masks: dict = field(default_factory=dict)  # time_s -> bool (H, W)

    def times_s(self) -> np.ndarray:
        return np.asarray(sorted(self.frames), dtype=np.int64)


def pixels(time_s: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic (pixel uint8 (H, W), mask bool (H, W)) pair for a time: a moving blob + noise,
    valid inside a disc."""
    rng = np.random.default_rng(time_s % (2**32))
    y, x = np.mgrid[0:size, 0:size]
    k = (time_s // IV) % 97
    blob = 200.0 * np.exp(-(((x - (k * 3) % size) ** 2 + (y - size / 2) ** 2) / (2 * (size / 6) ** 2)))
    pix = np.clip(blob + rng.integers(0, 40, (size, size)), 0, 255).astype(np.uint8)
    mask = (x - size / 2) ** 2 + (y - size / 2) ** 2 <= (size / 2) ** 2
    return pix, mask


def dbz(pix: np.ndarray) -> np.ndarray:
    """The reflectivity whose stored pixel is ``pix``."""
    return -10.0 + 70.0 * pix.astype(np.float64) / 255.0


def stamp(time_s: int) -> str:
    """Epoch seconds -> ``YYYYMMDDHHmmss`` (UTC)."""
    return np.datetime64(int(time_s), "s").astype(object).strftime("%Y%m%d%H%M%S")


def write_odim_frame(
    path: Path, time_s: int, size: int, grid: GridSpec | None = None, pix=None, mask=None
) -> Path:
    """One ODIM_H5 composite (DBZH, uint16 raw, nodata outside the mask) for ``time_s``."""
    if pix is None:
        pix, mask = pixels(time_s, size)
    raw = np.where(mask, pix.astype(np.uint16), np.uint16(NODATA))
    when = stamp(time_s)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_odim(
        path,
        [OdimData("DBZH", raw, gain=70.0 / 255.0, offset=-10.0, nodata=NODATA, undetect=None)],
        grid=grid or GridSpec(shape=(size, size)),
        date=when[:8],
        time=when[8:],
    )


def odim_path(root: Path, time_s: int) -> Path:
    """Where the archive keeps a time's file: ``YYYY/MM/DD/T_PAAH_C_YYYYMMDDHHmmss.h5`` (names are not read)."""
    when = stamp(time_s)
    return root / when[:4] / when[4:6] / when[6:8] / f"T_PAAH_C_{when}.h5"


def odim_archive(root: Path, n: int, size: int = 32, missing=(), start_s: int = T0_S) -> GriddedArchive:
    """``n`` slots every 5 minutes from ``start_s``, one ODIM file each, except the slots in ``missing``."""
    arch = GriddedArchive(Path(root), size, GridSpec(shape=(size, size)))
    for k in range(n):
        if k not in set(missing):
            add_odim(arch, start_s + k * IV)
    return arch


def add_odim(arch: GriddedArchive, time_s: int) -> None:
    """Write one good ODIM frame into the archive and record what the store must hold."""
    write_odim_frame(odim_path(arch.root, time_s), time_s, arch.size, arch.grid)
    pix, mask = pixels(time_s, arch.size)
    arch.frames[time_s], arch.masks[time_s] = np.where(mask, pix, 0).astype(np.uint8), mask


def write_netcdf_file(path: Path, times_s, size: int, grid: GridSpec | None = None) -> Path:
    """One CF-NetCDF file holding reflectivity (dBZ, NaN outside the mask) at ``times_s``."""
    values = []
    for t in times_s:
        pix, mask = pixels(int(t), size)
        values.append(np.where(mask, dbz(pix), np.nan))
    path.parent.mkdir(parents=True, exist_ok=True)
    times = np.asarray(times_s, dtype=np.float64) - T0_S
    return write_cf(
        path,
        CfSpec(
            np.stack(values),
            times,
            time_units="seconds since 2024-06-01 00:00:00",
            grid=grid or GridSpec(shape=(size, size)),
        ),
    )


def netcdf_archive(
    root: Path, n: int, size: int = 32, per_file: int = 12, missing=(), start_s: int = T0_S
) -> GriddedArchive:
    """``n`` slots every 5 minutes from ``start_s``, ``per_file`` slots per NetCDF file (``hourly/...nc``),
    without the slots in ``missing``."""
    arch = GriddedArchive(Path(root), size, GridSpec(shape=(size, size)))
    for k0 in range(0, n, per_file):
        add_netcdf(
            arch, [start_s + k * IV for k in range(k0, min(n, k0 + per_file)) if k not in set(missing)]
        )
    return arch


def add_netcdf(arch: GriddedArchive, times_s: list[int]) -> Path:
    """Write one NetCDF file with these times into the archive and record what the store must hold."""
    path = arch.root / "hourly" / f"radar_{stamp(times_s[0])}.nc"
    write_netcdf_file(path, times_s, arch.size, arch.grid)
    for t in times_s:
        pix, mask = pixels(t, arch.size)
        arch.frames[t], arch.masks[t] = np.where(mask, pix, 0).astype(np.uint8), mask
    return path
