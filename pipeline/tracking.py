"""MLflow tracking, model registry, the ``champion`` alias, and loading forecasters.

A *forecaster* is anything that maps radar inputs to forecasts: a trained model from the
MLflow registry or a training checkpoint, or a baseline (persistence, optical flow).
:func:`load_forecaster` turns any of these URIs into the same callable object::

    models:/NAME@ALIAS      registered model by alias (e.g. models:/nowcast@champion)
    models:/NAME/VERSION    registered model by version number
    /path/to/checkpoint     a checkpoint directory written by ``nowcast train`` (or its
                            model_state.pt, or a Ray run directory: its latest checkpoint)
    persistence             last observed frame repeated
    optical-flow            optical-flow extrapolation

Model files
-----------
A trained model is stored as two plain files, both in Ray checkpoints and inside the logged
MLflow model (as ``extra_files``):

- ``model_config.json``: ``model.config.to_dict()`` (rebuilt with ``trajgru.model_from_config``)
- ``model_state.pt``: the ``state_dict`` (tensors only; loaded with ``weights_only=True``)

so loading never unpickles code. The MLflow model itself is saved in the ``pt2``
(``torch.export``) format when the export succeeds, else ``pickle`` (see
:func:`log_and_register_model`).

Champion criterion
------------------
A registered version carries the alias ``champion`` if its validation score, the metric
:data:`CHAMPION_METRIC` of the run that produced it (= ``trajgru.metrics.champion_score``:
mean CSI at the 5 mm/h threshold over lead times, higher is better), is strictly higher than
the current champion's. The first version of a name always becomes champion.
"""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import NowcastError

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
#: Run metric holding a version's validation score (mean CSI at >= 5 mm/h; higher is better).
CHAMPION_METRIC = "val_champion_score"
DEFAULT_DB_NAME = "mlflow.db"
MODEL_CONFIG_FILE = "model_config.json"
MODEL_STATE_FILE = "model_state.pt"
BASELINE_IN_LEN = 5
BASELINE_OUT_LEN = 20

_URI_HELP = (
    "use models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint directory written by "
    "`nowcast train`, 'persistence' or 'optical-flow'"
)


# --------------------------------------------------------------------------- tracking URI
def resolve_tracking_uri(uri: str | None = None) -> str:
    """The MLflow tracking URI to use, always absolute.

    ``uri`` if given, else the environment variable ``MLFLOW_TRACKING_URI``, else a SQLite
    file ``mlflow.db`` in the current directory. Relative ``sqlite:///`` paths and plain
    directory paths are made absolute (Ray workers change directory, so a relative URI
    would point elsewhere on a worker).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
    uri = uri.strip()
    if not uri:
        return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB_NAME}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        if path.startswith("/") or path == ":memory:":
            return uri
        return f"sqlite:///{(Path.cwd() / path).resolve()}"
    if uri.startswith("file:"):
        return uri
    if "://" not in uri:  # a bare directory path: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def check_tracking_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise NowcastError if an http(s) tracking server does not answer ``/health``.

    MLflow's own client retries for minutes before failing; this fails in seconds with advice.
    Non-HTTP URIs (sqlite, file) are not checked.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (user URI)
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as exc:
        problem = str(exc)
    raise NowcastError(
        f"MLflow tracking server {tracking_uri} is not reachable ({problem}). Start it "
        "(`mlflow server --host 127.0.0.1 --port 5000`), fix --tracking-uri / "
        "MLFLOW_TRACKING_URI, or leave both unset to use a local SQLite file."
    )


def setup_experiment(tracking_uri: str | None, experiment: str) -> str:
    """Point MLflow at ``tracking_uri`` (resolved) and select/create ``experiment``.

    Returns the experiment id. Raises NowcastError if a server is unreachable.
    """
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    if client.get_experiment_by_name(experiment) is None:
        try:
            client.create_experiment(experiment, artifact_location=_artifact_location(uri, experiment))
        except Exception:  # noqa: BLE001 (created concurrently by another process)
            if client.get_experiment_by_name(experiment) is None:
                raise
    exp = mlflow.set_experiment(experiment)
    return exp.experiment_id


def _artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifact root for a new experiment: ``<db dir>/mlartifacts/<experiment>`` for a SQLite
    store (MLflow's default, ``./mlruns``, depends on the current directory); None (the
    server's or store's default) otherwise."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.endswith(":memory:"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return (db.parent / "mlartifacts" / safe).as_uri()


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree if it is a git checkout,
    else the installed ``nowcast`` package version, else ``"unknown"``."""
    src = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=src, capture_output=True, text=True, timeout=10, check=True,
        )
        if out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"nowcast {version('nowcast')}"
    except Exception:  # noqa: BLE001 (not installed)
        return "unknown"


