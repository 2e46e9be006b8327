"""Bilinear warping of feature maps by per-pixel flow fields.

Semantics are exactly MXNet's ``GridGenerator(transform_type="warp")`` followed by
``BilinearSampler``, which the original TrajGRU uses::

    out[b, c, i, j] = sum_m sum_n x[b, c, m, n]
                      * max(0, 1 - |i + V[b, i, j] - m|)
                      * max(0, 1 - |j + U[b, i, j] - n|)

i.e. bilinear sampling of ``x`` at row ``i + V`` and column ``j + U`` (pixel units),
with zeros outside the image. ``flow[:, 0]`` is ``U`` (column / x displacement) and
``flow[:, 1]`` is ``V`` (row / y displacement).

Implementation: ``torch.nn.functional.grid_sample`` with ``align_corners=True`` on a
grid normalised by ``(W - 1)`` / ``(H - 1)``; with ``align_corners=True`` normalised
-1 and +1 are the *centres* of the corner pixels, which is what the normalisation by
``size - 1`` assumes. (The popular PyTorch port of TrajGRU normalises by ``size - 1``
but keeps the default ``align_corners=False``, which shifts and rescales every sample.)

The base grid is built once per ``(H, W, device, dtype)`` with torch ops on the target
device, in the compute dtype itself (float32, or float64 for float64 inputs, so a float64
warp has no float32 rounding anywhere), and cached, so a call does no host-to-device copy
and no synchronisation. Sampling always runs in float32 or float64 (a bfloat16 grid cannot
address 480 pixels to better than about two pixels); the result is cast back to ``x.dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels import tracing

__all__ = ["warp", "warp_stack", "sampling_grid", "clear_grid_cache"]

# (height, width, device, dtype) -> (base grid (H, W, 2) in [-1, 1], scale (2,)), both of dtype
_GRID_CACHE: dict[tuple[int, int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def clear_grid_cache() -> None:
    """Forget every cached base grid (e.g. to free device memory)."""
    _GRID_CACHE.clear()


def _base_grid(
    height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised identity grid and the pixel-to-normalised scale, cached per size/device/dtype.

    Built directly in ``dtype`` (float32 or float64), never cast from a float32 grid: a
    float64 grid cast from float32 carries float32 rounding (up to ~7e-5 pixel at 480).

    Returns
    -------
    base : (H, W, 2) of ``dtype``
        ``base[i, j] = (2 j / (W - 1) - 1, 2 i / (H - 1) - 1)``, the (x, y) order
        ``grid_sample`` expects.
    scale : (2,) of ``dtype``
        ``(2 / (W - 1), 2 / (H - 1))``: multiply a (U, V) displacement in pixels by this
        to get a displacement in normalised units.
    """
    key = (height, width, device, dtype)
    cached = _GRID_CACHE.get(key)
    if cached is not None:
        return cached
    # Normal (not inference-mode) tensors, so the cache can be used later under autograd.
    with torch.inference_mode(False), torch.no_grad():
        xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
        ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
        base = torch.stack(
            (xs.view(1, width).expand(height, width), ys.view(height, 1).expand(height, width)),
            dim=-1,
        ).contiguous()
        scale = torch.stack(
            (
                torch.full((), 2.0 / (width - 1), device=device, dtype=dtype),
                torch.full((), 2.0 / (height - 1), device=device, dtype=dtype),
            )
        )
    if not tracing(base):  # a fake tensor cached while tracing would poison every later call
        _GRID_CACHE[key] = (base, scale)
    return base, scale


def _check_sizes(height: int, width: int) -> None:
    if height < 2 or width < 2:
        raise ValueError(
            f"warp needs feature maps of at least 2x2 pixels, got {height}x{width}: "
            "the normalised grid divides by (size - 1)"
        )


def sampling_grid(flow: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """Normalised ``grid_sample`` grid for sampling at ``(i + V, j + U)``.

    Parameters
    ----------
    flow : (..., 2, H, W) float tensor
        Displacements in pixels; ``flow[..., 0, :, :]`` is U (columns), ``[..., 1, :, :]`` V (rows).
    negate : bool
        Sample at ``(i - V, j - U)`` instead (TrajGRU warps with ``-flow``), at no extra cost.

    Returns
    -------
    (..., H, W, 2) tensor in normalised units (x, y), for ``align_corners=True``; float32
    (float64 if ``flow`` is float64).
    """
    height, width = flow.shape[-2], flow.shape[-1]
    _check_sizes(height, width)
    dtype = _compute_dtype(flow.dtype)
    base, scale = _base_grid(height, width, flow.device, dtype)
    flow_xy = flow.to(dtype).movedim(-3, -1)  # (..., H, W, 2)
    return torch.addcmul(base, flow_xy, scale, value=-1.0 if negate else 1.0)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float32/float16/bfloat16 inputs, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def _grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` in float32 with MXNet BilinearSampler semantics; output in x.dtype."""
    out = F.grid_sample(x.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(x.dtype)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Warp ``x`` by ``flow``: bilinear sample at ``(i + V, j + U)``, zeros outside.

    Parameters
    ----------
    x : (B, C, H, W) float tensor (float32, float16 or bfloat16; any device)
    flow : (B, 2, H, W) float tensor, pixels; ``flow[:, 0]`` = U (x / column),
        ``flow[:, 1]`` = V (y / row).

    Returns
    -------
    (B, C, H, W) tensor of ``x.dtype``; differentiable in ``x`` and ``flow``.
    """
    if x.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"warp expects x (B,C,H,W) and flow (B,2,H,W); got {tuple(x.shape)} and {tuple(flow.shape)}"
        )
    if x.shape[0] != flow.shape[0] or x.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"x {tuple(x.shape)} and flow {tuple(flow.shape)} must share batch size and H, W")
    return _grid_sample(x, sampling_grid(flow))


def warp_stack(x: torch.Tensor, flows: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """Warp ``x`` by L flow fields at once, in a single ``grid_sample`` call.

    Equal to ``torch.stack([warp(x, s * flows[:, l]) for l in range(L)], dim=2)`` with
    ``s = -1 if negate else 1``, but one kernel instead of L: the L grids are stacked along
    the grid's height axis, ``(B, L*H, W, 2)``, and ``x`` is read once.

    Parameters
    ----------
    x : (B, C, H, W) float tensor
    flows : (B, L, 2, H, W) float tensor, pixels (U, V) per flow
    negate : bool
        Warp with ``-flows`` (TrajGRU's convention) without an extra negation kernel.

    Returns
    -------
    (B, C, L, H, W) tensor of ``x.dtype``.
    """
    if x.dim() != 4 or flows.dim() != 5 or flows.shape[2] != 2:
        raise ValueError(
            f"warp_stack expects x (B,C,H,W) and flows (B,L,2,H,W); "
            f"got {tuple(x.shape)} and {tuple(flows.shape)}"
        )
    batch, n_flows, _, height, width = flows.shape
    if x.shape[0] != batch or x.shape[-2:] != flows.shape[-2:]:
        raise ValueError(f"x {tuple(x.shape)} and flows {tuple(flows.shape)} must share batch size and H, W")
    grid = sampling_grid(flows, negate=negate).reshape(batch, n_flows * height, width, 2)
    out = _grid_sample(x, grid)  # (B, C, L*H, W)
    return out.reshape(batch, x.shape[1], n_flows, height, width)
