"""MLflow, and only MLflow: the tracking URI, experiments and runs, logging, model registration and
the ``champion`` alias.

Logged models carry the model files of ``pipeline.checkpoints`` as ``extra_files``
(:func:`log_and_register_model`); :func:`registered_model_files` finds them again for a
``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI. The MLflow model itself is saved in the
``pt2`` (``torch.export``) format when the export succeeds, else ``pickle``.

Metric names
------------
Skill scores have one naming, for training's validation and for ``nowcast evaluate`` alike
(:func:`skill_metrics`, :func:`skill_curves`): ``{split}_csi_5mm_h``, ``{split}_hss_0.5mm_h``,
``{split}_b_mse`` ... (means over lead times), and ``{split}_csi_5mm_h_by_lead`` (step = lead time
in minutes), where ``split`` is the store's split name (``valid``, ``test``).

Champion criterion
------------------
A registered version carries the alias ``champion`` if its validation score, the metric
:data:`CHAMPION_METRIC` of the run that produced it (= ``trajgru.metrics.champion_score``:
mean CSI at the 5 mm/h threshold over lead times on the ``valid`` split, higher is better), is
strictly higher than the current champion's. A version without a finite score never takes the alias.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, RunTag
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from pipeline import checkpoints
from pipeline.errors import NowcastError
from trajgru.metrics import nanmean

log = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
#: The split whose scores choose the champion.
CHAMPION_SPLIT = "valid"
#: Run metric holding a version's validation score (mean CSI at >= 5 mm/h; higher is better).
CHAMPION_METRIC = f"{CHAMPION_SPLIT}_champion_score"
#: Its name before the metric names were unified (read when a run has no CHAMPION_METRIC).
_LEGACY_CHAMPION_METRIC = "val_champion_score"
#: The run metric (at the step it came from) and the model-version tag holding the validation score of
#: the registered weights: the best validation of the run.
BEST_METRIC = f"best_{CHAMPION_METRIC}"
#: Tag holding the name a run was started under (``nowcast train --run-name``): resuming finds the run by it.
RUN_NAME_TAG = "nowcast.run_name"
DEFAULT_DB_NAME = "mlflow.db"


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
        path = uri[len("sqlite:///") :]
        if path.startswith("/") or path == ":memory:":
            return uri
        return f"sqlite:///{(Path.cwd() / path).resolve()}"
    if uri.startswith("file:"):
        return uri
    if "://" not in uri:  # a bare directory path: MLflow's file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def existing_tracking_uri(uri: str | None = None) -> str | None:
    """The tracking URI to read from without creating a store: ``uri`` or ``MLFLOW_TRACKING_URI``
    (resolved) when given, else the default ``./mlflow.db`` only if that file exists, else None."""
    if (uri or os.environ.get("MLFLOW_TRACKING_URI") or "").strip():
        return resolve_tracking_uri(uri)
    default = Path.cwd() / DEFAULT_DB_NAME
    return resolve_tracking_uri(None) if default.is_file() else None


def check_tracking_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise NowcastError if an http(s) tracking server does not answer ``/health``.

    MLflow's own client retries for minutes before failing; this fails in seconds with advice.
    Non-HTTP URIs (sqlite, file) are not checked.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
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
    db = Path(tracking_uri[len("sqlite:///") :])
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return (db.parent / "mlartifacts" / safe).as_uri()


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree if it is a git checkout,
    else the installed ``nowcast`` package version, else ``"unknown"``."""
    src = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        if out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"nowcast {package_version('nowcast')}"
    except Exception:  # noqa: BLE001 (not installed)
        return "unknown"


def _client(tracking_uri: str | None = None):
    if tracking_uri is not None:
        uri = resolve_tracking_uri(tracking_uri)
        check_tracking_reachable(uri)
        mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


# --------------------------------------------------------------------------- runs
def filter_value(text: str) -> str:
    """``text`` quoted as a string value of an MLflow search filter (MLflow has no escapes: the quote
    character must not occur inside); NowcastError when ``text`` holds both kinds of quote."""
    text = str(text)
    for quote in ("'", '"'):
        if quote not in text:
            return f"{quote}{text}{quote}"
    raise NowcastError(
        f"{text!r} holds both kinds of quote and cannot be searched for in MLflow; rename it", exit_code=2
    )


def find_or_create_run(tracking_uri: str, experiment: str, run_name: str) -> tuple[str, bool]:
    """The run started under ``run_name`` (tag :data:`RUN_NAME_TAG`; the newest if several), or a new
    one. Returns ``(run_id, created)``."""
    exp_id = setup_experiment(tracking_uri, experiment)
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = {filter_value(run_name)}",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        return found[0].info.run_id, False
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name})
    return run.info.run_id, True


