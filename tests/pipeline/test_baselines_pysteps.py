"""Tests for pipeline.baselines_pysteps: the option syntax, the unit conversions (against trajgru.units), and
the forecasts against pysteps called directly on the same rain fields, and against a known motion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.baselines_pysteps import (
    PystepsBaseline,
    PystepsSpec,
    Radar,
    parse_spec,
    pixel_to_rain,
    rain_to_pixel,
)
from pipeline.errors import NowcastError
from pipeline.forecasters import baseline_name, load_forecaster
from pipeline.sources.grid import ZR
from trajgru import units


def test_parse_spec_options_and_errors():
    """Names without options get the defaults; options are NAME=VALUE after a colon; bad ones are errors."""
    assert parse_spec("sprog") == PystepsSpec("sprog")
    spec = parse_spec("steps:members=7,seed=3,km_per_px=2.5")
    assert (spec.members, spec.seed, spec.km_per_px) == (7, 3, 2.5)
    assert spec.label == "steps:members=7,seed=3"
    assert parse_spec("persistence") is None and parse_spec("models:/x@champion") is None
    assert baseline_name("steps") == "steps:members=20,seed=0"
    with pytest.raises(NowcastError, match="cannot read the option 'colour=red'"):
        parse_spec("steps:colour=red")
    with pytest.raises(NowcastError, match="is not a number"):
        parse_spec("steps:members=many")
    with pytest.raises(NowcastError, match="sprog is deterministic"):
        parse_spec("sprog:members=5")
    with pytest.raises(NowcastError, match="members must be >= 2"):
        parse_spec("steps:members=1")


def test_pixel_rain_conversion_matches_trajgru_units():
    """Pixels -> mm/h through the HKO-7 Z-R equals trajgru.units; pixel 0 is dry; masked pixels are NaN;
    rain -> pixels inverts it above the 0.1 mm/h floor."""
    pixels = np.array([0.0, 0.3, 0.5, 0.8])
    rain = pixel_to_rain(pixels, np.array([True, True, True, False]), ZR())
    np.testing.assert_allclose(rain[1:3], units.pixel_to_rainfall(pixels[1:3]))
    assert rain[0] == 0.0 and np.isnan(rain[3])
    np.testing.assert_allclose(rain_to_pixel(rain[:3], ZR()), [0.0, 0.3, 0.5], atol=1e-6)
    assert rain_to_pixel(np.array([np.nan, 0.05]), ZR()).tolist() == [0.0, 0.0]


def _moving_blob(n_frames: int, size: int = 64, step_px: float = 2.0, texture: float = 0.0) -> np.ndarray:
    """Pixel frames (n, size, size) of a Gaussian rain blob moving step_px per frame to the right, with a
    new random texture of relative amplitude ``texture`` in every frame (seeded)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    frames = [
        0.65
        * np.exp(-(((xx - 16 - step_px * k) / 6.0) ** 2 + ((yy - size / 2) / 8.0) ** 2))
        * (1.0 + texture * rng.standard_normal((size, size)))
        for k in range(n_frames)
    ]
    return np.clip(np.stack(frames), 0.0, 1.0)


def test_extrapolation_follows_a_known_motion_and_equals_pysteps():
    """A blob moving 2 px/frame: the extrapolation forecast at lead 5 has its centre of mass ~10 px further
    right than the last input, and equals pysteps' own Lucas-Kanade + extrapolation on the same rain."""
    from pysteps.motion.lucaskanade import dense_lucaskanade
    from pysteps.nowcasts import extrapolation
    from pysteps.utils.transformation import dB_transform

    frames = _moving_blob(5)
    inputs = torch.from_numpy(frames).float()[:, None, None]
    forecast = PystepsBaseline(parse_spec("extrapolation"), 5)(inputs)[:, 0, 0].numpy()
    cols = np.arange(64)

    def centre_x(f):
        return float((f.sum(axis=0) * cols).sum() / f.sum())

    assert centre_x(forecast[-1]) - centre_x(frames[-1]) == pytest.approx(10.0, abs=1.5)
    rain = pixel_to_rain(frames, None, ZR())
    dbr, _ = dB_transform(rain[-3:].copy(), threshold=0.1, zerovalue=-15.0)
    reference = extrapolation.forecast(rain[-1], dense_lucaskanade(dbr, verbose=False), 5)
    np.testing.assert_allclose(forecast, rain_to_pixel(reference, ZR()), atol=1e-6)


