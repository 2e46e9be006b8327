"""The servable nowcaster: radar frames in physical units in, 20 frames of rain rate out.

A registered model version (``pipeline.tracking.log_and_register_model``) is one MLflow model with two
flavors: ``pytorch`` (the network over pixel values, as before) and ``python_function``, which is this
module's :class:`Nowcaster`. So ``mlflow models serve -m models:/NAME@champion`` and ``mlflow models
predict`` answer in physical units, and ``nowcast serve`` (:func:`serve_nowcaster`) serves the same
nowcaster on Ray Serve with request batching and replicas.

Request and response (the MLflow scoring protocol, for both servers)::

    POST /invocations   {"inputs": {"frames": [B][in_len][H][W], "time_s": [B][in_len]},
                         "params": {"unit": "mm/h"}}               (or "dBZ"; default mm/h)
    200                 {"predictions": {"rain_mm_h": [B][out_len][H][W], "time_s": [B][out_len]}}

``frames`` are the last ``in_len`` radar frames, oldest first, as rain rate (mm/h, >= 0) or reflectivity
(dBZ, ``-inf`` = no echo); NaN marks pixels without data, which the model sees as no echo (as the store
keeps masked pixels). ``time_s`` are their times (int seconds since the Unix epoch, UTC), one
``interval_s`` apart. The answer's ``time_s`` are the forecast's valid times; its rain rate is 0 where
the forecast pixel is 0 and outside the last input frame's coverage (as ``nowcast predict`` writes).

What the model needs to know is in the MLmodel ``metadata["nowcaster"]`` (:class:`NowcasterSpec`):
input and output length, frame size, cadence ``interval_s``, the Z-R relation (``zr_a``, ``zr_b``) and
the grid (``Grid.to_attrs()`` of the store; None for HKO-7 archives, whose grid is not recorded).
Physical units convert to the model's pixels through :mod:`trajgru.units` with that Z-R relation
(:class:`pipeline.sources.grid.ZR`). The weights are the model files of :mod:`pipeline.checkpoints`
(``extra_files/`` of the MLflow model), read weights-only: nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import ray
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.utils import _save_example
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
from ray import serve
from starlette.responses import JSONResponse

from pipeline import checkpoints
from pipeline.errors import NowcastError
from pipeline.raycluster import connect_ray
from pipeline.sources.grid import ZR
from pipeline.sources.gridded import parse_zr
from trajgru import units
from trajgru.fast import enable_fast_path

log = logging.getLogger(__name__)

#: Key of the :class:`NowcasterSpec` in the MLmodel metadata.
METADATA_KEY = "nowcaster"
#: Units a request's frames may be given in (the ``unit`` parameter); the first is the default.
UNITS = ("mm/h", "dBZ")
#: Folder of the MLflow model holding the model files (``mlflow.pytorch``'s extra_files).
MODEL_FILES_DIR = "extra_files"
#: Decimals of the answers' rain rates (0.001 mm/h): short JSON numbers, far finer than radar's precision.
RAIN_DECIMALS = 3
#: The Ray Serve application's name.
APP_NAME = "nowcast"


class RequestError(NowcastError):
    """A request the nowcaster cannot answer (wrong shape, frame count, times, values); HTTP 400."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


