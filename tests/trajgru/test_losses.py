"""Balanced MSE/MAE against a naive per-pixel loop."""

import numpy as np
import pytest
import torch

from trajgru.losses import BalancedLoss, balanced_weights, lead_time_weights
from trajgru.units import pixel_to_rainfall


def weight_reference(pixel: float) -> float:
    """Bin by the rain rate in mm/h (not by pixel thresholds): an independent route."""
    rain = float(pixel_to_rainfall(pixel))
    if rain >= 30:
        return 30.0
    if rain >= 10:
        return 10.0
    if rain >= 5:
        return 5.0
    if rain >= 2:
        return 2.0
    return 1.0


def loss_reference(pred, truth, mask, mse_w, mae_w, scale, lead_w=None):
    """Triple loop over frames, pixels: sum per (t, b), then mean over (t, b)."""
    S, B, C, H, W = pred.shape
    sse_total = sae_total = 0.0
    for t in range(S):
        wt = 1.0 if lead_w is None else lead_w[t]
        for b in range(B):
            sse = sae = 0.0
            for c in range(C):
                for i in range(H):
                    for j in range(W):
                        w = weight_reference(truth[t, b, c, i, j]) * mask[t, b, c, i, j]
                        d = pred[t, b, c, i, j] - truth[t, b, c, i, j]
                        sse += w * d * d
                        sae += w * abs(d)
            sse_total += wt * sse
            sae_total += wt * sae
    n = S * B
    return scale * (mse_w * sse_total / n + mae_w * sae_total / n)


def random_case(seed=0, shape=(3, 2, 1, 5, 6)):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0, 1, shape)
    pred = np.clip(truth + rng.normal(0, 0.2, shape), 0, 1)
    mask = (rng.uniform(size=shape) > 0.25).astype(np.float64)
    return pred, truth, mask


def test_balanced_weights_hand_values():
    # pixel thresholds: 2 mm/h = 0.462426, 5 = 0.551110, 10 = 0.618197, 30 = 0.724527
    pixel = np.array([0.0, 0.3, 0.46, 0.47, 0.55, 0.56, 0.61, 0.62, 0.72, 0.73, 1.0])
    expect = np.array([1, 1, 1, 2, 2, 5, 5, 10, 10, 30, 30], dtype=np.float32)
    np.testing.assert_array_equal(balanced_weights(pixel), expect)
    out_t = balanced_weights(torch.tensor(pixel, dtype=torch.float32))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_array_equal(out_t.numpy(), expect)
    # shape kept, bf16 accepted
    out_bf = balanced_weights(torch.tensor(pixel).to(torch.bfloat16).reshape(1, 11, 1))
    assert out_bf.shape == (1, 11, 1) and out_bf.dtype == torch.float32


def test_balanced_weights_matches_reference_everywhere():
    pixel = np.linspace(0, 1, 1001)
    ref = np.array([weight_reference(p) for p in pixel], dtype=np.float32)
    np.testing.assert_array_equal(balanced_weights(pixel), ref)
    np.testing.assert_array_equal(balanced_weights(torch.from_numpy(pixel)).numpy(), ref)


@pytest.mark.parametrize("mse_w, mae_w, scale", [(1.0, 1.0, 1e-5), (0.3, 2.0, 1.0), (1.0, 0.0, 0.1)])
def test_loss_matches_naive_loop(mse_w, mae_w, scale):
    pred, truth, mask = random_case()
    ref = loss_reference(pred, truth, mask, mse_w, mae_w, scale)
    loss = BalancedLoss(mse_weight=mse_w, mae_weight=mae_w, scale=scale)(
        torch.from_numpy(pred), torch.from_numpy(truth), torch.from_numpy(mask)
    )
    assert loss.dim() == 0 and loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_loss_lead_time_weighting_matches_naive_loop():
    pred, truth, mask = random_case(seed=1, shape=(4, 2, 1, 4, 5))
    # 1 + t * (5 - 1) / (4 - 1)
    lead_w = [1.0, 1 + 4 / 3, 1 + 8 / 3, 5.0]
    ref = loss_reference(pred, truth, mask, 1.0, 1.0, 1.0, lead_w)
    loss = BalancedLoss(scale=1.0, lead_time_weighting=True)(
        torch.from_numpy(pred), torch.from_numpy(truth), torch.from_numpy(mask)
    )
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    ref3 = loss_reference(pred, truth, mask, 1.0, 1.0, 1.0, [1.0, 5 / 3, 7 / 3, 3.0])
    loss3 = BalancedLoss(scale=1.0, lead_time_weighting=True, lead_time_weight_max=3.0)(
        torch.from_numpy(pred), torch.from_numpy(truth), torch.from_numpy(mask)
    )
    assert loss3.item() == pytest.approx(ref3, rel=1e-5)