def run_exists(run_id: str, tracking_uri: str | None = None) -> bool:
    """True when the tracking store at ``tracking_uri`` holds the run ``run_id``."""
    try:
        _client(tracking_uri).get_run(run_id)
        return True
    except Exception:  # noqa: BLE001 (MlflowException RESOURCE_DOES_NOT_EXIST)
        return False


def log_run_setup(run_id: str, params: dict, dicts: dict[str, dict], tags: dict[str, str]) -> None:
    """Log parameters (lists and dicts as JSON), JSON artifacts ``{file name: dict}`` and tags into a run.

    The run is left FINISHED (the fluent API ends it); :class:`RunLogger` reopens it as RUNNING.
    """
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()})
        for name, value in dicts.items():
            mlflow.log_dict(value, name)
        mlflow.set_tags(tags)


def set_run_status(run_id: str, status: str) -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    mlflow.MlflowClient().set_terminated(run_id, status)


def last_logged_step(run_id: str, keys: Sequence[str], tracking_uri: str | None = None) -> int:
    """The highest step at which run ``run_id`` has any of the metrics ``keys`` (0 when none)."""
    client = _client(tracking_uri)
    return max((m.step for key in keys for m in client.get_metric_history(run_id, key)), default=0)


class RunLogger:
    """Logging into an existing run from one process (a Ray worker); a no-op when not ``active``
    (the other ranks). Starts the run (RUNNING) on construction, ends it with :meth:`end`.

    ``resume_keys``: metrics whose last logged step (:func:`last_logged_step`) marks what an earlier
    attempt of the run already logged; metrics and artifacts of steps up to it are not logged again,
    so a resumed run never logs a step twice.
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        active: bool,
        system_metrics: bool = False,
        system_metrics_interval_s: float = 10.0,
        resume_keys: Sequence[str] = (),
    ):
        self.active, self.run_id, self.logged_through = active, run_id, 0
        if not active:
            return
        mlflow.set_tracking_uri(tracking_uri)
        self.logged_through = last_logged_step(run_id, resume_keys) if resume_keys else 0
        kwargs = {}
        if system_metrics:
            kwargs["log_system_metrics"] = True
            mlflow.set_system_metrics_sampling_interval(system_metrics_interval_s)
        mlflow.start_run(run_id=run_id, **kwargs)

    def metrics(self, values: dict[str, float], step: int) -> None:
        """Log the finite values among ``values`` at ``step`` (unless an earlier attempt logged that step)."""
        if self.active and step > self.logged_through:
            clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
            mlflow.log_metrics(clean, step=step)

    def artifacts(self, local_dir: Path, artifact_path: str, step: int | None = None) -> None:
        """Log the files in ``local_dir`` under ``artifact_path`` (those of a ``step`` an earlier attempt
        logged are skipped)."""
        if self.active and (step is None or step > self.logged_through):
            mlflow.log_artifacts(str(local_dir), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.active:
            mlflow.end_run(status)


def log_to_run(
    *,
    tracking_uri: str | None,
    run_id: str | None,
    experiment: str,
    run_name: str,
    new_run_tags: dict[str, str],
    metrics: Sequence[tuple[str, float, int]],
    tags: dict[str, str],
    files: Sequence[Path],
    artifact_path: str,
) -> str:
    """Log ``metrics`` ((key, value, step) triples), ``tags`` and ``files`` (under ``artifact_path``).

    Into ``run_id`` when given, else into a new run ``run_name`` (tags ``new_run_tags``) of ``experiment``,
    which is ended afterwards. Uses MlflowClient, so an active fluent run is untouched. Returns the run id.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_reachable(uri)
    client = mlflow.MlflowClient(uri)
    created = False
    if run_id is None:
        experiment_id = setup_experiment(uri, experiment)
        run_id, created = (
            client.create_run(experiment_id, run_name=run_name, tags=new_run_tags).info.run_id,
            True,
        )
    now_ms = int(time.time() * 1000)
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now_ms, int(step)) for k, v, step in metrics],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )  # log_batch splits large batches
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    finally:
        if created:
            client.set_terminated(run_id)
    return run_id


