"""A synthetic radar archive in the exact HKO-7 layout (``nowcast synth``).

The real HKO-7 data is licensed per user, so this generator makes every stage runnable on a fresh
machine. It writes::

    OUT/radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png        8-bit gray, pixel = round(255 * (dBZ + 10) / 70)
    OUT/radarPNG_mask/YYYY/MM/DD/RADyymmddHHMM00.mask  zlib of an (H, W) bool array, 1 = valid
    OUT/train_days.txt, valid_days.txt, test_days.txt  ``YYYYMMDD, <daily rain mm>`` (chronological split)
    OUT/synth_config.json                              the configuration that made the archive

The weather (all lengths in *domain units*: the image side is 1, so the weather looks the same at any
``size_px``; times in frames of 6 minutes):

- a wind field that varies smoothly in space and slowly in time: a veering steering current, a
  Gaussian vortex drifting across the domain and two large-scale divergence-free (stream-function)
  modes whose phases travel;
- convective cells: elliptical Gaussian cores that are advected by the wind at their centre plus a small
  propagation velocity of their own, rotate with half the local vorticity plus a spin of their own,
  grow and decay over a life cycle (intensity and size follow ``sin(pi * age / life)``), are born by a
  Poisson process (more in the afternoon, partly embedded in the rain bands) and die;
- stratiform bands: long, curved, weaker bands with long lives that move and turn the same way;
- small-scale texture: a multiplicative log-normal field advected by the wind and renewed as an AR(1)
  process, so the fine structure evolves instead of being carried rigidly;
- the radar: a circular coverage (outside: mask 0, pixel 0), static ground-clutter clusters and a few
  transient outliers (mask 0, random high values in the image), 1 dB sensor noise, clear-air speckle,
  and missing frames (independent drop-outs plus occasional multi-frame outages).

Rain rates convert to reflectivity with ``Z = 58.53 R^1.56`` (``trajgru.units``).

Every day is simulated continuously from its own random stream keyed by ``(seed, date)``, so days are
independent, generation parallelises over days, and the bytes do not depend on the number of workers
(nor on ``start``/``days``: a given date always gets the same weather for a given seed).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline import catalog as cat
from pipeline.errors import NowcastError, Validated
from pipeline.progress import progress_bar
from pipeline.sources import PIXEL_ENCODING, dbz_to_u8, get_source
from trajgru.units import ZR_A, ZR_B, rainfall_to_dbz

SYNTH_VERSION = 1
INTERVAL_S = cat.INTERVAL_S  # the HKO-7 cadence: one frame every 6 minutes
SLOTS_PER_DAY = 86400 // INTERVAL_S  # 240
#: The day lists split the days chronologically ~70/15/15 (``catalog.split_days_by_fraction``).
VALID_FRACTION = 0.15
TEST_FRACTION = 0.15

# --- physical parameters (domain units per frame unless stated) ---------------------------------------
COVERAGE_RADIUS = 0.48  # radar range as a fraction of the image side
NO_ECHO_DBZ = -10.0  # stored as pixel 0
MIN_RAIN_MM_H = 0.05  # below this the radar sees no echo
MAX_DBZ = 60.0  # top of the 8-bit encoding
SENSOR_NOISE_DB = 1.0
SPECKLE_FRACTION = 0.002  # clear-air pixels with a weak random echo
TEXTURE_SIGMA = 0.45  # std of log rain from the texture
TEXTURE_MEMORY = 0.92  # AR(1) coefficient of the texture per frame
TEXTURE_GRID = 96  # texture correlation length ~ 1/TEXTURE_GRID of the side
WIND_GRID = 24  # the wind is evaluated on this grid and interpolated
BAND_GRID_DIVISOR = 4  # bands are smooth: rendered at 1/4 resolution
DOMAIN_MARGIN = 0.3  # objects live in [-margin, 1 + margin]^2
CLUTTER_CLUSTERS_PER_PX = 3e-4
OUTAGE_START_PER_MISSING = 0.1  # outage starts per frame = this * missing_frame_rate
OUTAGE_FRAMES = (3, 10)  # inclusive range of an outage's length
CELLS_AT_EQUILIBRIUM = 32.0  # cells alive in the extended domain at activity 1
BANDS_AT_EQUILIBRIUM = 1.6
SKIRT_SIZE = 1.8  # cell skirt radius / core radius
SKIRT_INTENSITY = 0.025  # cell skirt peak / core peak


@dataclass(frozen=True)
class SynthConfig(Validated):
    """What to synthesise.

    out_dir: archive root (created if needed; files with the same names are replaced).
    start: first day, ``YYYY-MM-DD`` (UTC), year 2000-2099 (file names carry two-digit years).
    days: number of consecutive days.
    frames_per_day: 1-240 slots per day, every 6 minutes from 00:00 UTC.
    size_px: image side in pixels (square frames; HKO-7 is 480).
    seed: non-negative integer; the same seed gives the same bytes.
    missing_frame_rate: probability in [0, 0.5] that a frame is dropped; outages of 3-10 frames start at
        a tenth of that rate per frame. 0 means a complete archive.
    workers: processes (default ``os.cpu_count()``); 1 runs in this process.
    """

    out_dir: str | Path
    start: str = "2015-06-01"
    days: int = 4
    frames_per_day: int = 240
    size_px: int = 480
    seed: int = 0
    missing_frame_rate: float = 0.01
    workers: int | None = None

    def rules(self):
        """Every option (:class:`pipeline.errors.Validated`), naming it and the accepted range."""
        for ok, message in self._rules():
            yield ok, f"synth: {message}"

    def _rules(self):
        yield (
            isinstance(self.out_dir, (str, os.PathLike)) and str(self.out_dir) != "",
            f"out_dir must be a directory path, got {self.out_dir!r}",
        )
        yield (
            not Path(self.out_dir).exists() or Path(self.out_dir).is_dir(),
            f"out_dir {self.out_dir} exists and is not a directory; choose another path",
        )
        try:
            day = np.datetime64(str(self.start), "D")
        except ValueError:
            day = None
        yield (
            day is not None and len(str(self.start)) == 10,
            f"start must be a date YYYY-MM-DD, got {self.start!r}",
        )
        year = day.astype(object).year
        yield (
            2000 <= year <= 2099,
            f"start year must be 2000-2099 (HKO-7 file names have two-digit years), got {self.start}",
        )
        yield (_is_int(self.days) and self.days >= 1, f"days must be an integer >= 1, got {self.days!r}")
        last_year = (day + int(self.days) - 1).astype(object).year
        yield (last_year <= 2099, f"the last day falls in {last_year}; keep the archive within 2000-2099")
        yield (
            _is_int(self.frames_per_day) and 1 <= self.frames_per_day <= SLOTS_PER_DAY,
            f"frames_per_day must be an integer in 1..{SLOTS_PER_DAY} (6-minute slots), "
            f"got {self.frames_per_day!r}",
        )
        yield (
            _is_int(self.size_px) and 16 <= self.size_px <= 4096,
            f"size_px must be an integer in 16..4096, got {self.size_px!r}",
        )
        yield (
            _is_int(self.seed) and self.seed >= 0,
            f"seed must be a non-negative integer, got {self.seed!r}",
        )
        rate = self.missing_frame_rate
        yield (
            not isinstance(rate, bool) and isinstance(rate, (int, float, np.floating)) and 0.0 <= rate <= 0.5,
            f"missing_frame_rate must be a number in [0, 0.5], got {rate!r}",
        )
        yield (
            self.workers is None or (_is_int(self.workers) and self.workers >= 1),
            f"workers must be an integer >= 1 (or None for all cores), got {self.workers!r}",
        )

    @property
    def start_day(self) -> np.datetime64:
        """The first day as datetime64[D]."""
        return np.datetime64(self.start, "D")


@dataclass(frozen=True)
class SynthResult:
    """What was written: archive root, frames written (missing ones excluded), days, wall time in s."""

    out_dir: Path
    n_frames: int
    n_days: int
    seconds: float
    day_rain_mm: dict[str, float] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.n_frames / self.seconds if self.seconds > 0 else float("inf")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# --- random streams ---------------------------------------------------------------------------------------
def _day_number(day: np.datetime64) -> int:
    return int(np.datetime64(day, "D").astype(np.int64))


def _day_streams(seed: int, day: np.datetime64) -> dict[str, np.random.Generator]:
    """Independent generators for one day, keyed by (seed, date): weather, radar noise, missing frames."""
    root = np.random.SeedSequence(entropy=seed, spawn_key=(1, _day_number(day)))
    weather, noise, missing = root.spawn(3)
    return {
        "weather": np.random.default_rng(weather),
        "noise": np.random.default_rng(noise),
        "missing": np.random.default_rng(missing),
    }


def _archive_rng(seed: int) -> np.random.Generator:
    """Generator for things that are fixed for the whole archive (the ground clutter)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0,)))


