"""Reference forecasters: persistence and optical-flow extrapolation.

Both are plain callables ``(inputs, out_len) -> forecast`` with the model's layout:
``inputs`` torch (in_len, B, 1, H, W) pixel values in [0, 1] -> (out_len, B, 1, H, W) on the
same device and dtype, so they are evaluated exactly like a trained network.

The optical-flow baseline is the modern equivalent of the paper's ROVER baseline:
dense optical flow (OpenCV DIS by default, or Farneback) between the last input
frames, filled in where there is no echo, and semi-Lagrangian backward advection
of the last frame.
OpenCV (cv2) is imported lazily, inside the functions that use it.
"""

from __future__ import annotations

import numpy as np
import torch

#: Flow estimators (OpenCV, dense): "dis" = DIS optical flow (Kroeger et al. 2016, preset MEDIUM,
#: variational refinement); "farneback" = Farneback's polynomial expansion. DIS is the default:
#: Farneback underestimates the motion of broad, smooth echoes badly (e.g. it finds ~1 px of a
#: 6 px/frame shift of a 20-px-wide Gaussian blob at 480x480), DIS does not.
FLOW_METHODS = ("dis", "farneback")

#: Farneback parameters (cv2.calcOpticalFlowFarneback) used unless overridden.
DEFAULT_FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 4,
    "winsize": 21,
    "iterations": 5,
    "poly_n": 7,
    "poly_sigma": 1.5,
    "flags": 0,
}


