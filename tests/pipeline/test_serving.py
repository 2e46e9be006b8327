"""pipeline.serving: the nowcaster in physical units, its MLflow flavor, `mlflow models serve/predict` and
`nowcast serve` over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from benchmarks import serve_load
from pipeline import serving, tracking
from pipeline.errors import NowcastError
from pipeline.forecasters import load_forecaster
from pipeline.ingest import IngestConfig, ingest
from pipeline.serving import Nowcaster, NowcasterSpec, RequestError
from pipeline.store import Store
from tests.pipeline import _gridded as gd
from trajgru.model import build_model

REPO = Path(__file__).resolve().parents[2]
#: The test archive's Z-R relation (Marshall-Palmer, not the HKO-7 default) and cadence.
ZR_A, ZR_B = 200.0, 1.6
SIZE = 32
#: Answers give rain rates to 0.001 mm/h (half of it is the largest rounding error).
RAIN_ROUNDING_MM_H = 0.0005


def rain_from_pixels(pixel: np.ndarray) -> np.ndarray:
    """Reference conversion written out: dBZ = 70 p - 10, Z = 10^(dBZ/10), R = (Z / a)^(1/b) in mm/h."""
    dbz = 70.0 * np.asarray(pixel, dtype=np.float64) - 10.0
    return (10.0 ** (dbz / 10.0) / ZR_A) ** (1.0 / ZR_B)


def tiny_model(size: int = SIZE):
    torch.manual_seed(0)
    return build_model("tiny", "convgru", height=size, width=size, in_len=2, out_len=3).eval()


def reference_forecast(model, pixels: np.ndarray) -> np.ndarray:
    """The torch model run directly on pixels (B, in_len, H, W) -> rain (B, out_len, H, W) by the reference
    Z-R, 0 where the forecast pixel rounds to 0 (as `nowcast predict` writes)."""
    with torch.no_grad():
        out = model(torch.from_numpy(pixels.transpose(1, 0, 2, 3)[:, :, None].astype(np.float32)))
    out = out.clamp(0, 1)[:, :, 0].transpose(0, 1).numpy()
    return np.where(np.rint(out * 255) == 0, 0.0, rain_from_pixels(out))


def request_pixels(batch: int = 2, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(7)
    pixels = rng.random((batch, 2, size, size))
    pixels[:, :, :4] = 0.0  # no echo
    return pixels


# ------------------------------------------------------------------ the nowcaster, in process
@pytest.fixture(scope="module")
def nowcaster():
    spec = NowcasterSpec(in_len=2, out_len=3, height=SIZE, width=SIZE, interval_s=300, zr_a=ZR_A, zr_b=ZR_B)
    return Nowcaster(tiny_model(), spec)


def test_forecast_in_mm_h_and_dbz_matches_the_model_through_the_z_r_relation(nowcaster):
    """Rain rates (or dBZ) in -> the model's forecast as rain rate by the spec's Z-R, with valid times."""
    pixels = request_pixels()
    times = np.array([[0, 300], [600, 900]], dtype=np.int64)
    expected = reference_forecast(nowcaster.model, pixels)
    for frames, unit in ((rain_from_pixels(pixels), "mm/h"), (70.0 * pixels - 10.0, "dBZ")):
        out = nowcaster.predict(frames, times, unit)
        assert out["rain_mm_h"].shape == (2, 3, SIZE, SIZE)
        np.testing.assert_allclose(out["rain_mm_h"], expected, rtol=1e-4, atol=RAIN_ROUNDING_MM_H)
        assert out["time_s"].tolist() == [[600, 900, 1200], [1200, 1500, 1800]]


def test_no_data_is_no_echo_and_no_forecast(nowcaster):
    """NaN pixels (no data) go into the model as rain rate 0 (no echo), as the store keeps masked pixels;
    outside the last input frame's coverage the forecast is 0 mm/h."""
    rain = rain_from_pixels(request_pixels(batch=1))
    times = np.array([[0, 300]])
    dry = rain.copy()
    rain[:, 0, 5:9, 5:9], dry[:, 0, 5:9, 5:9] = np.nan, 0.0  # first frame: model input only
    rain[:, 1, 20:30, 20:30], dry[:, 1, 20:30, 20:30] = np.nan, 0.0  # last frame: coverage too
    expected = reference_forecast(nowcaster.model, request_pixels(batch=1) * (dry > rain_from_pixels(0)))
    expected[:, :, 20:30, 20:30] = 0.0
    got = nowcaster.predict(rain, times)["rain_mm_h"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=RAIN_ROUNDING_MM_H)
    assert (got[:, :, 20:30, 20:30] == 0).all() and (got[:, :, :20] > 0).any()


