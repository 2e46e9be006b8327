"""Slow, literal references of the fast-path kernels, for tests and the GPU check script.

They share no code with the kernels or with the portable path: each is the defining formula
written out densely in float64, so autograd through it gives the formula's own gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dense_warp_concat", "gru_equations", "kink_free_flows"]


def dense_warp_concat(h: torch.Tensor, flows: torch.Tensor, negate: bool) -> torch.Tensor:
    """out[b,y,x,l*C+c] = sum_{m,n} h[b,c,m,n] relu(1-|y+sV_l-m|) relu(1-|x+sU_l-n|), float64.

    ``h`` (B, C, H, W), ``flows`` (B, 2L, H, W) with (U_l, V_l) = channels (2l, 2l+1),
    ``s = -1`` if ``negate``. Memory O(B*H*W*(H+W)) per flow: small maps only.
    """
    b_sz, c_sz, h_sz, w_sz = h.shape
    n_flows = flows.shape[1] // 2
    s = -1.0 if negate else 1.0
    h64, f64 = h.double(), flows.double()
    ys = torch.arange(h_sz, dtype=torch.float64, device=h.device)
    xs = torch.arange(w_sz, dtype=torch.float64, device=h.device)
    outs = []
    for l in range(n_flows):
        sy = ys.view(1, h_sz, 1) + s * f64[:, 2 * l + 1]  # (B, H, W)
        sx = xs.view(1, 1, w_sz) + s * f64[:, 2 * l]
        wy = (1 - (sy[..., None] - ys).abs()).clamp(min=0)  # (B, H, W, m)
        wx = (1 - (sx[..., None] - xs).abs()).clamp(min=0)  # (B, H, W, n)
        outs.append(torch.einsum("bcmn,byxm,byxn->byxc", h64, wy, wx))
    return torch.cat(outs, dim=-1)


def gru_equations(i2h: torch.Tensor | None, h2h: torch.Tensor, h: torch.Tensor, slope: float) -> torch.Tensor:
    """The HKO-7 GRU update, literally: r, u = sigmoid(.); h' = leaky(i2h_h + r h2h_h);
    u h + (1 - u) h'. ``i2h`` None means zeros."""
    c = h.shape[1]
    i2h = torch.zeros_like(h2h) if i2h is None else i2h
    r = torch.sigmoid(i2h[:, :c] + h2h[:, :c])
    u = torch.sigmoid(i2h[:, c : 2 * c] + h2h[:, c : 2 * c])
    cand = F.leaky_relu(i2h[:, 2 * c :] + r * h2h[:, 2 * c :], slope)
    return u * h + (1 - u) * cand


def kink_free_flows(b: int, n_flows: int, h: int, w: int, scale: float, gen: torch.Generator) -> torch.Tensor:
    """(B, 2L, H, W) float64 flows whose fractional parts stay in [0.05, 0.95], away from the
    integer positions where the bilinear hat is not differentiable."""
    f = (torch.rand(b, 2 * n_flows, h, w, generator=gen, dtype=torch.float64) * 2 - 1) * scale
    frac = f - f.floor()
    return f + (0.05 - frac).clamp(min=0) - (frac - 0.95).clamp(min=0)
