"""The pysteps yardsticks: Lucas–Kanade extrapolation, S-PROG and the STEPS ensemble.

Each runs on model-layout inputs (torch (in_len, B, 1, H, W) pixel values in [0, 1], HKO-7
encoding) and returns model-layout forecasts, so ``nowcast evaluate`` and ``nowcast predict`` treat
them like any trained network. In between, everything happens the way pysteps' own examples do it:

1. pixels -> dBZ -> rain rate R (mm/h) through the store's Z–R relation (:class:`ZR`); pixels outside
   the radar's coverage (mask false) are NaN;
2. motion: :func:`pysteps.motion.lucaskanade.dense_lucaskanade` on the last 3 input frames (NaN is
   no data for it);
3. ``extrapolation``: semi-Lagrangian advection of the last R field
   (:func:`pysteps.nowcasts.extrapolation.forecast`);
   ``sprog`` / ``steps``: on ``dBR = 10 log10 R`` (R < 0.1 mm/h -> -15 dBR, missing pixels set to
   that zero value, as pysteps' examples do), the forecast transformed back to R;
4. R -> dBZ -> pixels; rain below 0.1 mm/h, NaN (advected in from outside the domain) -> pixel 0.

``steps`` is an ensemble: :meth:`PystepsBaseline.ensemble` returns the members; calling it returns
their mean (the deterministic forecast pysteps recommends comparing an error-minimising network with).

Names and options (the one parser, :func:`parse_spec`)::

    extrapolation                 Lucas–Kanade motion + semi-Lagrangian extrapolation
    sprog                         S-PROG (Seed 2003), deterministic
    steps                         STEPS (Bowler et al. 2006), 20 members, seed 0
    steps:members=50,seed=3       options after a colon, comma-separated NAME=VALUE

Options: ``members`` (steps), ``seed`` (steps), ``levels`` (cascade levels, sprog/steps; default 6,
capped so the smallest scale stays >= 2 px), ``km_per_px`` and ``interval_min`` (steps' velocity
perturbations, which pysteps calibrated in km and minutes; default: the store's, :func:`store_radar`).
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

with contextlib.redirect_stdout(io.StringIO()):  # pysteps announces its configuration file when imported
    import pysteps  # noqa: F401

from pipeline.errors import NowcastError
from pipeline.sources.grid import ZR
from pipeline.sources.gridded import parse_zr
from trajgru import units

#: The pysteps baselines by name (the one list of them).
PYSTEPS_BASELINES = ("extrapolation", "sprog", "steps")
#: Rain rate (mm/h) below which a pixel is dry for the dB transform (pysteps' examples: 0.1).
RAIN_THRESHOLD_MM_H = 0.1
#: dBR given to dry and missing pixels (pysteps' examples: -15).
ZERO_DBR = -15.0
#: Input frames the motion estimate and the AR(2) cascade use.
MOTION_FRAMES = 3
DEFAULT_MEMBERS = 20
#: The side of the HKO-7 radar domain (Shi et al. 2017: 480 x 480 pixels over 512 x 512 km), which HKO-7
#: stores and ``nowcast synth`` archives (the same domain at any size) cover.
HKO7_DOMAIN_KM = 512.0


@dataclass(frozen=True)
class Radar:
    """What the pysteps baselines need to know of the data: the Z–R relation, pixel size and cadence."""

    zr: ZR = ZR()
    km_per_px: float = HKO7_DOMAIN_KM / 480
    interval_min: float = 6.0


def store_radar(store) -> Radar:
    """The :class:`Radar` of a store: its Z–R relation (HKO-7's when it records none), its cadence, and its
    pixel size (the recorded grid's step when in metres, else the HKO-7 domain over the frame width)."""
    settings = store.source_settings
    grid = settings.get("grid") or {}
    if grid.get("xy_unit") in ("m", "metre", "meter", "metres", "meters") and grid.get("x_step"):
        km_per_px = abs(float(grid["x_step"])) / 1000.0
    else:
        km_per_px = HKO7_DOMAIN_KM / float(store.frame_size[1])
    return Radar(parse_zr(settings.get("zr")), km_per_px, float(store.interval_s) / 60.0)


@dataclass(frozen=True)
class PystepsSpec:
    """A pysteps baseline and its options (see the module docstring)."""

    name: str
    members: int = DEFAULT_MEMBERS
    seed: int = 0
    levels: int = 6
    km_per_px: float | None = None  # None: the Radar's
    interval_min: float | None = None

    @property
    def label(self) -> str:
        """The name shown in tables: ``steps`` carries its member count and seed."""
        return f"steps:members={self.members},seed={self.seed}" if self.name == "steps" else self.name


_OPTION_TYPES = {"members": int, "seed": int, "levels": int, "km_per_px": float, "interval_min": float}


def parse_spec(uri: str) -> PystepsSpec | None:
    """``"steps:members=20,seed=1"`` -> PystepsSpec; None when ``uri`` names no pysteps baseline.

    Raises NowcastError (exit code 2) for an unknown option, a bad value, or options on a baseline that
    does not take them."""
    name, _, options = str(uri).strip().partition(":")
    if name not in PYSTEPS_BASELINES:
        return None
    spec = PystepsSpec(name)
    changes = {}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in _OPTION_TYPES:
            raise NowcastError(
                f"cannot read the option {item!r} of {uri!r}: use NAME=VALUE with NAME one of "
                f"{', '.join(_OPTION_TYPES)} (e.g. steps:members=20,seed=1)",
                exit_code=2,
            )
        try:
            changes[key.strip()] = _OPTION_TYPES[key.strip()](value)
        except ValueError:
            raise NowcastError(f"option {key}={value!r} of {uri!r} is not a number", exit_code=2) from None
    if name != "steps" and {"members", "seed", "km_per_px", "interval_min"} & set(changes):
        raise NowcastError(f"{name} is deterministic: members, seed and velocity options are steps' only")
    spec = replace(spec, **changes)
    if spec.members < 2 or spec.levels < 1 or (spec.km_per_px or 1) <= 0 or (spec.interval_min or 1) <= 0:
        raise NowcastError(f"{uri!r}: members must be >= 2, levels >= 1, km_per_px and interval_min > 0")
    return spec


def pixel_to_rain(frames_pixel: np.ndarray, masks: np.ndarray | None, zr: ZR) -> np.ndarray:
    """Pixel values (..., H, W) in [0, 1] -> rain rate in mm/h through ``zr``; pixel 0 -> 0 mm/h,
    pixels where ``masks`` (same shape, bool) is false -> NaN."""
    frames = np.asarray(frames_pixel, dtype=np.float64)
    rain = zr.dbz_to_rain(units.pixel_to_dbz(frames))
    rain[np.rint(frames * 255.0) == 0] = 0.0
    if masks is not None:
        rain[~np.asarray(masks, dtype=bool)] = np.nan
    return rain


def rain_to_pixel(rain_mm_h: np.ndarray, zr: ZR) -> np.ndarray:
    """Rain rate (mm/h) -> pixel values in [0, 1] (float32); below :data:`RAIN_THRESHOLD_MM_H` or NaN -> 0."""
    rain = np.nan_to_num(np.asarray(rain_mm_h, dtype=np.float64), nan=0.0)
    wet = rain >= RAIN_THRESHOLD_MM_H
    pixel = np.zeros(rain.shape, dtype=np.float32)
    pixel[wet] = units.dbz_to_pixel(zr.rain_to_dbz(rain[wet]))
    return pixel


def _to_dbr(rain_mm_h: np.ndarray) -> np.ndarray:
    """R (mm/h) -> dBR; dry (< 0.1 mm/h) and NaN pixels -> :data:`ZERO_DBR` (pysteps' dB_transform)."""
    from pysteps.utils.transformation import dB_transform

    dbr, _ = dB_transform(rain_mm_h.copy(), threshold=RAIN_THRESHOLD_MM_H, zerovalue=ZERO_DBR)
    return np.where(np.isfinite(dbr), dbr, ZERO_DBR)


def _from_dbr(dbr: np.ndarray) -> np.ndarray:
    """dBR -> R (mm/h); values at or below the dry threshold -> 0 (pysteps' inverse dB_transform)."""
    from pysteps.utils.transformation import dB_transform

    rain, _ = dB_transform(
        dbr, {"transform": "dB", "threshold": RAIN_THRESHOLD_MM_H, "zerovalue": ZERO_DBR}, inverse=True
    )
    return rain


def _levels(spec: PystepsSpec, shape: tuple[int, int]) -> int:
    """Cascade levels: the requested number, capped so the finest scale keeps >= 2 px on this grid."""
    return max(1, min(spec.levels, int(math.log2(min(shape))) - 1))


def forecast_rain(
    rain_mm_h: np.ndarray, spec: PystepsSpec, out_len: int, radar: Radar = Radar()
) -> np.ndarray:
    """One sequence: rain rate (in_len, H, W) mm/h, NaN = no data -> forecast (M, out_len, H, W) mm/h
    (M = spec.members for steps, else 1); NaN where pysteps has no value (advected in from outside).
    pysteps' progress messages are swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):  # pysteps prints its progress and settings
        return _forecast_rain(rain_mm_h, spec, out_len, radar)


def _motion(rain_mm_h: np.ndarray) -> np.ndarray:
    """Lucas–Kanade motion (2, H, W) in pixels per frame of consecutive rain fields (S >= 2, H, W), NaN = no
    data; NaN motion (no features) -> 0."""
    from pysteps.motion.lucaskanade import dense_lucaskanade

    dbr = np.where(np.isfinite(rain_mm_h), _to_dbr(rain_mm_h), np.nan)
    return np.nan_to_num(dense_lucaskanade(dbr, verbose=False))


def _forecast_rain(rain_mm_h: np.ndarray, spec: PystepsSpec, out_len: int, radar: Radar) -> np.ndarray:
    from pysteps.nowcasts import extrapolation

    n_members = spec.members if spec.name == "steps" else 1
    present = np.isfinite(rain_mm_h).any(axis=(1, 2))  # a frame without one valid pixel is missing
    if not present[-MOTION_FRAMES:].all():
        warnings.warn(
            f"{spec.name}: a missing frame among the last {MOTION_FRAMES} inputs; this forecast extrapolates "
            "the last present frame with the motion of the last two consecutive present frames",
            RuntimeWarning,
            stacklevel=2,
        )
        return np.repeat(_extrapolate_with_gaps(rain_mm_h, present, out_len)[None], n_members, axis=0)
    velocity = _motion(rain_mm_h[-MOTION_FRAMES:])
    dbr = _to_dbr(rain_mm_h[-MOTION_FRAMES:])
    last = np.nan_to_num(rain_mm_h[-1], nan=0.0)
    if spec.name == "extrapolation":
        return extrapolation.forecast(last, velocity, out_len)[None]
    wet_dbr = 10.0 * math.log10(RAIN_THRESHOLD_MM_H)
    if np.count_nonzero(dbr[-1] > wet_dbr) < 10:  # too little rain for a cascade: nothing to forecast
        return np.zeros((n_members, out_len, *dbr.shape[1:]))
    try:
        return _cascade_forecast(dbr, velocity, spec, out_len, radar)
    except RuntimeError as exc:  # pysteps: "nonstationary AR(p) process" (rain that does not evolve at all)
        if "nonstationary" not in str(exc):
            raise
        warnings.warn(
            f"{spec.name}: pysteps found the AR(2) cascade nonstationary (rain that only moves); this "
            "forecast is the plain extrapolation, the limit of S-PROG/STEPS for a correlation of 1",
            RuntimeWarning,
            stacklevel=2,
        )
        return np.repeat(extrapolation.forecast(last, velocity, out_len)[None], n_members, axis=0)


def _extrapolate_with_gaps(rain_mm_h: np.ndarray, present: np.ndarray, out_len: int) -> np.ndarray:
    """Inputs with missing frames -> (out_len, H, W) mm/h: the last present frame extrapolated (with the
    motion of the last two consecutive present frames, else none) to the lead times after the last input."""
    from pysteps.nowcasts import extrapolation

    if not present.any():
        return np.zeros((out_len, *rain_mm_h.shape[1:]))
    last = int(np.flatnonzero(present)[-1])
    pairs = np.flatnonzero(present[:-1] & present[1:])
    velocity = (
        _motion(rain_mm_h[pairs[-1] : pairs[-1] + 2]) if pairs.size else np.zeros((2, *rain_mm_h.shape[1:]))
    )
    lag = rain_mm_h.shape[0] - 1 - last  # frames from the last present one to the last input time
    out = extrapolation.forecast(np.nan_to_num(rain_mm_h[last], nan=0.0), velocity, out_len + lag)
    return out[lag:]


def _cascade_forecast(
    dbr: np.ndarray, velocity: np.ndarray, spec: PystepsSpec, out_len: int, radar: Radar
) -> np.ndarray:
    """S-PROG or STEPS on dBR (3, H, W) -> rain rate (M, out_len, H, W) mm/h."""
    from pysteps.nowcasts import sprog, steps

    wet_dbr = 10.0 * math.log10(RAIN_THRESHOLD_MM_H)
    levels = _levels(spec, dbr.shape[1:])
    if spec.name == "sprog":
        out = sprog.forecast(dbr, velocity, out_len, precip_thr=wet_dbr, n_cascade_levels=levels)
        return _from_dbr(out)[None]
    out = steps.forecast(
        dbr,
        velocity,
        out_len,
        n_ens_members=spec.members,
        n_cascade_levels=levels,
        precip_thr=wet_dbr,
        kmperpixel=spec.km_per_px or radar.km_per_px,
        timestep=spec.interval_min or radar.interval_min,
        seed=spec.seed,
    )
    return _from_dbr(out)


class PystepsBaseline:
    """A pysteps baseline as a forecaster function.

    ``baseline(inputs, masks=None)``: torch (in_len, B, 1, H, W) pixels [0, 1] (masks: same shape,
    bool, True = observed) -> (out_len, B, 1, H, W) pixels; :meth:`ensemble` -> (M, out_len, B, 1, H, W).
    """

    def __init__(self, spec: PystepsSpec, out_len: int, radar: Radar | None = None):
        self.spec = spec
        self.out_len = int(out_len)
        self.radar = radar or Radar()
        self.zr = self.radar.zr

    @property
    def members(self) -> int:
        """Ensemble members (1 for the deterministic baselines)."""
        return self.spec.members if self.spec.name == "steps" else 1

    def rain_ensemble(self, inputs: torch.Tensor, masks: torch.Tensor | None = None) -> np.ndarray:
        """(in_len, B, 1, H, W) pixels -> rain-rate members (M, out_len, B, H, W) mm/h (NaN: no value)."""
        if inputs.dim() != 5 or inputs.shape[2] != 1:
            raise ValueError(f"inputs must be (in_len, B, 1, H, W), got shape {tuple(inputs.shape)}")
        if inputs.shape[0] < MOTION_FRAMES:
            raise NowcastError(f"{self.spec.name} needs at least {MOTION_FRAMES} input frames")
        frames = inputs[:, :, 0].detach().float().cpu().numpy()
        valid = None if masks is None else masks[:, :, 0].detach().cpu().numpy().astype(bool)
        out = np.empty((self.members, self.out_len, *frames.shape[1:]), dtype=np.float64)
        for b in range(frames.shape[1]):
            rain = pixel_to_rain(frames[:, b], None if valid is None else valid[:, b], self.zr)
            out[:, :, b] = forecast_rain(rain, self.spec, self.out_len, self.radar)
        return out

    def _pixels(self, rain_mm_h: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(rain_to_pixel(rain_mm_h, self.zr)).unsqueeze(-3).to(like.device, like.dtype)

    def ensemble(self, inputs: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(in_len, B, 1, H, W) -> members (M, out_len, B, 1, H, W), pixel values, inputs' device/dtype."""
        return self._pixels(self.rain_ensemble(inputs, masks), inputs)

    def __call__(self, inputs: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """The deterministic forecast (out_len, B, 1, H, W): the single member, or the ensemble mean taken
        in rain rate (NaN members count as dry), in pixel units."""
        rain = np.nan_to_num(self.rain_ensemble(inputs, masks), nan=0.0)
        return self._pixels(rain.mean(axis=0), inputs)
