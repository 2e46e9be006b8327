"""Triton kernels: the GRU gate arithmetic of the HKO-7 cells as one kernel each way.

For hidden channel ``c`` of C (channels ``c``, ``C + c``, ``2C + c`` of the 3C-channel
``i2h`` and ``h2h`` are the r, u and candidate parts)::

    r = sigmoid(i2h_r + h2h_r);   u = sigmoid(i2h_u + h2h_u)
    n = i2h_n + r * h2h_n;        cand = leaky_relu(n, slope)
    h_new = u * h + (1 - u) * cand

Without input (``i2h`` None) the i2h terms are 0. This is ``trajgru.cells._gru_update``,
which is the portable reference. Eager PyTorch runs it as ~10 kernels forward and ~15
backward, each reading and writing full-size tensors; here it is one read of the inputs
and one write per output each way. The backward recomputes r, u and n from the saved
inputs instead of storing them. Arithmetic in float32; inputs and outputs in their own
dtypes (bf16 under autocast); any strides (``CHANNELS_LAST`` only picks the index order
that makes the accesses contiguous).
"""

from __future__ import annotations

import torch

from . import jit

tl = None  # triton.language, bound by trajgru.kernels.jit at the first launch

__all__ = ["gru_gates_triton"]

BLOCK = 1024
NUM_WARPS = 8  # 4 elements per thread
_GENERIC = ("n_elem", "H", "W")  # sizes that need no specialised variants
_INT32_MAX = 2**31 - 1