@pytest.mark.parametrize(
    ("frames_shape", "times", "unit", "message"),
    [
        ((1, 2, SIZE, SIZE + 8), [[0, 300]], "mm/h", r"frames must have the shape \(batch, 2, 32, 32\)"),
        ((1, 3, SIZE, SIZE), [[0, 300, 600]], "mm/h", "the model takes 2 input frames, got 3"),
        ((2, SIZE, SIZE), [[0, 300]], "mm/h", "frames must have the shape"),
        ((1, 2, SIZE, SIZE), [[0, 360]], "mm/h", r"300 s apart .* steps \[360\] s"),
        ((1, 2, SIZE, SIZE), [[300, 0]], "mm/h", r"steps \[-300\] s"),
        ((1, 2, SIZE, SIZE), [[0.5, 300.5]], "mm/h", "whole seconds"),
        ((1, 2, SIZE, SIZE), [0, 300], "mm/h", r"time_s must be .* shape \(batch, 2\)"),
        ((1, 2, SIZE, SIZE), [[0, 300]], "inch/h", "unknown unit 'inch/h'"),
    ],
)
def test_bad_requests_get_one_line_errors(nowcaster, frames_shape, times, unit, message):
    with pytest.raises(RequestError, match=message) as exc:
        nowcaster.predict(np.ones(frames_shape), np.asarray(times), unit)
    assert "\n" not in str(exc.value)


def test_negative_or_infinite_rain_is_refused(nowcaster):
    frames, times = np.ones((1, 2, SIZE, SIZE)), np.array([[0, 300]])
    frames[0, 0, 0, 0] = -1.0
    with pytest.raises(RequestError, match="rain rates must be >= 0 mm/h"):
        nowcaster.predict(frames, times)
    frames[0, 0, 0, 0] = np.inf
    with pytest.raises(RequestError, match="finite dBZ or -inf"):
        nowcaster.predict(frames, times, "dBZ")


def test_a_model_without_nowcaster_metadata_is_refused(tmp_path):
    mlflow.models.Model().save(str(tmp_path / "MLmodel"))
    with pytest.raises(NowcastError, match="has no nowcaster"):
        serving.load_nowcaster(tmp_path)


# ------------------------------------------------------------------ a registered version
@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A tiny model trained on nothing, registered as ``srv`` version 1 (alias champion) in a SQLite
    store, with the nowcaster of an ODIM store (32x32, every 300 s, Z = 200 R^1.6)."""
    root = tmp_path_factory.mktemp("serving")
    arch = gd.odim_archive(root / "odim", 6, size=SIZE)
    with warnings.catch_warnings():  # six frames: no valid or test split, which serving does not need
        warnings.simplefilter("ignore")
        ingest(
            IngestConfig(archive=arch.root, store=root / "store.zarr", workers=0, zr="200,1.6"),
            progress=False,
        )
    store = Store.open(root / "store.zarr")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model = tiny_model()
    example = np.random.default_rng(0).random((2, 2, 1, SIZE, SIZE), dtype=np.float32)
    with mlflow.start_run(experiment_id=tracking.setup_experiment(uri, "serving")):
        logged = tracking.log_and_register_model(model, example, "srv", store=store)
    tracking.promote("srv", logged.registered_version, force=True)
    mlflow.set_tracking_uri("")
    return {
        "root": root,
        "tracking_uri": uri,
        "model": model,
        "store": store,
        "version": logged.registered_version,
    }


@pytest.mark.slow
def test_registered_version_carries_the_nowcaster_next_to_the_torch_model(registered):
    """The MLmodel records Z-R, cadence, grid and lengths, the nowcaster's signature and a request as
    input example; the torch flavor and the project's loaders still read the same weights."""
    mlflow.set_tracking_uri(registered["tracking_uri"])
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/srv@champion"))
        info = mlflow.models.Model.load(str(local))
        meta = info.metadata["nowcaster"]
        assert (meta["zr_a"], meta["zr_b"], meta["interval_s"]) == (ZR_A, ZR_B, 300)
        assert (meta["in_len"], meta["out_len"], meta["height"], meta["width"]) == (2, 3, SIZE, SIZE)
        assert meta["grid"] == registered["store"].source_settings["grid"]
        assert info.flavors["python_function"]["loader_module"] == "pipeline.serving"
        assert [s.name for s in info.signature.inputs.inputs] == ["frames", "time_s"]
        example = json.loads((local / "serving_input_example.json").read_text())["inputs"]
        assert np.asarray(example["frames"]).shape == (1, 2, SIZE, SIZE)
        # the torch model, by MLflow's own loader and by the project's
        x = torch.from_numpy(request_pixels().transpose(1, 0, 2, 3)[:, :, None].astype(np.float32))
        with torch.no_grad():
            expected = registered["model"](x)
            assert torch.allclose(mlflow.pytorch.load_model("models:/srv/1")(x), expected, atol=1e-5)
        f = load_forecaster("models:/srv@champion", tracking_uri=registered["tracking_uri"])
        assert torch.allclose(f(x), expected, atol=1e-5)
        # the pyfunc in process: schema enforcement, then the nowcaster
        pyfunc = mlflow.pyfunc.load_model("models:/srv@champion")
        pixels = request_pixels()
        out = pyfunc.predict(
            {"frames": rain_from_pixels(pixels).astype(np.float32), "time_s": np.array([[0, 300], [0, 300]])}
        )
        np.testing.assert_allclose(
            out["rain_mm_h"],
            reference_forecast(registered["model"], pixels),
            rtol=1e-4,
            atol=RAIN_ROUNDING_MM_H,
        )
    finally:
        mlflow.set_tracking_uri("")


