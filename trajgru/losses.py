"""Balanced MSE + MAE loss of the HKO-7 benchmark (Shi et al., NeurIPS 2017).

Every pixel's squared and absolute error is weighted by the rain rate of the
*truth* at that pixel, so that the rare heavy-rain pixels count as much as the
abundant light-rain ones:

============================  ======
truth rain rate (mm/h)        weight
============================  ======
below 2                       1
[2, 5)                        2
[5, 10)                       5
[10, 30)                      10
30 and above                  30
============================  ======

The rain-rate bins are turned into pixel thresholds with
:func:`trajgru.units.rainfall_to_pixel`, exactly as the original HKO-7 code
does (``weights = w0 + sum_i (w_{i+1} - w_i) * (truth >= threshold_i)``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from trajgru.units import rainfall_to_pixel

#: Lower edges of the rain-rate bins (mm/h) whose weights follow below.
BALANCE_THRESHOLDS_MM_H = (2.0, 5.0, 10.0, 30.0)
#: Weight of each bin: below 2 mm/h, [2, 5), [5, 10), [10, 30), >= 30 mm/h.
BALANCE_WEIGHTS = (1.0, 2.0, 5.0, 10.0, 30.0)
#: Default weight of the last lead time when ``lead_time_weighting=True``
#: (HKO-7's ``TEMPORAL_WEIGHT_UPPER``); the first lead time has weight 1.
DEFAULT_LEAD_TIME_WEIGHT_MAX = 5.0


def _balance_thresholds_pixel() -> np.ndarray:
    """The rain-rate bin edges of :data:`BALANCE_THRESHOLDS_MM_H` in pixel units, float64."""
    return np.asarray(rainfall_to_pixel(np.asarray(BALANCE_THRESHOLDS_MM_H, dtype=np.float64)))


@functools.cache
def _weight_tables(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin edges in ``dtype``, float32 weights) on ``device``, made once per device: a host-to-device
    copy in every call would make the loss impossible to capture in a CUDA graph."""
    bounds = torch.as_tensor(_balance_thresholds_pixel(), dtype=dtype, device=device)
    return bounds, torch.as_tensor(BALANCE_WEIGHTS, dtype=torch.float32, device=device)


def balanced_weights(truth_pixel):
    """Per-pixel balancing weights from the truth's rain rate.

    Parameters
    ----------
    truth_pixel : torch.Tensor or numpy.ndarray, any shape
        Observed radar frames in pixel units [0, 1].

    Returns
    -------
    Same kind and shape as ``truth_pixel``: float32 weights in {1, 2, 5, 10, 30}
    (1 below 2 mm/h, 2 in [2, 5), 5 in [5, 10), 10 in [10, 30), 30 at >= 30 mm/h).
    A torch input gives a tensor on the same device. The mask is *not* applied here.
    Comparisons run in float32 (float64 for float64 input), thresholds rounded to that precision.
    """
    thresholds = _balance_thresholds_pixel()
    if isinstance(truth_pixel, torch.Tensor):
        truth = truth_pixel if truth_pixel.dtype == torch.float64 else truth_pixel.float()
        bounds, table = _weight_tables(truth.device, truth.dtype)
        # bin = number of thresholds <= value, i.e. the ">=" rule of the original code
        return table[torch.bucketize(truth.contiguous(), bounds, right=True)]
    truth = np.asarray(truth_pixel)
    if truth.dtype != np.float64:
        truth = truth.astype(np.float32)
    bins = np.searchsorted(thresholds.astype(truth.dtype), truth, side="right")
    return np.asarray(BALANCE_WEIGHTS, dtype=np.float32)[bins]


