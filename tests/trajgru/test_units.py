"""trajgru.units against hand-computed values and an independent Z = a R^b formulation."""

import math

import numpy as np
import pytest
import torch

from trajgru import units

A, B = 58.53, 1.56


def rain_from_dbz_reference(dbz: float) -> float:
    """Independent route: Z = 10^(dBZ/10) mm^6/m^3, R = (Z / a)^(1/b) mm/h."""
    z = 10.0 ** (dbz / 10.0)
    return (z / A) ** (1.0 / B)


@pytest.mark.parametrize("pixel, dbz", [(0.0, -10.0), (1.0, 60.0), (0.5, 25.0), (40 / 70, 30.0)])
def test_pixel_dbz_hand_values(pixel, dbz):
    assert units.pixel_to_dbz(pixel) == pytest.approx(dbz)
    assert units.dbz_to_pixel(dbz) == pytest.approx(pixel)


def test_dbz_to_rainfall_hand_values():
    # Z = a -> R = 1 mm/h: dBZ = 10 log10(58.53) = 17.6737...
    assert units.dbz_to_rainfall(10 * math.log10(58.53)) == pytest.approx(1.0)
    # 30 dBZ: Z = 1000, R = (1000 / 58.53)^(1/1.56) = exp(0.64103 * ln 17.0853) = 6.1680 mm/h
    assert units.dbz_to_rainfall(30.0) == pytest.approx(6.1680, rel=1e-4)
    for dbz in (-5.0, 12.3, 40.0, 55.0):
        assert units.dbz_to_rainfall(dbz) == pytest.approx(rain_from_dbz_reference(dbz), rel=1e-12)


# rain rate (mm/h) -> pixel, computed by hand: dBZ = 17.6737 + 15.6 log10(R); pixel = (dBZ + 10) / 70
@pytest.mark.parametrize(
    "rain, pixel", [(0.5, 0.328253), (2.0, 0.462426), (5.0, 0.551110), (10.0, 0.618197), (30.0, 0.724527)]
)
def test_rainfall_to_pixel_hko7_thresholds(rain, pixel):
    assert units.rainfall_to_pixel(rain) == pytest.approx(pixel, abs=1e-6)
    assert units.pixel_to_rainfall(pixel) == pytest.approx(rain, rel=1e-4)


def test_round_trips_numpy():
    pixel = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(units.dbz_to_pixel(units.pixel_to_dbz(pixel)), pixel, atol=1e-12)
    np.testing.assert_allclose(units.rainfall_to_pixel(units.pixel_to_rainfall(pixel)), pixel, atol=1e-12)
    rain = np.array([0.1, 0.5, 2.0, 5.0, 10.0, 30.0, 100.0])
    np.testing.assert_allclose(units.dbz_to_rainfall(units.rainfall_to_dbz(rain)), rain, rtol=1e-12)
    np.testing.assert_allclose(units.pixel_to_rainfall(units.rainfall_to_pixel(rain)), rain, rtol=1e-10)


def test_clipping():
    np.testing.assert_array_equal(
        units.dbz_to_pixel(np.array([-30.0, -10.0, 60.0, 80.0])), [0.0, 0.0, 1.0, 1.0]
    )
    # rain rates beyond the encodable range clip to the ends of [0, 1]
    assert units.rainfall_to_pixel(1e-6) == 0.0  # -76 dBZ
    assert units.rainfall_to_pixel(1e6) == 1.0  # 111 dBZ
    t = units.dbz_to_pixel(torch.tensor([-30.0, 25.0, 90.0]))
    assert torch.allclose(t, torch.tensor([0.0, 0.5, 1.0]))


def test_torch_matches_numpy_and_keeps_kind():
    pixel_np = np.linspace(0.05, 0.95, 19)
    pixel_t = torch.from_numpy(pixel_np)
    for fn in (units.pixel_to_dbz, units.pixel_to_rainfall):
        out_t = fn(pixel_t)
        assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float64
        np.testing.assert_allclose(out_t.numpy(), fn(pixel_np), rtol=1e-12)
    rain_np = np.array([0.5, 2.0, 5.0, 10.0, 30.0])
    rain_t = torch.from_numpy(rain_np)
    for fn in (units.rainfall_to_dbz, units.rainfall_to_pixel):
        out_t = fn(rain_t)
        assert isinstance(out_t, torch.Tensor)
        np.testing.assert_allclose(out_t.numpy(), fn(rain_np), rtol=1e-12)
    # float32 tensors stay float32
    assert units.pixel_to_rainfall(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32
    assert units.dbz_to_rainfall(torch.tensor([30.0])).item() == pytest.approx(6.1680, rel=1e-4)


def test_monotonic():
    pixel = np.linspace(0.0, 1.0, 256)
    rain = units.pixel_to_rainfall(pixel)
    assert np.all(np.diff(rain) > 0)