# --------------------------------------------------------------------------- what the model needs
@dataclass(frozen=True)
class NowcasterSpec:
    """What a served model takes and gives: ``in_len`` frames of ``height`` x ``width`` every
    ``interval_s`` seconds -> ``out_len`` frames; Z = ``zr_a`` R^``zr_b``; ``grid`` = ``Grid.to_attrs()``
    of the frames (None when the archive recorded none)."""

    in_len: int
    out_len: int
    height: int
    width: int
    interval_s: int
    zr_a: float = units.ZR_A
    zr_b: float = units.ZR_B
    grid: dict | None = None

    @classmethod
    def from_store(cls, store, model_config: dict) -> NowcasterSpec:
        """The spec of a model (its ``model_config``) trained on ``store`` (a ``pipeline.store.Store``)."""
        settings = store.source_settings
        zr = parse_zr(settings.get("zr"))
        return cls(
            in_len=int(model_config["in_len"]),
            out_len=int(model_config["out_len"]),
            height=int(model_config["height"]),
            width=int(model_config["width"]),
            interval_s=int(store.interval_s),
            zr_a=float(zr.a),
            zr_b=float(zr.b),
            grid=settings.get("grid"),
        )

    @classmethod
    def from_dict(cls, values: dict) -> NowcasterSpec:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def zr(self) -> ZR:
        return ZR(self.zr_a, self.zr_b)

    def signature(self) -> ModelSignature:
        """Named tensors with a variable batch dimension, and the ``unit`` parameter."""
        return ModelSignature(
            inputs=Schema(
                [
                    TensorSpec(np.dtype(np.float32), (-1, self.in_len, self.height, self.width), "frames"),
                    TensorSpec(np.dtype(np.int64), (-1, self.in_len), "time_s"),
                ]
            ),
            outputs=Schema(
                [
                    TensorSpec(
                        np.dtype(np.float64), (-1, self.out_len, self.height, self.width), "rain_mm_h"
                    ),
                    TensorSpec(np.dtype(np.int64), (-1, self.out_len), "time_s"),
                ]
            ),
            params=ParamSchema([ParamSpec("unit", "string", UNITS[0])]),
        )

    def example(self, pixels: np.ndarray, last_time_s: int) -> dict[str, np.ndarray]:
        """A request from model inputs: ``pixels`` (in_len, B, 1, H, W) in [0, 1] -> ``frames`` of the
        first clip in mm/h (rounded to 0.01) and ``time_s`` ending at ``last_time_s``."""
        rain = self.zr.dbz_to_rain(units.pixel_to_dbz(np.asarray(pixels[:, 0, 0], dtype=np.float64)))
        return {
            "frames": np.round(rain, 2).astype(np.float32)[None],
            "time_s": self.input_times(last_time_s)[None],
        }

    def input_times(self, last_time_s: int) -> np.ndarray:
        """The ``in_len`` input times (int64 epoch s) ending at ``last_time_s``."""
        return last_time_s - self.interval_s * np.arange(self.in_len - 1, -1, -1, dtype=np.int64)