def test_lead_time_weights_values():
    assert lead_time_weights(5).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert lead_time_weights(1).tolist() == [1.0]
    assert lead_time_weights(3, 2.0).tolist() == [1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="weight_max must be >= 1"):
        lead_time_weights(3, 0.5)


def test_error_only_in_last_frame_weighs_more_with_lead_weighting():
    truth = torch.zeros(5, 1, 1, 4, 4)
    pred = truth.clone()
    pred[-1] = 0.1
    plain = BalancedLoss(scale=1.0)(pred, truth)
    weighted = BalancedLoss(scale=1.0, lead_time_weighting=True)(pred, truth)
    assert weighted.item() == pytest.approx(5.0 * plain.item(), rel=1e-6)
    # one frame of 16 pixels, error 0.1, weight 1: (16 * 0.01 + 16 * 0.1) / 5 frames
    assert plain.item() == pytest.approx((0.16 + 1.6) / 5, rel=1e-6)


def test_mask_none_equals_all_ones_and_mask_zero_gives_zero():
    pred, truth, _ = random_case(seed=2)
    p, t = torch.from_numpy(pred), torch.from_numpy(truth)
    loss = BalancedLoss()
    assert loss(p, t).item() == pytest.approx(loss(p, t, torch.ones_like(t)).item(), rel=1e-7)
    assert loss(p, t, torch.ones_like(t, dtype=torch.bool)).item() == pytest.approx(
        loss(p, t).item(), rel=1e-7
    )
    assert loss(p, t, torch.zeros_like(t)).item() == 0.0


def test_gradient_matches_hand_derivative():
    pred, truth, mask = random_case(seed=3, shape=(2, 2, 1, 3, 3))
    p = torch.tensor(pred, dtype=torch.float32, requires_grad=True)
    t = torch.tensor(truth, dtype=torch.float32)
    m = torch.tensor(mask, dtype=torch.float32)
    BalancedLoss(mse_weight=0.7, mae_weight=1.3, scale=0.5)(p, t, m).backward()
    w = balanced_weights(truth) * mask
    d = pred - truth
    expect = 0.5 * (0.7 * 2 * w * d + 1.3 * w * np.sign(d)) / (2 * 2)
    np.testing.assert_allclose(p.grad.numpy(), expect, rtol=1e-5, atol=1e-8)


def test_bf16_inputs_computed_in_float32():
    pred, truth, mask = random_case(seed=4, shape=(3, 2, 1, 8, 8))
    p16 = torch.tensor(pred).to(torch.bfloat16).requires_grad_(True)
    t16 = torch.tensor(truth).to(torch.bfloat16)
    m = torch.tensor(mask)
    loss = BalancedLoss(scale=1.0)(p16, t16, m)
    assert loss.dtype == torch.float32
    ref = loss_reference(
        p16.detach().float().numpy().astype(np.float64),
        t16.float().numpy().astype(np.float64),
        mask,
        1.0,
        1.0,
        1.0,
    )
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert p16.grad is not None and p16.grad.dtype == torch.bfloat16


def test_shape_errors():
    loss = BalancedLoss()
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, 1, 1, 4, 4), torch.zeros(2, 1, 1, 4, 5))
    with pytest.raises(ValueError, match="S, B, C, H, W"):
        loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4))
