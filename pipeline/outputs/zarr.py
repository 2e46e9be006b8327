"""Zarr output: a Zarr v3 group ``forecast.zarr`` with ``forecast`` uint8 (out_len, H, W) in the
stored encoding, ``lead_time_s`` int64 (out_len,) and, when known, ``time`` int64 (out_len,) epoch
seconds; its attributes say which model made it (:meth:`Forecast.attrs`). With exceedance probabilities, also
the CF variable ``probability_of_rainfall_rate_above_threshold`` float32 (time, threshold, y, x) and its
``threshold`` coordinate (mm/h). Arrays carry dimension names, so ``xarray.open_zarr`` reads the group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline import probabilities, viz
from pipeline.outputs.base import Forecast, OutputFormat

ZARR_NAME = "forecast.zarr"
#: Attribute that marks a Zarr group as a forecast written here (only such a folder is replaced).
_ZARR_MARK = "nowcast_forecast"


class ZarrOutput(OutputFormat):
    name = "zarr"

    def file_names(self, forecast: Forecast) -> list[str]:
        return [ZARR_NAME]

    def write(self, folder: Path, forecast: Forecast) -> list[Path]:
        path = Path(folder) / ZARR_NAME
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        values = viz.pixel_to_u8(forecast.forecast)
        n, h, w = values.shape
        dims = ("time", "y", "x")
        group.create_array(
            "forecast", shape=(n, h, w), dtype="uint8", chunks=(1, h, w), dimension_names=dims
        )[:] = values
        lead = group.create_array("lead_time_s", shape=(n,), dtype="int64", dimension_names=("time",))
        lead[:] = forecast.lead_times_s
        if forecast.times_s is not None:
            times = group.create_array("time", shape=(n,), dtype="int64", dimension_names=("time",))
            times[:] = np.asarray(forecast.times_s, np.int64)
        if forecast.probabilities is not None:
            _write_probabilities(group, forecast.probabilities, forecast.thresholds_mm_h)
        group.attrs.update({**forecast.attrs(), _ZARR_MARK: True})
        return [path]

    def replaceable(self, path: Path) -> bool:
        try:
            return bool(zarr.open_group(str(path), mode="r").attrs.get(_ZARR_MARK))
        except Exception:  # noqa: BLE001 (not a zarr group at all)
            return False


def _write_probabilities(group, values: np.ndarray, thresholds_mm_h) -> None:
    """Exceedance probabilities float (out_len, n, H, W) (NaN = missing) and their thresholds (mm/h)."""
    n, k, h, w = values.shape
    threshold = group.create_array(
        probabilities.THRESHOLD_VAR,
        shape=(k,),
        dtype="float32",
        dimension_names=(probabilities.THRESHOLD_VAR,),
        attributes=probabilities.THRESHOLD_ATTRS,
    )
    threshold[:] = np.asarray(thresholds_mm_h, dtype=np.float32)
    prob = group.create_array(
        probabilities.PROBABILITY_VAR,
        shape=(n, k, h, w),
        dtype="float32",
        chunks=(1, k, h, w),
        fill_value=np.nan,
        dimension_names=("time", probabilities.THRESHOLD_VAR, "y", "x"),
        attributes=probabilities.PROBABILITY_ATTRS,
    )
    prob[:] = values.astype(np.float32)
