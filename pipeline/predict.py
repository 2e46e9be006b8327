"""``nowcast predict``: forecast the next frames from the last observed ones.

Inputs, either
* a store and a time: the ``in_len`` frames ending at the last store frame at or before the time
  (consecutive slots at the store's interval; every one must be present), or
* ``in_len`` PNG frames in HKO-7 encoding (8-bit grayscale, ``pixel = round(255 * (dBZ + 10) / 70)``),
  oldest first. When their names are HKO-7 names (``RADyymmddHHMM00.png``) the forecast times are known.

Outputs in ``out_dir``, in one format of the registry ``pipeline.outputs`` (``png``: HKO-7 frames
named by forecast time, ``zarr``: ``forecast.zarr``, ``netcdf``: CF-1.8 ``forecast.nc`` on the store's
grid, from ODIM_H5 or CF-NetCDF stores only), plus ``forecast.gif`` (the observed frames, then the
forecast beside the observation when the store holds it). Pixels outside the radar's coverage (where
the last input frame's mask is false) are 0, or missing where the format can say so.

With ``probabilities_mm_h`` (zarr and netcdf), P(rain >= t) per lead time and threshold goes beside the
forecast as the CF variable ``probability_of_rainfall_rate_above_threshold`` (:mod:`pipeline.probabilities`):
an ensemble's (``steps``) member fractions, a deterministic forecast's neighbourhood probabilities; missing
outside the last input's radar coverage.

Outputs are written in a private staging folder inside ``out_dir`` and renamed into place
(``pipeline.files``): nothing is written through a symlink, an existing output is replaced only with
``overwrite``, and a folder ``forecast.zarr`` is replaced only when ``nowcast`` wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline import files, outputs, probabilities
from pipeline.baselines_pysteps import Radar, pixel_to_rain, rain_to_pixel, store_radar
from pipeline.catalog import INTERVAL_S
from pipeline.errors import NowcastError, Validated
from pipeline.forecasters import Forecaster, load_forecaster
from pipeline.outputs import FORMATS, Forecast
from pipeline.sources import FrameDecodeError, get_source
from pipeline.store import Store
from pipeline.times import iso_utc, parse_time_s


@dataclass
class PredictConfig(Validated):
    """What to forecast from and where to write it.

    model_uri : ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a checkpoint path, ``persistence``
        or ``optical-flow``.
    out_dir : output folder (created).
    store, time : input frames from this store ending at ``time`` (ISO 8601 UTC, e.g.
        ``2015-06-04T12:00``, or epoch seconds); time None = the store's last frame.
    input_pngs : or: ``in_len`` HKO-7 PNG paths, oldest first.
    format : "png", "zarr" or "netcdf" (store inputs from an ODIM_H5 or CF-NetCDF archive only).
    gif : also write ``forecast.gif``.
    probabilities_mm_h : thresholds (mm/h) of exceedance probabilities to write (zarr, netcdf); None: none.
    neighbourhood_px : the neighbourhood of a deterministic forecast's probabilities.
    calibration : a calibration file (``nowcast calibrate``) for this model: its calibrated probabilities are
        written instead of neighbourhood ones; None: none.
    overwrite : replace outputs of an earlier forecast (files, symlinks, a ``forecast.zarr`` that
        ``predict`` wrote); without it an existing output is an error and nothing is written.
    """

    model_uri: str
    out_dir: str | Path
    store: Store | str | Path | None = None
    time: str | int | None = None
    input_pngs: Sequence[str | Path] | None = None
    format: str = "png"
    tracking_uri: str | None = None
    device: str = "auto"  # "auto": a GPU when one is visible
    fast_path: bool = True  # trajgru.fast.enable_fast_path for trained models
    gif: bool = True
    overwrite: bool = False
    probabilities_mm_h: tuple[float, ...] | None = None
    neighbourhood_px: int = probabilities.DEFAULT_NEIGHBOURHOOD_PX
    calibration: str | Path | None = None

    def rules(self):
        yield self.format in FORMATS, f"unknown format {self.format!r}: use {', '.join(FORMATS)}"
        yield (
            not self.probabilities_mm_h or self.format != "png",
            "--probabilities are written into --format zarr or netcdf; PNG frames cannot hold them",
        )
        yield int(self.neighbourhood_px) >= 1, f"neighbourhood_px must be >= 1, got {self.neighbourhood_px}"
        yield (
            self.calibration is None or bool(self.probabilities_mm_h),
            "--calibration makes calibrated --probabilities: ask for some, e.g. --probabilities 1,5,10",
        )
        yield (
            self.format != "netcdf" or self.store is not None,
            "--format netcdf writes the forecast on the radar grid a store records: give the inputs as "
            "--store",
        )
        yield (
            (self.store is None) != (not self.input_pngs),
            "give the inputs either as a store (--store, optionally --time) or as PNG frames "
            "(--input, repeated), not both and not neither",
        )
        yield (
            not (self.input_pngs and self.time is not None),
            "--time applies to --store inputs only; PNG inputs carry their times in their names",
        )

    def __post_init__(self):
        super().__post_init__()
        if self.time is not None:
            self.time = parse_time_s(self.time)  # a malformed time fails here, before any model loads


@dataclass
class PredictResult:
    """paths : the forecast PNGs (or the zarr group); gif_path : the animation (or None);
    forecast_times_s : out_len epoch seconds, or None when the input times are unknown."""

    paths: list[Path]
    gif_path: Path | None
    forecast_times_s: list[int] | None
    input_times_s: list[int] | None = None
    forecast: np.ndarray | None = field(default=None, repr=False)  # (out_len, H, W) float pixel
    probabilities: np.ndarray | None = field(default=None, repr=False)  # (out_len, n_thresholds, H, W)


@dataclass
class _Inputs:
    frames_u8: np.ndarray  # (in_len, H, W)
    last_time_s: int | None  # time of the last input frame
    interval_s: int
    truth_u8: np.ndarray | None = None  # (out_len, H, W) when the store holds the forecast period
    truth_masks: np.ndarray | None = None
    input_times_s: list[int] | None = None
    input_masks: np.ndarray | None = None  # (in_len, H, W) bool, True = valid


# --------------------------------------------------------------------------- inputs
def _check_time_in_store(store: Store, time_s: int | None, in_len: int | None = None) -> None:
    """NowcastError (exit code 2 for a time) when the store is empty, or ``time_s`` (epoch s) is off the
    store's cadence, outside the store, or (``in_len`` given) too early for ``in_len`` input frames.

    Called without ``in_len`` before the model is loaded (a quick check), and again with the model's."""
    times = store.reader().time_s
    if times.size == 0:
        raise NowcastError(f"the store {store.path} holds no frames; ingest an archive into it first")
    if time_s is None:
        return
    interval_s = store.interval_s
    every = f"{interval_s // 60} min" if interval_s % 60 == 0 else f"{interval_s} s"
    span = f"the store covers {iso_utc(times[0])} to {iso_utc(times[-1])}, a frame every {every}"
    off_s = (time_s - int(times[0])) % interval_s
    if off_s:
        before = time_s - off_s
        raise NowcastError(
            f"time {iso_utc(time_s)} is not on the store's cadence ({span}); "
            f"use {iso_utc(before)} or {iso_utc(before + interval_s)}",
            exit_code=2,
        )
    first_ok = int(times[0]) + (in_len - 1 if in_len else 0) * interval_s
    if time_s < times[0] or time_s > times[-1]:
        raise NowcastError(
            f"time {iso_utc(time_s)} is outside the store ({span}); pick a time from {iso_utc(first_ok)} "
            f"to {iso_utc(times[-1])}",
            exit_code=2,
        )
    if time_s < first_ok:
        raise NowcastError(
            f"time {iso_utc(time_s)} is too early: the model takes the {in_len} frames up to it, and the "
            f"store starts at {iso_utc(times[0])}; pick a time from {iso_utc(first_ok)} to "
            f"{iso_utc(times[-1])}",
            exit_code=2,
        )


