"""HKO-7 skill scores as a streaming, mergeable accumulator.

Protocol (Shi et al., NeurIPS 2017, and the HKO-7 evaluation code):

* An *event* at threshold ``r`` (mm/h) is ``value >= rainfall_to_pixel(r)`` in pixel units,
  for the forecast and the truth alike; pixels where the mask is false are not counted.
* Contingency counts (hits TP, false alarms FP, misses FN, correct negatives TN) are summed
  per lead time over *every* sequence seen (pooled) before any ratio is taken; the scores are
  not averages of per-sequence scores.
* ``POD = TP / (TP + FN)``, ``FAR = FP / (TP + FP)``, ``CSI = TP / (TP + FN + FP)``,
  ``GSS = (TP - r) / (TP + FN + FP - r)`` with ``r = (TP + FN)(TP + FP) / (TP + FN + FP + TN)``,
  ``HSS = 2 (TP TN - FN FP) / ((TP + FN)(FN + TN) + (TP + FP)(FP + TN))`` (= 2 GSS / (1 + GSS)).
* ``mse``, ``mae``: per frame, the sum over (masked) pixels of the squared / absolute error,
  averaged over sequences. ``b_mse``, ``b_mae``: the same with :func:`trajgru.losses.balanced_weights`
  of the truth as per-pixel weights.

Undefined ratios (0/0, e.g. POD when the truth has no event at that lead time, or every score
when no pixel was counted) are NaN. They can never be x/0 with x != 0 for these formulas.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from trajgru.losses import balanced_weights
from trajgru.units import rainfall_to_pixel

DEFAULT_THRESHOLDS_MM_H = (0.5, 2.0, 5.0, 10.0, 30.0)
#: Threshold (mm/h) whose CSI decides the champion model.
CHAMPION_THRESHOLD_MM_H = 5.0
CATEGORICAL_SCORES = ("pod", "far", "csi", "gss", "hss")
CONTINUOUS_SCORES = ("mse", "mae", "b_mse", "b_mae")


def _as_tensor(x, name: str, allow_bool: bool = False) -> torch.Tensor:
    """numpy array / tensor -> tensor without a copy where possible (device kept)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if not arr.flags.writeable or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
            arr = np.ascontiguousarray(arr).copy()
        t = torch.from_numpy(arr)
    if t.dtype == torch.bool:
        if not allow_bool:
            raise TypeError(f"{name} must hold float pixel values in [0, 1], got a bool array")
    elif not t.is_floating_point():
        if not allow_bool:
            raise TypeError(
                f"{name} must hold float pixel values in [0, 1], got dtype {t.dtype}; "
                "convert stored uint8 frames with frames / 255.0 first"
            )
    return t


def _to_thw(t: torch.Tensor, name: str) -> torch.Tensor:
    """(T, B, 1, H, W) or (T, B, H, W) -> (T, B, H, W)."""
    if t.dim() == 5:
        if t.shape[2] != 1:
            raise ValueError(f"{name} must have one channel, got shape {tuple(t.shape)}")
        return t[:, :, 0]
    if t.dim() == 4:
        return t
    raise ValueError(f"{name} must be (T, B, 1, H, W) or (T, B, H, W), got shape {tuple(t.shape)}")


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64 with 0/0 -> NaN and no warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(num, dtype=np.float64) / np.asarray(den, dtype=np.float64)


def scores_from_counts(tp, fn, fp, tn) -> dict[str, np.ndarray]:
    """POD, FAR, CSI, GSS, HSS from contingency counts (arrays of any common shape).

    Undefined ratios (0/0) are NaN. See the module docstring for the formulas.
    """
    a, c, b, d = (np.asarray(v, dtype=np.float64) for v in (tp, fn, fp, tn))
    total = a + b + c + d
    r = _safe_ratio((a + c) * (a + b), total)
    return {
        "pod": _safe_ratio(a, a + c),
        "far": _safe_ratio(b, a + b),
        "csi": _safe_ratio(a, a + b + c),
        "gss": _safe_ratio(a - r, a + b + c - r),
        "hss": _safe_ratio(2.0 * (a * d - c * b), (a + c) * (c + d) + (a + b) * (b + d)),
    }


