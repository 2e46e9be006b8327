"""``nowcast calibrate``: fit calibrated exceedance probabilities for a deterministic forecaster.

A deterministic forecast says nothing of its own uncertainty; its neighbourhood probabilities
(:func:`pipeline.probabilities.exceedance_probabilities`) are sharp at short lead times and far too sharp
later, as the forecast blurs. This stage fits, per lead time and threshold, a logistic regression of the
observed event (rain >= t) on neighbourhood fractions of the forecast and of the last observed frame
(:data:`pipeline.probabilities.CALIBRATION_FEATURES`), by maximum likelihood (the log score, a proper
scoring rule), on the clips of one split — the **validation** split by default, so that the test split
stays unseen. ``nowcast evaluate --calibration`` and ``nowcast predict --calibration`` then use it.

Clips and forecasts are those of ``nowcast evaluate`` (:func:`pipeline.scoring.forecast_clips`: the split's
sequential clips, the store's Z–R, truth pixels outside the radar's coverage left out). At most
``pixels_per_lead`` scored pixels per lead time are drawn uniformly at random (seeded) for the fit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import files
from pipeline.baselines_pysteps import store_radar
from pipeline.errors import NowcastError, Validated
from pipeline.forecasters import load_forecaster
from pipeline.probabilities import (
    DEFAULT_NEIGHBOURHOOD_PX,
    PROBABILITY_THRESHOLDS_MM_H,
    CalibratedProbabilities,
    calibration_features,
    exceedance_probabilities,
    feature_names,
    fit_logistic,
    logistic,
)
from pipeline.scoring import forecast_clips
from pipeline.store import Store


@dataclass
class CalibrateConfig(Validated):
    """What to calibrate, on which clips, and where the calibration goes.

    store : Zarr store written by ``nowcast ingest``.
    model_uri : a deterministic forecaster (``models:/...``, a checkpoint, ``persistence``, ``sprog``, ...).
    out : the calibration file (JSON) to write; an existing file is replaced.
    split : the split fitted on (default ``valid``: choose on validation, report on test).
    clip_stride, max_clips : every Nth sequential clip of the split, at most N of them (None: all).
    thresholds_mm_h : the thresholds t of P(rain >= t).
    pixels_per_lead : at most this many scored pixels per lead time go into the fit (random, ``seed``).
    """

    store: Store | str | Path
    model_uri: str
    out: str | Path
    split: str = "valid"
    clip_stride: int = 1
    max_clips: int | None = None
    batch_size: int = 4
    thresholds_mm_h: tuple[float, ...] = PROBABILITY_THRESHOLDS_MM_H
    pixels_per_lead: int = 200_000
    seed: int = 0
    tracking_uri: str | None = None
    device: str = "auto"

    def rules(self):
        yield self.clip_stride >= 1, f"clip_stride must be >= 1, got {self.clip_stride}"
        yield self.max_clips is None or self.max_clips >= 1, f"max_clips must be >= 1, got {self.max_clips}"
        yield self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"
        yield self.pixels_per_lead >= 1000, f"pixels_per_lead must be >= 1000, got {self.pixels_per_lead}"


@dataclass
class CalibrateResult:
    """The calibration, where it went, and its Brier skill on the fitted pixels (means over lead times per
    threshold): ``brier_skill_neighbourhood`` (the uncalibrated 25 px neighbourhood probabilities) and
    ``brier_skill_calibrated``."""

    calibration: CalibratedProbabilities
    path: Path
    n_clips: int
    seconds: float
    brier_skill_neighbourhood: dict[str, float]
    brier_skill_calibrated: dict[str, float]


class _Sample:
    """The drawn pixels of one (lead time, threshold): features (N, F) float32 and events (N,) bool."""

    def __init__(self):
        self.features: list[np.ndarray] = []
        self.events: list[np.ndarray] = []
        self.neighbourhood: list[np.ndarray] = []  # the 25 px neighbourhood probability, for the report

    def add(self, features: np.ndarray, events: np.ndarray, neighbourhood: np.ndarray) -> None:
        self.features.append(features)
        self.events.append(events)
        self.neighbourhood.append(neighbourhood)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self.features), np.concatenate(self.events), np.concatenate(self.neighbourhood)


def _brier_skill(probability: np.ndarray, events: np.ndarray) -> float:
    """1 - BS / (ō (1 - ō)) on one sample; NaN when the sample has no event or only events."""
    base_rate = float(events.mean())
    if base_rate in (0.0, 1.0):
        return float("nan")
    return 1.0 - float(np.mean((probability - events) ** 2)) / (base_rate * (1.0 - base_rate))


def calibrate(cfg: CalibrateConfig) -> CalibrateResult:
    """Fit :class:`pipeline.probabilities.CalibratedProbabilities` for ``cfg.model_uri`` on ``cfg.split`` and
    write it to ``cfg.out``. NowcastError for an ensemble, a split without clips, or a model whose frame size
    differs from the store's."""
    store = Store.of(cfg.store)
    radar = store_radar(store)
    forecaster = load_forecaster(cfg.model_uri, tracking_uri=cfg.tracking_uri, device=cfg.device, radar=radar)
    if forecaster.members > 1:
        raise NowcastError(
            f"{forecaster.name} is an ensemble: its probabilities are already member fractions; calibrate a "
            "deterministic model or baseline"
        )
    forecaster.check_frame_size(store.frame_size, f"the store {cfg.store}")
    starts = store.clip_starts(cfg.split, "sequent")[:: int(cfg.clip_stride)][: cfg.max_clips]
    if starts.size == 0:
        raise NowcastError(f"the {cfg.split!r} split of {store.path} has no clips to calibrate on")
    in_len, out_len = forecaster.in_len, forecaster.out_len
    thresholds = tuple(float(t) for t in cfg.thresholds_mm_h)
    rng = np.random.default_rng(int(cfg.seed))
    fraction = min(1.0, cfg.pixels_per_lead / float(starts.size * np.prod(store.frame_size)))
    samples = [[_Sample() for _ in thresholds] for _ in range(out_len)]
    t0 = time.perf_counter()
    batches = forecast_clips(
        forecaster, store, starts, in_len, out_len, cfg.batch_size, radar, True, "calibrate"
    )
    for batch in batches:
        forecast_mm_h, truth_mm_h = batch.members_mm_h[0], batch.truth_mm_h
        neighbourhood = exceedance_probabilities(batch.members_mm_h, thresholds, DEFAULT_NEIGHBOURHOOD_PX)
        for lead in range(out_len):
            drawn = np.isfinite(truth_mm_h[lead]) & (rng.random(truth_mm_h[lead].shape) < fraction)
            for k, threshold in enumerate(thresholds):
                features = calibration_features(forecast_mm_h[lead], batch.last_observed_mm_h, threshold)
                samples[lead][k].add(
                    features[drawn], truth_mm_h[lead][drawn] >= threshold, neighbourhood[lead][:, k][drawn]
                )
    weights = np.zeros((out_len, len(thresholds), len(feature_names()) + 1))
    skill_before = np.full((out_len, len(thresholds)), np.nan)
    skill_after = np.full((out_len, len(thresholds)), np.nan)
    for lead in range(out_len):
        for k in range(len(thresholds)):
            features, events, neighbourhood = samples[lead][k].arrays()
            n_drawn = events.size
            weights[lead, k] = fit_logistic(features, events)
            skill_before[lead, k] = _brier_skill(neighbourhood, events)
            skill_after[lead, k] = _brier_skill(logistic(features, weights[lead, k]), events)
    seconds = time.perf_counter() - t0

    def per_threshold(skill: np.ndarray) -> dict[str, float]:
        with np.errstate(invalid="ignore"):
            return {f"{t:g}": float(np.nanmean(skill[:, k])) for k, t in enumerate(thresholds)}

    before, after = per_threshold(skill_before), per_threshold(skill_after)
    calibration = CalibratedProbabilities(
        thresholds,
        weights,
        model={"name": forecaster.name, "uri": str(cfg.model_uri), "digest": forecaster.digest},
        fitted_on={
            "store": str(store.path),
            "split": cfg.split,
            "n_clips": int(starts.size),
            "clip_stride": int(cfg.clip_stride),
            "pixels_per_lead": int(n_drawn),
            "seed": int(cfg.seed),
            "brier_skill_neighbourhood_25px": before,
            "brier_skill_calibrated_in_sample": after,
        },
    )
    path = files.write_json(Path(cfg.out).expanduser(), calibration.to_json_dict())
    return CalibrateResult(calibration, path, int(starts.size), seconds, before, after)
