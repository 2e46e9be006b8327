"""Zarr output: a Zarr v3 group ``forecast.zarr`` with ``forecast`` uint8 (out_len, H, W) in the
stored encoding, ``lead_time_s`` int64 (out_len,) and, when known, ``time`` int64 (out_len,) epoch
seconds; its attributes say which model made it (:meth:`Forecast.attrs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipeline import viz
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
        group.create_array("forecast", shape=(n, h, w), dtype="uint8", chunks=(1, h, w))[:] = values
        group.create_array("lead_time_s", shape=(n,), dtype="int64")[:] = forecast.lead_times_s
        if forecast.times_s is not None:
            group.create_array("time", shape=(n,), dtype="int64")[:] = np.asarray(forecast.times_s, np.int64)
        group.attrs.update({**forecast.attrs(), _ZARR_MARK: True})
        return [path]

    def replaceable(self, path: Path) -> bool:
        try:
            return bool(zarr.open_group(str(path), mode="r").attrs.get(_ZARR_MARK))
        except Exception:  # noqa: BLE001 (not a zarr group at all)
            return False
