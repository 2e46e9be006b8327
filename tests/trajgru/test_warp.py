"""trajgru.warp against a naive loop over the defining formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trajgru import warp as warp_mod
from trajgru.warp import clear_grid_cache, sampling_grid, warp, warp_stack


def naive_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """out[b,c,i,j] = sum_{m,n} x[b,c,m,n] max(0,1-|i+V-m|) max(0,1-|j+U-n|), literally."""
    b_sz, c_sz, h_sz, w_sz = x.shape
    x64, f64 = x.double(), flow.double()
    out = torch.zeros(b_sz, c_sz, h_sz, w_sz, dtype=torch.float64)
    ms = torch.arange(h_sz, dtype=torch.float64)
    ns = torch.arange(w_sz, dtype=torch.float64)
    for b in range(b_sz):
        for i in range(h_sz):
            for j in range(w_sz):
                y = i + f64[b, 1, i, j]
                xx = j + f64[b, 0, i, j]
                wy = (1 - (y - ms).abs()).clamp(min=0)  # (H,) weight of row m
                wx = (1 - (xx - ns).abs()).clamp(min=0)  # (W,) weight of column n
                weights = wy[:, None] * wx[None, :]
                out[b, :, i, j] = (x64[b] * weights).sum(dim=(1, 2))
    return out


def popular_port_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """The popular PyTorch port: grid normalised by (size - 1), default align_corners=False."""
    b, _, h, w = x.shape
    xx = torch.arange(w).view(1, -1).repeat(h, 1).view(1, 1, h, w).repeat(b, 1, 1, 1)
    yy = torch.arange(h).view(-1, 1).repeat(1, w).view(1, 1, h, w).repeat(b, 1, 1, 1)
    grid = torch.cat((xx, yy), 1).float() + flow
    gx = 2.0 * grid[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * grid[:, 1] / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(x, grid, align_corners=False)  # the default the port relies on


def random_flow(b, h, w, scale, generator):
    """Fractional flows, a good share pointing outside the image."""
    return (torch.rand(b, 2, h, w, generator=generator) * 2 - 1) * scale


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 5, 5), (1, 1, 2, 6)])
@pytest.mark.parametrize("flow_scale", [0.7, 3.0, 12.0])
def test_warp_matches_naive_formula(shape, flow_scale, gen):
    b, c, h, w = shape
    x = torch.randn(b, c, h, w, generator=gen)
    flow = random_flow(b, h, w, flow_scale, gen)
    expected = naive_warp(x, flow)
    got = warp(x, flow)
    assert got.dtype == torch.float32 and got.shape == x.shape
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_hand_computed_values():
    """A 2x3 image shifted by hand-picked flows (values worked out on paper)."""
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]])
    flow = torch.zeros(1, 2, 2, 3)
    flow[0, 0, 0, 0] = 0.5  # (0,0) samples at row 0, col 0.5 -> (1+2)/2
    flow[0, 1, 1, 2] = -0.25  # (1,2) samples at row 0.75, col 2 -> 0.25*3 + 0.75*6
    flow[0, 0, 0, 2] = 1.0  # (0,2) samples at col 3, outside -> 0
    flow[0, 0, 1, 0] = -0.5  # (1,0) samples at col -0.5: half of pixel (1,0) -> 2
    expected = torch.tensor([[[[1.5, 2.0, 0.0], [2.0, 5.0, 5.25]]]])
    torch.testing.assert_close(warp(x, flow), expected)


def test_zero_flow_is_identity(gen):
    x = torch.randn(2, 4, 6, 8, generator=gen)
    torch.testing.assert_close(warp(x, torch.zeros(2, 2, 6, 8)), x)


def test_integer_shift_moves_content(gen):
    x = torch.randn(1, 1, 5, 6, generator=gen)
    flow = torch.zeros(1, 2, 5, 6)
    flow[:, 0] = 1.0  # U = +1: out[i, j] = x[i, j + 1]
    flow[:, 1] = -2.0  # V = -2: out[i, j] = x[i - 2, j + 1]
    out = warp(x, flow)
    torch.testing.assert_close(out[0, 0, 2:, :-1], x[0, 0, :-2, 1:])
    assert out[0, 0, :2].abs().max() == 0 and out[0, 0, :, -1].abs().max() == 0


def test_popular_port_align_corners_bug_fails_the_reference(gen):
    """The port's align_corners=False shifts samples: it must fail the test ours passes."""
    x = torch.randn(2, 3, 8, 10, generator=gen)
    flow = random_flow(2, 8, 10, 2.0, gen)
    expected = naive_warp(x, flow)
    err_ours = (warp(x, flow).double() - expected).abs().max().item()
    err_port = (popular_port_warp(x, flow).double() - expected).abs().max().item()
    assert err_ours < 1e-5
    assert err_port > 0.1
    # Even with zero flow the port is not the identity.
    zero = torch.zeros(2, 2, 8, 10)
    assert (popular_port_warp(x, zero) - x).abs().max() > 0.1