def nanmean(x: np.ndarray, axis=None):
    """Mean ignoring NaNs (undefined scores); all-NaN slices give NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


class SkillScores:
    """Streaming accumulator of the HKO-7 skill scores.

    Parameters
    ----------
    seq_len : int
        Number of lead times T of every forecast passed to :meth:`update`.
    thresholds : sequence of float
        Rain-rate thresholds in mm/h, strictly increasing and positive.

    Attributes
    ----------
    n_sequences : int
        Number of sequences (batch elements) accumulated so far.
    tp, fn, fp, tn : numpy.ndarray int64 (T, n_thresholds)
        Pooled hits, misses, false alarms and correct negatives.
    """

    def __init__(self, seq_len: int, thresholds=DEFAULT_THRESHOLDS_MM_H):
        if int(seq_len) < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if thr.size == 0 or np.any(thr <= 0) or np.any(np.diff(thr) <= 0):
            raise ValueError(f"thresholds (mm/h) must be positive and strictly increasing, got {thresholds}")
        self.seq_len = int(seq_len)
        self.thresholds_mm_h = tuple(float(v) for v in thr)
        self.thresholds_pixel = np.asarray(rainfall_to_pixel(thr), dtype=np.float64)
        n_thr = len(self.thresholds_mm_h)
        self.n_sequences = 0
        self.tp = np.zeros((self.seq_len, n_thr), dtype=np.int64)
        self.fn = np.zeros_like(self.tp)
        self.fp = np.zeros_like(self.tp)
        self.tn = np.zeros_like(self.tp)
        self._sums = {name: np.zeros(self.seq_len, dtype=np.float64) for name in CONTINUOUS_SCORES}

    # ------------------------------------------------------------------ accumulate
    def update(self, pred, truth, mask=None) -> SkillScores:
        """Add a batch of forecasts.

        Parameters
        ----------
        pred, truth : numpy.ndarray or torch.Tensor, (T, B, 1, H, W) or (T, B, H, W)
            Forecast and observation in pixel units [0, 1], float dtype, T == seq_len.
            Torch tensors may live on any device: the reductions run there and only the
            small per-frame sums are copied to the host.
        mask : same kinds, broadcastable to ``truth`` (bool, or 0/1 numbers), optional
            Pixels where the mask is false (0) are ignored. None = every pixel counts.

        Values are compared with the thresholds in float32 (float64 if either input is
        float64; bf16/fp16 are widened first), thresholds rounded to that precision.
        Returns ``self``.
        """
        p = _to_thw(_as_tensor(pred, "pred"), "pred")
        t = _to_thw(_as_tensor(truth, "truth"), "truth")
        if p.shape != t.shape:
            raise ValueError(f"pred shape {tuple(p.shape)} != truth shape {tuple(t.shape)}")
        if p.shape[0] != self.seq_len:
            raise ValueError(f"expected {self.seq_len} lead times, got {p.shape[0]} (shape {tuple(p.shape)})")
        t = t.to(p.device)
        dtype = torch.float64 if torch.float64 in (p.dtype, t.dtype) else torch.float32
        p, t = p.to(dtype), t.to(dtype)
        m = self._mask_to_thw(mask, t)
        self._update_counts(p, t, m)
        self._update_errors(p, t, m)
        self.n_sequences += int(p.shape[1])
        return self

    @staticmethod
    def _mask_to_thw(mask, truth: torch.Tensor) -> torch.Tensor | None:
        """mask -> bool (T, B, H, W) on truth's device; None stays None (every pixel counts)."""
        if mask is None:
            return None
        m = _as_tensor(mask, "mask", allow_bool=True).to(truth.device)
        if m.dim() == 5:
            m = _to_thw(m, "mask")
        try:
            m = torch.broadcast_to(m, truth.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"mask shape {tuple(m.shape)} does not broadcast to {tuple(truth.shape)}"
            ) from exc
        return m if m.dtype == torch.bool else m != 0

    def _update_counts(self, p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> None:
        """Joint histogram of (forecast bin, truth bin) per lead time -> TP/FN/FP/TN for every threshold.

        bin = number of thresholds <= value (0..K), i.e. the ``>=`` event rule. One bincount per
        lead time; masked-out pixels go to an extra, discarded bin.
        """
        n_t = p.shape[0]
        k1 = len(self.thresholds_mm_h) + 1
        bounds = torch.as_tensor(self.thresholds_pixel, dtype=p.dtype, device=p.device)
        code = torch.bucketize(p, bounds, right=True, out_int32=True).mul_(k1)
        code.add_(torch.bucketize(t, bounds, right=True, out_int32=True))
        if m is not None:
            code.masked_fill_(~m, k1 * k1)
        hist = torch.stack([torch.bincount(code[i].reshape(-1), minlength=k1 * k1 + 1) for i in range(n_t)])
        joint = hist[:, :-1].reshape(n_t, k1, k1).cpu().numpy().astype(np.int64)  # [t, pred bin, truth bin]
        # tail[t, i, j] = number of pixels with pred bin >= i and truth bin >= j
        tail = joint[:, ::-1, ::-1].cumsum(axis=1).cumsum(axis=2)[:, ::-1, ::-1]
        total = tail[:, 0, 0][:, None]
        idx = np.arange(1, k1)
        tp = tail[:, idx, idx]
        pred_yes = tail[:, idx, 0]
        truth_yes = tail[:, 0, idx]
        self.tp += tp
        self.fp += pred_yes - tp
        self.fn += truth_yes - tp
        self.tn += total - pred_yes - truth_yes + tp

    def _update_errors(self, p: torch.Tensor, t: torch.Tensor, m: torch.Tensor | None) -> None:
        """Per-frame sums over (B, H, W) of the (balanced) squared / absolute errors.

        Reduced in the working precision (float32 unless float64 input; torch sums pairwise),
        accumulated across updates in float64.
        """
        ab = (p - t).abs_()
        if m is not None:
            ab.masked_fill_(~m, 0.0)
        sq = ab.square()
        bw = balanced_weights(t).to(p.dtype)
        sums = (
            torch.stack(
                [
                    sq.sum(dim=(1, 2, 3)),
                    ab.sum(dim=(1, 2, 3)),
                    sq.mul_(bw).sum(dim=(1, 2, 3)),
                    ab.mul_(bw).sum(dim=(1, 2, 3)),
                ]
            )
            .cpu()
            .numpy()
            .astype(np.float64)
        )
        for name, row in zip(CONTINUOUS_SCORES, sums):
            self._sums[name] += row

    def merge(self, other: SkillScores) -> SkillScores:
        """Add another accumulator's counts and sums (same seq_len and thresholds). Returns ``self``."""
        if not isinstance(other, SkillScores):
            raise TypeError(f"can only merge a SkillScores, got {type(other).__name__}")
        if other.seq_len != self.seq_len or other.thresholds_mm_h != self.thresholds_mm_h:
            raise ValueError(
                f"cannot merge SkillScores(seq_len={other.seq_len}, thresholds={other.thresholds_mm_h}) "
                f"into SkillScores(seq_len={self.seq_len}, thresholds={self.thresholds_mm_h})"
            )
        for name in ("tp", "fn", "fp", "tn"):
            getattr(self, name).__iadd__(getattr(other, name))
        for name in CONTINUOUS_SCORES:
            self._sums[name] += other._sums[name]
        self.n_sequences += other.n_sequences
        return self

    # ------------------------------------------------------------------ report
    def result(self) -> dict:
        """Scores so far.

        Returns a dict with ``pod``, ``far``, ``csi``, ``gss``, ``hss``: float64 (T, n_thresholds);
        ``mse``, ``mae``, ``b_mse``, ``b_mae``: float64 (T,) (NaN before any update);
        ``thresholds``: float64 (n_thresholds,) in mm/h; ``n_sequences``: int;
        ``tp``, ``fn``, ``fp``, ``tn``: int64 (T, n_thresholds) copies of the pooled counts.
        """
        out = scores_from_counts(self.tp, self.fn, self.fp, self.tn)
        for name in CONTINUOUS_SCORES:
            out[name] = _safe_ratio(self._sums[name], np.full(self.seq_len, self.n_sequences))
        out["thresholds"] = np.asarray(self.thresholds_mm_h, dtype=np.float64)
        out["n_sequences"] = int(self.n_sequences)
        for name in ("tp", "fn", "fp", "tn"):
            out[name] = getattr(self, name).copy()
        return out

    def to_json_dict(self) -> dict:
        """:meth:`result` as plain JSON-able Python (nested lists; NaN -> None)."""
        return {key: _jsonable(value) for key, value in self.result().items()} | {"seq_len": self.seq_len}

    def summary_table(self) -> str:
        """Plain-text table: per threshold, CSI/HSS/POD/FAR averaged over lead times (NaN ignored)
        and at the last lead time; then MSE/MAE/B-MSE/B-MAE, same two columns."""
        res = self.result()
        head = (
            f"{'threshold':>12} | {'CSI avg':>8} {'CSI last':>8} | {'HSS avg':>8} {'HSS last':>8} | "
            f"{'POD avg':>8} {'POD last':>8} | {'FAR avg':>8} {'FAR last':>8}"
        )
        lines = [
            f"HKO-7 skill scores: {self.n_sequences} sequences, {self.seq_len} lead times",
            head,
            "-" * len(head),
        ]
        for k, thr in enumerate(self.thresholds_mm_h):
            cells = []
            for name in ("csi", "hss", "pod", "far"):
                col = res[name][:, k]
                cells.append(f"{_fmt(nanmean(col))} {_fmt(col[-1])}")
            lines.append(f"{thr:>7g} mm/h | " + " | ".join(cells))
        lines.append("")
        lines.append(f"{'error':>12} | {'avg':>10} {'last':>10}")
        for name, label in (("mse", "MSE"), ("mae", "MAE"), ("b_mse", "B-MSE"), ("b_mae", "B-MAE")):
            col = res[name]
            lines.append(f"{label:>12} | {_fmt_g(nanmean(col))} {_fmt_g(col[-1])}")
        return "\n".join(lines)


def _fmt(x: float, width: int = 8) -> str:
    x = float(x)
    return f"{'nan':>{width}}" if math.isnan(x) else f"{x:>{width}.4f}"


def _fmt_g(x: float, width: int = 10) -> str:
    x = float(x)
    return f"{'nan':>{width}}" if math.isnan(x) else f"{x:>{width}.5g}"


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def champion_score(result: dict) -> float:
    """Champion criterion: mean over lead times of CSI at the 5 mm/h threshold (higher is better).

    ``result`` is :meth:`SkillScores.result` or :meth:`SkillScores.to_json_dict` (None = NaN).
    Lead times where CSI is undefined are skipped; all undefined gives NaN.
    Raises ValueError if 5 mm/h is not among ``result["thresholds"]``.
    """
    thresholds = np.asarray(result["thresholds"], dtype=np.float64)
    hits = np.flatnonzero(np.isclose(thresholds, CHAMPION_THRESHOLD_MM_H))
    if hits.size == 0:
        raise ValueError(
            f"champion score needs the {CHAMPION_THRESHOLD_MM_H:g} mm/h threshold; "
            f"scores were computed for {thresholds.tolist()} mm/h"
        )
    csi = np.asarray(result["csi"], dtype=np.float64)
    return float(nanmean(csi[:, hits[0]]))
