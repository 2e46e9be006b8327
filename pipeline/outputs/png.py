"""PNG output: HKO-7 encoded 8-bit grayscale frames, and the GIF animation every format can add.

``RADyymmddHHMM00.png`` by forecast time (``forecast_01.png`` ... when the time is unknown), pixel =
``round(255 * p)`` (the HKO-7 encoding, so ``nowcast ingest`` and any HKO-7 reader read them back).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import viz
from pipeline.outputs.base import Forecast, OutputFormat
from pipeline.times import iso_utc

GIF_NAME = "forecast.gif"


class PngOutput(OutputFormat):
    name = "png"

    def file_names(self, forecast: Forecast) -> list[str]:
        return viz.png_names(forecast.out_len, forecast.times_s)

    def write(self, folder: Path, forecast: Forecast) -> list[Path]:
        return viz.save_frames_png(forecast.forecast, folder, times_s=forecast.times_s)


def _gif_mask(forecast: Forecast) -> np.ndarray | None:
    """Valid-pixel mask for the GIF: per frame when the truth is shown, else the last input's."""
    if forecast.input_masks is None:
        return forecast.input_mask
    if forecast.truth_masks is not None:
        return np.concatenate([forecast.input_masks, forecast.truth_masks])
    return forecast.input_masks[-1]


def write_gif(folder: Path, forecast: Forecast) -> Path:
    """``folder/forecast.gif``: the observed frames (``forecast.inputs_u8``), then the forecast (beside
    the observation when ``truth_u8`` is known), colour scale in mm/h."""
    truth = None if forecast.truth_u8 is None else forecast.truth_u8.astype(np.float32) / 255.0
    when = f" after {iso_utc(forecast.last_time_s)}" if forecast.last_time_s is not None else ""
    return viz.forecast_gif(
        forecast.inputs_u8.astype(np.float32) / 255.0,
        truth,
        forecast.forecast,
        Path(folder) / GIF_NAME,
        interval_min=forecast.interval_s / 60.0,
        title=f"{forecast.model_name}{when}",
        mask=_gif_mask(forecast),
    )
