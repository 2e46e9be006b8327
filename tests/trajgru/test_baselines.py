"""Persistence and optical-flow extrapolation."""

import numpy as np
import pytest
import torch

from trajgru.baselines import advect, estimate_flow, optical_flow, persistence


def blob(size, cy, cx, sigma=5.0, amp=0.8):
    y, x = np.mgrid[0:size, 0:size]
    return amp * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def moving_blob(size=96, shift=(1, 2), start=(36, 14), n=13, sigma=5.0):
    """(n, size, size) float32: a Gaussian blob moving by shift = (rows, cols) per frame."""
    return np.stack(
        [blob(size, start[0] + shift[0] * t, start[1] + shift[1] * t, sigma) for t in range(n)]
    ).astype(np.float32)


def centroid(frame):
    y, x = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]]
    m = frame.sum()
    return (frame * y).sum() / m, (frame * x).sum() / m


def as_inputs(frames):
    return torch.from_numpy(frames)[:, None, None]  # (S, 1, 1, H, W)


def test_persistence_repeats_last_frame():
    x = torch.rand(5, 3, 1, 8, 10, dtype=torch.float64)
    out = persistence(x, 7)
    assert out.shape == (7, 3, 1, 8, 10) and out.dtype == torch.float64
    for k in range(7):
        assert torch.equal(out[k], x[-1])
    out[0, 0, 0, 0, 0] = 9.0  # a new tensor, not a view of the input
    assert x[-1, 0, 0, 0, 0] != 9.0


@pytest.mark.parametrize("method", ["dis", "farneback"])
@pytest.mark.parametrize("shift", [(1, 2), (-2, 1)])
def test_optical_flow_moves_blob(method, shift):
    in_len, out_len = 5, 8
    frames = moving_blob(shift=shift, start=(40, 20) if shift[0] < 0 else (30, 14))
    out = optical_flow(as_inputs(frames[:in_len]), out_len, method=method)
    assert out.shape == (out_len, 1, 1, 96, 96)
    last = centroid(frames[in_len - 1])
    for k in range(1, out_len + 1):
        pred = out[k - 1, 0, 0].numpy()
        cy, cx = centroid(pred)
        assert cy == pytest.approx(last[0] + k * shift[0], abs=0.5), (k, cy)
        assert cx == pytest.approx(last[1] + k * shift[1], abs=0.5), (k, cx)
        truth = frames[in_len - 1 + k]
        err_flow = np.abs(pred - truth).mean()
        err_pers = np.abs(frames[in_len - 1] - truth).mean()
        assert err_flow < 0.2 * err_pers, (k, err_flow, err_pers)
        assert pred.max() == pytest.approx(0.8, abs=0.05)  # advection keeps the peak


@pytest.mark.parametrize("n_pairs", [1, 4, 10])
def test_flow_averaged_over_pairs(n_pairs):
    frames = moving_blob(shift=(2, 1), start=(20, 30))
    out = optical_flow(as_inputs(frames[:5]), 4, n_pairs=n_pairs)  # n_pairs capped at in_len - 1 = 4
    cy, cx = centroid(out[-1, 0, 0].numpy())
    assert (cy, cx) == pytest.approx(centroid(frames[8]), abs=0.5)


def test_estimate_flow_of_broad_translation():
    # a broad blob (sigma 15 px) shifted 4 rows / 6 columns per frame: the fill spreads the
    # echo's motion over the empty domain
    frames = moving_blob(size=160, shift=(4, 6), start=(60, 40), n=3, sigma=15.0)
    flow = estimate_flow(frames, fill_sigma_px=20.0)
    assert flow.shape == (160, 160, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(np.median(flow[..., 0]), 6.0, atol=0.2)
    np.testing.assert_allclose(np.median(flow[..., 1]), 4.0, atol=0.2)
    np.testing.assert_allclose(flow[5, 155], [6.0, 4.0], atol=0.5)  # far from the echo


def test_advect_integer_shift_is_exact():
    frame = np.zeros((20, 20), np.float32)
    frame[5:8, 4:6] = [[0.2, 0.4], [0.6, 0.8], [1.0, 0.5]]
    flow = np.zeros((20, 20, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, -1.0  # 2 columns right, 1 row up per frame
    out = advect(frame, flow, 3)
    for k in (1, 2, 3):
        expect = np.zeros_like(frame)
        expect[5 - k : 8 - k, 4 + 2 * k : 6 + 2 * k] = frame[5:8, 4:6]
        np.testing.assert_allclose(out[k - 1], expect, atol=1e-6)


def test_advect_curved_flow_follows_rotation():
    # solid-body rotation about the centre: 5 degrees per frame; trajectories stay on circles
    size, theta = 81, np.deg2rad(5.0)
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([-(y - c) * theta, (x - c) * theta], axis=-1).astype(np.float32)
    frame = blob(size, c, c + 25, sigma=3.0).astype(np.float32)
    out = advect(frame, flow, 12)  # 60 degrees
    cy, cx = centroid(out[-1])
    radius = np.hypot(cy - c, cx - c)
    angle = np.rad2deg(np.arctan2(cy - c, cx - c))
    # straight back-trajectories x - 12 flow(x) would pull it in to 25 / sqrt(1 + (pi/3)^2) = 17.3 px;
    # Euler steps to 25 / (1 + theta^2)^6 = 23.9 px
    assert radius == pytest.approx(25.0, abs=0.3)
    assert angle == pytest.approx(60.0, abs=1.0)


def test_optical_flow_device_dtype_and_edge_cases():
    frames = moving_blob(size=48, start=(20, 10), n=5)
    x = as_inputs(frames).to(torch.bfloat16).repeat(1, 2, 1, 1, 1)
    out = optical_flow(x, 3)
    assert out.shape == (3, 2, 1, 48, 48) and out.dtype == torch.bfloat16 and out.device == x.device
    assert torch.equal(out[:, 0], out[:, 1])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # dry inputs stay dry; a single input frame falls back to persistence
    assert torch.count_nonzero(optical_flow(torch.zeros(4, 1, 1, 16, 16), 2)) == 0
    one = torch.rand(1, 1, 1, 16, 16)
    assert torch.equal(optical_flow(one, 2), persistence(one, 2))
    with pytest.raises(ValueError, match="in_len, B, 1, H, W"):
        optical_flow(torch.zeros(4, 1, 16, 16), 2)
    with pytest.raises(ValueError, match="method"):
        optical_flow(x, 2, method="rover")
    with pytest.raises(ValueError, match="n_pairs"):
        optical_flow(x, 2, n_pairs=0)
    with pytest.raises(ValueError, match="out_len"):
        persistence(x, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_baselines_on_cuda():
    x = as_inputs(moving_blob(size=48, start=(20, 10), n=5)).cuda()
    for fn in (persistence, optical_flow):
        out = fn(x, 4)
        assert out.device == x.device and out.dtype == x.dtype and out.shape == (4, 1, 1, 48, 48)