def lead_time_weights(seq_len: int, weight_max: float = DEFAULT_LEAD_TIME_WEIGHT_MAX) -> torch.Tensor:
    """Linearly increasing per-lead-time loss weights, as HKO-7's "linear" temporal weighting.

    ``w_t = 1 + t * (weight_max - 1) / (seq_len - 1)`` for ``t = 0 .. seq_len - 1``: the first
    lead time weighs 1 and the last ``weight_max``. Not normalised (the mean weight is
    ``(1 + weight_max) / 2``), as in the original code, so the loss grows by that factor.

    Returns a float32 tensor of shape (seq_len,).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if weight_max < 1.0:
        raise ValueError(f"lead-time weight_max must be >= 1, got {weight_max}")
    if seq_len == 1:
        return torch.ones(1)
    step = (weight_max - 1.0) / (seq_len - 1)
    return 1.0 + torch.arange(seq_len, dtype=torch.float32) * step


@functools.cache
def _lead_time_weights_on(seq_len: int, weight_max: float, device: torch.device) -> torch.Tensor:
    """:func:`lead_time_weights` on ``device``, made once (CUDA-graph capturable)."""
    return lead_time_weights(seq_len, weight_max).to(device)


class BalancedLoss(nn.Module):
    """Balanced MSE + MAE of HKO-7.

    ``loss = scale * (mse_weight * mean_{t,b} SSE[t,b] + mae_weight * mean_{t,b} SAE[t,b])`` with
    ``SSE[t,b] = sum_{c,h,w} w * mask * (pred - truth)^2`` and ``SAE`` likewise with ``|pred - truth|``,
    where ``w = balanced_weights(truth)``. With ``lead_time_weighting`` each frame's SSE/SAE is
    multiplied by :func:`lead_time_weights` (1 at the first lead time rising linearly to
    ``lead_time_weight_max`` at the last; not normalised, as in the original).

    Parameters
    ----------
    mse_weight, mae_weight : float
        Weights of the squared and absolute terms.
    scale : float
        Global factor (the original uses 1e-5 on 480x480 frames so the loss is O(1)).
    lead_time_weighting : bool
        Enable the linearly increasing per-lead-time weights.
    lead_time_weight_max : float
        Weight of the last lead time when ``lead_time_weighting`` is on (>= 1).

    Inputs of ``forward``: ``pred``, ``truth`` (S, B, C, H, W) pixel values (any float dtype,
    bf16 included: the loss is computed in float32), ``mask`` optional, broadcastable to
    ``truth`` (bool or 0/1 float; None = every pixel counts). Returns a float32 scalar tensor.
    """

    def __init__(
        self,
        mse_weight: float = 1.0,
        mae_weight: float = 1.0,
        scale: float = 1e-5,
        lead_time_weighting: bool = False,
        lead_time_weight_max: float = DEFAULT_LEAD_TIME_WEIGHT_MAX,
    ):
        super().__init__()
        if lead_time_weight_max < 1.0:
            raise ValueError(f"lead_time_weight_max must be >= 1, got {lead_time_weight_max}")
        self.mse_weight = float(mse_weight)
        self.mae_weight = float(mae_weight)
        self.scale = float(scale)
        self.lead_time_weighting = bool(lead_time_weighting)
        self.lead_time_weight_max = float(lead_time_weight_max)

    def extra_repr(self) -> str:
        return (
            f"mse_weight={self.mse_weight}, mae_weight={self.mae_weight}, scale={self.scale}, "
            f"lead_time_weighting={self.lead_time_weighting}, "
            f"lead_time_weight_max={self.lead_time_weight_max}"
        )

    def forward(
        self, pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if pred.shape != truth.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != truth shape {tuple(truth.shape)}")
        if pred.dim() != 5:
            raise ValueError(f"expected (S, B, C, H, W) tensors, got shape {tuple(pred.shape)}")
        pred32 = pred.float()
        truth32 = truth.detach().float()
        weights = balanced_weights(truth32)
        if mask is not None:
            weights = weights * mask.to(device=weights.device, dtype=torch.float32)
        diff = pred32 - truth32
        # one fused per-pixel term: w * (mse_weight * d^2 + mae_weight * |d|), summed per frame
        per_pixel = weights * (self.mse_weight * diff.square() + self.mae_weight * diff.abs())
        per_frame = per_pixel.sum(dim=(2, 3, 4))  # (S, B)
        if self.lead_time_weighting:
            w_t = _lead_time_weights_on(pred.shape[0], self.lead_time_weight_max, per_frame.device)
            per_frame = per_frame * w_t[:, None]
        return self.scale * per_frame.mean()