def test_gradcheck_x_and_flow(gen):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=gen).requires_grad_()
    # Keep samples away from integer positions, where bilinear weights have kinks.
    flow = (torch.rand(1, 2, 4, 5, dtype=torch.float64, generator=gen) * 0.8 + 0.1) * 2.0
    flow = (flow * torch.tensor([1.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)).requires_grad_()
    assert warp(x, flow).dtype == torch.float64
    assert torch.autograd.gradcheck(warp, (x, flow), eps=1e-6, atol=1e-5)
    flows = torch.stack((flow, 0.5 * flow.detach() + 0.3), dim=1).detach().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, f: warp_stack(a, f, negate=True), (x, flows), eps=1e-6, atol=1e-5
    )


def test_gradient_against_finite_differences_of_naive(gen):
    """d out / d flow of the public warp equals a central difference of the naive formula."""
    x = torch.randn(1, 1, 4, 4, generator=gen)
    flow = torch.full((1, 2, 4, 4), 0.3)
    flow[:, 1] = -0.45
    flow.requires_grad_()
    warp(x, flow).sum().backward()
    eps = 1e-4
    fd = torch.zeros_like(flow, dtype=torch.float64)
    for idx in [(0, 0, 1, 1), (0, 1, 2, 3), (0, 0, 3, 0)]:
        fp, fm = flow.detach().clone(), flow.detach().clone()
        fp[idx] += eps
        fm[idx] -= eps
        fd[idx] = (naive_warp(x, fp).sum() - naive_warp(x, fm).sum()) / (2 * eps)
        assert abs(flow.grad[idx].item() - fd[idx].item()) < 2e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype, gen):
    x = torch.randn(2, 3, 30, 40, generator=gen)
    flow = random_flow(2, 30, 40, 5.0, gen)
    out = warp(x.to(dtype), flow.to(dtype))
    assert out.dtype == dtype
    expected = naive_warp(x.to(dtype).float(), flow.to(dtype).float())
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(out.double(), expected, atol=tol * 4, rtol=tol)


def test_low_precision_grid_is_accurate_at_480_pixels():
    """A bf16 grid cannot address column 470.5; ours samples in float32."""
    x = torch.arange(480.0).view(1, 1, 1, 480).expand(1, 1, 2, 480).contiguous()
    flow = torch.zeros(1, 2, 2, 480)
    flow[:, 0] = 0.5
    out = warp(x.to(torch.bfloat16), flow.to(torch.bfloat16)).float()
    # expected j + 0.5 except the last column (half outside): bf16 output rounding only.
    torch.testing.assert_close(out[0, 0, 0, :-1], torch.arange(479.0) + 0.5, atol=2.0, rtol=4e-3)
    exact = warp(x, flow)
    torch.testing.assert_close(exact[0, 0, 0, :-1], torch.arange(479.0) + 0.5)


def test_warp_stack_equals_per_flow_loop(gen):
    x = torch.randn(2, 3, 6, 7, generator=gen)
    flows = (torch.rand(2, 4, 2, 6, 7, generator=gen) * 2 - 1) * 4
    for negate in (False, True):
        sign = -1.0 if negate else 1.0
        got = warp_stack(x, flows, negate=negate)
        loop = torch.stack([warp(x, sign * flows[:, l]) for l in range(4)], dim=2)
        assert got.shape == (2, 3, 4, 6, 7)
        torch.testing.assert_close(got, loop, atol=1e-6, rtol=1e-6)