def test_steps_ensemble_is_seeded_and_its_mean_is_the_forecast():
    """STEPS returns `members` members; the same seed gives the same members, another seed others; the
    deterministic forecast is the members' mean in rain rate; masked input pixels do not break it."""
    frames = _moving_blob(5, size=48, texture=0.3)
    inputs = torch.from_numpy(frames).float()[:, None, None]
    masks = torch.ones_like(inputs, dtype=torch.bool)
    masks[:, :, :, :4] = False
    radar = Radar(km_per_px=4.0)
    a = PystepsBaseline(parse_spec("steps:members=3,seed=1"), 4, radar)
    members = a.ensemble(inputs, masks)
    assert members.shape == (3, 4, 1, 1, 48, 48)
    assert torch.equal(
        members, PystepsBaseline(parse_spec("steps:members=3,seed=1"), 4, radar).ensemble(inputs, masks)
    )
    other = PystepsBaseline(parse_spec("steps:members=3,seed=2"), 4, radar).ensemble(inputs, masks)
    assert not torch.equal(members, other)
    rain = np.nan_to_num(a.rain_ensemble(inputs, masks))
    expected = rain_to_pixel(rain.mean(axis=0), ZR())
    np.testing.assert_allclose(a(inputs, masks)[:, :, 0].numpy(), expected, atol=1e-6)


def test_load_forecaster_builds_pysteps_baselines():
    """`steps:members=3` loads as an ensemble forecaster of 3 members taking masks; sprog as one member."""
    steps = load_forecaster("steps:members=3", out_len=4)
    assert (steps.members, steps.takes_masks, steps.out_len, steps.name) == (
        3,
        True,
        4,
        "steps:members=3,seed=0",
    )
    sprog = load_forecaster("sprog", out_len=4)
    assert sprog.members == 1 and sprog.ensemble_fn is None
    dry = torch.zeros(5, 1, 1, 32, 32)
    assert sprog.ensemble(dry).shape == (1, 4, 1, 1, 32, 32)
    with pytest.raises(NowcastError, match="needs at least 3 input frames"):
        load_forecaster("sprog", in_len=2, out_len=4)(torch.zeros(2, 1, 1, 32, 32))


def test_rain_that_only_moves_falls_back_to_extrapolation():
    """A blob that moves without changing makes pysteps' AR(2) nonstationary: S-PROG then warns and gives
    the extrapolation forecast, its limit for a lag correlation of 1."""
    inputs = torch.from_numpy(_moving_blob(5)).float()[:, None, None]
    with pytest.warns(RuntimeWarning, match="nonstationary"):
        sprog = PystepsBaseline(parse_spec("sprog"), 3)(inputs)
    assert torch.equal(sprog, PystepsBaseline(parse_spec("extrapolation"), 3)(inputs))


@pytest.mark.parametrize("name", ["sprog", "steps:members=2"])
def test_missing_input_frame_still_follows_the_motion(name):
    """A wholly missing input frame (mask false everywhere, as the HKO-7 protocol allows) does not break
    S-PROG or STEPS: they warn and extrapolate the last frame with the motion of the last two consecutive
    present frames (blob moving 2 px/frame: ~10 px further right at lead 5)."""
    frames = _moving_blob(5)
    inputs = torch.from_numpy(frames).float()[:, None, None]
    masks = torch.ones_like(inputs, dtype=torch.bool)
    masks[3] = False
    with pytest.warns(RuntimeWarning, match="missing frame"):
        forecast = PystepsBaseline(parse_spec(name), 5)(inputs, masks)[:, 0, 0].numpy()
    cols = np.arange(64)
    shift = (forecast[-1].sum(0) * cols).sum() / forecast[-1].sum() - (
        frames[-1].sum(0) * cols
    ).sum() / frames[-1].sum()
    assert shift == pytest.approx(10.0, abs=1.5)