# --------------------------------------------------------------------------- the nowcaster
class Nowcaster:
    """A trained model with its :class:`NowcasterSpec`: physical units in, rain rate out.

    ``model`` is the encoder-forecaster over pixels (S, B, 1, H, W) in [0, 1], on ``device``.
    """

    def __init__(self, model, spec: NowcasterSpec, device: str = "cpu"):
        self.model = model
        self.spec = spec
        self.device = device

    def check_request(
        self, frames, time_s, unit: str = UNITS[0]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate a request -> (pixels float32 (B, in_len, H, W) in [0, 1], times int64 (B, in_len),
        coverage bool (B, H, W): True where the last input frame has data).

        RequestError (one line saying what is wrong) for a wrong shape or frame count, times that are
        not ``interval_s`` apart, an unknown unit, or values that are not rain rates / reflectivities.
        """
        spec = self.spec
        want = f"(batch, {spec.in_len}, {spec.height}, {spec.width})"
        try:
            frames = np.asarray(frames, dtype=np.float64)
            time_s = np.asarray(time_s)
        except (TypeError, ValueError) as exc:
            raise RequestError(f"frames and time_s must be arrays of numbers ({exc})") from None
        if frames.ndim != 4 or frames.shape[2:] != (spec.height, spec.width):
            raise RequestError(f"frames must have the shape {want} (oldest first), got {frames.shape}")
        if frames.shape[1] != spec.in_len:
            raise RequestError(
                f"the model takes {spec.in_len} input frames, got {frames.shape[1]}: send the last "
                f"{spec.in_len} frames, oldest first, as {want}"
            )
        if time_s.shape != frames.shape[:2] or not np.issubdtype(time_s.dtype, np.integer):
            raise RequestError(
                f"time_s must be whole seconds since 1970-01-01 UTC of shape (batch, {spec.in_len}) "
                f"like frames, got {time_s.dtype} {time_s.shape}"
            )
        steps = np.diff(time_s.astype(np.int64), axis=1)
        if (steps != spec.interval_s).any():
            bad = int(np.flatnonzero((steps != spec.interval_s).any(axis=1))[0])
            raise RequestError(
                f"the input times must be {spec.interval_s} s apart (the model's cadence), oldest first; "
                f"request {bad} has steps {steps[bad].tolist()} s"
            )
        return self._to_pixels(frames, unit), time_s.astype(np.int64), ~np.isnan(frames[:, -1])

    def _to_pixels(self, frames: np.ndarray, unit: str) -> np.ndarray:
        """Rain rate (mm/h) or dBZ -> pixel values (NaN -> 0, no echo)."""
        if unit == "mm/h":
            if (frames < 0).any() or np.isposinf(frames).any():
                raise RequestError("rain rates must be >= 0 mm/h and finite (NaN marks no data)")
            dbz = self.spec.zr.rain_to_dbz(frames)
        elif unit == "dBZ":
            if np.isposinf(frames).any():
                raise RequestError("reflectivities must be finite dBZ or -inf (no echo; NaN marks no data)")
            dbz = frames
        else:
            raise RequestError(f"unknown unit {unit!r}: use one of {', '.join(UNITS)}")
        return units.dbz_to_pixel(np.where(np.isnan(dbz), -math.inf, dbz)).astype(np.float32)

    def forecast_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The model on pixels (B, in_len, H, W) -> forecast pixels (B, out_len, H, W), clipped to [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(1, 0, 2, 3)[:, :, None]))
        with torch.no_grad():
            out = self.model(x.to(self.device)).clamp(0.0, 1.0)
        return out[:, :, 0].transpose(0, 1).float().cpu().numpy()

    def answer(
        self, out_pixels: np.ndarray, time_s: np.ndarray, coverage: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Forecast pixels (B, out_len, H, W), the input times (B, in_len) and ``coverage`` (B, H, W) ->
        ``rain_mm_h`` (B, out_len, H, W), rounded to :data:`RAIN_DECIMALS`, and the valid times ``time_s``
        int64 (B, out_len).

        As ``nowcast predict`` writes them: pixel 0 (-10 dBZ or less) is no rain, and so is every pixel
        outside the coverage of the last input frame."""
        rain = self.spec.zr.dbz_to_rain(units.pixel_to_dbz(out_pixels.astype(np.float64)))
        rain[(np.rint(out_pixels * 255.0) == 0) | ~coverage[:, None]] = 0.0
        leads_s = self.spec.interval_s * np.arange(1, self.spec.out_len + 1, dtype=np.int64)
        return {"rain_mm_h": np.round(rain, RAIN_DECIMALS), "time_s": time_s[:, -1:] + leads_s}

    def predict(self, frames, time_s, unit: str = UNITS[0]) -> dict[str, np.ndarray]:
        """:meth:`check_request`, :meth:`forecast_pixels` and :meth:`answer` in one."""
        pixels, times, coverage = self.check_request(frames, time_s, unit)
        return self.answer(self.forecast_pixels(pixels), times, coverage)


def load_nowcaster(model_dir: Path | str, device: str = "auto") -> Nowcaster:
    """The :class:`Nowcaster` of a local MLflow model directory logged by ``log_and_register_model``.

    NowcastError when the model carries no nowcaster metadata (logged before it existed, or not by nowcast).
    """
    model_dir = Path(model_dir)
    try:
        meta = (Model.load(str(model_dir)).metadata or {}).get(METADATA_KEY)
    except (OSError, MlflowException) as exc:
        raise NowcastError(f"{model_dir} is not an MLflow model ({exc})") from exc
    if not meta or not checkpoints.is_model_dir(model_dir / MODEL_FILES_DIR):
        raise NowcastError(
            f"the model at {model_dir} has no nowcaster (no metadata[{METADATA_KEY!r}] or model files): "
            "register it again with `nowcast train --register-as NAME`"
        )
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model, _ = checkpoints.load_model_files(model_dir / MODEL_FILES_DIR, device)
    enable_fast_path(model)
    return Nowcaster(model, NowcasterSpec.from_dict(meta), device)


# --------------------------------------------------------------------------- the MLflow flavor
def save_model(path, mlflow_model: Model, *, spec: NowcasterSpec, example: dict, **torch_kwargs) -> None:
    """Save an MLflow model with the ``pytorch`` flavor (``mlflow.pytorch.save_model(**torch_kwargs)``,
    which needs the model files in ``extra_files``) whose ``python_function`` flavor is the nowcaster,
    with its signature, input ``example`` (a request) and ``metadata["nowcaster"]``.

    Called by ``mlflow.models.Model.log(flavor=pipeline.serving, ...)``, which then checks that the
    example answers, through this module's :func:`_load_pyfunc`.
    """
    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **torch_kwargs)
    mlflow_model.flavors.pop("python_function", None)  # mlflow.pytorch's: pixels in, pixels out
    mlflow.pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        data=MODEL_FILES_DIR,
        conda_env="conda.yaml",  # written by mlflow.pytorch.save_model
        python_env="python_env.yaml",
    )
    mlflow_model.metadata = {**(mlflow_model.metadata or {}), METADATA_KEY: spec.to_dict()}
    mlflow_model.signature = spec.signature()
    for name in ("input_example.json", "serving_input_example.json"):
        (Path(path) / name).unlink(missing_ok=True)
    _save_example(mlflow_model, example, str(path))
    mlflow_model.save(str(Path(path) / "MLmodel"))


