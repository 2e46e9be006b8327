"""Conversions between radar pixel values, reflectivity (dBZ) and rain rate (mm/h).

HKO-7 encoding: ``dBZ = 70 * pixel - 10`` with ``pixel`` in [0, 1] (stored as
``round(255 * pixel)``), and a Marshall-Palmer-type Z-R relation
``Z = a * R ** b`` with ``a = 58.53``, ``b = 1.56`` where ``Z = 10 ** (dBZ / 10)``
is in mm^6/m^3 and ``R`` in mm/h.

Every function accepts numpy arrays, torch tensors or Python floats and returns
the same kind (floats come back as numpy scalars).
"""

from __future__ import annotations

import math

import numpy as np

ZR_A = 58.53
ZR_B = 1.56
DBZ_SCALE = 70.0
DBZ_OFFSET = -10.0


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _clip01(x):
    if _is_torch(x):
        return x.clamp(0.0, 1.0)
    return np.clip(x, 0.0, 1.0)


def _log10(x):
    if _is_torch(x):
        return x.log10()
    return np.log10(x)


def _pow10(x):
    if _is_torch(x):
        return 10.0**x
    return np.power(10.0, x)


def pixel_to_dbz(pixel):
    """Pixel value in [0, 1] -> reflectivity in dBZ (``70 * pixel - 10``)."""
    return pixel * DBZ_SCALE + DBZ_OFFSET


def dbz_to_pixel(dbz):
    """Reflectivity in dBZ -> pixel value, clipped to [0, 1]."""
    return _clip01((dbz - DBZ_OFFSET) / DBZ_SCALE)


def dbz_to_rainfall(dbz, a: float = ZR_A, b: float = ZR_B):
    """Reflectivity in dBZ -> rain rate in mm/h via ``Z = a R^b`` (default: the HKO-7 a, b)."""
    return _pow10((dbz - 10.0 * math.log10(a)) / (10.0 * b))


def rainfall_to_dbz(rain_mm_h, a: float = ZR_A, b: float = ZR_B):
    """Rain rate in mm/h (> 0) -> reflectivity in dBZ via ``Z = a R^b`` (default: the HKO-7 a, b)."""
    return 10.0 * math.log10(a) + 10.0 * b * _log10(rain_mm_h)


def pixel_to_rainfall(pixel):
    """Pixel value in [0, 1] -> rain rate in mm/h."""
    return dbz_to_rainfall(pixel_to_dbz(pixel))


def rainfall_to_pixel(rain_mm_h):
    """Rain rate in mm/h (> 0) -> pixel value in [0, 1] (clipped)."""
    return dbz_to_pixel(rainfall_to_dbz(rain_mm_h))
