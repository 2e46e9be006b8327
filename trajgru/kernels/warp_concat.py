"""Triton kernels: warp a hidden state by L flows and concatenate, in one launch.

TrajGRU warps ``h`` (B, C, H, W) by each of its L flow fields and mixes the L warped
copies with a 1x1 convolution. :func:`warp_concat_triton` produces the concatenation
directly in the layout that 1x1 convolution wants as a GEMM operand::

    out[b, y, x, l*C + c] = sum over the 4 bilinear corners (m, n) of
                            h[b, c, m, n] * max(0, 1-|y + s*V_l - m|) * max(0, 1-|x + s*U_l - n|)

with ``s = -1`` when ``negate`` (TrajGRU warps with ``-flow``), ``U_l = flows[:, 2l]``,
``V_l = flows[:, 2l+1]``, zeros outside the image: exactly :func:`trajgru.warp.warp`'s
MXNet ``BilinearSampler`` semantics. ``out`` viewed as (B*H*W, L*C) is a row-major matrix,
so ``h2h = out @ W^T`` is one cuBLAS GEMM with no layout conversion (``W`` in flow-major
order, see ``TrajGRUCell.h2h_weight_flow_major``).

Precision: ``h`` and ``out`` in the model's dtype (bf16 under autocast), coordinates,
bilinear weights and sums in float32. Any strides of ``h`` and ``flows`` are accepted;
channels-last ``h`` gives contiguous C-vectors per corner (coalesced gathers).

Backward: ``grad_flows`` is a per-(pixel, flow) reduction over channels (no atomics,
deterministic); ``grad_h`` scatters to the 4 corners with float32 atomics into a float32
buffer (like cuDNN's sampler backward: the summation order, and so the last bits, can
vary from run to run).
"""

from __future__ import annotations

import torch

from ..warp import warp_stack
from . import jit, next_pow2, use_triton

tl = None  # triton.language, bound by trajgru.kernels.jit at the first launch

__all__ = ["warp_concat_triton", "warp_concat_torch", "warp_concat"]

# sizes that vary between layers but need no specialisation (fewer compiled variants);
# C and the strides stay specialised (stride 1 and multiples of 16 enable vector accesses)
_GENERIC = ("n_pix", "H", "W", "L")
_INT32_MAX = 2**31 - 1


