"""ODIM_H5 and CF-NetCDF archives through the later stages: ``predict --format netcdf``
writes the forecast on the store's grid, and the CLI runs ingest, train, evaluate and predict on
these archives exactly as on HKO-7."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pipeline import ingest as ing
from pipeline.errors import NowcastError
from pipeline.predict import PredictConfig, predict
from pipeline.sources import netcdf
from pipeline.sources.grid import ZR, Grid
from pipeline.store import Store
from tests.pipeline import _gridded as gd
from trajgru import units

REPO = Path(__file__).resolve().parents[2]


def test_predict_netcdf_writes_rain_rate_on_the_store_grid(tmp_path):
    arch = gd.odim_archive(tmp_path / "odim", 30)
    store = tmp_path / "s.zarr"
    ing.ingest(
        ing.IngestConfig(arch.root, store, workers=0, crop="0,0,32,24", block=2, zr="200,1.6"), progress=False
    )
    last = int(arch.times_s()[10])
    result = predict(
        PredictConfig(
            model_uri="persistence",
            out_dir=tmp_path / "out",
            store=store,
            time=last,
            format="netcdf",
            gif=False,
            probabilities_mm_h=(1.0, 5.0),
        )
    )
    path = tmp_path / "out" / "forecast.nc"
    assert result.paths == [path]
    handle = Store.open(store)
    grid = Grid.from_attrs(handle.source_settings["grid"])
    frames, masks = handle.reader().read([last])
    with np.errstate(divide="ignore"):
        rain = ZR(200.0, 1.6).dbz_to_rain(units.pixel_to_dbz(frames[0] / 255.0))
    rain = np.where(frames[0] == 0, 0.0, rain)
    with xr.open_dataset(path) as ds:
        precip = ds["precip_intensity"].values
        assert precip.shape == (20, 12, 16) and ds["precip_intensity"].attrs["units"] == "mm h-1"
        np.testing.assert_allclose(ds["x"].values, grid.x_centres())
        np.testing.assert_allclose(ds["y"].values, grid.y_centres())
        np.testing.assert_array_equal(ds["lead_time"].values, gd.IV * np.arange(1, 21))
        np.testing.assert_array_equal(
            ds["time"].values, np.datetime64(last, "s") + np.timedelta64(gd.IV, "s") * np.arange(1, 21)
        )
        assert ds["forecast_reference_time"].values == np.datetime64(last, "s")
        for k in range(20):  # persistence: every lead time is the last input, masked to its coverage
            np.testing.assert_allclose(
                np.where(masks[0], precip[k], 0.0), np.where(masks[0], rain, 0.0), rtol=1e-6
            )
            assert np.isnan(precip[k][~masks[0]]).all()
        # exceedance probabilities: a CF variable on the same grid, missing where the rain rate is missing
        prob = ds["probability_of_rainfall_rate_above_threshold"]
        assert prob.dims == ("time", "threshold", "y", "x") and prob.attrs["grid_mapping"]
        np.testing.assert_array_equal(ds["threshold"].values, [1.0, 5.0])
        assert ds["threshold"].attrs["units"] == "mm h-1"
        assert np.array_equal(np.isnan(prob.values[:, 0]), np.isnan(precip))
        assert np.nanmin(prob.values) >= 0.0 and np.nanmax(prob.values) <= 1.0
    frames_back = netcdf.read_file(path, zr=ZR(200.0, 1.6))  # our own reader places it on the same grid
    assert len(frames_back) == 20 and frames_back[0].grid.matches(grid)


def test_predict_netcdf_needs_a_store_that_records_a_grid(hand_archive, tmp_path):
    arch = hand_archive(30)
    store = tmp_path / "h.zarr"
    ing.ingest(ing.IngestConfig(arch.root, store, workers=0), progress=False)
    with pytest.raises(NowcastError, match="records none"):  # checked before the (absent) model is looked up
        predict(
            PredictConfig(
                model_uri="models:/absent@champion",
                out_dir=tmp_path / "o",
                store=store,
                format="netcdf",
                tracking_uri=f"sqlite:///{tmp_path / 'x.db'}",
            )
        )
    with pytest.raises(NowcastError, match="--format netcdf") as err:
        PredictConfig(
            model_uri="persistence", out_dir=tmp_path / "o", input_pngs=["a.png"] * 5, format="netcdf"
        )
    assert err.value.exit_code == 2


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"nowcast {' '.join(map(str, args))}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["odim", "netcdf"])
def test_every_command_runs_on_the_archive_format(fmt, tmp_path):
    """``nowcast ingest | train | evaluate | predict`` on a 5-minute ODIM (trained model) or NetCDF
    (baselines) archive of 12.5 hours split by time ranges."""
    make = gd.odim_archive if fmt == "odim" else gd.netcdf_archive
    arch = make(tmp_path / "archive", 150, missing=[40, 41, 100])
    store = tmp_path / "store.zarr"
    splits = [
        "--split",
        "train=2024-06-01T00:00..2024-06-01T07:00",
        "--split",
        "valid=2024-06-01T07:00..2024-06-01T10:00",
        "--split",
        "test=2024-06-01T10:00..2024-06-02T00:00",
    ]
    _cli("ingest", arch.root, store, "--format", fmt, "--workers", "0", "--block", "2", *splits, cwd=tmp_path)
    assert Store.open(store).frame_size == (16, 16) and Store.open(store).interval_s == gd.IV
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if fmt == "odim":
        (tmp_path / "train.yaml").write_text("val_clips: 2\ngif_clips: 1\nsystem_metrics: false\n")
        _cli(
            "train",
            store,
            "--preset",
            "tiny",
            "--workers",
            "1",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--val-every",
            "2",
            "--checkpoint-every",
            "2",
            "--run-name",
            "odim-e2e",
            "--storage-path",
            tmp_path / "ray",
            "--config",
            tmp_path / "train.yaml",
            "--register-as",
            "odim-tiny",
            "--tracking-uri",
            uri,
            cwd=tmp_path,
        )
        model = "models:/odim-tiny@champion"
    else:
        model = "optical-flow"
    _cli(
        "evaluate",
        store,
        "--model",
        model,
        "--split",
        "test",
        "--max-clips",
        "2",
        "--out-json",
        tmp_path / "scores.json",
        "--tracking-uri",
        uri,
        cwd=tmp_path,
    )
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["interval_s"] == gd.IV
    _cli(
        "predict",
        "--model",
        model,
        "--store",
        store,
        "--time",
        "2024-06-01T11:00",
        "--format",
        "netcdf",
        "--out-dir",
        tmp_path / "forecast",
        "--tracking-uri",
        uri,
        cwd=tmp_path,
    )
    with xr.open_dataset(tmp_path / "forecast" / "forecast.nc") as ds:
        assert ds["precip_intensity"].shape == (20, 16, 16)
        assert int(ds["lead_time"].values[0]) == gd.IV
    assert (tmp_path / "forecast" / "forecast.gif").exists()