def _gru_fwd_kernel(
    i2h_ptr,
    h2h_ptr,
    h_ptr,
    out_ptr,
    n_elem,
    C,
    H,
    W,
    slope,
    i_sb,
    i_sc,
    i_sy,
    i_sx,
    g_sb,
    g_sc,
    g_sy,
    g_sx,
    h_sb,
    h_sc,
    h_sy,
    h_sx,
    o_sb,
    o_sc,
    o_sy,
    o_sx,
    HAS_I2H: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
    WIDE: tl.constexpr,
):
    """1-D grid over B*C*H*W elements of h. ``WIDE``: int64 offsets."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if WIDE:
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_elem
    if CHANNELS_LAST:
        c = idx % C
        t = idx // C
        x = t % W
        t = t // W
        y = t % H
        b = t // H
    else:
        x = idx % W
        t = idx // W
        y = t % H
        t = t // H
        c = t % C
        b = t // C
    g_off = b * g_sb + c * g_sc + y * g_sy + x * g_sx
    a_r = tl.load(h2h_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    a_u = tl.load(h2h_ptr + g_off + C * g_sc, mask=mask, other=0.0).to(tl.float32)
    h2h_n = tl.load(h2h_ptr + g_off + 2 * C * g_sc, mask=mask, other=0.0).to(tl.float32)
    n_pre = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_I2H:
        i_off = b * i_sb + c * i_sc + y * i_sy + x * i_sx
        a_r += tl.load(i2h_ptr + i_off, mask=mask, other=0.0).to(tl.float32)
        a_u += tl.load(i2h_ptr + i_off + C * i_sc, mask=mask, other=0.0).to(tl.float32)
        n_pre += tl.load(i2h_ptr + i_off + 2 * C * i_sc, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + b * h_sb + c * h_sc + y * h_sy + x * h_sx, mask=mask, other=0.0).to(tl.float32)
    r = 1.0 / (1.0 + tl.exp(-a_r))
    u = 1.0 / (1.0 + tl.exp(-a_u))
    n_pre += r * h2h_n
    cand = tl.where(n_pre > 0, n_pre, n_pre * slope)
    out = cand + u * (h - cand)
    tl.store(out_ptr + b * o_sb + c * o_sc + y * o_sy + x * o_sx, out.to(out_ptr.dtype.element_ty), mask=mask)


def _gru_bwd_kernel(
    i2h_ptr,
    h2h_ptr,
    h_ptr,
    gout_ptr,
    gi2h_ptr,
    gh2h_ptr,
    gh_ptr,
    n_elem,
    C,
    H,
    W,
    slope,
    i_sb,
    i_sc,
    i_sy,
    i_sx,
    g_sb,
    g_sc,
    g_sy,
    g_sx,
    h_sb,
    h_sc,
    h_sy,
    h_sx,
    o_sb,
    o_sc,
    o_sy,
    o_sx,
    HAS_I2H: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
    WIDE: tl.constexpr,
):
    """1-D grid over B*C*H*W. gi2h / gh2h share the strides of i2h / h2h, gh those of h;
    gout has strides o_*. ``WIDE``: int64 offsets."""
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if WIDE:
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n_elem
    if CHANNELS_LAST:
        c = idx % C
        t = idx // C
        x = t % W
        t = t // W
        y = t % H
        b = t // H
    else:
        x = idx % W
        t = idx // W
        y = t % H
        t = t // H
        c = t % C
        b = t // C
    g_off = b * g_sb + c * g_sc + y * g_sy + x * g_sx
    a_r = tl.load(h2h_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
    a_u = tl.load(h2h_ptr + g_off + C * g_sc, mask=mask, other=0.0).to(tl.float32)
    h2h_n = tl.load(h2h_ptr + g_off + 2 * C * g_sc, mask=mask, other=0.0).to(tl.float32)
    n_pre = tl.zeros([BLOCK], dtype=tl.float32)
    i_off = b * i_sb + c * i_sc + y * i_sy + x * i_sx
    if HAS_I2H:
        a_r += tl.load(i2h_ptr + i_off, mask=mask, other=0.0).to(tl.float32)
        a_u += tl.load(i2h_ptr + i_off + C * i_sc, mask=mask, other=0.0).to(tl.float32)
        n_pre += tl.load(i2h_ptr + i_off + 2 * C * i_sc, mask=mask, other=0.0).to(tl.float32)
    h_off = b * h_sb + c * h_sc + y * h_sy + x * h_sx
    h = tl.load(h_ptr + h_off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gout_ptr + b * o_sb + c * o_sc + y * o_sy + x * o_sx, mask=mask, other=0.0).to(tl.float32)
    r = 1.0 / (1.0 + tl.exp(-a_r))
    u = 1.0 / (1.0 + tl.exp(-a_u))
    n_pre += r * h2h_n
    cand = tl.where(n_pre > 0, n_pre, n_pre * slope)
    # h_new = u h + (1 - u) cand
    d_h = g * u
    d_au = g * (h - cand) * u * (1.0 - u)
    d_n = tl.where(n_pre > 0, g * (1.0 - u), g * (1.0 - u) * slope)
    d_ar = d_n * h2h_n * r * (1.0 - r)
    d_h2h_n = d_n * r
    tl.store(gh_ptr + h_off, d_h.to(gh_ptr.dtype.element_ty), mask=mask)
    tl.store(gh2h_ptr + g_off, d_ar.to(gh2h_ptr.dtype.element_ty), mask=mask)
    tl.store(gh2h_ptr + g_off + C * g_sc, d_au.to(gh2h_ptr.dtype.element_ty), mask=mask)
    tl.store(gh2h_ptr + g_off + 2 * C * g_sc, d_h2h_n.to(gh2h_ptr.dtype.element_ty), mask=mask)
    if HAS_I2H:
        tl.store(gi2h_ptr + i_off, d_ar.to(gi2h_ptr.dtype.element_ty), mask=mask)
        tl.store(gi2h_ptr + i_off + C * i_sc, d_au.to(gi2h_ptr.dtype.element_ty), mask=mask)
        tl.store(gi2h_ptr + i_off + 2 * C * i_sc, d_n.to(gi2h_ptr.dtype.element_ty), mask=mask)


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.stride(1) == 1 and t.shape[1] > 1


def _check(i2h, h2h, h):
    if h.dim() != 4 or h2h.dim() != 4 or h2h.shape[1] != 3 * h.shape[1]:
        raise ValueError(f"expected h2h (B,3C,H,W) and h (B,C,H,W); got {tuple(h2h.shape)}, {tuple(h.shape)}")
    if h2h.shape[0] != h.shape[0] or h2h.shape[-2:] != h.shape[-2:]:
        raise ValueError(f"h2h {tuple(h2h.shape)} and h {tuple(h.shape)} must share B, H, W")
    if i2h is not None and i2h.shape != h2h.shape:
        raise ValueError(f"i2h {tuple(i2h.shape)} must have the shape of h2h {tuple(h2h.shape)}")


def _needs_int64(*tensors) -> bool:
    """True if some element offset may not fit in int32."""
    return any(
        t is not None and (t.numel() > _INT32_MAX or max(t.stride()) * max(t.shape) > _INT32_MAX)
        for t in tensors
    )


def _common_args(i2h, h2h, h, slope):
    batch, channels, height, width = h.shape
    return dict(
        n_elem=h.numel(),
        C=channels,
        H=height,
        W=width,
        slope=float(slope),
        strides=(*(h2h.stride() if i2h is None else i2h.stride()), *h2h.stride(), *h.stride()),
        meta=dict(
            HAS_I2H=i2h is not None,
            CHANNELS_LAST=_is_channels_last(h),
            BLOCK=BLOCK,
            WIDE=_needs_int64(i2h, h2h, h),
            num_warps=NUM_WARPS,
        ),
        grid=(-(-h.numel() // BLOCK),),
    )


def gru_gates_fwd(i2h, h2h, h, slope: float) -> torch.Tensor:
    """Forward launch; the output has ``h``'s shape, strides and dtype."""
    _check(i2h, h2h, h)
    a = _common_args(i2h, h2h, h, slope)
    out = torch.empty_like(h)
    jit(_gru_fwd_kernel, _GENERIC)[a["grid"]](
        h2h if i2h is None else i2h,
        h2h,
        h,
        out,
        a["n_elem"],
        a["C"],
        a["H"],
        a["W"],
        a["slope"],
        *a["strides"],
        *out.stride(),
        **a["meta"],
    )
    return out