def test_warp_stack_gradients_equal_loop(gen):
    x = torch.randn(1, 2, 5, 5, generator=gen)
    flows = (torch.rand(1, 3, 2, 5, 5, generator=gen) * 2 - 1) * 2
    w = torch.randn(1, 2, 3, 5, 5, generator=gen)
    grads = []
    for batched in (True, False):
        xr, fr = x.clone().requires_grad_(), flows.clone().requires_grad_()
        if batched:
            out = warp_stack(xr, fr, negate=True)
        else:
            out = torch.stack([warp(xr, -fr[:, l]) for l in range(3)], dim=2)
        (out * w).sum().backward()
        grads.append((xr.grad, fr.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_base_grid_cached_and_reused():
    clear_grid_cache()
    flow = torch.zeros(1, 2, 5, 6)
    sampling_grid(flow)
    base1 = warp_mod._GRID_CACHE[(5, 6, flow.device, torch.float32)][0]
    sampling_grid(flow + 1)
    assert warp_mod._GRID_CACHE[(5, 6, flow.device, torch.float32)][0] is base1
    assert len(warp_mod._GRID_CACHE) == 1


def test_cache_built_in_inference_mode_is_usable_with_autograd():
    clear_grid_cache()
    with torch.inference_mode():
        warp(torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 4, 4))
    flow = torch.zeros(1, 2, 4, 4, requires_grad=True)
    warp(torch.randn(1, 1, 4, 4), flow).sum().backward()
    assert flow.grad is not None


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="flow"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="share"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="2x2"):
        warp(torch.zeros(1, 1, 1, 4), torch.zeros(1, 2, 1, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(gen):
    x = torch.randn(2, 3, 16, 20, generator=gen)
    flow = random_flow(2, 16, 20, 4.0, gen)
    expected = warp(x, flow)
    got = warp(x.cuda(), flow.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-5, rtol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got_bf16 = warp(x.cuda().bfloat16(), flow.cuda())
    torch.testing.assert_close(got_bf16.float().cpu(), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("size", [(480, 480), (7, 9)])
def test_float64_zero_flow_is_exact(size, gen):
    """The float64 path builds its base grid in float64, so zero flow is
    the identity to float64 rounding (a float32 grid cast to float64 was off by ~7e-5 at 480)."""
    clear_grid_cache()
    h, w = size
    x = torch.randn(1, 2, h, w, dtype=torch.float64, generator=gen)
    warp(x.float(), torch.zeros(1, 2, h, w))  # a float32 grid cached first must not leak in
    out = warp(x, torch.zeros(1, 2, h, w, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert (out - x).abs().max().item() < 1e-12
    base, scale = warp_mod._base_grid(h, w, x.device, torch.float64)
    assert base.dtype == scale.dtype == torch.float64
    cols = torch.arange(w, dtype=torch.float64)
    assert (base[0, :, 0] - (2 * cols / (w - 1) - 1)).abs().max().item() < 1e-15


def test_export_does_not_poison_the_grid_cache():
    """A torch.export trace in a fresh process used to cache its fake base grid, which then
    broke every later eager call and export ("fake tensor in the constants list")."""

    class Warp(torch.nn.Module):
        def forward(self, x, flow):
            return warp(x, flow)

    clear_grid_cache()
    x, flow = torch.randn(1, 2, 5, 6), torch.rand(1, 2, 5, 6)
    torch.export.export(Warp(), (x, flow))
    assert not warp_mod._GRID_CACHE or all(
        type(t) is torch.Tensor for pair in warp_mod._GRID_CACHE.values() for t in pair
    )
    torch.testing.assert_close(warp(x, flow), naive_warp(x, flow).float(), atol=1e-5, rtol=1e-5)
    ep = torch.export.export(Warp(), (x, flow))
    torch.testing.assert_close(ep.module()(x, flow), warp(x, flow))