class _PyfuncNowcaster:
    """The ``python_function`` face of a :class:`Nowcaster` (what ``mlflow models serve`` calls)."""

    def __init__(self, nowcaster: Nowcaster):
        self.nowcaster = nowcaster

    def predict(self, model_input: dict, params: dict | None = None) -> dict[str, np.ndarray]:
        if not isinstance(model_input, dict) or not {"frames", "time_s"} <= set(model_input):
            raise MlflowException(
                'send {"inputs": {"frames": [...], "time_s": [...]}}', error_code=INVALID_PARAMETER_VALUE
            )
        try:
            return self.nowcaster.predict(
                model_input["frames"], model_input["time_s"], (params or {}).get("unit", UNITS[0])
            )
        except RequestError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> _PyfuncNowcaster:
    """MLflow's loader hook: ``data_path`` is the model's ``extra_files`` folder."""
    device = (model_config or {}).get("device") or "auto"
    return _PyfuncNowcaster(load_nowcaster(Path(data_path).parent, device))


# --------------------------------------------------------------------------- Ray Serve
def download_model(model_uri: str, tracking_uri: str | None) -> Path:
    """Download an MLflow model (``models:/``, ``runs:/``, a local path) -> its local directory."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except Exception as exc:  # noqa: BLE001 (MlflowException, OSError, ...)
        raise NowcastError(f"cannot load model {model_uri}: {exc}") from exc


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": "BAD_REQUEST", "message": message}, status_code=status)


@serve.deployment(name="nowcaster", max_ongoing_requests=64)
class NowcastDeployment:
    """One replica: the nowcaster of ``model_uri``; ``POST /invocations`` forecasts (requests batched up
    to ``max_batch_size`` per model call), ``GET /metadata`` tells the :class:`NowcasterSpec`."""

    def __init__(self, model_uri: str, tracking_uri: str | None, max_batch_size: int, device: str):
        self.nowcaster = load_nowcaster(download_model(model_uri, tracking_uri), device)
        self.model_uri = model_uri
        self._forecast.set_max_batch_size(max_batch_size)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _forecast(self, pixel_batches: list[np.ndarray]) -> list[np.ndarray]:
        """One model call for the requests that arrived together: each (B_i, in_len, H, W)."""
        sizes = np.cumsum([len(p) for p in pixel_batches])[:-1]
        out = await asyncio.to_thread(self.nowcaster.forecast_pixels, np.concatenate(pixel_batches))
        return np.split(out, sizes)

    async def __call__(self, request):
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path in ("", "/metadata"):
            return {"model_uri": self.model_uri, METADATA_KEY: self.nowcaster.spec.to_dict()}
        if request.method != "POST" or path != "/invocations":
            return _error(404, "POST /invocations forecasts; GET /metadata describes the model")
        try:
            body = json.loads(await request.body())
            inputs, params = body["inputs"], body.get("params") or {}
            pixels, times, coverage = self.nowcaster.check_request(
                inputs["frames"], inputs["time_s"], params.get("unit", UNITS[0])
            )
        except (ValueError, KeyError, TypeError):
            return _error(
                400, 'send JSON {"inputs": {"frames": [...], "time_s": [...]}, "params": {"unit": "mm/h"}}'
            )
        except RequestError as exc:
            return _error(400, str(exc))
        answer = self.nowcaster.answer(await self._forecast(pixels), times, coverage)
        return {"predictions": {k: v.tolist() for k, v in answer.items()}}


def serve_nowcaster(
    model_uri: str,
    tracking_uri: str | None = None,
    *,
    replicas: int = 1,
    max_batch_size: int = 8,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Serve the nowcaster of ``model_uri`` on Ray Serve at ``http://host:port/invocations`` until
    ``stop`` is set (default: until SIGINT or SIGTERM), then shut the application down.

    ``model_uri`` should name one version (``models:/NAME/VERSION``, a path): every replica loads it
    (a replica started later must not load another version). Each replica takes a GPU when the cluster
    has one per replica, else up to one CPU. ``tracking_uri`` must be absolute (replicas change directory).
    """
    if replicas < 1 or max_batch_size < 1:
        raise NowcastError("--replicas and --max-batch-size must be >= 1", exit_code=2)
    spec = load_nowcaster(download_model(model_uri, tracking_uri), "cpu").spec  # fails here, before Ray
    started_ray = connect_ray(ray_address)
    stop = stop or _stop_on_signals()
    try:
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= replicas else 0
        cpus = min(1.0, float(resources.get("CPU", 1)) / replicas)
        serve.start(http_options={"host": host, "port": int(port)})
        app = NowcastDeployment.options(
            num_replicas=replicas, ray_actor_options={"num_cpus": 0 if gpus else cpus, "num_gpus": gpus}
        ).bind(model_uri, tracking_uri, max_batch_size, "cuda" if gpus else "cpu")
        serve.run(app, name=APP_NAME, route_prefix="/")
        device = "a GPU" if gpus else f"{cpus:g} CPU"
        print(
            f"[serve] {model_uri} ({spec.in_len} frames of {spec.height}x{spec.width} every "
            f"{spec.interval_s} s -> {spec.out_len}): {replicas} replica(s) with {device} each, "
            f"batches of up to {max_batch_size} requests; POST http://{host}:{port}/invocations "
            "(Ctrl-C stops)",
            flush=True,
        )
        stop.wait()
    finally:
        if started_ray:
            ray.shutdown()  # the local cluster, Serve with it (serve.shutdown waits 30 s on its controller)
        else:
            serve.delete(APP_NAME)
    print("[serve] stopped", flush=True)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (this process's main thread)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