def _inputs_from_store(store: Store, time_value, in_len: int, out_len: int) -> _Inputs:
    """The in_len frames ending at the last store frame at or before ``time_value``."""
    _check_time_in_store(store, None if time_value is None else parse_time_s(time_value), in_len)
    reader = store.reader()
    times = reader.time_s
    interval_s = store.interval_s
    span = f"the store covers {iso_utc(times[0])} to {iso_utc(times[-1])}"
    t = int(times[-1]) if time_value is None else parse_time_s(time_value)
    last = int(times[np.searchsorted(times, t, side="right") - 1])
    if t - last >= interval_s:
        raise NowcastError(
            f"the store has no frame in the {interval_s // 60} min up to {iso_utc(t)} (the last "
            f"earlier frame is at {iso_utc(last)}; {span}); pick a time with data"
        )
    input_times = last - interval_s * np.arange(in_len - 1, -1, -1, dtype=np.int64)
    idx = np.searchsorted(times, input_times).clip(0, times.size - 1)
    present = np.isin(input_times, times) & store.present[idx]
    if not present.all():
        missing = ", ".join(iso_utc(x) for x in input_times[~present])
        raise NowcastError(
            f"input frame(s) {missing} are missing from the store ({span}); pick another "
            f"time whose {in_len} preceding frames every {interval_s // 60} min exist"
        )
    frames, input_masks = reader.read(input_times)
    truth_times = last + interval_s * np.arange(1, out_len + 1, dtype=np.int64)
    truth = masks = None
    if np.isin(truth_times, times).all():
        truth, masks = reader.read(truth_times)
    return _Inputs(frames, last, interval_s, truth, masks, [int(x) for x in input_times], input_masks)