# --- wind -------------------------------------------------------------------------------------------------
@dataclass
class WindField:
    """A smooth, slowly varying, non-uniform wind, in domain units per frame (x = column, y = row, down).

    velocity = steering(t) + Gaussian vortex (centre drifting) + two stream-function modes.
    """

    steer_speed: float
    steer_dir_rad: float
    steer_speed_wobble: float
    steer_veer_rad: float
    steer_period: tuple[float, float]
    steer_phase: tuple[float, float]
    vortex_speed: float  # peak tangential speed (signed: + counter-clockwise on screen)
    vortex_radius: float
    vortex_xy0: tuple[float, float]
    vortex_drift: tuple[float, float]
    mode_k: np.ndarray  # (M, 2) wave vectors (rad per domain unit)
    mode_amp: np.ndarray  # (M,) stream-function amplitudes
    mode_phase: np.ndarray  # (M,)
    mode_omega: np.ndarray  # (M,) rad per frame

    @classmethod
    def random(cls, rng: np.random.Generator) -> WindField:
        n_modes = 2
        wavelength = rng.uniform(0.6, 1.5, n_modes)
        angle = rng.uniform(0, 2 * np.pi, n_modes)
        k_abs = 2 * np.pi / wavelength
        k = np.stack([k_abs * np.cos(angle), k_abs * np.sin(angle)], axis=1)
        mode_speed = rng.uniform(0.002, 0.005, n_modes)
        has_vortex = rng.random() < 0.9
        return cls(
            steer_speed=float(rng.uniform(0.002, 0.009)),
            steer_dir_rad=float(rng.uniform(0, 2 * np.pi)),
            steer_speed_wobble=float(rng.uniform(0.1, 0.4)),
            steer_veer_rad=float(rng.uniform(0.2, 0.8)),
            steer_period=(float(rng.uniform(150, 500)), float(rng.uniform(200, 700))),
            steer_phase=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))),
            vortex_speed=float(rng.choice([-1, 1]) * rng.uniform(0.002, 0.007) * has_vortex),
            vortex_radius=float(rng.uniform(0.12, 0.3)),
            vortex_xy0=(float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9))),
            vortex_drift=(float(rng.normal(0, 0.001)), float(rng.normal(0, 0.001))),
            mode_k=k,
            mode_amp=mode_speed / k_abs,
            mode_phase=rng.uniform(0, 2 * np.pi, n_modes),
            mode_omega=rng.uniform(-0.02, 0.02, n_modes),
        )

    def steering(self, t: float) -> tuple[float, float]:
        """Uniform part of the wind at frame t."""
        speed = self.steer_speed * (
            1
            + self.steer_speed_wobble * math.sin(2 * math.pi * t / self.steer_period[0] + self.steer_phase[0])
        )
        direction = self.steer_dir_rad + self.steer_veer_rad * math.sin(
            2 * math.pi * t / self.steer_period[1] + self.steer_phase[1]
        )
        return speed * math.cos(direction), speed * math.sin(direction)

    def velocity(self, x: np.ndarray, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Wind (u along x, v along y) at points (x, y) (domain units, any matching shapes) at frame t."""
        u0, v0 = self.steering(t)
        u = np.full(np.broadcast(x, y).shape, u0, dtype=np.float64)
        v = np.full_like(u, v0)
        if self.vortex_speed != 0.0:
            cx = self.vortex_xy0[0] + self.vortex_drift[0] * t
            cy = self.vortex_xy0[1] + self.vortex_drift[1] * t
            dx, dy = x - cx, y - cy
            rc = self.vortex_radius
            factor = (self.vortex_speed / rc) * np.exp(0.5 * (1.0 - (dx * dx + dy * dy) / (rc * rc)))
            # screen coordinates (y down): a positive vortex turns counter-clockwise as seen on screen
            u = u + factor * dy
            v = v - factor * dx
        for (kx, ky), amp, phase, omega in zip(self.mode_k, self.mode_amp, self.mode_phase, self.mode_omega):
            c = np.cos(kx * x + ky * y + phase + omega * t)
            u = u + amp * ky * c  # u = d(psi)/dy
            v = v - amp * kx * c  # v = -d(psi)/dx  -> divergence free
        return u, v

    def vorticity(self, x: np.ndarray, y: np.ndarray, t: float, h: float = 1e-3) -> np.ndarray:
        """dv/dx - du/dy (rad per frame) at points, by central differences."""
        _, v_px = self.velocity(x + h, y, t)
        _, v_mx = self.velocity(x - h, y, t)
        u_py, _ = self.velocity(x, y + h, t)
        u_my, _ = self.velocity(x, y - h, t)
        return (v_px - v_mx) / (2 * h) - (u_py - u_my) / (2 * h)

    def grid(self, n: int, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Wind on an n x n grid of cell centres ((i + 0.5) / n), as (u, v) float32 (n, n) arrays."""
        c = (np.arange(n) + 0.5) / n
        return tuple(a.astype(np.float32) for a in self.velocity(c[None, :], c[:, None], t))


# --- rain objects ----------------------------------------------------------------------------------------
@dataclass
class Population:
    """A set of rain objects as parallel arrays (one entry per object); domain units and frames."""

    x: np.ndarray
    y: np.ndarray
    age: np.ndarray
    life: np.ndarray
    peak_mm_h: np.ndarray
    sigma_major: np.ndarray
    sigma_minor: np.ndarray
    theta: np.ndarray
    spin: np.ndarray  # own rotation, rad/frame
    drift_u: np.ndarray  # own propagation relative to the wind
    drift_v: np.ndarray
    curvature: np.ndarray  # band bend (across offset = curvature * along^2); 0 for cells
    satellite: np.ndarray  # cells: relative intensity of a second core on the major axis (0 for bands)

    FIELDS = (
        "x",
        "y",
        "age",
        "life",
        "peak_mm_h",
        "sigma_major",
        "sigma_minor",
        "theta",
        "spin",
        "drift_u",
        "drift_v",
        "curvature",
        "satellite",
    )

    @classmethod
    def empty(cls) -> Population:
        return cls(**{f: np.zeros(0) for f in cls.FIELDS})

    def __len__(self) -> int:
        return len(self.x)

    def extend(self, other: Population) -> None:
        for f in self.FIELDS:
            setattr(self, f, np.concatenate([getattr(self, f), getattr(other, f)]))

    def keep(self, which: np.ndarray) -> None:
        for f in self.FIELDS:
            setattr(self, f, getattr(self, f)[which])

    def envelope(self, power: float, lag: float = 0.0) -> np.ndarray:
        """Life-cycle factor in [0, 1]: sin(pi * (age / life - lag)) ** power (grows, peaks, decays)."""
        return np.sin(np.pi * np.clip(self.age / self.life - lag, 0.0, 1.0)) ** power

    def advance(self, wind: WindField, t: float) -> None:
        """One frame: move with the wind (midpoint rule) plus own drift, turn with half the vorticity plus
        own spin, age by one frame."""
        n, h = len(self), 1e-3
        u1, v1 = wind.velocity(self.x, self.y, t)
        xm = self.x + 0.5 * (u1 + self.drift_u)
        ym = self.y + 0.5 * (v1 + self.drift_v)
        # one wind evaluation for the midpoint and its 4-point vorticity stencil
        xs = np.concatenate([xm, xm + h, xm - h, xm, xm])
        ys = np.concatenate([ym, ym, ym, ym + h, ym - h])
        u, v = wind.velocity(xs, ys, t + 0.5)
        u2, v2 = u[:n], v[:n]
        vort = (v[n : 2 * n] - v[2 * n : 3 * n]) / (2 * h) - (u[3 * n : 4 * n] - u[4 * n :]) / (2 * h)
        self.theta = self.theta + 0.5 * vort + self.spin
        self.x = self.x + u2 + self.drift_u
        self.y = self.y + v2 + self.drift_v
        self.age = self.age + 1.0

    def prune(self) -> None:
        """Drop objects past their life or far outside the domain."""
        lo, hi = -DOMAIN_MARGIN - 0.1, 1 + DOMAIN_MARGIN + 0.1
        self.keep((self.age < self.life) & (self.x > lo) & (self.x < hi) & (self.y > lo) & (self.y < hi))


def _new_cells(rng: np.random.Generator, n: int, bands: Population, random_age: bool) -> Population:
    """n convective cells: half of them (when bands exist) born inside a band, the rest anywhere."""
    lo, hi = -DOMAIN_MARGIN, 1 + DOMAIN_MARGIN
    x = rng.uniform(lo, hi, n)
    y = rng.uniform(lo, hi, n)
    if len(bands) and n:
        in_band = rng.random(n) < 0.5
        b = rng.integers(0, len(bands), n)
        along = rng.normal(0, 1, n) * bands.sigma_major[b]
        across = rng.normal(0, 0.4, n) * bands.sigma_minor[b] + bands.curvature[b] * along**2
        c, s = np.cos(bands.theta[b]), np.sin(bands.theta[b])
        x = np.where(in_band, bands.x[b] + along * c - across * s, x)
        y = np.where(in_band, bands.y[b] + along * s + across * c, y)
    life = np.clip(rng.lognormal(np.log(28.0), 0.5, n), 8, 120)
    sigma_major = rng.uniform(0.012, 0.04, n)
    return Population(
        x=x,
        y=y,
        age=rng.uniform(0, life) if random_age else np.zeros(n),
        life=life,
        peak_mm_h=np.clip(rng.lognormal(np.log(22.0), 0.75, n), 3.0, 250.0),
        sigma_major=sigma_major,
        sigma_minor=sigma_major / rng.uniform(1.0, 2.5, n),
        theta=rng.uniform(0, np.pi, n),
        spin=rng.normal(0, 0.03, n),
        drift_u=rng.normal(0, 0.0012, n),
        drift_v=rng.normal(0, 0.0012, n),
        curvature=np.zeros(n),
        satellite=rng.uniform(0.0, 0.9, n) * (rng.random(n) < 0.6),
    )


def _new_bands(rng: np.random.Generator, n: int, random_age: bool) -> Population:
    """n stratiform bands: long (sigma along 0.15-0.45), narrow, curved, weak (median ~3 mm/h), long-lived."""
    lo, hi = -DOMAIN_MARGIN, 1 + DOMAIN_MARGIN
    life = rng.uniform(80, 400, n)
    return Population(
        x=rng.uniform(lo, hi, n),
        y=rng.uniform(lo, hi, n),
        age=rng.uniform(0, life) if random_age else np.zeros(n),
        life=life,
        peak_mm_h=np.clip(rng.lognormal(np.log(3.0), 0.5, n), 0.8, 12.0),
        sigma_major=rng.uniform(0.15, 0.45, n),
        sigma_minor=rng.uniform(0.03, 0.08, n),
        theta=rng.uniform(0, np.pi, n),
        spin=rng.normal(0, 0.002, n),
        drift_u=rng.normal(0, 0.0008, n),
        drift_v=rng.normal(0, 0.0008, n),
        curvature=rng.uniform(-1.2, 1.2, n),
        satellite=np.zeros(n),
    )


# --- rendering -------------------------------------------------------------------------------------------
def _cell_cores(cells: Population, size_px: int) -> tuple[np.ndarray, ...]:
    """Elliptical cores of the cells, in pixels: (cx, cy, a, b, theta, amp_mm_h), each (n_cores,).

    Main core: intensity ``peak * env`` and axes ``sigma * (0.6 + 0.4 env)`` with
    ``env = sin(pi age/life)^1.5``.
    Satellite (multicell growth on the downshear flank): on the major axis 1.3 axes away, 0.7x the size,
    intensity ``satellite * peak`` with a life cycle lagging by a quarter of the cell's life.
    """
    env = cells.envelope(1.5)
    scale = 0.6 + 0.4 * env
    a = cells.sigma_major * scale * size_px
    b = cells.sigma_minor * scale * size_px
    cx = cells.x * size_px - 0.5  # pixel-index coordinates (pixel centres at integers)
    cy = cells.y * size_px - 0.5
    c, s = np.cos(cells.theta), np.sin(cells.theta)
    sat_amp = cells.peak_mm_h * cells.satellite * cells.envelope(1.5, lag=0.25)
    return (
        np.concatenate([cx, cx + 1.3 * a * c]),
        np.concatenate([cy, cy + 1.3 * a * s]),
        np.concatenate([a, 0.7 * a]),
        np.concatenate([b, 0.7 * b]),
        np.concatenate([cells.theta, cells.theta]),
        np.concatenate([cells.peak_mm_h * env, sat_amp]),
    )


def _render_cells(cells: Population, size_px: int) -> np.ndarray:
    """Sum of elliptical Gaussian cores (see _cell_cores) -> rain rate (size, size) float32 mm/h.

    Each core is evaluated on a square patch reaching 3 major sigmas (of the largest core) around its
    centre pixel; all patches in one vectorised pass, then added into a padded canvas.
    """
    if len(cells) == 0:
        return np.zeros((size_px, size_px), np.float32)
    cx, cy, a, b, theta, amp = _cell_cores(cells, size_px)
    half = int(math.ceil(3.0 * a.max())) + 1
    ix, iy = np.rint(cx).astype(np.int64), np.rint(cy).astype(np.int64)
    use = np.flatnonzero(
        (amp > 0.05) & (ix >= -half) & (ix < size_px + half) & (iy >= -half) & (iy < size_px + half)
    )
    pad = 2 * half
    canvas = np.zeros((size_px + 2 * pad, size_px + 2 * pad), np.float32)
    if len(use):
        offsets = np.arange(-half, half + 1, dtype=np.float32)
        dx = (ix[use, None] - cx[use, None] + offsets).astype(np.float32)[:, None, :]  # (N, 1, P)
        dy = (iy[use, None] - cy[use, None] + offsets).astype(np.float32)[:, :, None]  # (N, P, 1)
        c, s = np.cos(theta[use]), np.sin(theta[use])
        ia2, ib2 = 1.0 / a[use] ** 2, 1.0 / b[use] ** 2
        qa = (c * c * ia2 + s * s * ib2).astype(np.float32)[:, None, None]
        qb = (2 * c * s * (ia2 - ib2)).astype(np.float32)[:, None, None]
        qc = (s * s * ia2 + c * c * ib2).astype(np.float32)[:, None, None]
        q = qa * dx * dx + qc * dy * dy + qb * dy * dx
        patches = amp[use].astype(np.float32)[:, None, None] * np.exp(np.float32(-0.5) * q)
        p = 2 * half + 1
        for k, (x0, y0) in enumerate(zip(ix[use] + half, iy[use] + half)):
            canvas[y0 : y0 + p, x0 : x0 + p] += patches[k]
    return canvas[pad : pad + size_px, pad : pad + size_px].copy()


def _render_bands(bands: Population, n: int) -> np.ndarray:
    """Sum of curved Gaussian bands on an n x n grid (cell centres) -> rain rate (n, n) float32 mm/h."""
    out = np.zeros((n, n), np.float32)
    g = ((np.arange(n) + 0.5) / n).astype(np.float32)
    env = bands.envelope(0.5)
    for i in np.flatnonzero(env > 0):
        dx, dy = g[None, :] - np.float32(bands.x[i]), g[:, None] - np.float32(bands.y[i])
        c, s = np.float32(math.cos(bands.theta[i])), np.float32(math.sin(bands.theta[i]))
        along = dx * c + dy * s
        across = -dx * s + dy * c - np.float32(bands.curvature[i]) * along * along
        q = (along / np.float32(bands.sigma_major[i])) ** 2 + (across / np.float32(bands.sigma_minor[i])) ** 2
        out += np.float32(bands.peak_mm_h[i] * env[i]) * np.exp(np.float32(-0.5) * q)
    return out


def _render_skirts(cells: Population, n: int) -> np.ndarray:
    """Weak, broad rain around the cells (the stratiform skirt/anvil) on an n x n grid -> (n, n) float32
    mm/h: isotropic Gaussians of SKIRT_SIZE x the cell's size and SKIRT_INTENSITY x its intensity,
    separable, so the sum is one matrix product."""
    if len(cells) == 0:
        return np.zeros((n, n), np.float32)
    env = cells.envelope(1.5)
    sigma = SKIRT_SIZE * cells.sigma_major * (0.6 + 0.4 * env)
    g = (np.arange(n) + 0.5) / n
    gx = np.exp(-0.5 * ((g[None, :] - cells.x[:, None]) / sigma[:, None]) ** 2)  # (N, n)
    gy = np.exp(-0.5 * ((g[None, :] - cells.y[:, None]) / sigma[:, None]) ** 2)
    weighted = (SKIRT_INTENSITY * cells.peak_mm_h * env)[:, None] * gy
    return np.einsum("ki,kj->ij", weighted, gx).astype(np.float32)  # no BLAS threads (see resample_taps)


def coverage_mask(size_px: int) -> np.ndarray:
    """(size, size) bool: pixel centres within COVERAGE_RADIUS * size of the image centre."""
    c = np.arange(size_px) + 0.5 - size_px / 2
    return (c[None, :] ** 2 + c[:, None] ** 2) <= (COVERAGE_RADIUS * size_px) ** 2


def clutter_mask(size_px: int, seed: int) -> np.ndarray:
    """(size, size) bool: static ground-clutter pixels (small clusters inside the coverage), per seed."""
    rng = _archive_rng(seed)
    cover = coverage_mask(size_px)
    n_clusters = max(1, round(CLUTTER_CLUSTERS_PER_PX * cover.sum()))
    inside = np.flatnonzero(cover.ravel())
    seeds = rng.choice(inside, n_clusters, replace=False)
    out = np.zeros(size_px * size_px, bool)
    out[seeds] = True
    out = out.reshape(size_px, size_px)
    # grow each seed by a random few neighbours
    rows, cols = np.divmod(seeds, size_px)
    for _ in range(3):
        step = rng.integers(-1, 2, (2, n_clusters))
        grow = rng.random(n_clusters) < 0.6
        rows = np.clip(rows + step[0] * grow, 0, size_px - 1)
        cols = np.clip(cols + step[1] * grow, 0, size_px - 1)
        out[rows, cols] = True
    return out & cover


def missing_slots(rng: np.random.Generator, n_slots: int, rate: float) -> np.ndarray:
    """(n_slots,) bool, True = frame missing: independent drop-outs with probability ``rate`` plus outages
    of OUTAGE_FRAMES consecutive frames starting with probability ``rate * OUTAGE_START_PER_MISSING`` per
    slot."""
    missing = rng.random(n_slots) < rate
    starts = np.flatnonzero(rng.random(n_slots) < rate * OUTAGE_START_PER_MISSING)
    lengths = rng.integers(OUTAGE_FRAMES[0], OUTAGE_FRAMES[1] + 1, len(starts))
    for s, n in zip(starts, lengths):
        missing[s : s + n] = True
    return missing


def resample_taps(n_out: int, n_in: int, cubic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Taps to resample a length-n_in axis to n_out samples: (indices (K, n_out) int64, weights (K, n_out)
    float32), ``out[j] = sum_k weights[k, j] * in[indices[k, j]]``.

    Pixel-centre convention (output j sits at input coordinate ``(j + 0.5) * n_in / n_out - 0.5``, as
    OpenCV's resize), the edge value repeated beyond the ends; linear (K = 2) or Keys cubic, a = -0.5 (K = 4).
    Pure numpy gathers on purpose: no BLAS or OpenCV thread pools, which spin on a busy machine or deadlock
    in forked workers.
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    frac = src - base
    if cubic:
        a = -0.5
        offsets = [-1, 0, 1, 2]
        dist = [1 + frac, frac, 1 - frac, 2 - frac]
        weights = [
            ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if k in (0, 3) else ((a + 2) * d - (a + 3)) * d * d + 1
            for k, d in enumerate(dist)
        ]
    else:
        offsets, weights = [0, 1], [1 - frac, frac]
    idx = np.stack([np.clip(base + o, 0, n_in - 1).astype(np.int64) for o in offsets])
    return idx, np.stack(weights).astype(np.float32)


def resize2d(img: np.ndarray, row_taps: tuple, col_taps: tuple) -> np.ndarray:
    """Resize (h, w) float32 with taps from resample_taps for the rows and the columns -> (H, W) float32."""
    idx, w = row_taps
    tmp = sum(w[k][:, None] * img[idx[k], :] for k in range(len(idx)))
    idx, w = col_taps
    return sum(w[k][None, :] * tmp[:, idx[k]] for k in range(len(idx)))


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Reflect integer indices into 0..n-1, edge pixel repeated (``cba|abcd|dcb``)."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def bilinear_sample(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample (H, W) float32 ``img`` at pixel coordinates (x = column, y = row; centres at integers),
    bilinear, reflecting beyond the borders -> array of x's shape, float32."""
    h, w = img.shape
    x0f, y0f = np.floor(x), np.floor(y)
    fx, fy = (x - x0f).astype(np.float32), (y - y0f).astype(np.float32)
    x0, y0 = x0f.astype(np.int64), y0f.astype(np.int64)
    xa, xb = _reflect_index(x0, w), _reflect_index(x0 + 1, w)
    ya, yb = _reflect_index(y0, h), _reflect_index(y0 + 1, h)
    top = img[ya, xa] * (1 - fx) + img[ya, xb] * fx
    bottom = img[yb, xa] * (1 - fx) + img[yb, xb] * fx
    return top * (1 - fy) + bottom * fy


class DaySimulator:
    """The weather of one day, frame by frame (state carries from frame to frame).

    ``step()`` advances by one 6-minute frame; ``rain_mm_h()`` renders the true rain rate (H, W) float32;
    ``observe(rain)`` turns it into what the radar stores: (dBZ (H, W) float32, valid mask (H, W) bool).
    """

    def __init__(self, seed: int, day: np.datetime64, size_px: int, clutter: np.ndarray | None = None):
        self.size_px = size_px
        streams = _day_streams(seed, day)
        self.rng, self.noise_rng = streams["weather"], streams["noise"]
        rng = self.rng
        self.t = 0  # frames since 00:00 UTC
        self.wind = WindField.random(rng)
        self.conv_activity = float(rng.uniform(0.4, 1.6))
        self.strat_activity = float(rng.uniform(0.0, 1.5))
        self.bands = _new_bands(rng, rng.poisson(BANDS_AT_EQUILIBRIUM * self.strat_activity), random_age=True)
        self.cells = _new_cells(
            rng,
            rng.poisson(CELLS_AT_EQUILIBRIUM * self.conv_activity * self._diurnal(0)),
            self.bands,
            random_age=True,
        )
        # texture lives on an n_tex grid (fine enough for its correlation length), upsampled for rendering
        self.n_tex = min(size_px, 2 * TEXTURE_GRID)
        n_noise = min(TEXTURE_GRID, self.n_tex)
        self._noise_up = resample_taps(self.n_tex, n_noise, cubic=True)
        self._tex_up = resample_taps(size_px, self.n_tex) if self.n_tex != size_px else None
        self._wind_up = resample_taps(self.n_tex, WIND_GRID)
        self.n_smooth = max(8, size_px // BAND_GRID_DIVISOR)
        self._smooth_up = resample_taps(size_px, self.n_smooth)
        yy, xx = np.mgrid[0 : self.n_tex, 0 : self.n_tex].astype(np.float32)
        self._tex_x, self._tex_y = xx, yy
        self.texture = self._fresh_texture()
        self.cover = coverage_mask(size_px)
        self.clutter = clutter_mask(size_px, seed) if clutter is None else clutter

    @staticmethod
    def _diurnal(t: float) -> float:
        """Convective birth-rate factor: peaks mid-afternoon in Hong Kong (~06-07 UTC)."""
        hours = t * INTERVAL_S / 3600.0
        return 1.0 + 0.6 * math.cos(2 * math.pi * (hours - 6.5) / 24.0)

    def _fresh_texture(self) -> np.ndarray:
        """Unit-variance Gaussian noise, correlation length ~ side / TEXTURE_GRID, (n_tex, n_tex) float32."""
        n_noise = min(TEXTURE_GRID, self.n_tex)
        coarse = self.rng.standard_normal((n_noise, n_noise), dtype=np.float32)
        fine = resize2d(coarse, self._noise_up, self._noise_up)
        return fine / max(float(fine.std()), 1e-6)

    def step(self) -> None:
        """Advance the weather by one frame: advect and evolve objects and texture, births and deaths."""
        t, rng, wind = self.t, self.rng, self.wind
        # texture: semi-Lagrangian advection (back-trace from each grid point) + AR(1) renewal
        u, v = wind.grid(WIND_GRID, t + 0.5)
        m, n = self._wind_up, self.n_tex
        u_px, v_px = resize2d(u * n, m, m), resize2d(v * n, m, m)
        moved = bilinear_sample(self.texture, self._tex_x - u_px, self._tex_y - v_px)
        moved /= max(float(moved.std()), 1e-6)
        rho = TEXTURE_MEMORY
        self.texture = rho * moved + math.sqrt(1 - rho * rho) * self._fresh_texture()
        # objects
        for pop in (self.cells, self.bands):
            pop.advance(wind, t)
            pop.prune()
        self.t = t + 1
        n_bands = rng.poisson(BANDS_AT_EQUILIBRIUM * self.strat_activity / 240.0)
        self.bands.extend(_new_bands(rng, n_bands, random_age=False))
        cell_rate = CELLS_AT_EQUILIBRIUM * self.conv_activity * self._diurnal(self.t) / 28.0
        self.cells.extend(_new_cells(rng, rng.poisson(cell_rate), self.bands, random_age=False))

    def rain_mm_h(self) -> np.ndarray:
        """True rain rate (size, size) float32 mm/h at the current frame (cells + bands, times texture)."""
        rain = _render_cells(self.cells, self.size_px)
        smooth = _render_bands(self.bands, self.n_smooth) + _render_skirts(self.cells, self.n_smooth)
        rain += resize2d(smooth, self._smooth_up, self._smooth_up)
        texture = self.texture if self._tex_up is None else resize2d(self.texture, self._tex_up, self._tex_up)
        s = TEXTURE_SIGMA
        rain *= np.exp(np.float32(s) * texture - np.float32(0.5 * s * s))
        return rain

    def observe(self, rain_mm_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True rain -> (dBZ (H, W) float32 as the radar stores it, valid mask (H, W) bool).

        Echo where rain >= MIN_RAIN_MM_H with 1 dB Gaussian noise; clear-air speckle; clutter and transient
        outliers get random high dBZ and mask 0; outside the coverage: NO_ECHO_DBZ and mask 0.
        """
        rng, size = self.noise_rng, self.size_px
        echo = rain_mm_h >= MIN_RAIN_MM_H
        dbz = np.full((size, size), NO_ECHO_DBZ, np.float32)
        dbz[echo] = rainfall_to_dbz(rain_mm_h[echo]) + SENSOR_NOISE_DB * rng.standard_normal(
            int(echo.sum()), dtype=np.float32
        )
        n_speckle = rng.binomial(size * size, SPECKLE_FRACTION)
        sp = rng.integers(0, size * size, n_speckle)
        flat = dbz.ravel()
        flat[sp] = np.maximum(flat[sp], rng.uniform(-5.0, 12.0, n_speckle).astype(np.float32))
        bad = self.clutter.copy()
        n_out = rng.poisson(3.0 * (size / 480.0) ** 2 + 0.5)
        bad.ravel()[rng.integers(0, size * size, n_out)] = True
        bad &= self.cover
        dbz[bad] = rng.uniform(40.0, MAX_DBZ, int(bad.sum())).astype(np.float32)
        np.clip(dbz, NO_ECHO_DBZ, MAX_DBZ, out=dbz)
        dbz[~self.cover] = NO_ECHO_DBZ
        return dbz, self.cover & ~bad


@dataclass(frozen=True)
class SynthFrame:
    """One simulated slot: time (epoch s, UTC), stored dBZ (H, W) float32, mask (H, W) bool, whether the
    slot is missing from the archive, and the area-mean true rain rate over the coverage (mm/h)."""

    time_s: int
    dbz: np.ndarray
    mask: np.ndarray
    missing: bool
    mean_rain_mm_h: float


def simulate_day(
    seed: int,
    day: np.datetime64 | str,
    frames_per_day: int,
    size_px: int,
    missing_frame_rate: float = 0.0,
    clutter: np.ndarray | None = None,
) -> Iterator[SynthFrame]:
    """The frames of one day (slot 0 at 00:00 UTC, then every 6 minutes), deterministic in (seed, day).

    Missing slots are still simulated (the weather goes on; the radar just did not record them).
    """
    day = np.datetime64(day, "D")
    sim = DaySimulator(seed, day, size_px, clutter)
    missing = missing_slots(_day_streams(seed, day)["missing"], frames_per_day, missing_frame_rate)
    t0 = int(day.astype("datetime64[s]").astype(np.int64))
    for k in range(frames_per_day):
        if k:
            sim.step()
        rain = sim.rain_mm_h()
        dbz, mask = sim.observe(rain)
        yield SynthFrame(t0 + k * INTERVAL_S, dbz, mask, bool(missing[k]), float(rain[sim.cover].mean()))


def stored_pixels(frame: SynthFrame) -> np.ndarray:
    """The uint8 image written for a frame: ``dbz_to_u8`` of its dBZ (0 outside the coverage)."""
    return dbz_to_u8(frame.dbz)


def _synth_day(args: tuple) -> tuple[str, int, float]:
    """Simulate and write one day -> (YYYY-MM-DD, frames written, daily rain mm)."""
    out_dir, seed, day, frames_per_day, size_px, rate, on_frame = args
    out_dir = Path(out_dir)
    clutter = clutter_mask(size_px, seed)
    written, rain_mm = 0, 0.0
    hko7 = get_source("hko7")
    for frame in simulate_day(seed, day, frames_per_day, size_px, rate, clutter):
        rain_mm += frame.mean_rain_mm_h * INTERVAL_S / 3600.0
        if not frame.missing:
            hko7.write_frame(out_dir, frame.time_s, stored_pixels(frame), frame.mask)
            written += 1
        if on_frame is not None:
            on_frame()
    return str(np.datetime64(day, "D")), written, rain_mm


CONFIG_FILE = "synth_config.json"


def _settings(cfg: SynthConfig) -> dict:
    """The settings that determine the archive's bytes (not out_dir or workers), as written to CONFIG_FILE."""
    meta = {k: v for k, v in asdict(cfg).items() if k not in ("out_dir", "workers")}
    meta["synth_version"] = SYNTH_VERSION
    return meta


def archive_matches(cfg: SynthConfig) -> bool:
    """True when ``cfg.out_dir`` holds a finished archive written with the same settings."""
    path = Path(cfg.out_dir) / CONFIG_FILE
    try:
        written = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return all(written.get(k) == v for k, v in _settings(cfg).items())


def synth_archive(cfg: SynthConfig, progress: bool = True) -> SynthResult:
    """Simulate ``cfg.days`` days and write them as an HKO-7 archive under ``cfg.out_dir``.

    Days run in parallel (ProcessPoolExecutor, ``cfg.workers`` processes, fork start method where the OS has
    it); the output
    bytes are the same for any worker count. Returns frames written (missing slots excluded) and wall time.
    """
    t_start = time.perf_counter()
    out_dir = Path(cfg.out_dir).absolute()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NowcastError(f"synth: cannot create {out_dir}: {exc}; choose a writable directory") from exc
    # written last, so its presence means a finished archive (see archive_matches)
    (out_dir / CONFIG_FILE).unlink(missing_ok=True)
    days = [cfg.start_day + i for i in range(cfg.days)]
    workers = min(cfg.workers or os.cpu_count() or 1, cfg.days)
    total = cfg.days * cfg.frames_per_day
    results: dict[str, tuple[int, float]] = {}
    with progress_bar("synth (frames)", total, enabled=progress) as advance:
        if workers == 1:
            for day in days:
                args = (
                    str(out_dir),
                    cfg.seed,
                    day,
                    cfg.frames_per_day,
                    cfg.size_px,
                    cfg.missing_frame_rate,
                    advance,
                )
                name, n, rain = _synth_day(args)
                results[name] = (n, rain)
        else:
            # fork where available: no re-import of the caller's __main__ (works from any script or REPL)
            # and no start-up cost. The workers use numpy only (no OpenCV, whose thread pool can deadlock
            # after fork).
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = [
                    pool.submit(
                        _synth_day,
                        (
                            str(out_dir),
                            cfg.seed,
                            day,
                            cfg.frames_per_day,
                            cfg.size_px,
                            cfg.missing_frame_rate,
                            None,
                        ),
                    )
                    for day in days
                ]
                for fut in as_completed(futures):
                    name, n, rain = fut.result()
                    results[name] = (n, rain)
                    advance(cfg.frames_per_day)
    rain_by_day = {name: rain for name, (_, rain) in sorted(results.items())}
    for split, split_days in cat.split_days_by_fraction(days, VALID_FRACTION, TEST_FRACTION).items():
        cat.write_day_list(out_dir / f"{split}_days.txt", [(d, rain_by_day[str(d)]) for d in split_days])
    n_frames = sum(n for n, _ in results.values())
    meta = _settings(cfg)
    meta.update(
        n_frames=n_frames,
        interval_s=INTERVAL_S,
        pixel_encoding=PIXEL_ENCODING,
        zr_relation=f"Z = {ZR_A} R^{ZR_B}",
    )
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return SynthResult(
        out_dir=out_dir,
        n_frames=n_frames,
        n_days=cfg.days,
        seconds=time.perf_counter() - t_start,
        day_rain_mm=rain_by_day,
    )
