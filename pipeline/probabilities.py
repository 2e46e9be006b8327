"""Exceedance probabilities P(rain >= t) from deterministic forecasts and from ensembles.

* An ensemble (M > 1 members): the fraction of members at or above ``t`` at each pixel.
* A deterministic forecast (M = 1): the *neighbourhood probability* (Theis et al. 2005; Schwartz et al.
  2010): the fraction of pixels at or above ``t`` in the ``n x n`` square centred on each pixel, counted
  over the pixels inside the domain (the square is cut at the edges, not padded with dry pixels).
  ``n = 1`` is the binary forecast (0 or 1).
* A deterministic forecast with a calibration (:class:`CalibratedProbabilities`, ``nowcast calibrate``):
  logistic regression per lead time and threshold on neighbourhood fractions of the forecast and of the
  last observed frame, fitted with the log score on the validation split.

:data:`DEFAULT_NEIGHBOURHOOD_PX` was chosen on the validation split of the benchmark store by the Brier
skill score at >= 5 mm/h (README, "Exceedance probabilities").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

from pipeline.errors import NowcastError

PROBABILITY_THRESHOLDS_MM_H = (1.0, 5.0, 10.0)
DEFAULT_NEIGHBOURHOOD_PX = 25


def neighbourhood_fraction(event: np.ndarray, size_px: int) -> np.ndarray:
    """Fraction of true pixels in the ``size_px`` square around each pixel of the last two axes,
    counting only pixels inside the array. event: bool or 0/1 (..., H, W) -> float64 (..., H, W)."""
    event = np.asarray(event, dtype=np.float64)
    if int(size_px) <= 1:
        return event
    axes = (event.ndim - 2, event.ndim - 1)
    size = [1] * event.ndim
    size[axes[0]] = size[axes[1]] = int(size_px)
    count = uniform_filter(event, size=size, mode="constant", cval=0.0)
    inside = uniform_filter(np.ones(event.shape[-2:]), size=int(size_px), mode="constant", cval=0.0)
    return np.clip(count / inside, 0.0, 1.0)


def exceedance_probabilities(
    members_mm_h: np.ndarray,
    thresholds_mm_h: Sequence[float] = PROBABILITY_THRESHOLDS_MM_H,
    neighbourhood_px: int = DEFAULT_NEIGHBOURHOOD_PX,
) -> np.ndarray:
    """P(rain >= t) from members (M, ..., H, W) in mm/h -> float64 (..., n_thresholds, H, W) in [0, 1].

    M > 1: the member fraction (``neighbourhood_px`` is ignored); M = 1: the neighbourhood probability
    over ``neighbourhood_px`` (see the module docstring). NaN rain counts as below every threshold."""
    members = np.nan_to_num(np.asarray(members_mm_h, dtype=np.float64), nan=0.0)
    per_threshold = []
    for threshold in thresholds_mm_h:
        event = members >= float(threshold)
        if members.shape[0] > 1:
            per_threshold.append(event.mean(axis=0))
        else:
            per_threshold.append(neighbourhood_fraction(event[0], neighbourhood_px))
    return np.stack(per_threshold, axis=-3)


# --------------------------------------------------------------------------- CF variables
#: The names and attributes of the exceedance-probability variables that pipeline.outputs writes (the CF
#: convention of the Met Office's IMPROVER: a probability variable with the threshold as a coordinate of
#: the thresholded quantity, ``spp__relative_to_threshold`` saying which side of it counts).
PROBABILITY_VAR = "probability_of_rainfall_rate_above_threshold"
THRESHOLD_VAR = "threshold"
PROBABILITY_ATTRS = {
    "long_name": "probability of rainfall rate at or above threshold",
    "units": "1",
    "valid_min": 0.0,
    "valid_max": 1.0,
}
THRESHOLD_ATTRS = {
    "standard_name": "rainfall_rate",
    "long_name": "rainfall rate threshold",
    "units": "mm h-1",
    "spp__relative_to_threshold": "greater_than_or_equal_to",
}


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"1,5,10"`` -> (1.0, 5.0, 10.0) mm/h. Raises NowcastError (exit code 2) unless positive numbers
    in increasing order."""
    try:
        values = tuple(float(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values) or list(values) != sorted(set(values)):
        raise NowcastError(
            f"cannot read the thresholds {text!r}: give rain rates in mm/h, positive and increasing, "
            "comma-separated (e.g. --probabilities 1,5,10)",
            exit_code=2,
        )
    return values


# --------------------------------------------------------------------------- calibrated probabilities
#: The predictors of a calibrated probability P(rain >= t) at one lead time, from the deterministic
#: forecast at that lead and the last observed frame (both mm/h): (field, fraction of t, neighbourhood
#: px). Each is the fraction of pixels at or above ``fraction * t`` in the square around the pixel
#: (:func:`neighbourhood_fraction`; 1 px: the binary event). Chosen on the benchmark store's validation
#: split: the fractions of t/2 catch a forecast that blurs and under-forecasts with lead time, and the last
#: observation sharpens the first lead times (README, "Exceedance probabilities").
CALIBRATION_FEATURES = (
    ("forecast", 1.0, 1),
    ("forecast", 1.0, 9),
    ("forecast", 1.0, 25),
    ("forecast", 1.0, 49),
    ("forecast", 0.5, 9),
    ("forecast", 0.5, 25),
    ("last_observed", 1.0, 9),
    ("last_observed", 1.0, 25),
)
CALIBRATION_FORMAT = "nowcast-calibrated-probabilities/1"


def feature_names() -> list[str]:
    """Readable names of :data:`CALIBRATION_FEATURES` (recorded in a calibration file and checked on load)."""
    return [f"{field}>={fraction:g}t@{size_px}px" for field, fraction, size_px in CALIBRATION_FEATURES]


def calibration_features(
    forecast_mm_h: np.ndarray, last_observed_mm_h: np.ndarray, threshold_mm_h: float
) -> np.ndarray:
    """The predictors of :data:`CALIBRATION_FEATURES` at one lead time and threshold.

    forecast_mm_h, last_observed_mm_h: (B, H, W) rain rate (NaN = no rain) -> float32 (B, H, W, F) in [0, 1]."""
    fields = {
        "forecast": np.nan_to_num(np.asarray(forecast_mm_h, dtype=np.float64), nan=0.0),
        "last_observed": np.nan_to_num(np.asarray(last_observed_mm_h, dtype=np.float64), nan=0.0),
    }
    columns = [
        neighbourhood_fraction(fields[field] >= fraction * float(threshold_mm_h), size_px)
        for field, fraction, size_px in CALIBRATION_FEATURES
    ]
    return np.stack(columns, axis=-1).astype(np.float32)


def logistic(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P = 1 / (1 + exp(-(features @ w[:-1] + w[-1]))): features (..., F), weights (F + 1,) -> (...,)."""
    z = np.asarray(features, dtype=np.float64) @ weights[:-1] + weights[-1]
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow for large |z|


def fit_logistic(features: np.ndarray, events: np.ndarray, l2: float = 1e-6) -> np.ndarray:
    """Logistic regression by maximum likelihood (the log score, a proper scoring rule), with a tiny L2
    penalty on the slopes so that a feature that never varies cannot run away.

    features (N, F) float, events (N,) bool -> weights (F + 1,), the last one the intercept (L-BFGS)."""
    from scipy.optimize import minimize

    x = np.concatenate([np.asarray(features, np.float64), np.ones((len(features), 1))], axis=1)
    y = np.asarray(events, dtype=np.float64)
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if y.size else 0.5
    start = np.zeros(x.shape[1])
    start[-1] = np.log(rate / (1.0 - rate))

    def loss_and_gradient(w):
        z = x @ w
        loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * float(w[:-1] @ w[:-1])
        grad = x.T @ (logistic(x[:, :-1], w) - y) / len(y)
        grad[:-1] += l2 * w[:-1]
        return loss, grad

    return minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B").x


@dataclass(frozen=True)
class CalibratedProbabilities:
    """P(rain >= t) from a deterministic forecast by logistic regression on neighbourhood fractions
    (:data:`CALIBRATION_FEATURES`), one set of weights per lead time and threshold, fitted with the log
    score on a split other than the one it is judged on (``nowcast calibrate``, :mod:`pipeline.calibrate`).

    thresholds_mm_h : the thresholds t (increasing).
    weights : (T, n_thresholds, F + 1), the last column the intercept.
    model : the forecaster it was fitted for (``name``, ``digest`` of its weights); applying it to another
        model is refused.
    fitted_on : where and how it was fitted (store, split, clips, pixels, scores): a record for people.
    """

    thresholds_mm_h: tuple[float, ...]
    weights: np.ndarray
    model: dict
    fitted_on: dict = field(default_factory=dict)

    @property
    def out_len(self) -> int:
        return int(self.weights.shape[0])

    def probabilities(self, forecast_mm_h: np.ndarray, last_observed_mm_h: np.ndarray) -> np.ndarray:
        """forecast (T, B, H, W) mm/h, last observed frame (B, H, W) mm/h (NaN = no rain) ->
        float64 (T, B, n_thresholds, H, W) in [0, 1]; T may be shorter than :attr:`out_len`."""
        forecast = np.asarray(forecast_mm_h)
        if forecast.ndim != 4 or forecast.shape[0] > self.out_len:
            raise NowcastError(
                f"calibrated probabilities need a forecast (T <= {self.out_len}, B, H, W), got {forecast.shape}"
            )
        per_lead = []
        for lead in range(forecast.shape[0]):
            per_threshold = [
                logistic(calibration_features(forecast[lead], last_observed_mm_h, t), self.weights[lead, k])
                for k, t in enumerate(self.thresholds_mm_h)
            ]
            per_lead.append(np.stack(per_threshold, axis=1))
        return np.stack(per_lead)

    def check_for(self, forecaster, out_len: int, thresholds_mm_h=None) -> None:
        """NowcastError unless this calibration was fitted for ``forecaster`` (a deterministic
        :class:`pipeline.forecasters.Forecaster`: same ``digest``), covers ``out_len`` lead times and holds
        every threshold in ``thresholds_mm_h`` (None: any)."""
        if self.model.get("digest") != forecaster.digest:
            raise NowcastError(
                f"the calibration was fitted for {self.model.get('name')!r}, not for {forecaster.name!r} (their "
                "weights differ); fit one for this model with `nowcast calibrate STORE --model URI`"
            )
        if forecaster.members > 1:
            raise NowcastError(
                f"{forecaster.name} is an ensemble: its probabilities are member fractions; drop --calibration"
            )
        if self.out_len < int(out_len):
            raise NowcastError(
                f"the calibration covers {self.out_len} lead times, fewer than the {out_len} forecast; fit it "
                "again for this model"
            )
        missing = [t for t in thresholds_mm_h or () if float(t) not in self.thresholds_mm_h]
        if missing:
            raise NowcastError(
                f"the calibration holds the thresholds {', '.join(f'{t:g}' for t in self.thresholds_mm_h)} "
                f"mm/h, not {', '.join(f'{t:g}' for t in missing)}; ask for those, or fit again with "
                "`nowcast calibrate --thresholds`"
            )

    def select(self, thresholds_mm_h) -> CalibratedProbabilities:
        """The same calibration restricted to ``thresholds_mm_h`` (each one it holds), in that order."""
        index = [self.thresholds_mm_h.index(float(t)) for t in thresholds_mm_h]
        return CalibratedProbabilities(
            tuple(float(t) for t in thresholds_mm_h), self.weights[:, index], self.model, self.fitted_on
        )

    # ------------------------------------------------------------------ file
    def to_json_dict(self) -> dict:
        return {
            "format": CALIBRATION_FORMAT,
            "features": feature_names(),
            "thresholds_mm_h": list(self.thresholds_mm_h),
            "weights": self.weights.tolist(),
            "model": dict(self.model),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json_dict(cls, record: dict, where: str = "the calibration") -> CalibratedProbabilities:
        """Read back and check what :meth:`to_json_dict` wrote; NowcastError (exit code 2) otherwise."""

        def bad(why: str) -> NowcastError:
            return NowcastError(
                f"{where} is not a calibration written by `nowcast calibrate` ({why}); fit one again",
                exit_code=2,
            )

        if not isinstance(record, dict) or record.get("format") != CALIBRATION_FORMAT:
            raise bad(f"format is not {CALIBRATION_FORMAT!r}")
        if record.get("features") != feature_names():
            raise bad("its predictors differ from this version's")
        try:
            thresholds = tuple(float(t) for t in record["thresholds_mm_h"])
            weights = np.asarray(record["weights"], dtype=np.float64)
            model = dict(record["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"unreadable field: {exc}") from None
        n_features = len(CALIBRATION_FEATURES) + 1
        if not thresholds or list(thresholds) != sorted(set(thresholds)) or min(thresholds) <= 0:
            raise bad(f"thresholds {list(thresholds)} are not positive and increasing")
        if weights.ndim != 3 or weights.shape[1:] != (len(thresholds), n_features) or weights.shape[0] < 1:
            raise bad(f"weights of shape {weights.shape}, expected (T, {len(thresholds)}, {n_features})")
        if not np.isfinite(weights).all():
            raise bad("weights that are not finite")
        if not isinstance(model.get("digest"), str):
            raise bad("no model digest")
        return cls(thresholds, weights, model, dict(record.get("fitted_on") or {}))

    @classmethod
    def load(cls, path: str | Path) -> CalibratedProbabilities:
        """Read a calibration file (plain JSON; nothing is unpickled). NowcastError when it is missing or bad."""
        path = Path(path).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise NowcastError(
                f"cannot read the calibration {path}: {exc.strerror or exc}; write one with `nowcast calibrate`",
                exit_code=2,
            ) from None
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise NowcastError(
                f"{path} is not JSON (line {exc.lineno}, column {exc.colno}); write it with `nowcast calibrate`",
                exit_code=2,
            ) from None
        return cls.from_json_dict(record, str(path))


def load_calibration(
    path: str | Path | None, forecaster, out_len: int, thresholds_mm_h=None
) -> CalibratedProbabilities | None:
    """The calibration file at ``path`` checked against ``forecaster`` (:meth:`CalibratedProbabilities.check_for`)
    and restricted to ``thresholds_mm_h`` (None: all it holds); None when ``path`` is None."""
    if path is None:
        return None
    calibration = CalibratedProbabilities.load(path)
    calibration.check_for(forecaster, out_len, thresholds_mm_h)
    return calibration if thresholds_mm_h is None else calibration.select(thresholds_mm_h)
