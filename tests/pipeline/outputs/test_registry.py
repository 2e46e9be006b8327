"""The forecast output registry: every format writes exactly the files it names, masked pixels are 0."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline import outputs
from pipeline.errors import NowcastError
from pipeline.sources import hko7

T0_S = 1_433_160_000  # 2015-06-01T12:00Z


def _forecast() -> outputs.Forecast:
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (3, 8, 10)).astype(np.float32) / 255.0
    mask = np.ones((8, 10), bool)
    mask[0, :] = False
    return outputs.Forecast(values, 360, T0_S, "persistence", "persistence", input_mask=mask)


def test_unknown_format_names_the_known_ones():
    """An unknown --format is a one-line error listing the registry."""
    with pytest.raises(NowcastError, match="unknown format 'tiff': use png, zarr, netcdf"):
        outputs.get_output("tiff")


@pytest.mark.parametrize("name", ["png", "zarr"])
def test_each_format_writes_the_files_it_names(tmp_path, name):
    """write_forecast creates exactly file_names() in the folder (the names predict and watch publish)."""
    fmt, forecast = outputs.get_output(name), _forecast()
    paths = outputs.write_forecast(tmp_path, fmt, forecast, gif=False)
    assert [p.name for p in paths] == outputs.file_names(fmt, forecast, gif=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_png_and_zarr_hold_the_masked_forecast(tmp_path):
    """Both formats store round(255 p), with 0 where the last input's mask is false, at the forecast times."""
    forecast = _forecast()
    expected = np.rint(forecast.forecast * 255).astype(np.uint8)
    expected[:, 0, :] = 0
    png_paths = outputs.write_forecast(tmp_path / "p", outputs.get_output("png"), forecast, gif=False)
    (tmp_path / "z").mkdir()
    zarr_path = outputs.write_forecast(tmp_path / "z", outputs.get_output("zarr"), forecast, gif=False)[0]
    assert [hko7.time_from_name(p) for p in png_paths] == [T0_S + 360 * k for k in (1, 2, 3)]
    np.testing.assert_array_equal(np.stack([hko7.decode_frame(p.read_bytes()) for p in png_paths]), expected)
    group = zarr.open_group(str(zarr_path), mode="r")
    np.testing.assert_array_equal(group["forecast"][:], expected)
    np.testing.assert_array_equal(group["lead_time_s"][:], [360, 720, 1080])
    assert outputs.get_output("zarr").replaceable(zarr_path)
    assert not outputs.get_output("zarr").replaceable(tmp_path / "p")


def test_netcdf_needs_a_store_with_a_grid():
    """NetCDF output refuses inputs without a store before any model loads."""
    with pytest.raises(NowcastError, match="give the inputs as --store"):
        outputs.get_output("netcdf").check(None)
