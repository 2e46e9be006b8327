"""CF-NetCDF output: ``forecast.nc``, CF-1.8 rain rate in mm/h on the store's grid and projection,
with time, forecast reference time and lead time (``pipeline.sources.netcdf.write_forecast``).

Pixels go to mm/h through the store's Z-R relation; pixel 0 (-10 dBZ or less) is 0 mm/h, and pixels
outside the last input's radar coverage are missing. Needs a store ingested from an ODIM_H5 or
CF-NetCDF archive (they record the grid). With exceedance probabilities, also the CF variable
``probability_of_rainfall_rate_above_threshold`` (time, threshold, y, x) and its ``threshold`` coordinate
(mm/h), on the same grid mapping.
"""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np

from pipeline import probabilities
from pipeline.errors import NowcastError
from pipeline.outputs.base import Forecast, OutputFormat
from pipeline.sources import get_source
from pipeline.sources.grid import Grid
from pipeline.sources.gridded import parse_zr
from pipeline.store import Store
from trajgru import units

NETCDF_NAME = "forecast.nc"


def store_grid(store: Store) -> Grid:
    """The grid of the store's frames (NowcastError when it records none)."""
    grid = store.source_settings.get("grid")
    if not grid:
        kind = dict(store.attrs.get("source", {})).get("format", "an unknown")
        raise NowcastError(
            f"--format netcdf needs the radar grid, and {store.path} (ingested from {kind} data) "
            "records none: only stores of ODIM_H5 or CF-NetCDF archives do; use --format png or zarr"
        )
    return Grid.from_attrs(grid)


class NetcdfOutput(OutputFormat):
    name = "netcdf"

    def check(self, store: Store | None) -> None:
        if store is None:
            raise NowcastError(
                "--format netcdf writes the forecast on the radar grid a store records: "
                "give the inputs as --store"
            )
        store_grid(store)

    def file_names(self, forecast: Forecast) -> list[str]:
        return [NETCDF_NAME]

    def write(self, folder: Path, forecast: Forecast) -> list[Path]:
        store = forecast.store
        self.check(store)
        values = forecast.forecast
        rain_mm_h = parse_zr(store.source_settings.get("zr")).dbz_to_rain(units.pixel_to_dbz(values))
        rain_mm_h[np.rint(values * 255.0) == 0] = 0.0  # pixel 0: -10 dBZ or less, no rain
        path = get_source("netcdf").write_forecast(
            Path(folder) / NETCDF_NAME,
            rain_mm_h,
            store_grid(store),
            forecast.last_time_s,
            forecast.lead_times_s,
            mask=forecast.input_mask,
            attrs={"source": f"nowcast {forecast.model_name}", "input_store": str(store.path)},
        )
        if forecast.probabilities is not None:
            _add_probabilities(path, forecast.probabilities, forecast.thresholds_mm_h)
        return [path]


def _add_probabilities(path: Path, values: np.ndarray, thresholds_mm_h) -> None:
    """Add the exceedance probabilities float (L, n, H, W) (NaN = missing, stored as the fill value) and
    their threshold coordinate to the forecast file ``cf.write_forecast`` wrote at ``path``."""
    with netCDF4.Dataset(path, "a") as nc:
        nc.createDimension(probabilities.THRESHOLD_VAR, len(thresholds_mm_h))
        threshold = nc.createVariable(probabilities.THRESHOLD_VAR, "f4", (probabilities.THRESHOLD_VAR,))
        threshold.setncatts(probabilities.THRESHOLD_ATTRS)
        threshold[:] = np.asarray(thresholds_mm_h, dtype=np.float32)
        var = nc.createVariable(
            probabilities.PROBABILITY_VAR,
            "f4",
            ("time", probabilities.THRESHOLD_VAR, "y", "x"),
            zlib=True,
            fill_value=np.float32(get_source("netcdf").fill_value),
        )
        grid_mapping = nc.variables["precip_intensity"].getncattr("grid_mapping")
        var.setncatts({**probabilities.PROBABILITY_ATTRS, "grid_mapping": grid_mapping})
        var[:] = np.where(np.isfinite(values), values, get_source("netcdf").fill_value).astype(np.float32)
