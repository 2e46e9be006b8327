"""Tests for pipeline.viz: colour scale, skill plot, forecast GIF, HKO-7 PNG writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline import viz
from pipeline.catalog import INTERVAL_S
from pipeline.sources import hko7
from trajgru.units import rainfall_to_pixel


def test_rain_colormap_bins_follow_levels():
    cmap, norm = viz.rain_colormap()
    levels = viz.RAIN_LEVELS_MM_H
    # one colour per bin; a value inside bin i maps to colour index i, no rain -> "under" (white)
    assert cmap.N == len(levels) - 1
    mids = [(a + b) / 2 for a, b in zip(levels, levels[1:])]
    assert list(norm(np.array(mids))) == list(range(len(mids)))
    assert norm(np.array([0.1]))[0] < 0  # under -> white
    assert cmap(-1) == (1.0, 1.0, 1.0, 1.0)
    assert norm(np.array([levels[-1] + 10]))[0] >= cmap.N  # over -> the extra colour


def test_rain_colormap_rejects_unsorted_levels():
    with pytest.raises(ValueError, match="at least two ascending values"):
        viz.rain_colormap((5, 2, 10))


def test_pixel_to_u8_rounds_and_clamps():
    p = np.array([-0.2, 0.0, 0.5, 1 / 255 * 0.49, 1 / 255 * 0.51, 1.0, 1.7, np.nan])
    expected = [0, 0, 128, 0, 1, 255, 255, 0]  # round(255 * clamp(p)); 127.5 rounds half to even -> 128
    assert viz.pixel_to_u8(p).tolist() == expected


def test_save_frames_png_round_trip_with_times(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, 16, 24), dtype=np.uint8)
    frames = u8.astype(np.float32) / 255.0
    t0 = int(np.datetime64("2015-06-01T12:00:00", "s").astype(np.int64))
    times = [t0 + k * INTERVAL_S for k in range(3)]
    paths = viz.save_frames_png(frames, tmp_path / "out", times_s=times)
    assert [p.name for p in paths] == ["RAD150601120000.png", "RAD150601120600.png", "RAD150601121200.png"]
    for p, t, expected in zip(paths, times, u8):
        assert hko7.time_from_name(p) == t
        assert np.array_equal(hko7.decode_frame(p.read_bytes(), shape=(16, 24)), expected)


def test_save_frames_png_default_names_and_errors(tmp_path):
    frames = np.zeros((2, 8, 8), np.float32)
    paths = viz.save_frames_png(frames, tmp_path)
    assert [p.name for p in paths] == ["forecast_01.png", "forecast_02.png"]
    assert [p.name for p in viz.save_frames_png(frames, tmp_path, names=["a", "b.png"])] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="frames but 1 names/times"):
        viz.save_frames_png(frames, tmp_path, names=["only-one"])
    with pytest.raises(ValueError, match=r"frames_pixel must be \(S, H, W\)"):
        viz.save_frames_png(frames[0], tmp_path)


def _fake_result(t=4, n_thr=5):
    lead = np.arange(1, t + 1)[:, None]
    csi = 0.8 / lead * np.ones((1, n_thr))
    return {"csi": csi, "hss": csi * 0.9, "mse": np.ones(t), "b_mse": np.ones(t)}


def test_plot_skill_vs_lead_writes_png(tmp_path):
    out = viz.plot_skill_vs_lead(_fake_result(), tmp_path / "sub" / "skill.png", title="x")
    assert out.exists()
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_plot_skill_vs_lead_accepts_json_lists_with_none(tmp_path):
    res = {"csi": [[0.5, None], [0.4, None]], "hss": [[0.3, None], [0.2, 0.1]], "thresholds": [0.5, 2]}
    assert viz.plot_skill_vs_lead(res, tmp_path / "s.png").exists()
    with pytest.raises(ValueError, match="scores hold 2 thresholds but 3 threshold values"):
        viz.plot_skill_vs_lead(res, tmp_path / "t.png", thresholds=[0.5, 2, 5])


def _rain_frames(s, h=32, w=40, seed=0):
    rng = np.random.default_rng(seed)
    rain = rng.gamma(1.0, 5.0, size=(s, h, w))
    return np.asarray(rainfall_to_pixel(rain + 1e-3), dtype=np.float32)


def _gif_frames(path):
    with Image.open(path) as img:
        n = img.n_frames
        sizes = set()
        for k in range(n):
            img.seek(k)
            sizes.add(img.size)
    return n, sizes


def test_forecast_gif_without_truth_has_one_frame_per_time(tmp_path):
    out = viz.forecast_gif(_rain_frames(3), None, _rain_frames(4, seed=1), tmp_path / "f.gif", title="t")
    n, sizes = _gif_frames(out)
    assert n == 3 + 4 and len(sizes) == 1


def test_forecast_gif_with_truth_is_wider_and_masks(tmp_path):
    inputs, truth, fc = _rain_frames(2), _rain_frames(5, seed=2), _rain_frames(5, seed=3)
    mask = np.ones(inputs.shape[1:], bool)
    mask[:5] = False
    single = viz.forecast_gif(inputs, None, fc, tmp_path / "one.gif")
    double = viz.forecast_gif(inputs, truth, fc, tmp_path / "two.gif", mask=mask)
    n, sizes = _gif_frames(double)
    assert n == 7
    ((w2, _),) = sizes
    ((w1, _),) = _gif_frames(single)[1]
    assert w2 > w1
    per_frame = np.ones((7, *inputs.shape[1:]), bool)
    assert _gif_frames(viz.forecast_gif(inputs, truth, fc, tmp_path / "m.gif", mask=per_frame))[0] == 7


def test_forecast_gif_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="must have the forecast's shape"):
        viz.forecast_gif(_rain_frames(2), _rain_frames(3), _rain_frames(4), tmp_path / "x.gif")
    with pytest.raises(ValueError, match="frame size differs"):
        viz.forecast_gif(_rain_frames(2, h=8), None, _rain_frames(4), tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"mask must be \(32, 40\) or"):
        viz.forecast_gif(
            _rain_frames(2), None, _rain_frames(4), tmp_path / "x.gif", mask=np.ones((3, 3), bool)
        )