def gru_gates_bwd(i2h, h2h, h, grad_out, slope: float):
    """Backward launch: (grad_i2h or None, grad_h2h, grad_h), each like its input."""
    a = _common_args(i2h, h2h, h, slope)
    g_i2h = None if i2h is None else torch.empty_like(i2h)
    g_h2h = torch.empty_like(h2h)
    g_h = torch.empty_like(h)
    if (
        g_h2h.stride() != h2h.stride()
        or g_h.stride() != h.stride()
        or (i2h is not None and g_i2h.stride() != i2h.stride())
    ):
        raise RuntimeError("gru_gates backward needs dense (non-overlapping) inputs")
    jit(_gru_bwd_kernel, _GENERIC)[a["grid"]](
        h2h if i2h is None else i2h,
        h2h,
        h,
        grad_out,
        g_h2h if g_i2h is None else g_i2h,
        g_h2h,
        g_h,
        a["n_elem"],
        a["C"],
        a["H"],
        a["W"],
        a["slope"],
        *a["strides"],
        *grad_out.stride(),
        **a["meta"],
    )
    return g_i2h, g_h2h, g_h


class _GruGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i2h, h2h, h, slope):
        ctx.save_for_backward(i2h, h2h, h)
        ctx.has_i2h = i2h is not None
        ctx.slope = slope
        return gru_gates_fwd(i2h, h2h, h, slope)

    @staticmethod
    def backward(ctx, grad_out):
        i2h, h2h, h = ctx.saved_tensors
        if not ctx.has_i2h:
            i2h = None
        g_i2h, g_h2h, g_h = gru_gates_bwd(i2h, h2h, h, grad_out, ctx.slope)
        return g_i2h, g_h2h, g_h, None


def gru_gates_triton(
    i2h: torch.Tensor | None, h2h: torch.Tensor, h: torch.Tensor, slope: float
) -> torch.Tensor:
    """GRU update with the Triton kernels (see module doc).

    Parameters
    ----------
    i2h : (B, 3C, H, W) tensor or None (a cell without input)
    h2h : (B, 3C, H, W) tensor
    h : (B, C, H, W) tensor, the previous state
    slope : LeakyReLU slope of the candidate

    Returns
    -------
    (B, C, H, W) new state with ``h``'s strides and dtype; differentiable in all inputs.
    """
    return _GruGates.apply(i2h, h2h, h, float(slope))