def _warp_concat_fwd_kernel(
    h_ptr,
    flow_ptr,
    out_ptr,
    n_pix,
    H,
    W,
    C,
    L,
    h_sb,
    h_sc,
    h_sy,
    h_sx,
    f_sb,
    f_sc,
    f_sy,
    f_sx,
    SIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Grid (cdiv(B*H*W, BLOCK_P), L). out: (B*H*W, L*C) contiguous. ``WIDE``: int64 offsets."""
    pid = tl.program_id(0)
    l = tl.program_id(1)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < n_pix
    if WIDE:
        p = p.to(tl.int64)
    x = p % W
    t = p // W
    y = t % H
    b = t // H
    f_off = b * f_sb + y * f_sy + x * f_sx
    u = tl.load(flow_ptr + f_off + (2 * l) * f_sc, mask=pmask, other=0.0).to(tl.float32)
    v = tl.load(flow_ptr + f_off + (2 * l + 1) * f_sc, mask=pmask, other=0.0).to(tl.float32)
    # sample position; clamped to [-2, size + 1]: beyond it every corner is outside anyway,
    # and the clamp keeps the float -> int conversion defined for huge flows.
    sx = tl.minimum(tl.maximum(x.to(tl.float32) + SIGN * u, -2.0), W + 1.0)
    sy = tl.minimum(tl.maximum(y.to(tl.float32) + SIGN * v, -2.0), H + 1.0)
    x0f = tl.floor(sx)
    y0f = tl.floor(sy)
    wx1 = sx - x0f
    wy1 = sy - y0f
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    if WIDE:
        x0 = x0.to(tl.int64)
        y0 = y0.to(tl.int64)
    x1 = x0 + 1
    y1 = y0 + 1
    in_x0 = (x0 >= 0) & (x0 < W)
    in_x1 = (x1 >= 0) & (x1 < W)
    in_y0 = (y0 >= 0) & (y0 < H)
    in_y1 = (y1 >= 0) & (y1 < H)
    m00 = (pmask & in_y0 & in_x0)[:, None]
    m01 = (pmask & in_y0 & in_x1)[:, None]
    m10 = (pmask & in_y1 & in_x0)[:, None]
    m11 = (pmask & in_y1 & in_x1)[:, None]
    hb = b * h_sb
    o00 = (hb + y0 * h_sy + x0 * h_sx)[:, None]
    o01 = (hb + y0 * h_sy + x1 * h_sx)[:, None]
    o10 = (hb + y1 * h_sy + x0 * h_sx)[:, None]
    o11 = (hb + y1 * h_sy + x1 * h_sx)[:, None]
    w00 = (wy0 * wx0)[:, None]
    w01 = (wy0 * wx1)[:, None]
    w10 = (wy1 * wx0)[:, None]
    w11 = (wy1 * wx1)[:, None]
    out_row = (p * (L * C) + l * C)[:, None]
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = (c < C)[None, :]
        coff = (c * h_sc)[None, :]
        acc = w00 * tl.load(h_ptr + (o00 + coff), mask=m00 & cmask, other=0.0).to(tl.float32)
        acc += w01 * tl.load(h_ptr + (o01 + coff), mask=m01 & cmask, other=0.0).to(tl.float32)
        acc += w10 * tl.load(h_ptr + (o10 + coff), mask=m10 & cmask, other=0.0).to(tl.float32)
        acc += w11 * tl.load(h_ptr + (o11 + coff), mask=m11 & cmask, other=0.0).to(tl.float32)
        tl.store(
            out_ptr + (out_row + c[None, :]), acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & cmask
        )


def _warp_concat_bwd_kernel(
    h_ptr,
    flow_ptr,
    gout_ptr,
    gh_ptr,
    gflow_ptr,
    n_pix,
    H,
    W,
    C,
    L,
    h_sb,
    h_sc,
    h_sy,
    h_sx,
    f_sb,
    f_sc,
    f_sy,
    f_sx,
    SIGN: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    WIDE: tl.constexpr,
):
    """Grid (cdiv(B*H*W, BLOCK_P), L).

    gout: (B*H*W, L*C) contiguous; gh: (B, H, W, C) float32 contiguous, zero-filled,
    accumulated with atomics; gflow: (B, 2L, H, W) float32 contiguous, written once.
    """
    pid = tl.program_id(0)
    l = tl.program_id(1)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < n_pix
    if WIDE:
        p = p.to(tl.int64)
    x = p % W
    t = p // W
    y = t % H
    b = t // H
    f_off = b * f_sb + y * f_sy + x * f_sx
    u = tl.load(flow_ptr + f_off + (2 * l) * f_sc, mask=pmask, other=0.0).to(tl.float32)
    v = tl.load(flow_ptr + f_off + (2 * l + 1) * f_sc, mask=pmask, other=0.0).to(tl.float32)
    sx = tl.minimum(tl.maximum(x.to(tl.float32) + SIGN * u, -2.0), W + 1.0)
    sy = tl.minimum(tl.maximum(y.to(tl.float32) + SIGN * v, -2.0), H + 1.0)
    x0f = tl.floor(sx)
    y0f = tl.floor(sy)
    wx1 = sx - x0f
    wy1 = sy - y0f
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    if WIDE:
        x0 = x0.to(tl.int64)
        y0 = y0.to(tl.int64)
    x1 = x0 + 1
    y1 = y0 + 1
    in_x0 = (x0 >= 0) & (x0 < W)
    in_x1 = (x1 >= 0) & (x1 < W)
    in_y0 = (y0 >= 0) & (y0 < H)
    in_y1 = (y1 >= 0) & (y1 < H)
    m00 = (pmask & in_y0 & in_x0)[:, None]
    m01 = (pmask & in_y0 & in_x1)[:, None]
    m10 = (pmask & in_y1 & in_x0)[:, None]
    m11 = (pmask & in_y1 & in_x1)[:, None]
    hb = b * h_sb
    o00 = (hb + y0 * h_sy + x0 * h_sx)[:, None]
    o01 = (hb + y0 * h_sy + x1 * h_sx)[:, None]
    o10 = (hb + y1 * h_sy + x0 * h_sx)[:, None]
    o11 = (hb + y1 * h_sy + x1 * h_sx)[:, None]
    # float32 NHWC gradient buffer: element (b, m, n, c) at ((b*H + m)*W + n)*C + c
    gb = b * H
    g00 = (((gb + y0) * W + x0) * C)[:, None]
    g01 = (((gb + y0) * W + x1) * C)[:, None]
    g10 = (((gb + y1) * W + x0) * C)[:, None]
    g11 = (((gb + y1) * W + x1) * C)[:, None]
    gout_row = (p * (L * C) + l * C)[:, None]
    d_sx = tl.zeros([BLOCK_P], dtype=tl.float32)
    d_sy = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        cmask = (c < C)[None, :]
        coff = (c * h_sc)[None, :]
        cc = c[None, :]
        g = tl.load(gout_ptr + (gout_row + cc), mask=pmask[:, None] & cmask, other=0.0).to(tl.float32)
        v00 = tl.load(h_ptr + (o00 + coff), mask=m00 & cmask, other=0.0).to(tl.float32)
        v01 = tl.load(h_ptr + (o01 + coff), mask=m01 & cmask, other=0.0).to(tl.float32)
        v10 = tl.load(h_ptr + (o10 + coff), mask=m10 & cmask, other=0.0).to(tl.float32)
        v11 = tl.load(h_ptr + (o11 + coff), mask=m11 & cmask, other=0.0).to(tl.float32)
        # d out / d sx = wy0 (v01 - v00) + wy1 (v11 - v10); d out / d sy likewise in x
        d_sx += tl.sum(g * (wy0[:, None] * (v01 - v00) + wy1[:, None] * (v11 - v10)), axis=1)
        d_sy += tl.sum(g * (wx0[:, None] * (v10 - v00) + wx1[:, None] * (v11 - v01)), axis=1)
        tl.atomic_add(gh_ptr + (g00 + cc), g * (wy0 * wx0)[:, None], mask=m00 & cmask, sem="relaxed")
        tl.atomic_add(gh_ptr + (g01 + cc), g * (wy0 * wx1)[:, None], mask=m01 & cmask, sem="relaxed")
        tl.atomic_add(gh_ptr + (g10 + cc), g * (wy1 * wx0)[:, None], mask=m10 & cmask, sem="relaxed")
        tl.atomic_add(gh_ptr + (g11 + cc), g * (wy1 * wx1)[:, None], mask=m11 & cmask, sem="relaxed")
    # d sx / d U = SIGN; the clamp's derivative is 0 where it acts, and there every corner
    # is outside (v = 0), so d_sx is already 0.
    gf = b * (2 * L * H * W) + y * W + x
    tl.store(gflow_ptr + gf + (2 * l) * (H * W), SIGN * d_sx, mask=pmask)
    tl.store(gflow_ptr + gf + (2 * l + 1) * (H * W), SIGN * d_sy, mask=pmask)


#: (BLOCK_P, BLOCK_C, num_warps) of the forward and backward kernels, chosen so that
#: ptxas reports no register spills for sm_90 (see ``trajgru.kernels.compile_check``)
FWD_CONFIG = (64, 32, 4)
BWD_CONFIG = (32, 32, 4)


def _block_c(channels: int, max_block: int) -> int:
    return max(4, min(next_pow2(channels), max_block))


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """True if some element offset may not fit in int32."""
    return any(
        t.numel() > _INT32_MAX or max(t.stride(), default=0) * max(t.shape, default=0) > _INT32_MAX
        for t in tensors
    )


def _check(h: torch.Tensor, flows: torch.Tensor) -> int:
    if h.dim() != 4 or flows.dim() != 4 or flows.shape[1] % 2:
        raise ValueError(
            f"expected h (B,C,H,W) and flows (B,2L,H,W); got {tuple(h.shape)}, {tuple(flows.shape)}"
        )
    if h.shape[0] != flows.shape[0] or h.shape[-2:] != flows.shape[-2:]:
        raise ValueError(f"h {tuple(h.shape)} and flows {tuple(flows.shape)} must share B, H, W")
    return flows.shape[1] // 2


def warp_concat_fwd(h: torch.Tensor, flows: torch.Tensor, negate: bool) -> torch.Tensor:
    """Forward kernel launch: (B, H, W, L*C) contiguous, dtype of ``h``."""
    n_flows = _check(h, flows)
    batch, channels, height, width = h.shape
    out = torch.empty(batch, height, width, n_flows * channels, device=h.device, dtype=h.dtype)
    n_pix = batch * height * width
    block_p, block_c, warps = FWD_CONFIG
    grid = (-(-n_pix // block_p), n_flows)
    jit(_warp_concat_fwd_kernel, _GENERIC)[grid](
        h,
        flows,
        out,
        n_pix,
        height,
        width,
        channels,
        n_flows,
        *h.stride(),
        *flows.stride(),
        SIGN=-1.0 if negate else 1.0,
        BLOCK_P=block_p,
        BLOCK_C=_block_c(channels, block_c),
        WIDE=_needs_int64(h, flows, out),
        num_warps=warps,
    )
    return out


def warp_concat_bwd(h, flows, grad_out, negate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward kernel launch: (grad_h float32 (B,H,W,C), grad_flows float32 (B,2L,H,W))."""
    n_flows = _check(h, flows)
    batch, channels, height, width = h.shape
    grad_out = grad_out.contiguous()
    grad_h = torch.zeros(batch, height, width, channels, device=h.device, dtype=torch.float32)
    grad_flows = torch.empty(batch, 2 * n_flows, height, width, device=h.device, dtype=torch.float32)
    n_pix = batch * height * width
    block_p, block_c, warps = BWD_CONFIG
    grid = (-(-n_pix // block_p), n_flows)
    jit(_warp_concat_bwd_kernel, _GENERIC)[grid](
        h,
        flows,
        grad_out,
        grad_h,
        grad_flows,
        n_pix,
        height,
        width,
        channels,
        n_flows,
        *h.stride(),
        *flows.stride(),
        SIGN=-1.0 if negate else 1.0,
        BLOCK_P=block_p,
        BLOCK_C=_block_c(channels, block_c),
        WIDE=_needs_int64(h, flows, grad_out, grad_h, grad_flows),
        num_warps=warps,
    )
    return grad_h, grad_flows


class _WarpConcat(torch.autograd.Function):
    """Autograd wrapper of the two kernels (see module doc)."""

    @staticmethod
    def forward(ctx, h, flows, negate):
        ctx.save_for_backward(h, flows)
        ctx.negate = negate
        return warp_concat_fwd(h, flows, negate)

    @staticmethod
    def backward(ctx, grad_out):
        h, flows = ctx.saved_tensors
        grad_h32, grad_flows32 = warp_concat_bwd(h, flows, grad_out, ctx.negate)
        grad_h = grad_h32.permute(0, 3, 1, 2).to(h.dtype) if ctx.needs_input_grad[0] else None
        grad_flows = grad_flows32.to(flows.dtype) if ctx.needs_input_grad[1] else None
        return grad_h, grad_flows, None


def warp_concat_triton(h: torch.Tensor, flows: torch.Tensor, negate: bool = True) -> torch.Tensor:
    """Warp ``h`` by each of L flows and concatenate flow-major, with the Triton kernels.

    Parameters
    ----------
    h : (B, C, H, W) float tensor (bf16, fp16, fp32; any strides, channels-last best)
    flows : (B, 2L, H, W) float tensor, pixels; channels (2l, 2l+1) are (U_l, V_l)
    negate : sample at ``(i - V, j - U)`` (TrajGRU's ``-flow``) instead of ``(i + V, j + U)``

    Returns
    -------
    (B, H, W, L*C) contiguous tensor of ``h.dtype``; channel ``l*C + c`` is channel ``c``
    of ``h`` warped by flow ``l``. Differentiable in ``h`` and ``flows``.
    """
    return _WarpConcat.apply(h, flows, bool(negate))


def warp_concat_torch(h: torch.Tensor, flows: torch.Tensor, negate: bool = True) -> torch.Tensor:
    """Portable reference of :func:`warp_concat_triton` (same contract), on ``grid_sample``."""
    _check(h, flows)
    warped = warp_stack(h, flows.unflatten(1, (-1, 2)), negate=negate)  # (B, C, L, H, W)
    return warped.permute(0, 3, 4, 2, 1).flatten(3)  # (B, H, W, L*C), copy made by flatten


def warp_concat(
    h: torch.Tensor, flows: torch.Tensor, negate: bool = True, backend: str = "auto"
) -> torch.Tensor:
    """:func:`warp_concat_triton` where :func:`trajgru.kernels.use_triton` allows, else the portable twin."""
    if use_triton(backend, h, flows):
        return warp_concat_triton(h, flows, negate)
    return warp_concat_torch(h, flows, negate)
