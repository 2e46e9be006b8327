"""Spatial and probabilistic verification, as streaming accumulators that merge across workers.

Everything here works in rain rate (mm/h), NaN = not scored (outside the radar's coverage), on the
layout ``(T, B, H, W)`` (lead times, sequences, rows, columns); ensembles are ``(M, T, B, H, W)``.
The scores are pysteps' (:mod:`pysteps.verification`) wherever it has them, accumulated per lead time
and threshold with pysteps' own ``*_init`` / ``*_accum`` objects and merged by adding their sums:

* **FSS** (Roberts & Lean 2008) per lead time, threshold (1, 5, 10 mm/h) and neighbourhood (1, 5, 17 px):
  ``spatialscores.fss_*``; NaN counts as no event in both fields, as pysteps does.
* **CRPS** per lead time: ``probscores.CRPS_*`` over the members (a deterministic forecast is one member,
  whose CRPS is its mean absolute error in mm/h).
* **Brier score** per lead time and threshold, here (pysteps has none): ``mean((p - o)^2)``; **Brier skill**
  against the sample climatology of the verifying set, ``1 - BS / (ō (1 - ō))``, ō the observed event
  frequency at that lead time and threshold.
* **Reliability diagram** (``probscores.reldiag_*``, 10 bins) and its **reliability** term
  ``Σ_k n_k (p̄_k - ō_k)^2 / N`` (the Brier score's reliability component, binned; 0 is perfect).
* **ROC** (``probscores.ROC_curve_*``, probability thresholds 0, 0.05, ..., 1) and its area (AUC).
* **Rank histogram** for ensembles (``ensscores.rankhist_*``), pooled over lead times, pixels where
  truth and every member are below 0.1 mm/h left out (pysteps' ``X_min``).

The exceedance probabilities P(rain >= t) come from :mod:`pipeline.probabilities`.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from pipeline.probabilities import (
    PROBABILITY_THRESHOLDS_MM_H,
    CalibratedProbabilities,
    exceedance_probabilities,
)

with contextlib.redirect_stdout(io.StringIO()):  # pysteps announces its configuration file when imported
    from pysteps.verification import ensscores, probscores, spatialscores

FSS_THRESHOLDS_MM_H = (1.0, 5.0, 10.0)
FSS_SCALES_PX = (1, 5, 17)
RELIABILITY_BINS = 10
ROC_PROBABILITIES = 21
#: Rank-histogram floor (mm/h): pixels where truth and all members are below it are not ranked.
RANK_FLOOR_MM_H = 0.1


def _merge_dicts(mine: dict, other: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        mine[key] = mine[key] + other[key]


class Verification:
    """Accumulate FSS, CRPS, Brier (skill), reliability, ROC and (ensembles) the rank histogram.

    Parameters
    ----------
    seq_len : lead times T of every update.
    members : ensemble members M of every update (1 = deterministic).
    neighbourhood_px : for deterministic forecasts, the square neighbourhood (pixels) whose fraction of
        pixels >= t is the probability P(rain >= t) (:func:`pipeline.probabilities.exceedance_probabilities`).
    calibration : for deterministic forecasts, calibrated probabilities instead of neighbourhood ones
        (:class:`pipeline.probabilities.CalibratedProbabilities`; its thresholds are the probability
        thresholds, and :meth:`update` needs the last observed frame).
    """

    def __init__(
        self,
        seq_len: int,
        members: int = 1,
        neighbourhood_px: int = 1,
        fss_thresholds_mm_h=FSS_THRESHOLDS_MM_H,
        fss_scales_px=FSS_SCALES_PX,
        prob_thresholds_mm_h=PROBABILITY_THRESHOLDS_MM_H,
        calibration: CalibratedProbabilities | None = None,
    ):
        self.seq_len, self.members, self.neighbourhood_px = int(seq_len), int(members), int(neighbourhood_px)
        if calibration is not None:
            if self.members > 1:
                raise ValueError("calibrated probabilities are for deterministic forecasts, not ensembles")
            prob_thresholds_mm_h = calibration.thresholds_mm_h
        self.calibration = calibration
        self.fss_thresholds_mm_h = tuple(float(t) for t in fss_thresholds_mm_h)
        self.fss_scales_px = tuple(int(s) for s in fss_scales_px)
        self.prob_thresholds_mm_h = tuple(float(t) for t in prob_thresholds_mm_h)
        leads, thresholds = range(self.seq_len), self.prob_thresholds_mm_h
        self.fss = [
            [[spatialscores.fss_init(t, s) for s in self.fss_scales_px] for t in self.fss_thresholds_mm_h]
            for _ in leads
        ]
        self.crps = [probscores.CRPS_init() for _ in leads]
        self.reldiag = [[probscores.reldiag_init(t, RELIABILITY_BINS, 1) for t in thresholds] for _ in leads]
        self.roc = [[probscores.ROC_curve_init(t, ROC_PROBABILITIES) for t in thresholds] for _ in leads]
        shape = (self.seq_len, len(thresholds))
        self.brier_sum, self.event_sum = np.zeros(shape), np.zeros(shape)
        self.n_scored = np.zeros(shape, dtype=np.int64)
        self.rankhist = ensscores.rankhist_init(self.members, RANK_FLOOR_MM_H) if self.members > 1 else None

    # ------------------------------------------------------------------ accumulate
    def update(
        self, members_mm_h: np.ndarray, truth_mm_h: np.ndarray, last_observed_mm_h: np.ndarray | None = None
    ) -> Verification:
        """Add a batch: members (M, T, B, H, W) mm/h, truth (T, B, H, W) mm/h with NaN = not scored, and
        (needed with a calibration) the last observed frame (B, H, W) mm/h.

        The deterministic field for FSS is the single member, or the ensemble mean (in rain rate).
        Returns ``self``."""
        members = np.asarray(members_mm_h, dtype=np.float64)
        truth = np.asarray(truth_mm_h, dtype=np.float64)
        if members.shape != (self.members, self.seq_len, *truth.shape[1:]) or truth.shape[0] != self.seq_len:
            raise ValueError(
                f"members {members.shape} and truth {truth.shape} must be "
                f"(M={self.members}, T={self.seq_len}, B, H, W) and (T, B, H, W)"
            )
        members = np.nan_to_num(members, nan=0.0)  # no value (advected in from outside): no rain
        unscored = ~np.isfinite(truth)
        deterministic = members.mean(axis=0) if self.members > 1 else members[0]
        if self.calibration is None:
            probabilities = exceedance_probabilities(
                members, self.prob_thresholds_mm_h, self.neighbourhood_px
            )
        elif last_observed_mm_h is None:
            raise ValueError("calibrated probabilities need the last observed frame")
        else:
            probabilities = self.calibration.probabilities(deterministic, last_observed_mm_h)
        for lead in range(self.seq_len):
            self._update_fss(lead, np.where(unscored[lead], np.nan, deterministic[lead]), truth[lead])
            probscores.CRPS_accum(self.crps[lead], members[:, lead], truth[lead])
            self._update_probabilities(lead, probabilities[lead], truth[lead])
        if self.rankhist is not None:
            ensscores.rankhist_accum(self.rankhist, members.reshape(self.members, -1), truth.reshape(-1))
        return self

    def _update_fss(self, lead: int, forecast: np.ndarray, truth: np.ndarray) -> None:
        for per_threshold in self.fss[lead]:
            for fss in per_threshold:
                for b in range(truth.shape[0]):
                    spatialscores.fss_accum(fss, forecast[b], truth[b])

    def _update_probabilities(self, lead: int, probabilities: np.ndarray, truth: np.ndarray) -> None:
        """probabilities (B, n_thr, H, W), truth (B, H, W) with NaN = not scored."""
        scored = np.isfinite(truth)
        for k, threshold in enumerate(self.prob_thresholds_mm_h):
            p = probabilities[:, k][scored]
            obs = truth[scored]
            event = (obs >= threshold).astype(np.float64)
            self.brier_sum[lead, k] += float(np.sum((p - event) ** 2))
            self.event_sum[lead, k] += float(event.sum())
            self.n_scored[lead, k] += int(event.size)
            probscores.reldiag_accum(self.reldiag[lead][k], p, obs)
            probscores.ROC_curve_accum(self.roc[lead][k], p, obs)

    def merge(self, other: Verification) -> Verification:
        """Add another accumulator of the same settings (e.g. another worker's). Returns ``self``."""
        if not isinstance(other, Verification) or self._settings() != other._settings():
            raise ValueError("can only merge a Verification with the same lead times, members and thresholds")
        for lead in range(self.seq_len):
            for mine_t, other_t in zip(self.fss[lead], other.fss[lead]):
                for i, (mine, theirs) in enumerate(zip(mine_t, other_t)):
                    mine_t[i] = spatialscores.fss_merge(mine, theirs)
            _merge_dicts(self.crps[lead], other.crps[lead], ("CRPS_sum", "n"))
            for k in range(len(self.prob_thresholds_mm_h)):
                keys = ("X_sum", "Y_sum", "num_idx", "sample_size")
                _merge_dicts(self.reldiag[lead][k], other.reldiag[lead][k], keys)
                _merge_dicts(
                    self.roc[lead][k], other.roc[lead][k], ("hits", "misses", "false_alarms", "corr_neg")
                )
        self.brier_sum += other.brier_sum
        self.event_sum += other.event_sum
        self.n_scored += other.n_scored
        if self.rankhist is not None:
            _merge_dicts(self.rankhist, other.rankhist, ("n",))
        return self

    def _settings(self) -> tuple:
        return (
            self.seq_len,
            self.members,
            self.neighbourhood_px,
            self.fss_thresholds_mm_h,
            self.fss_scales_px,
            self.prob_thresholds_mm_h,
            self.probability_method,
        )

    @property
    def probability_method(self) -> str:
        """How the exceedance probabilities are made, in words (recorded with the scores)."""
        if self.members > 1:
            return f"fraction of {self.members} members"
        if self.calibration is not None:
            fitted = self.calibration.fitted_on
            return (
                f"calibrated: logistic regression on neighbourhood fractions, fitted on the "
                f"{fitted.get('split', '?')} split ({fitted.get('n_clips', '?')} clips)"
            )
        return f"neighbourhood fraction over {self.neighbourhood_px} px"

    # ------------------------------------------------------------------ report
    def result(self) -> dict:
        """Scores so far (NaN where undefined, e.g. no event at a threshold):

        ``fss`` (T, n_fss_thr, n_scales); ``crps`` (T,) mm/h; ``brier``, ``brier_skill``, ``reliability``,
        ``roc_auc``, ``base_rate`` (T, n_prob_thr); ``reliability_diagram``: per threshold, pooled over lead
        times, ``forecast`` and ``observed`` mean per bin and ``count``; ``rank_histogram`` (M + 1,) relative
        frequencies (ensembles only, else None); and the settings."""
        with np.errstate(divide="ignore", invalid="ignore"):
            fss = np.array([[[_fss(f) for f in per_t] for per_t in lead] for lead in self.fss])
            crps = np.array([c["CRPS_sum"] / c["n"] if c["n"] else np.nan for c in self.crps])
            brier = self.brier_sum / self.n_scored
            base_rate = self.event_sum / self.n_scored
            brier_skill = 1.0 - brier / (base_rate * (1.0 - base_rate))
        n_thr = len(self.prob_thresholds_mm_h)
        reliability = np.array(
            [[_reliability(self.reldiag[t][k]) for k in range(n_thr)] for t in range(self.seq_len)]
        )
        auc = np.array([[_roc_auc(self.roc[t][k]) for k in range(n_thr)] for t in range(self.seq_len)])
        diagram = {}
        for k, threshold in enumerate(self.prob_thresholds_mm_h):
            pooled = probscores.reldiag_init(threshold, RELIABILITY_BINS, 1)
            for lead in range(self.seq_len):
                _merge_dicts(pooled, self.reldiag[lead][k], ("X_sum", "Y_sum", "num_idx", "sample_size"))
            with np.errstate(divide="ignore", invalid="ignore"):
                forecast, observed = probscores.reldiag_compute(pooled)
            diagram[f"{threshold:g}"] = {
                "forecast": forecast,
                "observed": observed,
                "count": pooled["num_idx"].astype(np.int64),
            }
        rank = None
        if self.rankhist is not None and self.rankhist["n"].sum():
            rank = ensscores.rankhist_compute(self.rankhist)
        return {
            "fss": fss,
            "fss_thresholds_mm_h": np.asarray(self.fss_thresholds_mm_h),
            "fss_scales_px": np.asarray(self.fss_scales_px),
            "crps": crps,
            "brier": brier,
            "brier_skill": brier_skill,
            "base_rate": base_rate,
            "reliability": reliability,
            "roc_auc": auc,
            "prob_thresholds_mm_h": np.asarray(self.prob_thresholds_mm_h),
            "reliability_diagram": diagram,
            "rank_histogram": rank,
            "members": self.members,
            "neighbourhood_px": self.neighbourhood_px
            if self.members == 1 and self.calibration is None
            else None,
            "probability_method": self.probability_method,
        }

    def to_json_dict(self) -> dict:
        """:meth:`result` as plain JSON-able Python (nested lists; NaN -> None)."""
        return _jsonable(self.result())


def summary(verified: dict) -> dict[str, float | None]:
    """Means over lead times (NaN ignored; None when undefined) of :meth:`Verification.result`:
    ``fss_{t}mm_h_{s}px``, ``crps``, and per probability threshold ``brier_{t}mm_h``, ``brier_skill_{t}mm_h``,
    ``reliability_{t}mm_h``, ``roc_auc_{t}mm_h``."""
    out: dict[str, float | None] = {}

    def mean(values) -> float | None:
        values = np.asarray([np.nan if v is None else v for v in np.ravel(values)], dtype=np.float64)
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if finite.size else None

    fss = np.asarray(verified["fss"], dtype=object)
    for i, threshold in enumerate(verified["fss_thresholds_mm_h"]):
        for j, scale in enumerate(verified["fss_scales_px"]):
            out[f"fss_{threshold:g}mm_h_{int(scale)}px"] = mean(fss[:, i, j])
    out["crps"] = mean(verified["crps"])
    for name in ("brier", "brier_skill", "reliability", "roc_auc"):
        values = np.asarray(verified[name], dtype=object)
        for k, threshold in enumerate(verified["prob_thresholds_mm_h"]):
            out[f"{name}_{threshold:g}mm_h"] = mean(values[:, k])
    return out


def verification_metrics(verified: dict, split: str) -> list[tuple[str, float, int]]:
    """MLflow metrics ``(key, value, step)``: the :func:`summary` means as ``{split}_{name}`` (step 0),
    FSS at 5 px, Brier skill and CRPS per lead time as ``{split}_{name}_by_lead`` (step: lead index 1..T)."""
    metrics = [(f"{split}_{k}", v, 0) for k, v in summary(verified).items() if v is not None]
    curves = {"crps": np.asarray(verified["crps"], dtype=float)}
    fss = np.asarray(verified["fss"], dtype=float)
    scales = list(np.asarray(verified["fss_scales_px"]).astype(int))
    if 5 in scales:
        for i, threshold in enumerate(verified["fss_thresholds_mm_h"]):
            curves[f"fss_{threshold:g}mm_h_5px"] = fss[:, i, scales.index(5)]
    brier_skill = np.asarray(verified["brier_skill"], dtype=float)
    for k, threshold in enumerate(verified["prob_thresholds_mm_h"]):
        curves[f"brier_skill_{threshold:g}mm_h"] = brier_skill[:, k]
    for name, values in curves.items():
        metrics += [
            (f"{split}_{name}_by_lead", float(v), t + 1) for t, v in enumerate(values) if math.isfinite(v)
        ]
    return metrics


def plot_verification(verified: dict, path, title: str, interval_s: int) -> None:
    """One PNG: FSS against lead time (every threshold, 5 px), Brier skill against lead time, the
    reliability diagram (pooled over lead times) and, for ensembles, the rank histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fss = np.asarray(verified["fss"], dtype=float)
    lead_min = (np.arange(fss.shape[0]) + 1) * interval_s / 60.0
    rank = verified["rank_histogram"]
    fig, axes = plt.subplots(1, 4 if rank is not None else 3, figsize=(16 if rank is not None else 12, 3.6))
    scales = list(np.asarray(verified["fss_scales_px"]).astype(int))
    for i, threshold in enumerate(verified["fss_thresholds_mm_h"]):
        for j, scale in enumerate(scales):
            axes[0].plot(
                lead_min,
                fss[:, i, j],
                ["-", "--", ":"][j % 3],
                color=f"C{i}",
                label=f"≥{threshold:g} mm/h, {scale} px",
            )
    axes[0].set(xlabel="lead time (min)", ylabel="FSS", ylim=(0, 1), title="fractions skill score")
    axes[0].legend(fontsize=6, ncol=2)
    brier_skill = np.asarray(verified["brier_skill"], dtype=float)
    for k, threshold in enumerate(verified["prob_thresholds_mm_h"]):
        axes[1].plot(lead_min, brier_skill[:, k], color=f"C{k}", label=f"≥{threshold:g} mm/h")
        diagram = verified["reliability_diagram"][f"{threshold:g}"]
        forecast = np.asarray(diagram["forecast"], dtype=float)
        observed = np.asarray(diagram["observed"], dtype=float)
        axes[2].plot(forecast, observed, "o-", color=f"C{k}", markersize=3, label=f"≥{threshold:g} mm/h")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set(xlabel="lead time (min)", ylabel="Brier skill score", title="Brier skill vs climatology")
    axes[1].legend(fontsize=7)
    axes[2].plot([0, 1], [0, 1], color="grey", lw=0.8)
    axes[2].set(xlabel="forecast probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    axes[2].set_title("reliability diagram")
    axes[2].legend(fontsize=7)
    if rank is not None:
        rank = np.asarray(rank, dtype=float)
        axes[3].bar(np.arange(rank.size), rank, color="C0")
        axes[3].axhline(1.0 / rank.size, color="grey", lw=0.8)
        axes[3].set(xlabel="rank of the observation", ylabel="relative frequency", title="rank histogram")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fss(fss: dict) -> float:
    """pysteps' FSS, NaN when neither field has an event (0/0)."""
    if fss["sum_fct_sq"] + fss["sum_obs_sq"] == 0:
        return math.nan
    return float(spatialscores.fss_compute(fss))


def _reliability(reldiag: dict) -> float:
    """Reliability term of the Brier score from binned sums: ``Σ n_k (p̄_k - ō_k)^2 / N``."""
    n = reldiag["num_idx"].astype(np.float64)
    if n.sum() == 0:
        return math.nan
    used = n > 0
    mean_p = reldiag["X_sum"][used] / n[used]
    mean_o = reldiag["Y_sum"][used] / n[used]
    return float(np.sum(n[used] * (mean_p - mean_o) ** 2) / n.sum())


def _roc_auc(roc: dict) -> float:
    """pysteps' ROC area, NaN when events or non-events are missing."""
    if (roc["hits"][0] + roc["misses"][0]) == 0 or (roc["false_alarms"][0] + roc["corr_neg"][0]) == 0:
        return math.nan
    return float(probscores.ROC_curve_compute(roc, compute_area=True)[2])


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value
