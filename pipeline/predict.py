"""``nowcast predict``: forecast the next frames from the last observed ones.

Inputs, either
* a store and a time: the ``in_len`` frames ending at the last store frame at or before the time
  (consecutive slots at the store's interval; every one must be present), or
* ``in_len`` PNG frames in HKO-7 encoding (8-bit grayscale, ``pixel = round(255 * (dBZ + 10) / 70)``),
  oldest first. When their names are HKO-7 names (``RADyymmddHHMM00.png``) the forecast times are known.

Outputs in ``out_dir`` (pixels outside the radar's coverage, where the last input frame's mask is
false, are 0 in every format):
* ``format="png"``: ``out_len`` frames in HKO-7 encoding, named ``RADyymmddHHMM00.png`` by forecast
  time (``forecast_01.png`` ... when the time is unknown);
* ``format="zarr"``: a Zarr v3 group ``forecast.zarr`` with ``forecast`` uint8 (out_len, H, W),
  ``lead_time_s`` int64 (out_len,) and, when known, ``time`` int64 (out_len,) epoch seconds;
* ``format="netcdf"`` (store inputs from an ODIM_H5 or CF-NetCDF archive): ``forecast.nc``, CF-1.8
  rain rate in mm/h on the store's grid and projection, with time, forecast reference time and lead
  time (``pipeline.sources.netcdf.write_forecast``); pixels go to mm/h through the store's Z-R
  relation, pixel 0 (-10 dBZ or less) is 0 mm/h, and pixels outside the last input's radar coverage
  are missing;
* ``probabilities_mm_h`` (zarr and netcdf): also P(rain >= t) per lead time and threshold, the CF variable
  ``probability_of_rainfall_rate_above_threshold`` (time, threshold, y, x) with a ``threshold`` coordinate
  in mm/h (:mod:`pipeline.probabilities`): member fractions of an ensemble (``steps``), neighbourhood
  probabilities of a deterministic forecast; missing outside the last input's radar coverage;
* all: ``forecast.gif``, the observed frames then the forecast (beside the observation when the
  store holds it), colour scale in mm/h.

Outputs are written in a private staging folder inside ``out_dir`` and renamed into place
(``pipeline.files``): nothing is written through a symlink, an existing output is replaced only with
``overwrite``, and a folder ``forecast.zarr`` is replaced only when ``predict`` wrote it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr

from pipeline import files, probabilities, viz
from pipeline.baselines_pysteps import Radar, pixel_to_rain, rain_to_pixel, store_radar
from pipeline.catalog import INTERVAL_S
from pipeline.errors import NowcastError, check
from pipeline.forecasters import Forecaster, load_forecaster
from pipeline.sources import PIXEL_ENCODING, hko7, netcdf
from pipeline.sources.grid import Grid
from pipeline.sources.gridded import parse_zr
from pipeline.store import Store
from pipeline.times import iso_utc, parse_time_s
from trajgru import units

FORMATS = ("png", "zarr", "netcdf")
ZARR_NAME = "forecast.zarr"
NETCDF_NAME = "forecast.nc"
GIF_NAME = "forecast.gif"
#: Attribute that marks a Zarr group as a forecast written by ``predict`` (only such a folder is replaced).
_ZARR_MARK = "nowcast_forecast"


@dataclass
class PredictConfig:
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
    overwrite : replace outputs of an earlier forecast (files, symlinks, a ``forecast.zarr`` that
        ``predict`` wrote); without it an existing output is an error and nothing is written.
    """

    model_uri: str
    out_dir: str | Path
    store: str | Path | None = None
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

    def __post_init__(self):
        check(self.format in FORMATS, f"unknown format {self.format!r}: use png, zarr or netcdf")
        check(
            not self.probabilities_mm_h or self.format != "png",
            "--probabilities are written into --format zarr or netcdf; PNG frames cannot hold them",
        )
        check(int(self.neighbourhood_px) >= 1, f"neighbourhood_px must be >= 1, got {self.neighbourhood_px}")
        check(
            self.format != "netcdf" or self.store is not None,
            "--format netcdf writes the forecast on the radar grid a store records: give the inputs as --store",
        )
        check(
            (self.store is None) != (not self.input_pngs),
            "give the inputs either as a store (--store, optionally --time) or as PNG frames "
            "(--input, repeated), not both and not neither",
        )
        check(
            not (self.input_pngs and self.time is not None),
            "--time applies to --store inputs only; PNG inputs carry their times in their names",
        )
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
def _check_time_in_store(store: Store, time_s: int | None, in_len: int = 1) -> None:
    """NowcastError when the store is empty or ``time_s`` is outside what ``in_len`` input frames allow.

    Called with ``in_len=1`` before the model is loaded (a quick check), and again with the model's."""
    times = store.reader().time_s
    if times.size == 0:
        raise NowcastError(f"the store {store.path} holds no frames; ingest an archive into it first")
    if time_s is None:
        return
    first_ok = int(times[0]) + (in_len - 1) * store.interval_s
    if time_s < first_ok or time_s > int(times[-1]) + store.interval_s:
        raise NowcastError(
            f"time {iso_utc(time_s)} is outside the store: the store covers {iso_utc(times[0])} to "
            f"{iso_utc(times[-1])}; pick a time from {iso_utc(first_ok)} to {iso_utc(times[-1])} "
            f"(the forecast needs the {in_len} frames before it)",
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
            frames.append(hko7.decode_frame(p.read_bytes()))
        except hko7.FrameDecodeError as exc:
            raise NowcastError(
                f"cannot use input frame {p}: {exc}; inputs must be 8-bit grayscale PNGs in "
                "HKO-7 encoding (pixel = round(255 * (dBZ + 10) / 70))"
            ) from exc
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise NowcastError(f"the input frames differ in size ({sorted(shapes)}); give frames of one size")
    times = [hko7.time_from_name(p) for p in paths]
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


# --------------------------------------------------------------------------- outputs
def _store_grid(store: Store) -> Grid:
    """The grid of the store's frames, for CF-NetCDF output (NowcastError when it records none)."""
    grid = store.source_settings.get("grid")
    if not grid:
        kind = dict(store.attrs.get("source", {})).get("format", "an unknown")
        raise NowcastError(
            f"--format netcdf needs the radar grid, and {store.path} (ingested from {kind} data) "
            "records none: only stores of ODIM_H5 or CF-NetCDF archives do; use --format png or zarr"
        )
    return Grid.from_attrs(grid)


def _write_netcdf(
    out_dir: Path, forecast: np.ndarray, store: Store, inputs: _Inputs, model_name: str
) -> Path:
    """``forecast.nc``: forecast pixels (out_len, H, W) in [0, 1] as rain rate (mm/h) on the store's grid."""
    rain_mm_h = parse_zr(store.source_settings.get("zr")).dbz_to_rain(units.pixel_to_dbz(forecast))
    rain_mm_h[np.rint(forecast * 255.0) == 0] = 0.0  # pixel 0: -10 dBZ or less, no rain
    lead_times_s = inputs.interval_s * np.arange(1, forecast.shape[0] + 1, dtype=np.int64)
    mask = inputs.input_masks[-1] if inputs.input_masks is not None else None
    return netcdf.write_forecast(
        out_dir / NETCDF_NAME,
        rain_mm_h,
        _store_grid(store),
        inputs.last_time_s,
        lead_times_s,
        mask=mask,
        attrs={"source": f"nowcast {model_name}", "input_store": str(store.path)},
    )


def _write_zarr(
    out_dir: Path,
    forecast_u8: np.ndarray,
    times_s: list[int] | None,
    interval_s: int,
    attrs: dict,
    exceedance: tuple[np.ndarray, tuple[float, ...]] | None = None,
) -> Path:
    """A Zarr v3 group with ``forecast`` (out_len, H, W) uint8, ``lead_time_s``, (when known) ``time`` and
    (``exceedance`` = (probabilities (out_len, n, H, W), thresholds mm/h)) the exceedance probabilities."""
    path = out_dir / ZARR_NAME
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    n, h, w = forecast_u8.shape
    arr = group.create_array(
        "forecast", shape=(n, h, w), dtype="uint8", chunks=(1, h, w), dimension_names=("time", "y", "x")
    )
    arr[:] = forecast_u8
    lead = group.create_array("lead_time_s", shape=(n,), dtype="int64", dimension_names=("time",))
    lead[:] = interval_s * np.arange(1, n + 1, dtype=np.int64)
    if times_s is not None:
        tarr = group.create_array("time", shape=(n,), dtype="int64", dimension_names=("time",))
        tarr[:] = np.asarray(times_s, dtype=np.int64)
    if exceedance is not None:
        probabilities.write_zarr_probabilities(group, *exceedance)
    group.attrs.update({**attrs, _ZARR_MARK: True})
    return path


def _is_forecast_zarr(path: Path) -> bool:
    """True when ``path`` is a Zarr group that :func:`_write_zarr` wrote (the only folder ``predict`` replaces)."""
    try:
        return bool(zarr.open_group(str(path), mode="r").attrs.get(_ZARR_MARK))
    except Exception:  # noqa: BLE001 (not a zarr group at all)
        return False


def _gif_mask(inputs: _Inputs) -> np.ndarray | None:
    """Valid-pixel mask for the GIF: per frame when the truth is shown, else the last input's."""
    if inputs.input_masks is None:
        return None
    if inputs.truth_masks is not None:
        return np.concatenate([inputs.input_masks, inputs.truth_masks])
    return inputs.input_masks[-1]


def _run_forecaster(
    forecaster: Forecaster, inputs: _Inputs, radar: Radar, cfg: PredictConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (forecast float pixels (out_len, H, W) clamped to [0, 1], exceedance probabilities (out_len,
    n_thresholds, H, W) or None when not asked for). An ensemble runs once: its forecast is the members'
    mean in rain rate."""
    x = torch.from_numpy(inputs.frames_u8.astype(np.float32) / 255.0)[:, None, None]  # (in_len, 1, 1, H, W)
    masks = None if inputs.input_masks is None else torch.from_numpy(inputs.input_masks)[:, None, None]
    if not cfg.probabilities_mm_h and forecaster.members == 1:
        return forecaster(x, masks)[:, 0, 0].float().clamp(0.0, 1.0).cpu().numpy(), None
    members = forecaster.ensemble(x, masks)[:, :, 0, 0].float().clamp(0.0, 1.0).cpu().numpy()
    members_mm_h = pixel_to_rain(members, None, radar.zr)  # (M, out_len, H, W)
    if inputs.input_masks is not None:  # no rain outside the radar's coverage (as in the forecast written)
        members_mm_h = np.where(inputs.input_masks[-1], members_mm_h, 0.0)
    forecast = members[0] if forecaster.members == 1 else rain_to_pixel(members_mm_h.mean(axis=0), radar.zr)
    if not cfg.probabilities_mm_h:
        return forecast, None
    exceedance = probabilities.exceedance_probabilities(
        members_mm_h, cfg.probabilities_mm_h, cfg.neighbourhood_px
    )
    return forecast, exceedance


def _output_names(cfg: PredictConfig, out_len: int, times: list[int] | None) -> list[str]:
    names = {
        "png": viz.png_names(out_len, times) if cfg.format == "png" else [],
        "zarr": [ZARR_NAME],
        "netcdf": [NETCDF_NAME],
    }[cfg.format]
    return names + ([GIF_NAME] if cfg.gif else [])


def predict(cfg: PredictConfig) -> PredictResult:
    """Forecast ``out_len`` frames after the inputs and write them (see the module doc).

    Raises NowcastError for missing/ambiguous inputs, a wrong number of PNGs, frames whose size
    differs from the model's, a time outside the store, an unknown format/model, or outputs that
    exist already (without ``overwrite``).
    """
    store = None
    if cfg.store is not None:
        store = Store.open(cfg.store)
        _check_time_in_store(store, cfg.time)  # before the model loads (seconds)
        if cfg.format == "netcdf":
            _store_grid(store)
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
    times = None
    if inputs.last_time_s is not None:
        times = [int(inputs.last_time_s + inputs.interval_s * (k + 1)) for k in range(out_len)]
    out_dir = Path(cfg.out_dir)
    names = _output_names(cfg, out_len, times)
    files.check_free([out_dir / name for name in names], cfg.overwrite, _is_forecast_zarr)

    forecast, exceedance = _run_forecaster(forecaster, inputs, radar, cfg)
    if inputs.input_masks is not None:
        forecast = np.where(inputs.input_masks[-1], forecast, 0.0).astype(forecast.dtype)
        if exceedance is not None:
            exceedance = np.where(inputs.input_masks[-1], exceedance, np.nan)
    with files.staging_dir(out_dir) as tmp:
        if cfg.format == "png":
            viz.save_frames_png(forecast, tmp, times_s=times)
        elif cfg.format == "netcdf":
            path = _write_netcdf(tmp, forecast, store, inputs, forecaster.name)
            if exceedance is not None:
                probabilities.write_netcdf_probabilities(path, exceedance, cfg.probabilities_mm_h)
        else:
            attrs = {
                "model_uri": str(cfg.model_uri),
                "model_name": forecaster.name,
                "interval_s": inputs.interval_s,
                "pixel_encoding": PIXEL_ENCODING,
                "issued_after_s": inputs.last_time_s,
            }
            pair = None if exceedance is None else (exceedance, cfg.probabilities_mm_h)
            _write_zarr(tmp, viz.pixel_to_u8(forecast), times, inputs.interval_s, attrs, pair)
        if cfg.gif:
            truth = None if inputs.truth_u8 is None else inputs.truth_u8.astype(np.float32) / 255.0
            when = f" after {iso_utc(inputs.last_time_s)}" if inputs.last_time_s is not None else ""
            viz.forecast_gif(
                inputs.frames_u8.astype(np.float32) / 255.0,
                truth,
                forecast,
                tmp / GIF_NAME,
                interval_min=inputs.interval_s / 60.0,
                title=f"{forecaster.name}{when}",
                mask=_gif_mask(inputs),
            )
        written = [
            files.publish(tmp / name, out_dir / name, cfg.overwrite, _is_forecast_zarr) for name in names
        ]
    gif_path = written.pop() if cfg.gif else None
    return PredictResult(written, gif_path, times, inputs.input_times_s, forecast, exceedance)


__all__ = ["PredictConfig", "PredictResult", "predict"]