def _client(tracking_uri: str | None = None):
    import mlflow

    if tracking_uri is not None:
        uri = resolve_tracking_uri(tracking_uri)
        check_tracking_reachable(uri)
        mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


# --------------------------------------------------------------------------- model files
def save_model_files(model, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``model_config.json`` and ``model_state.pt`` for an EncoderForecaster.

    ``model`` may be wrapped (DDP): its ``.module`` is used. Tensors are moved to the CPU.
    Returns the two paths.
    """
    import torch

    module = getattr(model, "module", model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / MODEL_CONFIG_FILE
    state_path = out_dir / MODEL_STATE_FILE
    config_path.write_text(json.dumps(module.config.to_dict(), indent=1, sort_keys=True))
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save(state, state_path)
    return config_path, state_path


def load_model_files(model_dir: Path | str, device: str = "cpu"):
    """Rebuild a model from ``model_config.json`` + ``model_state.pt`` in ``model_dir``.

    Returns ``(model in eval mode on device, config dict)``.
    """
    import torch

    from trajgru import model_from_config

    model_dir = Path(model_dir)
    config = json.loads((model_dir / MODEL_CONFIG_FILE).read_text())
    model = model_from_config(config)
    state = torch.load(model_dir / MODEL_STATE_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), config


# --------------------------------------------------------------------------- logging models
@dataclass
class LoggedModel:
    """What :func:`log_and_register_model` did."""

    model_uri: str                 # runs:/... or models:/m-... URI of the logged model
    registered_name: str | None
    registered_version: int | None
    serialization_format: str      # "pt2" or "pickle"


def _signature(in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
    """Tensor signature (S, B, 1, H, W) float32 with a variable batch dimension."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(shape):
        s = list(shape)
        s[1] = -1
        return Schema([TensorSpec(np.dtype(np.float32), tuple(s))])

    return ModelSignature(inputs=spec(in_shape), outputs=spec(out_shape))


def _pip_requirements() -> list[str]:
    """The model's runtime requirements, pinned to this environment's versions.

    Given explicitly because MLflow's inference runs the model in a subprocess (~20 s on a
    2-core machine) and would pin ``torch`` with a local label such as ``+cpu``.
    """
    import mlflow
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
            f"mlflow=={mlflow.__version__}"]


def log_and_register_model(
    model,
    input_example,
    register_as: str | None = None,
    *,
    name: str = "model",
    serialization_format: str | None = None,
) -> LoggedModel:
    """Log ``model`` to the active MLflow run and optionally register it.

    Parameters
    ----------
    model : EncoderForecaster (or a DDP wrapper of one)
    input_example : numpy float32 (in_len, B, 1, H, W) pixel values in [0, 1]. B >= 2 keeps the
        batch dimension dynamic in the pt2 export (torch.export specialises size-1 dims).
    register_as : registered-model name, or None to only log.
    serialization_format : "pt2", "pickle" or None. None tries ``pt2`` (torch.export; safe to
        load, MLflow's default) and falls back to ``pickle`` with a warning if export fails.

    The signature is inferred from the example and the model's output on it, with the batch
    dimension marked variable. ``model_config.json`` + ``model_state.pt`` are attached as
    ``extra_files``; :func:`load_forecaster` uses them.
    """
    import mlflow
    import numpy as np
    import torch

    module = getattr(model, "module", model).cpu().eval()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    signature = _signature(example.shape, out.shape)
    formats = [serialization_format] if serialization_format else ["pt2", "pickle"]
    with tempfile.TemporaryDirectory() as tmp:
        extra = [str(p) for p in save_model_files(module, tmp)]
        last_exc: Exception | None = None
        for fmt in formats:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    info = mlflow.pytorch.log_model(
                        module,
                        name=name,
                        input_example=example,
                        signature=signature,
                        serialization_format=fmt,
                        extra_files=extra,
                        pip_requirements=_pip_requirements(),
                    )
                break
            except Exception as exc:  # noqa: BLE001 (export failures are many kinds)
                last_exc = exc
                log.warning("logging the model as %s failed (%s); trying the next format", fmt, exc)
        else:
            raise NowcastError(f"could not log the model to MLflow: {last_exc}") from last_exc
    version = None
    if register_as:
        mv = mlflow.register_model(info.model_uri, register_as)
        version = int(mv.version)
    return LoggedModel(info.model_uri, register_as, version, fmt)