def _inputs_from_pngs(paths: Sequence[str | Path], in_len: int) -> _Inputs:
    """Decode ``in_len`` HKO-7 PNGs (oldest first); times from their names when all parse (else the
    HKO-7 cadence, ``catalog.INTERVAL_S``, labels the lead times)."""
    paths = [Path(p) for p in paths]
    if len(paths) != in_len:
        raise NowcastError(
            f"the model takes {in_len} input frames but {len(paths)} PNG(s) were given; "
            f"pass exactly {in_len}, oldest first",
            exit_code=2,
        )
    frames = []
    for p in paths:
        if not p.is_file():
            raise NowcastError(f"input frame {p} does not exist", exit_code=2)
        try:
            frames.append(get_source("hko7").decode_frame(p.read_bytes()))
        except FrameDecodeError as exc:
            raise NowcastError(
                f"cannot use input frame {p}: {exc}; inputs must be 8-bit grayscale PNGs in "
                "HKO-7 encoding (pixel = round(255 * (dBZ + 10) / 70))"
            ) from exc
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise NowcastError(f"the input frames differ in size ({sorted(shapes)}); give frames of one size")
    times = [get_source("hko7").time_from_name(p) for p in paths]
    if any(t is None for t in times):
        return _Inputs(np.stack(frames), None, INTERVAL_S)
    steps = set(np.diff(times).tolist())
    if len(steps) > 1 or (steps and steps.pop() <= 0):
        raise NowcastError(
            "the input PNGs are not consecutive frames in time order (their names give times "
            f"{', '.join(iso_utc(t) for t in times)}); pass {in_len} frames one interval apart, "
            "oldest first"
        )
    interval_s = int(times[1] - times[0]) if len(times) > 1 else INTERVAL_S
    return _Inputs(np.stack(frames), int(times[-1]), interval_s, input_times_s=[int(t) for t in times])


