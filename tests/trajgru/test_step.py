"""trajgru.step.TrainStep: the one training step, checked against a hand-written optimizer step; the
captured path (CUDA only) against the plain one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from trajgru import build_model
from trajgru.fast import enable_fast_path, fused_adam
from trajgru.losses import BalancedLoss
from trajgru.step import NonFiniteLoss, TrainStep

HAS_CUDA = torch.cuda.is_available()


def _mse(pred, truth):
    return F.mse_loss(pred, truth)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("tiny", "convgru", height=16, width=16, in_len=2, out_len=2)


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(4, 2, 1, 16, 16, generator=gen)
    return x[:2], x[2:], torch.ones_like(x[2:])


def test_plain_step_equals_a_hand_written_adam_step_with_clipping():
    """Loss, gradient norm and the weights after the step equal zero_grad/backward/clip/step by hand."""
    m1 = _model()
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.Adam(m1.parameters(), lr=1e-3, betas=(0.5, 0.999))
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-3, betas=(0.5, 0.999))
    inputs, truth, mask = _batch()
    loss_fn = BalancedLoss()
    loss, norm = TrainStep(m1, o1, loss_fn, clip_norm=0.01)(inputs, truth, mask, step=1)
    o2.zero_grad()
    ref = loss_fn(m2(inputs), truth, mask)
    ref.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(m2.parameters(), 0.01)
    o2.step()
    assert loss == pytest.approx(float(ref), rel=1e-6)
    assert norm == pytest.approx(float(ref_norm), rel=1e-6) and norm > 0.01  # so clipping was active
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2)


@pytest.mark.parametrize("where", ["input", "truth"])
def test_non_finite_loss_raises_before_the_update(where):
    """A NaN input or an inf truth: NonFiniteLoss with the step number; weights, optimizer state and
    gradients stay as they were."""
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs, truth, mask = _batch()
    if where == "input":
        inputs[0, 0, 0, 3, 3] = float("nan")
    else:
        truth[1, 1, 0, 2, 2] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLoss, match="at step 7") as info:
        TrainStep(model, opt, BalancedLoss(), clip_norm=50.0)(inputs, truth, mask, step=7)
    assert info.value.step == 7 and not math.isfinite(info.value.loss)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters()) and not opt.state


def test_reduce_fn_sees_loss_and_norm_and_its_mean_is_returned():
    """The cross-rank hook gets (loss, grad norm) and the step returns what it hands back."""
    seen = []

    def halve(stats):
        seen.append(stats.clone())
        return stats / 2

    model = _model()
    loss, norm = TrainStep(
        model, torch.optim.Adam(model.parameters()), _mse, clip_norm=50.0, reduce_fn=halve
    )(*_batch()[:2])
    assert len(seen) == 1 and seen[0].shape == (2,)
    assert (loss, norm) == pytest.approx((float(seen[0][0]) / 2, float(seen[0][1]) / 2))


def test_captured_path_falls_back_with_a_reason_on_the_cpu():
    """Asked for a CUDA graph on CPU tensors, the step says why not and trains on the plain path."""
    model = _model()
    opt = fused_adam(model.parameters(), lr=1e-3)
    step = TrainStep(model, opt, _mse, clip_norm=50.0, capture_example=_batch()[:2])
    assert not step.graphed
    assert step.fallback_reason in ("CUDA is not available", "tensors are not on a CUDA device")
    before = [p.detach().clone() for p in model.parameters()]
    step(*_batch()[:2], step=1)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert TrainStep(model, opt, _mse, clip_norm=50.0).fallback_reason == "no CUDA graph requested"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("fast", [False, True])
def test_captured_step_matches_the_plain_step_on_gpu(fast):
    """Graph replay == plain steps (fp32, so the comparison is tight), incl. clipping, an lr change
    through a scheduler between replays, and a refused non-finite step."""
    torch.backends.cudnn.deterministic = True
    m1 = _model().cuda()
    if fast:
        enable_fast_path(m1)
    m2 = copy.deepcopy(m1)
    o1, o2 = fused_adam(m1.parameters(), 1e-3, (0.5, 0.999)), fused_adam(m2.parameters(), 1e-3, (0.5, 0.999))
    s1 = torch.optim.lr_scheduler.StepLR(o1, 2, 0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, 2, 0.5)
    batches = [tuple(t.cuda() for t in _batch(seed)[:2]) for seed in range(4)]
    graphed = TrainStep(m1, o1, _mse, clip_norm=0.05, capture_example=batches[0])
    plain = TrainStep(m2, o2, _mse, clip_norm=0.05)
    assert graphed.graphed, graphed.fallback_reason
    for k, (x, y) in enumerate(batches):
        l1, n1 = graphed(x, y, step=k)
        l2, n2 = plain(x, y, step=k)
        assert (l1, n1) == pytest.approx((l2, n2), rel=1e-4, abs=1e-5)
        s1.step()
        s2.step()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-4, rtol=1e-3)
    before = [p.detach().clone() for p in m1.parameters()]
    with pytest.raises(NonFiniteLoss, match="at step 9"):
        graphed(batches[0][0], torch.full_like(batches[0][1], float("nan")), step=9)
    assert all(torch.equal(p, b) for p, b in zip(m1.parameters(), before))