# --------------------------------------------------------------------------- champion alias
def promote(name: str, version: int | str, alias: str = CHAMPION_ALIAS,
            tracking_uri: str | None = None) -> None:
    """Give registered model ``name`` version ``version`` the alias (moves it if held)."""
    client = _client(tracking_uri)
    try:
        client.get_model_version(name, str(version))
        client.set_registered_model_alias(name, alias, str(version))
    except Exception as exc:  # noqa: BLE001 (MlflowException; keep message)
        raise NowcastError(
            f"cannot set alias {alias!r} on {name} version {version}: {exc}. Check the name "
            "and version (`mlflow models` UI or MlflowClient.search_model_versions)."
        ) from exc


def champion_version(name: str, alias: str = CHAMPION_ALIAS, tracking_uri: str | None = None):
    """The ModelVersion holding ``alias``, or None if no version holds it."""
    client = _client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 (RESOURCE_DOES_NOT_EXIST / INVALID_PARAMETER_VALUE)
        return None


def version_score(name: str, version: int | str, metric_key: str = CHAMPION_METRIC,
                  tracking_uri: str | None = None) -> float | None:
    """The ``metric_key`` value of the run that produced version ``version`` (None if absent)."""
    client = _client(tracking_uri)
    mv = client.get_model_version(name, str(version))
    if not mv.run_id:
        return None
    return client.get_run(mv.run_id).data.metrics.get(metric_key)


def promote_if_better(name: str, version: int | str, score: float,
                      metric_key: str = CHAMPION_METRIC, alias: str = CHAMPION_ALIAS,
                      tracking_uri: str | None = None) -> bool:
    """Move ``alias`` to ``version`` if ``score`` beats the current champion's (higher wins).

    The champion's score is read from its run's ``metric_key``. If no version holds the alias
    the new version takes it whatever its score. A champion without the metric counts as
    -inf; a NaN ``score`` never beats an existing champion; ties keep the current champion.
    Returns True if the alias moved to ``version``.
    """
    client = _client(tracking_uri)
    current = champion_version(name, alias)
    if current is not None and str(current.version) == str(version):
        return False
    if current is not None:
        best = version_score(name, current.version, metric_key)
        best = -math.inf if best is None or math.isnan(best) else best
        if score is None or math.isnan(score) or not score > best:
            log.info("%s v%s (score %s) does not beat %s v%s (score %s)",
                     name, version, score, alias, current.version, best)
            return False
    promote(name, version, alias)
    client.set_model_version_tag(name, str(version), metric_key, str(score))
    return True


# --------------------------------------------------------------------------- forecasters
@dataclass
class Forecaster:
    """A callable from radar inputs to forecasts, whatever produced it.

    ``forecaster(inputs)``: inputs torch float (in_len, B, 1, H, W) pixel values in [0, 1] ->
    forecast (out_len, B, 1, H, W) on ``device`` (inputs are moved there), computed under
    ``torch.no_grad``. Model outputs are not clamped (clamp when writing frames).
    """

    fn: Callable[[Any], Any]
    in_len: int
    out_len: int
    name: str
    run_id: str | None = None
    model_config: dict | None = None
    device: str = "cpu"
    module: Any = field(default=None, repr=False)   # the nn.Module for trained models

    def __call__(self, inputs):
        import torch

        if inputs.shape[0] != self.in_len:
            raise NowcastError(
                f"{self.name} needs {self.in_len} input frames, got {inputs.shape[0]}"
            )
        with torch.no_grad():
            return self.fn(inputs.to(self.device))