def _check_inputs(inputs: torch.Tensor, out_len: int) -> None:
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch tensor (in_len, B, 1, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 5 or inputs.shape[2] != 1 or inputs.shape[0] < 1:
        raise ValueError(f"inputs must be (in_len, B, 1, H, W), got shape {tuple(inputs.shape)}")
    if int(out_len) < 1:
        raise ValueError(f"out_len must be >= 1, got {out_len}")


def persistence(inputs: torch.Tensor, out_len: int) -> torch.Tensor:
    """Repeat the last input frame.

    inputs: (in_len, B, 1, H, W) pixel [0, 1] -> (out_len, B, 1, H, W), same device and dtype
    (a new tensor, not a view).
    """
    _check_inputs(inputs, out_len)
    return inputs[-1:].repeat(int(out_len), 1, 1, 1, 1)


def optical_flow(
    inputs: torch.Tensor,
    out_len: int,
    method: str = "dis",
    n_pairs: int = 2,
    fill_sigma_px: float | None = None,
    farneback: dict | None = None,
) -> torch.Tensor:
    """Optical-flow extrapolation (dense OpenCV flow + semi-Lagrangian advection).

    Per sequence: the motion ``flow`` (pixels per frame, ``flow[..., 0]`` = x/column,
    ``flow[..., 1]`` = y/row) is estimated with OpenCV's dense optical flow (``method``: DIS or
    Farneback) between each of the last ``n_pairs`` pairs of consecutive input frames (quantised
    to uint8) and averaged with echo-intensity weights; where there is no echo the flow is filled
    in from nearby echoes (normalised Gaussian convolution of width ``fill_sigma_px``, leaning to
    the echo-weighted domain mean far from any echo), so the whole domain moves with the rain.
    Lead time ``k`` samples the last frame bilinearly at the back-trajectory of every pixel, traced
    one frame at a time (``p_k = p_{k-1} - flow(p_{k-1/2})``), which follows curved motion and
    interpolates the image only once per lead time; from outside the image the forecast is 0.
    (Each one-frame step uses the flow at the step's midpoint, see :func:`advect`.)

    Parameters
    ----------
    inputs : torch.Tensor (in_len, B, 1, H, W)
        Pixel values in [0, 1], any device/dtype. in_len == 1 gives persistence.
    out_len : int
        Number of lead times.
    method : {"dis", "farneback"}
        Flow estimator, see :data:`FLOW_METHODS`.
    n_pairs : int
        Consecutive frame pairs whose flows are averaged (capped at in_len - 1).
    fill_sigma_px : float, optional
        Gaussian width (pixels) of the flow fill; default ``max(H, W) / 8``.
    farneback : dict, optional
        Overrides of :data:`DEFAULT_FARNEBACK` (method "farneback" only).

    Returns
    -------
    torch.Tensor (out_len, B, 1, H, W) on the inputs' device and dtype, values in [0, 1].
    """
    _check_inputs(inputs, out_len)
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown optical-flow method {method!r}; choose one of {FLOW_METHODS}")
    if int(n_pairs) < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if inputs.shape[0] < 2:
        return persistence(inputs, out_len)
    frames = inputs[:, :, 0].detach().float().clamp(0.0, 1.0).cpu().numpy()  # (in_len, B, H, W)
    height, width = frames.shape[-2:]
    sigma = float(fill_sigma_px) if fill_sigma_px is not None else max(height, width) / 8.0
    out = np.empty((int(out_len),) + frames.shape[1:], dtype=np.float32)
    for b in range(frames.shape[1]):
        seq = frames[:, b]
        flow = estimate_flow(seq, method=method, n_pairs=n_pairs, fill_sigma_px=sigma, farneback=farneback)
        out[:, b] = advect(seq[-1], flow, int(out_len))
    return torch.from_numpy(out)[:, :, None].to(device=inputs.device, dtype=inputs.dtype)


def _pair_flow(prev_u8: np.ndarray, next_u8: np.ndarray, method: str, farneback: dict | None) -> np.ndarray:
    """Dense flow (H, W, 2) float32 from prev to next: ``prev(y, x) ~ next(y + fy, x + fx)``."""
    import cv2

    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(prev_u8, next_u8, None)
    params = dict(DEFAULT_FARNEBACK, **(farneback or {}))
    return cv2.calcOpticalFlowFarneback(prev_u8, next_u8, None, **params)


def estimate_flow(
    frames: np.ndarray,
    method: str = "dis",
    n_pairs: int = 2,
    fill_sigma_px: float = 60.0,
    farneback: dict | None = None,
) -> np.ndarray:
    """Motion field of a frame sequence.

    frames: float (S, H, W) pixel [0, 1], S >= 2. Returns float32 (H, W, 2) in pixels per
    frame (``[..., 0]`` = x/column, ``[..., 1]`` = y/row) such that
    ``frames[-1](y, x) ~ frames[-2](y - flow_y, x - flow_x)``; see :func:`optical_flow`.
    """
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown optical-flow method {method!r}; choose one of {FLOW_METHODS}")
    frames = np.clip(np.asarray(frames, dtype=np.float32), 0.0, 1.0)
    u8 = np.rint(frames * 255.0).astype(np.uint8)
    n = min(int(n_pairs), u8.shape[0] - 1)
    flow_sum = np.zeros(u8.shape[1:] + (2,), dtype=np.float32)
    weight_sum = np.zeros(u8.shape[1:], dtype=np.float32)
    for i in range(u8.shape[0] - n, u8.shape[0]):
        flow = _pair_flow(u8[i - 1], u8[i], method, farneback)
        weight = np.maximum(frames[i - 1], frames[i])
        flow_sum += flow * weight[..., None]
        weight_sum += weight
    return _fill_flow(flow_sum, weight_sum, fill_sigma_px)


def _fill_flow(weighted_flow: np.ndarray, weight: np.ndarray, sigma_px: float) -> np.ndarray:
    """Normalised convolution: ``G*(w f) / G*w`` blended towards the weighted domain mean where
    ``G*w`` is small. weighted_flow (H, W, 2) = sum of w * flow, weight (H, W) = sum of w."""
    import cv2

    total = float(weight.sum())
    if total <= 0.0:
        return np.zeros_like(weighted_flow)
    mean_flow = weighted_flow.reshape(-1, 2).sum(axis=0) / total
    ksize = (0, 0)
    num = cv2.GaussianBlur(weighted_flow, ksize, sigmaX=sigma_px, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(weight, ksize, sigmaX=sigma_px, borderType=cv2.BORDER_CONSTANT)
    # regulariser: a pixel whose neighbourhood holds less echo weight than ~1% of the
    # strongest neighbourhood leans towards the domain mean.
    reg = np.float32(0.01 * max(float(den.max()), 1e-12))
    filled = (num + reg * mean_flow[None, None, :]) / (den + reg)[..., None]
    return filled.astype(np.float32)


def advect(frame: np.ndarray, flow: np.ndarray, out_len: int, midpoint_iterations: int = 2) -> np.ndarray:
    """Semi-Lagrangian backward advection.

    frame: float32 (H, W); flow: float32 (H, W, 2) pixels per frame. Returns float32
    (out_len, H, W): lead k is ``frame`` sampled (bilinear, zero outside) at ``p_k`` where
    ``p_0 = (x, y)`` and ``p_k = p_{k-1} - d_k``, ``d_k`` the flow at the trajectory's
    midpoint ``p_{k-1} - d_k / 2`` (solved by ``midpoint_iterations`` fixed-point steps;
    0 gives the Euler step ``d_k = flow(p_{k-1})``). Flow is sampled bilinearly, edge values
    continued outside. The image is interpolated once per lead time (no cumulative blur).
    """
    import cv2

    height, width = frame.shape
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    src = np.ascontiguousarray(frame, dtype=np.float32)
    flow = np.ascontiguousarray(flow, dtype=np.float32)
    pos_x, pos_y = grid_x.copy(), grid_y.copy()
    out = np.empty((out_len, height, width), dtype=np.float32)

    def flow_at(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        return cv2.remap(flow, px, py, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    for k in range(out_len):
        # implicit midpoint: the displacement over one frame is the flow at the half-way point
        step = flow_at(pos_x, pos_y)
        for _ in range(midpoint_iterations):
            step = flow_at(pos_x - 0.5 * step[..., 0], pos_y - 0.5 * step[..., 1])
        pos_x = pos_x - step[..., 0]
        pos_y = pos_y - step[..., 1]
        out[k] = cv2.remap(
            src, pos_x, pos_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return np.clip(out, 0.0, 1.0)
