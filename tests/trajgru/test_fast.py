"""trajgru.fast: the fast path agrees with the plain path; the captured forecast equals the eager one.
Kernels run on CUDA where present, else through Triton's CPU interpreter."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trajgru import build_model, kernels  # noqa: E402
from trajgru.cells import TrajGRUCell, is_channels_last, stack_frames  # noqa: E402
from trajgru.fast import (  # noqa: E402
    CapturedForecaster,
    ParamSnapshot,
    disable_fast_path,
    enable_fast_path,
    fast_path_status,
    fused_adam,
)

needs_kernels = pytest.mark.skipif(
    not kernels.triton_available() or not (HAS_CUDA or kernels.interpreting()),
    reason="needs Triton (with CUDA, or TRITON_INTERPRET=1 on the CPU)",
)
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 comparisons must be fp32 on GPUs too: cuDNN convolutions default to TF32, which
    the plain path's 1x1 convolution would use and the fast path's cuBLAS GEMM would not."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def small_model(cell="trajgru", **kw):
    """tiny at 32x32, 2 -> 3 frames: feature maps 8x8 and 4x4 (interpreter-friendly)."""
    torch.manual_seed(0)
    m = build_model("tiny", cell, height=32, width=32, in_len=2, out_len=3, **kw)
    for c in m.recurrent_cells():
        if isinstance(c, TrajGRUCell):  # non-trivial warps
            with torch.no_grad():
                c.flow_out.weight.normal_(0, 0.05)
                c.flow_out.bias.uniform_(-1.5, 1.5)
    return m


def test_cpu_fast_path_is_channels_last_only():
    """On the CPU the fast path is portable: layout only, plain code, same state dict."""
    plain = small_model()
    fast = build_model("tiny", height=32, width=32, in_len=2, out_len=3, fast_path=True)
    fast.load_state_dict(plain.state_dict())
    status = fast_path_status(fast)
    assert status["enabled"] and status["channels_last"]
    assert not status["triton_kernels_active"]  # a CPU model: backend "auto" never uses Triton
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    x = torch.rand(2, 2, 1, 32, 32)
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    for k, v in fast.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k])


def test_stack_frames_keeps_channels_last():
    frames = [torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    seq = stack_frames(frames)
    assert torch.equal(seq, torch.stack(frames))
    assert is_channels_last(seq.flatten(0, 1)) and is_channels_last(seq.unbind(0)[1])
    plain = [f.contiguous() for f in frames]
    assert stack_frames(plain).is_contiguous()


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_alone_changes_nothing(channels_last):
    """backend='torch': layout only; the plain code must give the same numbers."""
    plain = small_model()
    fast = enable_fast_path(copy.deepcopy(plain), channels_last=channels_last, backend="torch")
    x = torch.rand(2, 2, 1, 32, 32)
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)
    sd_fast, sd_plain = fast.state_dict(), plain.state_dict()
    assert sd_fast.keys() == sd_plain.keys()
    assert all(torch.equal(sd_fast[k], sd_plain[k]) for k in sd_plain)
    disable_fast_path(fast)
    assert all(p.is_contiguous() for p in fast.parameters())


@needs_kernels
@pytest.mark.parametrize("cell", ["trajgru", "convgru"])
def test_fast_path_matches_plain_forward_and_gradients(cell):
    plain = small_model(cell).to(DEVICE)
    fast = enable_fast_path(
        copy.deepcopy(plain), channels_last=True, backend="triton" if not HAS_CUDA else "auto"
    )
    status = fast_path_status(fast)
    assert status["enabled"] and status["triton_kernels_active"] and status["channels_last"]
    x = torch.rand(2, 2, 1, 32, 32, device=DEVICE)
    y = torch.rand(3, 2, 1, 32, 32, device=DEVICE)
    outs = []
    for m in (plain, fast):
        m.zero_grad()
        out = m(x)
        F.mse_loss(out, y).backward()
        outs.append((out.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    for name, g in outs[0][1].items():
        torch.testing.assert_close(
            outs[1][1][name], g, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
        )


@needs_kernels
def test_fast_path_bf16_autocast_within_bf16_tolerance():
    if not HAS_CUDA:
        pytest.skip("bf16 autocast of convolutions: checked on the GPU")
    plain = small_model().cuda()
    fast = enable_fast_path(copy.deepcopy(plain))
    x = torch.rand(2, 2, 1, 32, 32, device="cuda")
    ref = plain(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = fast(x).float()
    torch.testing.assert_close(got, ref, atol=3e-2, rtol=3e-2)


def test_snapshot_restores_params_and_zeroes_fresh_optimizer_state():
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    params = list(m.parameters())
    before = [p.detach().clone() for p in params]
    snap = ParamSnapshot(params, opt)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    storages = [opt.state[p]["exp_avg"].data_ptr() for p in params]
    snap.restore()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    for p, ptr in zip(params, storages):
        st = opt.state[p]
        assert st["exp_avg"].data_ptr() == ptr  # restored in place: a captured graph still points at it
        assert st["exp_avg"].abs().max() == 0 and st["exp_avg_sq"].abs().max() == 0 and float(st["step"]) == 0


def test_fused_adam_found_inf_skips_the_update():
    """The device-side guard trajgru.step.TrainStep's captured path relies on (fused Adam's found_inf)."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    p.grad = torch.ones(4)
    opt.found_inf = torch.ones(())
    opt.step()
    assert torch.equal(p.detach(), torch.ones(4))
    assert opt.state[p]["exp_avg"].abs().max() == 0 and float(opt.state[p]["step"]) == 0
    opt.found_inf = torch.zeros(())
    opt.step()
    assert p.detach().max() < 1


def test_fused_adam_is_plain_adam_on_cpu():
    m = torch.nn.Linear(2, 2)
    opt = fused_adam(m.parameters(), lr=1e-3, betas=(0.5, 0.999))
    assert not opt.param_groups[0]["fused"] and opt.param_groups[0]["lr"] == 1e-3


def test_captured_forecaster_eager_fallback():
    m = small_model()
    x = torch.rand(2, 1, 1, 32, 32)
    fc = CapturedForecaster(m, x)
    assert not fc.graphed
    with torch.no_grad():
        torch.testing.assert_close(fc(x), m(x))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_captured_forecaster_matches_eager_on_gpu():
    m = enable_fast_path(small_model().cuda())
    x = torch.rand(2, 1, 1, 32, 32, device="cuda")
    fc = CapturedForecaster(m, x)
    assert fc.graphed, fc.fallback_reason
    x2 = torch.rand_like(x)
    got = fc(x2).clone()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = m(x2).float()
    torch.testing.assert_close(got, ref, atol=1e-2, rtol=1e-2)


@needs_kernels
def test_export_of_a_fast_path_model_traces_the_portable_code():
    """torch.export (mlflow's pt2 logging) sees the plain math, never a Triton launch."""
    plain = small_model().to(DEVICE)
    fast = enable_fast_path(copy.deepcopy(plain), backend="triton" if not HAS_CUDA else "auto").eval()
    x = torch.rand(2, 1, 1, 32, 32, device=DEVICE)
    ep = torch.export.export(fast, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), plain(x), atol=1e-5, rtol=1e-5)