def test_pinned_model_uri_resolves_the_alias_once(registered):
    assert tracking.pinned_model_uri("models:/srv@champion", registered["tracking_uri"]) == "models:/srv/1"
    assert tracking.pinned_model_uri("models:/srv/4", registered["tracking_uri"]) == "models:/srv/4"
    with pytest.raises(NowcastError, match="no version of srv holds the alias 'nope'"):
        tracking.pinned_model_uri("models:/srv@nope", registered["tracking_uri"])
    mlflow.set_tracking_uri("")


# ------------------------------------------------------------------ real servers on 127.0.0.1
def _env(registered) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": registered["tracking_uri"], "PYTHONPATH": str(REPO)}


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _check_server(url: str, registered) -> None:
    """A correct forecast for a batch of 2 in mm/h, and a one-line 400 for times off the cadence."""
    pixels = request_pixels()
    body = {"inputs": {"frames": rain_from_pixels(pixels).tolist(), "time_s": [[0, 300], [300, 600]]}}
    status, answer = _post(url, body)
    assert status == 200, answer
    np.testing.assert_allclose(
        np.asarray(answer["predictions"]["rain_mm_h"]),
        reference_forecast(registered["model"], pixels),
        rtol=1e-4,
        atol=RAIN_ROUNDING_MM_H,
    )
    assert answer["predictions"]["time_s"] == [[600, 900, 1200], [900, 1200, 1500]]
    body["inputs"]["time_s"] = [[0, 360], [300, 600]]
    status, answer = _post(url, body)
    assert status == 400 and "must be 300 s apart" in answer["message"], answer


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(registered, tmp_path):
    """`mlflow models serve -m models:/srv@champion` forecasts in mm/h over HTTP (8 clients at once too)."""
    command = serve_load.server_command("mlflow models serve", "models:/srv@champion", serve_load.free_port())
    with serve_load.running_server("mlflow models serve", command, tmp_path, _env(registered)) as url:
        _check_server(url, registered)
        body = serve_load.request_body(2, SIZE, SIZE, 300)
        row = serve_load.load(url, body, clients=8, requests=16, time_limit_s=120, out_len=3)
        assert (row["requests"], row["errors"]) == (16, 0), row


@pytest.mark.slow
def test_mlflow_models_predict_writes_the_forecast(registered, tmp_path):
    pixels = request_pixels(batch=1)
    request = {"inputs": {"frames": rain_from_pixels(pixels).tolist(), "time_s": [[0, 300]]}}
    (tmp_path / "in.json").write_text(json.dumps(request))
    subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", "models:/srv@champion"]
        + ["-i", str(tmp_path / "in.json"), "-o", str(tmp_path / "out.json"), "-t", "json"]
        + ["--env-manager", "local"],
        cwd=tmp_path,
        env=_env(registered),
        check=True,
        timeout=300,
        capture_output=True,
    )
    answer = json.loads((tmp_path / "out.json").read_text())["predictions"]
    np.testing.assert_allclose(
        np.asarray(answer["rain_mm_h"]),
        reference_forecast(registered["model"], pixels),
        rtol=1e-4,
        atol=RAIN_ROUNDING_MM_H,
    )
    assert answer["time_s"] == [[600, 900, 1200]]


@pytest.mark.slow
def test_nowcast_serve_batches_requests_over_replicas_under_load(registered, tmp_path):
    """`nowcast serve` (Ray Serve, 2 replicas, batches of 4) answers a bounded 8-client load with correct
    forecasts, refuses a bad request with a 400, and ends on SIGTERM."""
    command = serve_load.server_command(
        "nowcast serve", "models:/srv@champion", serve_load.free_port(), replicas=2, max_batch_size=4
    )
    with serve_load.running_server("nowcast serve", command, tmp_path, _env(registered)) as url:
        _check_server(url, registered)
        body = serve_load.request_body(2, SIZE, SIZE, 300)
        row = serve_load.load(url, body, clients=8, requests=32, time_limit_s=120, out_len=3)
        assert (row["requests"], row["errors"]) == (32, 0), row
        with urllib.request.urlopen(url.replace("/invocations", "/metadata"), timeout=30) as resp:
            meta = json.loads(resp.read())
        assert meta["model_uri"] == "models:/srv/1" and meta["nowcaster"]["interval_s"] == 300
    log = (tmp_path / "nowcast_serve.log").read_text()
    assert "[serve] stopped" in log, log[-2000:]


def test_nowcast_serve_unknown_model_is_one_line(registered, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--model", "models:/srv@nope"],
        cwd=tmp_path,
        env=_env(registered),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no version of srv holds the alias 'nope' at {registered['tracking_uri']}; check the name "
        "and --tracking-uri, or set it with `nowcast promote NAME VERSION`"
    ]
