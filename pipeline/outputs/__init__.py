"""Forecast output formats, one module each, behind one small interface (:mod:`pipeline.outputs.base`).

- :data:`OUTPUTS`: the registry, ``{name: OutputFormat instance}``: ``png`` (HKO-7 PNG frames),
  ``zarr`` (a Zarr v3 group), ``netcdf`` (CF-1.8 rain rate on the store's grid).
- :func:`get_output`: a format by name.
- :func:`write_forecast`: one forecast, in one format (plus the GIF), into a folder.
- :func:`write_gif`: the animation any format can add (``forecast.gif``).

To add a format: write ``pipeline/outputs/<format>.py`` with an
:class:`~pipeline.outputs.base.OutputFormat` subclass (``file_names``, ``write``) and add one entry to
:data:`OUTPUTS`. ``nowcast predict`` and ``nowcast watch`` need nothing else.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import NowcastError
from pipeline.outputs.base import Forecast, OutputFormat
from pipeline.outputs.netcdf import NETCDF_NAME, NetcdfOutput
from pipeline.outputs.png import GIF_NAME, PngOutput, write_gif
from pipeline.outputs.zarr import ZARR_NAME, ZarrOutput

#: Every forecast output format by name.
OUTPUTS: dict[str, OutputFormat] = {fmt.name: fmt for fmt in (PngOutput(), ZarrOutput(), NetcdfOutput())}
FORMATS = tuple(OUTPUTS)


def get_output(name: str) -> OutputFormat:
    """The output format registered as ``name``; NowcastError (exit code 2) naming the known ones
    otherwise."""
    try:
        return OUTPUTS[name]
    except KeyError:
        raise NowcastError(f"unknown format {name!r}: use {', '.join(OUTPUTS)}", exit_code=2) from None


def file_names(fmt: OutputFormat, forecast: Forecast, gif: bool) -> list[str]:
    """What :func:`write_forecast` creates: the format's files, then ``forecast.gif`` with ``gif``."""
    return fmt.file_names(forecast) + ([GIF_NAME] if gif else [])


def write_forecast(folder: Path, fmt: OutputFormat, forecast: Forecast, gif: bool) -> list[Path]:
    """Write ``forecast`` (masked: 0 outside the last input's coverage) in ``fmt`` into ``folder``
    (a fresh private staging folder), and ``forecast.gif`` with ``gif``; -> the paths, in
    :func:`file_names` order."""
    forecast = forecast.masked()
    paths = fmt.write(Path(folder), forecast)
    if gif:
        paths.append(write_gif(Path(folder), forecast))
    return paths


__all__ = [
    "FORMATS",
    "GIF_NAME",
    "NETCDF_NAME",
    "OUTPUTS",
    "ZARR_NAME",
    "Forecast",
    "OutputFormat",
    "file_names",
    "get_output",
    "write_forecast",
    "write_gif",
]