def _baseline(uri: str, device: str, in_len: int, out_len: int) -> Forecaster:
    from trajgru import baselines

    fn = baselines.persistence if uri == "persistence" else baselines.optical_flow
    return Forecaster(lambda x: fn(x, out_len), in_len, out_len, uri, device=device)


def _model_forecaster(model, config: dict, name: str, run_id: str | None, device: str) -> Forecaster:
    return Forecaster(model, int(config["in_len"]), int(config["out_len"]), name, run_id,
                      config, device, module=model)


def _find_checkpoint_dir(path: Path) -> Path:
    """The directory holding the model files for a checkpoint path (see module doc)."""
    if path.is_file():
        path = path.parent
    if (path / MODEL_CONFIG_FILE).exists():
        return path
    ckpts = sorted(p for p in path.glob("checkpoint_*") if (p / MODEL_CONFIG_FILE).exists())
    if ckpts:
        return ckpts[-1]
    raise NowcastError(f"{path} holds no {MODEL_CONFIG_FILE}: it is not a checkpoint; {_URI_HELP}")


def _parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, None, ALIAS); ``models:/NAME/VERSION`` -> (NAME, VERSION, None)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise NowcastError(f"malformed model URI {uri!r}: {_URI_HELP}", exit_code=2)


def _registry_forecaster(uri: str, tracking_uri: str | None, device: str) -> Forecaster:
    import mlflow

    name, version, alias = _parse_models_uri(uri)
    client = _client(tracking_uri or resolve_tracking_uri(None))
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, version))
    except Exception as exc:  # noqa: BLE001
        raise NowcastError(
            f"model {uri} not found at tracking URI {mlflow.get_tracking_uri()} ({exc}). "
            "Check --tracking-uri / MLFLOW_TRACKING_URI and the name/version/alias; "
            "`nowcast train --register-as NAME` registers versions."
        ) from exc
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}"))
    extra = local / "extra_files"
    if not (extra / MODEL_CONFIG_FILE).exists():
        raise NowcastError(
            f"{uri} was not logged by nowcast (no extra_files/{MODEL_CONFIG_FILE}); "
            "log models with pipeline.tracking.log_and_register_model."
        )
    model, config = load_model_files(extra, device)
    return _model_forecaster(model, config, f"{name}/{mv.version}", mv.run_id, device)


def load_forecaster(uri: str, tracking_uri: str | None = None, device: str = "cpu",
                    in_len: int = BASELINE_IN_LEN, out_len: int = BASELINE_OUT_LEN) -> Forecaster:
    """A :class:`Forecaster` for ``uri`` (see the module doc for the forms).

    ``in_len``/``out_len`` apply to the baselines only (a trained model has its own).
    Raises NowcastError for unknown URIs, missing checkpoints, unknown registered models or
    an unreachable tracking server.
    """
    uri = str(uri).strip()
    if uri in ("persistence", "optical-flow", "optical_flow"):
        return _baseline("persistence" if uri == "persistence" else "optical-flow",
                         device, in_len, out_len)
    if uri.startswith("models:/"):
        return _registry_forecaster(uri, tracking_uri, device)
    path = Path(uri).expanduser()
    if path.exists():
        ckpt = _find_checkpoint_dir(path.resolve())
        model, config = load_model_files(ckpt, device)
        run_id = None
        meta = ckpt / "meta.json"
        if meta.exists():
            run_id = json.loads(meta.read_text()).get("mlflow_run_id")
        return _model_forecaster(model, config, str(ckpt), run_id, device)
    raise NowcastError(f"unknown model {uri!r} (no such file or directory); {_URI_HELP}",
                       exit_code=2)
