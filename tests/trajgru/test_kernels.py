"""The fast path's Triton kernels against independent slow references.

On a machine with CUDA the kernels run on the GPU. Without CUDA they run on the CPU
through Triton's interpreter (``TRITON_INTERPRET=1``, set here before the first launch;
the kernels are jitted lazily, see ``trajgru.kernels``). Without Triton the tests skip.

References (``trajgru.kernels.reference``): the defining formula of the warp written densely
(every output pixel against every input pixel with the bilinear hat weights) in float64,
whose autograd gradient is the formula's own gradient; and the GRU equations transcribed
from the paper in float64.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trajgru import kernels  # noqa: E402
from trajgru.cells import _gru_update  # noqa: E402

pytestmark = pytest.mark.skipif(
    not kernels.triton_available() or not (HAS_CUDA or kernels.interpreting()),
    reason="needs Triton (with CUDA, or TRITON_INTERPRET=1 on the CPU)",
)

from trajgru.kernels.reference import dense_warp_concat, gru_equations, kink_free_flows  # noqa: E402

if kernels.triton_available():
    from trajgru.kernels.gru_gates import gru_gates_triton
    from trajgru.kernels.warp_concat import warp_concat, warp_concat_torch, warp_concat_triton

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(7)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("negate", [True, False])
@pytest.mark.parametrize(
    "shape", [(2, 5, 6, 7, 3), (1, 70, 4, 5, 2)]
)  # (B, C, H, W, L); C=70: two channel blocks
def test_warp_concat_forward_matches_formula(shape, negate, channels_last, gen):
    b, c, h, w, n_flows = shape
    x = torch.randn(b, c, h, w, generator=gen)
    flows = (torch.rand(b, 2 * n_flows, h, w, generator=gen) * 2 - 1) * 3.0  # many samples outside
    expected = dense_warp_concat(x, flows, negate)
    x_d, f_d = x.to(DEVICE), flows.to(DEVICE)
    if channels_last:
        x_d, f_d = (
            x_d.contiguous(memory_format=torch.channels_last),
            f_d.contiguous(memory_format=torch.channels_last),
        )
    got = warp_concat_triton(x_d, f_d, negate)
    assert got.shape == (b, h, w, n_flows * c) and got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got.cpu().double(), expected, atol=1e-5, rtol=1e-5)
    # the portable twin agrees too
    torch.testing.assert_close(warp_concat_torch(x, flows, negate).double(), expected, atol=1e-5, rtol=1e-5)


def test_warp_concat_hand_values():
    """Hand-worked 2x3 example (as test_warp's), warped by -flow."""
    x = torch.tensor([[[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]], device=DEVICE)
    flow = torch.zeros(1, 2, 2, 3, device=DEVICE)
    flow[0, 0, 0, 0] = -0.5  # negated: (0,0) samples col 0.5 -> 1.5
    flow[0, 0, 0, 2] = -1.0  # col 3: outside -> 0
    flow[0, 1, 1, 2] = 0.25  # row 0.75, col 2 -> 5.25
    flow[0, 0, 1, 0] = 0.5  # col -0.5: half of pixel (1, 0) -> 2
    got = warp_concat_triton(x, flow, negate=True)[..., 0]
    torch.testing.assert_close(got.cpu(), torch.tensor([[[1.5, 2.0, 0.0], [2.0, 5.0, 5.25]]]))


def test_warp_concat_huge_and_zero_flows(gen):
    x = torch.randn(1, 3, 5, 6, generator=gen, device="cpu").to(DEVICE)
    flows = torch.zeros(1, 4, 5, 6, device=DEVICE)
    flows[:, 2:] = 1e9  # far outside: zeros, no invalid access
    got = warp_concat_triton(x, flows, negate=True)
    torch.testing.assert_close(got[..., :3].permute(0, 3, 1, 2), x)  # zero flow: identity
    assert got[..., 3:].abs().max() == 0


@pytest.mark.parametrize("negate", [True, False])
def test_warp_concat_gradients_match_formula(negate, gen):
    b, c, h, w, n_flows = 2, 3, 5, 6, 3
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    flows = kink_free_flows(b, n_flows, h, w, 2.5, gen)
    weight = torch.randn(b, h, w, n_flows * c, generator=gen, dtype=torch.float64)
    x_ref, f_ref = x.clone().requires_grad_(), flows.clone().requires_grad_()
    (dense_warp_concat(x_ref, f_ref, negate) * weight).sum().backward()

    x_d = x.float().to(DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    f_d = flows.float().to(DEVICE).requires_grad_()
    (warp_concat_triton(x_d, f_d, negate) * weight.float().to(DEVICE)).sum().backward()
    assert x_d.grad.dtype == torch.float32 and f_d.grad.shape == flows.shape
    torch.testing.assert_close(x_d.grad.cpu().double(), x_ref.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(f_d.grad.cpu().double(), f_ref.grad, atol=1e-4, rtol=1e-4)


def test_warp_concat_gradients_equal_portable_path(gen):
    """Same gradients as autograd through the portable (grid_sample) twin, in float32."""
    x = torch.randn(1, 4, 6, 5, generator=gen)
    flows = kink_free_flows(1, 2, 6, 5, 2.0, gen).float()
    weight = torch.randn(1, 6, 5, 8, generator=gen)
    grads = []
    for fn in (warp_concat_torch, warp_concat_triton):
        xr, fr = x.to(DEVICE).requires_grad_(), flows.to(DEVICE).requires_grad_()
        (fn(xr, fr, True) * weight.to(DEVICE)).sum().backward()
        grads.append((xr.grad.cpu(), fr.grad.cpu()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-4, rtol=1e-4)


def test_warp_concat_bf16(gen):
    """bf16 in and out; float32 inside: equal to the formula on the bf16-rounded inputs up to
    the output's own bf16 rounding."""
    x = torch.randn(2, 8, 12, 10, generator=gen).bfloat16()
    flows = ((torch.rand(2, 6, 12, 10, generator=gen) * 2 - 1) * 4).bfloat16()
    got = warp_concat_triton(
        x.to(DEVICE).contiguous(memory_format=torch.channels_last), flows.to(DEVICE), True
    )
    assert got.dtype == torch.bfloat16
    expected = dense_warp_concat(x.float(), flows.float(), True)
    torch.testing.assert_close(got.cpu().double(), expected, atol=2e-2, rtol=8e-3)
    xr = x.to(DEVICE).requires_grad_()
    fr = flows.to(DEVICE).requires_grad_()
    warp_concat_triton(xr, fr, True).float().sum().backward()
    assert xr.grad.dtype == fr.grad.dtype == torch.bfloat16


def test_dispatch_falls_back_on_cpu_without_interpreter(monkeypatch, gen):
    x = torch.randn(1, 2, 4, 4, generator=gen)
    flows = torch.zeros(1, 2, 4, 4)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kernels.use_triton("auto", x, flows)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.use_triton("triton", x, flows)
    torch.testing.assert_close(warp_concat(x, flows), x.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="backend"):
        kernels.use_triton("cuda", x)


def test_portable_warp_concat_gradcheck(gen):
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    flows = kink_free_flows(1, 2, 4, 5, 1.5, gen).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, f: warp_concat_torch(a, f, True), (x, flows), eps=1e-6, atol=1e-5
    )


# ---------------------------------------------------------------- GRU gates


@pytest.mark.parametrize("has_i2h", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gru_gates_forward_and_backward_match_equations(has_i2h, channels_last, gen):
    b, c, h, w = 2, 5, 6, 7
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    i2h = torch.randn(b, 3 * c, h, w, generator=gen, dtype=torch.float64) * 2 if has_i2h else None
    h2h = torch.randn(b, 3 * c, h, w, generator=gen, dtype=torch.float64) * 2
    h_prev = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    g_out = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)

    refs = [t.clone().requires_grad_() for t in (i2h, h2h, h_prev) if t is not None]
    ref_out = gru_equations(refs[0] if has_i2h else None, refs[-2], refs[-1], 0.2)
    ref_grads = torch.autograd.grad(ref_out, refs, g_out)

    devs = [
        t.float().to(DEVICE).contiguous(memory_format=fmt).requires_grad_()
        for t in (i2h, h2h, h_prev)
        if t is not None
    ]
    out = gru_gates_triton(devs[0] if has_i2h else None, devs[-2], devs[-1], 0.2)
    assert out.dtype == torch.float32 and out.stride() == devs[-1].stride()
    torch.testing.assert_close(out.cpu().double(), ref_out.detach(), atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out, devs, g_out.float().to(DEVICE))
    for got, exp in zip(grads, ref_grads):
        torch.testing.assert_close(got.cpu().double(), exp, atol=1e-5, rtol=1e-5)


def test_gru_gates_non_contiguous_slices_and_bf16(gen):
    """i2h / h2h as slices of one precomputed (S, B, 3C, H, W) tensor, bf16 in and out."""
    c = 3
    pre = torch.randn(4, 2, 3 * c, 5, 5, generator=gen).bfloat16().to(DEVICE)
    h2h = torch.randn(2, 3 * c, 5, 5, generator=gen).bfloat16().to(DEVICE)
    h_prev = torch.randn(2, c, 5, 5, generator=gen).bfloat16().to(DEVICE)
    i2h = pre.unbind(0)[2]
    out = gru_gates_triton(i2h, h2h, h_prev, 0.2)
    assert out.dtype == torch.bfloat16
    expected = gru_equations(i2h.double(), h2h.double(), h_prev.double(), 0.2)
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=1e-2)
    # the portable twin agrees on the same inputs
    torch.testing.assert_close(
        _gru_update(i2h.float(), h2h.float(), h_prev.float(), 0.2).double(), expected, atol=1e-5, rtol=1e-5
    )


def test_portable_gru_update_gradcheck(gen):
    args = [
        torch.randn(1, 6, 3, 3, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.randn(1, 6, 3, 3, generator=gen, dtype=torch.float64).requires_grad_(),
        torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64).requires_grad_(),
    ]
    assert torch.autograd.gradcheck(lambda a, b, h: _gru_update(a, b, h, 0.2), args)
    assert torch.autograd.gradcheck(lambda b, h: _gru_update(None, b, h, 0.2), args[1:])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_warp_concat_backward_is_repeatable_on_gpu(gen):
    """float32 atomics: the flow gradient is exact-repeatable, the h gradient to ~1e-6."""
    x = torch.randn(2, 64, 48, 48, generator=gen).cuda().contiguous(memory_format=torch.channels_last)
    flows = (torch.randn(2, 26, 48, 48, generator=gen) * 2).cuda()
    g = torch.randn(2, 48, 48, 13 * 64, generator=gen).cuda().bfloat16()
    runs = []
    for _ in range(2):
        xr, fr = x.bfloat16().requires_grad_(), flows.bfloat16().requires_grad_()
        warp_concat_triton(xr, fr, True).backward(g)
        runs.append((xr.grad.float(), fr.grad.float()))
    torch.testing.assert_close(runs[0][1], runs[1][1], atol=0, rtol=0)
    torch.testing.assert_close(runs[0][0], runs[1][0], atol=2e-2, rtol=2e-2)  # bf16 output of fp32 sums


@pytest.mark.slow  # ~20 s cold (Triton's disk cache makes reruns fast)
def test_kernels_compile_for_h100_without_register_spills():
    """Every kernel variant lowers to an sm_90 cubin on this (GPU-less) machine, specialised
    as at hko7 stage 0, and ptxas reports no register spills (see trajgru.kernels.compile_check)."""
    import subprocess
    import sys

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as exc:
        pytest.skip(f"Triton without its compiler backends: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-m", "trajgru.kernels.compile_check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=root,
    )
    out = proc.stdout + proc.stderr
    if "ptxas" in out and "No such file" in out:
        pytest.skip("Triton's ptxas is not installed")
    assert proc.returncode == 0, out[-4000:]
    assert "spilled" not in proc.stdout, proc.stdout
    assert proc.stdout.count("ok  ") == 16, proc.stdout


def test_int64_offset_variants_agree(monkeypatch, gen):
    """The WIDE (int64 offset) variants, used only for > 2**31-element tensors, compute the same."""
    from trajgru.kernels import gru_gates as gg
    from trajgru.kernels import warp_concat as wc

    x = torch.randn(2, 5, 6, 7, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)
    flows = ((torch.rand(2, 6, 6, 7, generator=gen) * 2 - 1) * 3).to(DEVICE)
    h2h = torch.randn(2, 15, 6, 7, generator=gen).to(DEVICE)
    results = []
    for wide in (False, True):
        monkeypatch.setattr(wc, "_needs_int64", lambda *t, w=wide: w)
        monkeypatch.setattr(gg, "_needs_int64", lambda *t, w=wide: w)
        xr, fr = x.clone().requires_grad_(), flows.clone().requires_grad_()
        out = warp_concat_triton(xr, fr, True)
        gates = gru_gates_triton(None, h2h, xr, 0.2)
        (out.square().sum() + gates.sum()).backward()
        results.append((out.detach(), gates.detach(), xr.grad, fr.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