# --------------------------------------------------------------------------- metric names
def skill_metrics(result: dict, split: str) -> dict[str, float]:
    """MLflow metrics of ``SkillScores.result()`` on ``split``, the one naming (module doc): CSI and HSS per
    threshold (``{split}_csi_5mm_h``), MSE, MAE, B-MSE and B-MAE (``{split}_b_mse``), each the mean over
    lead times ignoring NaN. Values that are NaN (no event at any lead time) are left out."""
    out: dict[str, float] = {}
    thresholds = np.asarray(result["thresholds"], dtype=float)
    for name in ("csi", "hss"):
        scores = np.asarray(result[name], dtype=float)
        for k, thr in enumerate(thresholds):
            out[f"{split}_{name}_{thr:g}mm_h"] = nanmean(scores[:, k])
    for name in ("mse", "mae", "b_mse", "b_mae"):
        if name in result:
            out[f"{split}_{name}"] = nanmean(np.asarray(result[name], dtype=float))
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def skill_curves(result: dict, split: str, interval_s: int) -> list[tuple[str, float, int]]:
    """CSI and HSS per threshold against lead time as ``(key, value, lead minutes)`` triples, keys
    ``{split}_csi_5mm_h_by_lead``; NaN values left out."""
    curves = []
    for name in ("csi", "hss"):
        scores = np.asarray(result[name], dtype=float)
        lead_min = [int((t + 1) * interval_s // 60) for t in range(scores.shape[0])]
        for k, thr in enumerate(np.asarray(result["thresholds"], dtype=float)):
            curves += [
                (f"{split}_{name}_{thr:g}mm_h_by_lead", float(v), m)
                for v, m in zip(scores[:, k], lead_min)
                if math.isfinite(v)
            ]
    return curves


# --------------------------------------------------------------------------- logging models
@dataclass
class LoggedModel:
    """What :func:`log_and_register_model` did."""

    model_uri: str  # runs:/... or models:/m-... URI of the logged model
    registered_name: str | None
    registered_version: int | None
    serialization_format: str  # "pt2" or "pickle"


def _signature(in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
    """Tensor signature (S, B, 1, H, W) float32 with a variable batch dimension."""

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
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"numpy=={np.__version__}",
        f"mlflow=={mlflow.__version__}",
    ]


def log_and_register_model(
    model,
    input_example,
    register_as: str | None = None,
    *,
    name: str = "model",
    serialization_format: str | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> LoggedModel:
    """Log ``model`` to the active MLflow run (or to run ``run_id`` at ``tracking_uri``) and optionally
    register it.

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
    ``extra_files``; :func:`registered_model_files` finds them.
    """
    if run_id is not None:
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            return log_and_register_model(
                model, input_example, register_as, name=name, serialization_format=serialization_format
            )
    module = getattr(model, "module", model).cpu().eval()
    example = np.ascontiguousarray(input_example, dtype=np.float32)
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    signature = _signature(example.shape, out.shape)
    formats = [serialization_format] if serialization_format else ["pt2", "pickle"]
    with tempfile.TemporaryDirectory() as tmp:
        extra = [str(p) for p in checkpoints.save_model_files(module, tmp)]
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
def _finite(score) -> bool:
    return score is not None and math.isfinite(float(score))


def promote(
    name: str,
    version: int | str,
    alias: str = CHAMPION_ALIAS,
    tracking_uri: str | None = None,
    force: bool = False,
) -> None:
    """Give registered model ``name`` version ``version`` the alias (moves it if held).

    The ``champion`` alias goes only to a version with a validation score (:data:`CHAMPION_METRIC`
    of its run), unless ``force``.
    """
    client = _client(tracking_uri)
    try:
        client.get_model_version(name, str(version))
    except Exception as exc:  # noqa: BLE001 (MlflowException; keep message)
        raise NowcastError(
            f"cannot set alias {alias!r} on {name} version {version}: {exc}. Check the name "
            "and version (`mlflow models` UI or MlflowClient.search_model_versions)."
        ) from exc
    if alias == CHAMPION_ALIAS and not force and not _finite(version_score(name, version)):
        raise NowcastError(
            f"{name} version {version} has no validation score ({CHAMPION_METRIC} of its run), so "
            f"it does not become {alias}; pass --force to promote it anyway",
            exit_code=2,
        )
    client.set_registered_model_alias(name, alias, str(version))


def champion_version(name: str, alias: str = CHAMPION_ALIAS, tracking_uri: str | None = None):
    """The ModelVersion holding ``alias``, or None if no version holds it."""
    client = _client(tracking_uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 (RESOURCE_DOES_NOT_EXIST / INVALID_PARAMETER_VALUE)
        return None


def model_version_label(uri: str, tracking_uri: str | None = None) -> str | None:
    """``NAME/VERSION`` that a ``models:/`` URI points at now (an alias is looked up each call, so a
    moved alias shows), or None for other URIs. NowcastError when the name or alias is unknown."""
    if not str(uri).startswith("models:/"):
        return None
    name, version, alias = parse_models_uri(uri)
    if version is not None:
        return f"{name}/{version}"
    mv = champion_version(name, alias, tracking_uri)
    if mv is None:
        raise NowcastError(f"no version of {name} holds the alias {alias!r} (at {mlflow.get_tracking_uri()})")
    return f"{name}/{mv.version}"


def tag_version_score(
    name: str, version: int | str, score: float, step: int | None, tracking_uri: str | None = None
) -> None:
    """Record on a model version the validation score of its weights and the step they come from."""
    client = _client(tracking_uri)
    client.set_model_version_tag(name, str(version), BEST_METRIC, str(score))
    client.set_model_version_tag(name, str(version), "best_step", str(step))


def version_score(
    name: str, version: int | str, metric_key: str = CHAMPION_METRIC, tracking_uri: str | None = None
) -> float | None:
    """The validation score of version ``version``: its :data:`BEST_METRIC` tag (the registered weights'
    score), else the ``metric_key`` value of the run that produced it (None if absent; for
    :data:`CHAMPION_METRIC`, runs logged before the metric names were unified are read too)."""
    client = _client(tracking_uri)
    mv = client.get_model_version(name, str(version))
    tagged = (mv.tags or {}).get(BEST_METRIC)
    if tagged is not None:
        return float(tagged)
    if not mv.run_id:
        return None
    metrics = client.get_run(mv.run_id).data.metrics
    if metric_key == CHAMPION_METRIC and metric_key not in metrics:
        return metrics.get(_LEGACY_CHAMPION_METRIC)
    return metrics.get(metric_key)


def promote_if_better(
    name: str,
    version: int | str,
    score: float | None,
    metric_key: str = CHAMPION_METRIC,
    alias: str = CHAMPION_ALIAS,
    tracking_uri: str | None = None,
) -> bool:
    """Move ``alias`` to ``version`` if ``score`` beats the current champion's (higher wins).

    A ``score`` that is None or NaN (no validation clips, no rain in them) never takes the alias, not
    even the first time. The champion's score is :func:`version_score`; a champion without one counts
    as -inf; ties keep the current champion. Returns True if the alias moved.
    """
    client = _client(tracking_uri)
    if not _finite(score):
        log.warning("%s v%s has no validation score: it does not become %s", name, version, alias)
        return False
    current = champion_version(name, alias)
    if current is not None and str(current.version) == str(version):
        return False
    if current is not None:
        best = version_score(name, current.version, metric_key)
        best = best if _finite(best) else -math.inf
        if not score > best:
            log.info(
                "%s v%s (score %s) does not beat %s v%s (score %s)",
                name,
                version,
                score,
                alias,
                current.version,
                best,
            )
            return False
    client.set_registered_model_alias(name, alias, str(version))
    client.set_model_version_tag(name, str(version), metric_key, str(score))
    return True


# --------------------------------------------------------------------------- registered models
def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, None, ALIAS); ``models:/NAME/VERSION`` -> (NAME, VERSION, None).

    NowcastError (exit code 2) for anything else.
    """
    rest = uri[len("models:/") :].strip("/") if uri.startswith("models:/") else ""
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise NowcastError(
        f"malformed model URI {uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION", exit_code=2
    )


def registered_model_files(uri: str, tracking_uri: str | None = None) -> tuple[Path, str, str | None]:
    """Download the model files of a registered version -> (local model directory, ``NAME/VERSION``,
    the run that logged it).

    Raises NowcastError for a malformed URI, an unknown name/version/alias, an unreachable tracking
    server, or a model that was not logged by :func:`log_and_register_model`.
    """
    name, version, alias = parse_models_uri(uri)
    client = _client(tracking_uri or resolve_tracking_uri(None))
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except Exception as exc:  # noqa: BLE001
        raise NowcastError(
            f"model {uri} not found at tracking URI {mlflow.get_tracking_uri()} ({exc}). "
            "Check --tracking-uri / MLFLOW_TRACKING_URI and the name/version/alias; "
            "`nowcast train --register-as NAME` registers versions."
        ) from exc
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}"))
    extra = local / "extra_files"
    if not checkpoints.is_model_dir(extra):
        raise NowcastError(
            f"{uri} was not logged by nowcast (no extra_files/{checkpoints.MODEL_CONFIG_FILE}); "
            "log models with pipeline.tracking.log_and_register_model."
        )
    return extra, f"{name}/{mv.version}", mv.run_id