# --------------------------------------------------------------------------- forecast
def _run_forecaster(
    forecaster: Forecaster, inputs: _Inputs, radar: Radar, cfg: PredictConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (forecast float pixels (out_len, H, W) clamped to [0, 1], exceedance probabilities (out_len,
    n_thresholds, H, W) or None when not asked for). An ensemble runs once: its forecast is the members'
    mean in rain rate."""
    if not cfg.probabilities_mm_h and forecaster.members == 1:
        return forecaster.forecast_frames(inputs.frames_u8, inputs.input_masks), None
    members = forecaster.ensemble_frames(inputs.frames_u8, inputs.input_masks)
    members_mm_h = pixel_to_rain(members, None, radar.zr)  # (M, out_len, H, W)
    if inputs.input_masks is not None:  # no rain outside the radar's coverage (as in the forecast written)
        members_mm_h = np.where(inputs.input_masks[-1], members_mm_h, 0.0)
    forecast = members[0] if forecaster.members == 1 else rain_to_pixel(members_mm_h.mean(axis=0), radar.zr)
    if not cfg.probabilities_mm_h:
        return forecast, None
    calibration = probabilities.load_calibration(
        cfg.calibration, forecaster, forecaster.out_len, cfg.probabilities_mm_h
    )
    if calibration is not None:
        masks = None if inputs.input_masks is None else inputs.input_masks[-1:]
        last_observed_mm_h = pixel_to_rain(inputs.frames_u8[-1:] / 255.0, masks, radar.zr)
        return forecast, calibration.probabilities(members_mm_h[0][:, None], last_observed_mm_h)[:, 0]
    exceedance = probabilities.exceedance_probabilities(
        members_mm_h, cfg.probabilities_mm_h, cfg.neighbourhood_px
    )
    return forecast, exceedance


def predict(cfg: PredictConfig) -> PredictResult:
    """Forecast ``out_len`` frames after the inputs and write them (see the module doc).

    Raises NowcastError for missing/ambiguous inputs, a wrong number of PNGs, frames whose size
    differs from the model's, a time outside the store, an unknown format/model, or outputs that
    exist already (without ``overwrite``).
    """
    store = None
    output = outputs.get_output(cfg.format)
    if cfg.store is not None:
        store = Store.of(cfg.store)
        _check_time_in_store(store, cfg.time)  # before the model loads (seconds)
    output.check(store)
    radar = store_radar(store) if store is not None else Radar()
    forecaster = load_forecaster(
        cfg.model_uri, tracking_uri=cfg.tracking_uri, device=cfg.device, fast_path=cfg.fast_path, radar=radar
    )
    in_len, out_len = int(forecaster.in_len), int(forecaster.out_len)
    if store is not None:
        inputs = _inputs_from_store(store, cfg.time, in_len, out_len)
        where = f"the store {cfg.store}"
    else:
        inputs = _inputs_from_pngs(cfg.input_pngs, in_len)
        where = "the input PNGs"
    forecaster.check_frame_size(inputs.frames_u8.shape[1:], where)
    values, exceedance = _run_forecaster(forecaster, inputs, radar, cfg)
    forecast = Forecast(
        forecast=values,
        interval_s=inputs.interval_s,
        last_time_s=inputs.last_time_s,
        model_uri=str(cfg.model_uri),
        model_name=forecaster.name,
        input_mask=None if inputs.input_masks is None else inputs.input_masks[-1],
        store=store,
        inputs_u8=inputs.frames_u8,
        input_masks=inputs.input_masks,
        truth_u8=inputs.truth_u8,
        truth_masks=inputs.truth_masks,
        probabilities=exceedance,
        thresholds_mm_h=tuple(cfg.probabilities_mm_h or ()),
    )
    out_dir = Path(cfg.out_dir)
    names = outputs.file_names(output, forecast, cfg.gif)
    files.check_free([out_dir / name for name in names], cfg.overwrite, output.replaceable)
    with files.staging_dir(out_dir) as tmp:
        outputs.write_forecast(tmp, output, forecast, cfg.gif)
        written = [
            files.publish(tmp / name, out_dir / name, cfg.overwrite, output.replaceable) for name in names
        ]
    gif_path = written.pop() if cfg.gif else None
    masked = forecast.masked()
    return PredictResult(
        written, gif_path, forecast.times_s, inputs.input_times_s, masked.forecast, masked.probabilities
    )


__all__ = ["PredictConfig", "PredictResult", "predict"]
