"""Exceedance probabilities P(rain >= t) from deterministic forecasts and from ensembles.

* An ensemble (M > 1 members): the fraction of members at or above ``t`` at each pixel.
* A deterministic forecast (M = 1): the *neighbourhood probability* (Theis et al. 2005; Schwartz et al.
  2010): the fraction of pixels at or above ``t`` in the ``n x n`` square centred on each pixel, counted
  over the pixels inside the domain (the square is cut at the edges, not padded with dry pixels).
  ``n = 1`` is the binary forecast (0 or 1).

:data:`DEFAULT_NEIGHBOURHOOD_PX` was chosen on the validation split of the benchmark store by the Brier
skill score at >= 5 mm/h (README, "Exceedance probabilities").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import uniform_filter

from pipeline.errors import NowcastError

PROBABILITY_THRESHOLDS_MM_H = (1.0, 5.0, 10.0)
DEFAULT_NEIGHBOURHOOD_PX = 25


def neighbourhood_fraction(event: np.ndarray, size_px: int) -> np.ndarray:
    """Fraction of true pixels in the ``size_px`` square around each pixel of the last two axes,
    counting only pixels inside the array. event: bool or 0/1 (..., H, W) -> float64 (..., H, W)."""
    event = np.asarray(event, dtype=np.float64)
    if int(size_px) <= 1:
        return event
    axes = (event.ndim - 2, event.ndim - 1)
    size = [1] * event.ndim
    size[axes[0]] = size[axes[1]] = int(size_px)
    count = uniform_filter(event, size=size, mode="constant", cval=0.0)
    inside = uniform_filter(np.ones(event.shape[-2:]), size=int(size_px), mode="constant", cval=0.0)
    return np.clip(count / inside, 0.0, 1.0)


def exceedance_probabilities(
    members_mm_h: np.ndarray,
    thresholds_mm_h: Sequence[float] = PROBABILITY_THRESHOLDS_MM_H,
    neighbourhood_px: int = DEFAULT_NEIGHBOURHOOD_PX,
) -> np.ndarray:
    """P(rain >= t) from members (M, ..., H, W) in mm/h -> float64 (..., n_thresholds, H, W) in [0, 1].

    M > 1: the member fraction (``neighbourhood_px`` is ignored); M = 1: the neighbourhood probability
    over ``neighbourhood_px`` (see the module docstring). NaN rain counts as below every threshold."""
    members = np.nan_to_num(np.asarray(members_mm_h, dtype=np.float64), nan=0.0)
    per_threshold = []
    for threshold in thresholds_mm_h:
        event = members >= float(threshold)
        if members.shape[0] > 1:
            per_threshold.append(event.mean(axis=0))
        else:
            per_threshold.append(neighbourhood_fraction(event[0], neighbourhood_px))
    return np.stack(per_threshold, axis=-3)


# --------------------------------------------------------------------------- CF variables
#: The names and attributes of the exceedance-probability variables that pipeline.outputs writes (the CF
#: convention of the Met Office's IMPROVER: a probability variable with the threshold as a coordinate of
#: the thresholded quantity, ``spp__relative_to_threshold`` saying which side of it counts).
PROBABILITY_VAR = "probability_of_rainfall_rate_above_threshold"
THRESHOLD_VAR = "threshold"
PROBABILITY_ATTRS = {
    "long_name": "probability of rainfall rate at or above threshold",
    "units": "1",
    "valid_min": 0.0,
    "valid_max": 1.0,
}
THRESHOLD_ATTRS = {
    "standard_name": "rainfall_rate",
    "long_name": "rainfall rate threshold",
    "units": "mm h-1",
    "spp__relative_to_threshold": "greater_than_or_equal_to",
}


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"1,5,10"`` -> (1.0, 5.0, 10.0) mm/h. Raises NowcastError (exit code 2) unless positive numbers
    in increasing order."""
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values) or list(values) != sorted(set(values)):
        raise NowcastError(
            f"cannot read the thresholds {text!r}: give rain rates in mm/h, positive and increasing, "
            "comma-separated (e.g. --probabilities 1,5,10)",
            exit_code=2,
        )
    return values
