"""The driver of ``nowcast train``: checks before Ray starts (store, splits, the run's lock, resume point),
the MLflow run, Ray Train, and after training the logged, registered and maybe promoted model."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipeline import checkpoints, files, tracking
from pipeline.dataset import ClipDataset
from pipeline.errors import NowcastError, check
from pipeline.raycluster import DriverLink, connect_ray, ray_logs_dir
from pipeline.store import Store
from pipeline.train.config import TrainConfig
from pipeline.train.validation import validation_starts
from pipeline.train.worker import WorkerResult, train_loop_per_worker
from trajgru.model import build_model


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_id: str  # MLflow run
    final_step: int
    checkpoint_path: str | None  # latest Ray checkpoint directory (load_forecaster accepts it)
    model_uri: str | None  # logged MLflow model
    registered_version: int | None
    val_scores: dict | None  # SkillScores.to_json_dict() of the last validation
    promoted: bool
    best_step: int | None = None  # the step of the registered (best validated) weights
    stopped_early: bool = False
    segments: list = field(default_factory=list)  # [[first, last] step per attempt]
    seconds: float = 0.0


def _with_store_frame_size(cfg: TrainConfig, store: Store) -> TrainConfig:
    """``cfg`` with the store's frame (H, W); NowcastError if --height/--width disagree with it."""
    height, width = store.frame_size
    for name, want, have in (("height", cfg.height, height), ("width", cfg.width, width)):
        if want is not None and want != have:
            raise NowcastError(
                f"--{name} {want} differs from the store's frames ({height}x{width}); "
                "ingest a store at the size you want to train on, or drop the option.",
                exit_code=2,
            )
    return dataclasses.replace(cfg, height=height, width=width)


def _mlflow_run(cfg: TrainConfig, model_config: dict, store: Store) -> str:
    """Find the MLflow run of ``cfg.run_name`` (resume) or create it and log its parameters."""
    run_id, created = tracking.find_or_create_run(cfg.tracking_uri, cfg.experiment, cfg.run_name)
    if created:
        params = dataclasses.asdict(cfg)
        params.update({f"model.{k}": v for k, v in model_config.items()})
        tracking.log_run_setup(
            run_id,
            params,
            {"store_fingerprint.json": store.fingerprint(), "model_config.json": model_config},
            {"code_version": tracking.code_version(), "store": cfg.store},
        )
    return run_id


def raise_if_stopped(result: WorkerResult, checkpoint_path: str | None, run_name: str) -> None:
    """NowcastError if the workers stopped on a non-finite loss or left no checkpoint."""
    if result.status == "non_finite":
        kept = (
            f"the last good checkpoint, {checkpoint_path} "
            f"(step {checkpoints.read_meta(checkpoint_path)['step']}), is kept"
            if checkpoint_path
            else "there is no checkpoint yet (the failure came before the first one)"
        )
        raise NowcastError(
            f"training stopped: {result.message}; {kept}. Lower --lr or --clip-norm, or check the "
            "store for corrupt frames; then re-run."
        )
    if checkpoint_path is None:
        raise NowcastError(f"run {run_name!r} produced no checkpoint; check --steps.")


def _input_example(store: Store, model_config: dict) -> np.ndarray:
    """Two validation (or training) clips' inputs, float32 (in_len, 2, 1, H, W)."""
    in_len = model_config["in_len"]
    for split, protocol in (("valid", "sequent"), ("train", "random")):
        starts = store.clip_starts(split, protocol)
        if len(starts):
            ds = ClipDataset(store, starts[:2], seq_len=in_len)
            clips = [ds[i][0].numpy() for i in range(len(ds))]
            while len(clips) < 2:
                clips.append(clips[0])
            return np.stack(clips, axis=1).astype(np.float32)
    return np.zeros((in_len, 2, 1, model_config["height"], model_config["width"]), dtype=np.float32)


def _finish_model(cfg: TrainConfig, store: Store, run_id: str, checkpoint_dir: str, result: WorkerResult):
    """Log the checkpoint's best validated weights (the last ones when it was never validated) into the
    run, register them and apply the champion rule with their validation score."""
    model_dir = checkpoints.served_model_dir(checkpoint_dir)
    model, model_config = checkpoints.load_model_files(model_dir)
    best_step = result.best_step
    score = float("nan") if result.best_score is None else float(result.best_score)
    logged_before = (
        best_step and tracking.last_logged_step(run_id, [tracking.BEST_METRIC], cfg.tracking_uri) >= best_step
    )
    tracking.log_to_run(
        tracking_uri=cfg.tracking_uri,
        run_id=run_id,
        experiment=cfg.experiment,
        run_name=cfg.run_name,
        new_run_tags={},
        metrics=[(tracking.BEST_METRIC, score, best_step)] if best_step and not logged_before else [],
        tags={"best_step": best_step if best_step else "none (never validated)"},
        files=[],
        artifact_path="",
    )
    logged = tracking.log_and_register_model(
        model,
        _input_example(store, model_config),
        cfg.register_as,
        serialization_format=cfg.model_format,
        run_id=run_id,
        tracking_uri=cfg.tracking_uri,
        store=store,
    )
    promoted = False
    if logged.registered_version is not None:
        tracking.tag_version_score(cfg.register_as, logged.registered_version, score, best_step)
        promoted = tracking.promote_if_better(cfg.register_as, logged.registered_version, score)
        scored = (
            f"validation CSI >= 5 mm/h {score:.4f}"
            if math.isfinite(score)
            else "no validation score, so it cannot become champion"
        )
        print(
            f"[train] registered {cfg.register_as} version {logged.registered_version}: the weights of step "
            f"{best_step or result.final_step} ({scored}){' (now champion)' if promoted else ''}",
            flush=True,
        )
    return logged, promoted


def _model_config(cfg: TrainConfig) -> dict:
    try:
        return build_model(cfg.preset, cfg.cell, **cfg.model_overrides()).config.to_dict()
    except ValueError as exc:
        raise NowcastError(f"cannot build the {cfg.preset} model: {exc}", exit_code=2) from exc


#: A run's record beside its checkpoints: the store it trains on (:func:`check_run_store`).
RUN_RECORD = "nowcast_run.json"
#: The run's lock file beside it (:func:`_run_lock`).
RUN_LOCK = ".nowcast_train.lock"


def check_splits(cfg: TrainConfig, store: Store) -> None:
    """Before Ray starts: NowcastError when the train split cannot give every worker a clip; a warning
    when there is nothing to validate on (the model then gets no score and cannot become champion)."""
    n_train = len(store.clip_starts("train", "random"))
    if n_train < cfg.workers:
        raise NowcastError(
            f"the train split of {store.path} has {n_train} training clip(s) and {cfg.workers} worker(s) "
            "need at least one each; check the splits with `nowcast info`, re-ingest with more days in "
            "train (--split), or use fewer --workers",
            exit_code=2,
        )
    if not len(validation_starts(store, cfg.val_clips)):
        print(
            f"[train] warning: the valid split of {store.path} has no clips: the model gets no validation "
            "score and does not become champion",
            flush=True,
        )


def _store_identity(store: Store) -> dict:
    """What must match for a run to resume on a store: its fingerprint without its path (a moved store is
    the same data)."""
    return {k: v for k, v in store.fingerprint().items() if k != "path"}


def check_run_store(cfg: TrainConfig, store: Store) -> None:
    """Before Ray starts: a run name resumes only on the store it started on (same fingerprint), unless
    ``cfg.force``; records the store for the next resume (``<storage>/<run name>/nowcast_run.json``)."""
    record = Path(cfg.storage_path) / cfg.run_name / RUN_RECORD
    identity = _store_identity(store)
    if record.exists():
        started_on = json.loads(record.read_text())
        if started_on.get("store_fingerprint") == identity:
            return
        if not cfg.force:
            raise NowcastError(
                f"run {cfg.run_name!r} started on another store ({started_on.get('store')}) or on this one "
                f"before it changed, and {cfg.store} differs from it; resuming would train on different "
                "clips. Use another --run-name for a new run, or --force to resume on this store anyway",
                exit_code=2,
            )
        print(
            f"[train] --force: resuming {cfg.run_name} on {cfg.store}, not the store it started on",
            flush=True,
        )
    files.write_json(record, {"store": cfg.store, "store_fingerprint": identity})


def _move_aside(checkpoint_dir: Path, folder: Path) -> Path:
    """Move the files of a checkpoint into ``folder/<its name>`` (created); its own folder stays, empty."""
    aside = folder / checkpoint_dir.name
    aside.mkdir(parents=True, exist_ok=True)
    checkpoint_dir.mkdir(exist_ok=True)
    for item in checkpoint_dir.iterdir():
        os.replace(item, aside / item.name)
    return aside


def resume_point(cfg: TrainConfig) -> str | None:
    """Before Ray starts: check the checkpoints Ray would resume the run from.

    - A checkpoint folder that Ray's run snapshot does not list (written by an attempt whose driver died
      before Ray registered it) is moved into the run's ``unregistered/`` folder, so it neither counts
      nor lingers beside the ``num_to_keep`` that Ray manages.
    - The files of a damaged (or missing) latest checkpoint (:func:`pipeline.checkpoints.problem`) are moved
      into ``damaged/``, leaving its folder empty (the snapshot must still find it), and the previous good
      checkpoint is returned: the workers resume from it, and a message says so.

    Returns None when there is nothing to resume or the latest checkpoint is fine. NowcastError when no
    checkpoint of the run is usable. Nothing is deleted.
    """
    run_dir = Path(cfg.storage_path) / cfg.run_name
    try:
        with _ray_train_info_off():
            result = ray.train.Result.from_path(str(run_dir))
    except Exception:  # noqa: BLE001 (RuntimeError: no run there yet)
        return None
    tracked = {Path(ckpt.path).name for ckpt, _ in result.best_checkpoints or []}
    for folder in sorted(run_dir.glob("checkpoint_*")):
        if folder.is_dir() and folder.name not in tracked:
            (run_dir / "unregistered").mkdir(exist_ok=True)
            os.replace(folder, run_dir / "unregistered" / folder.name)
            print(
                f"[train] {folder.name} was written after Ray last recorded the run (its driver died); moved "
                f"to {run_dir / 'unregistered'}",
                flush=True,
            )
    if result.checkpoint is None:
        return None
    latest = Path(result.checkpoint.path)
    reason = checkpoints.problem(latest) if latest.exists() else "missing"
    if reason is None:
        return None
    aside = _move_aside(latest, run_dir / "damaged")
    good = [
        (checkpoints.read_meta(run_dir / name)["step"], run_dir / name)
        for name in sorted(tracked)
        if checkpoints.problem(run_dir / name) is None
    ]
    if not good:
        raise NowcastError(
            f"the latest checkpoint of run {cfg.run_name!r} is damaged ({reason}; its files are in "
            f"{aside}) and no earlier one is usable; start a new run with another --run-name"
        )
    step, previous = max(good)
    print(
        f"[train] the latest checkpoint of {cfg.run_name} is damaged ({reason}); its files are kept aside in "
        f"{aside}; resuming from the previous good one, {previous} (step {step})",
        flush=True,
    )
    return str(previous)


def _run_lock(cfg: TrainConfig):
    """The lock of a run (``<storage>/<run name>/.nowcast_train.lock``): a second ``nowcast train`` of the
    same run is refused at once with the holder's pid (:func:`pipeline.files.exclusive_lock`)."""
    run_dir = Path(cfg.storage_path) / cfg.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    busy = (
        f"another `nowcast train` (pid {{pid}}) is training run {cfg.run_name!r} in {cfg.storage_path}; "
        "wait for it to finish (a re-run then resumes from its last checkpoint), or use another --run-name"
    )
    return files.exclusive_lock(run_dir / RUN_LOCK, busy)


def run_config(cfg: TrainConfig) -> RunConfig:
    """Ray Train's run settings: the run's folder, restarts, two checkpoints kept."""
    return RunConfig(
        name=cfg.run_name,
        storage_path=cfg.storage_path,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )


@contextlib.contextmanager
def _ray_train_info_off():
    """Ray Train's INFO lines off for the block: reading a run's checkpoint list in this process prints
    "A run snapshot was found ..." (several lines) on every resume; warnings and errors still show."""
    logger = logging.getLogger("ray.train")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def train(cfg: TrainConfig, store: Store | None = None) -> TrainResult:
    """Train (or resume) a model as configured; see the package docstring.

    Raises NowcastError on bad options, a missing store, a train split too small for the workers, a
    resume on another store (without ``force``), a run that another ``nowcast train`` is training,
    unreachable Ray/MLflow, a worker failure beyond ``max_failures`` (re-run with the same run name to
    resume) or a non-finite loss.
    ``store``: the open handle of ``cfg.store`` when the caller has one (``demo``); None opens it.
    """
    t0 = time.perf_counter()
    store = Store.of(store or cfg.store)
    check(
        store.path == Path(cfg.store).expanduser().resolve(), f"the store handle {store} is not {cfg.store}"
    )
    cfg = _with_store_frame_size(cfg.resolved(), store)
    check_splits(cfg, store)
    with _run_lock(cfg):
        check_run_store(cfg, store)
        resume_from = resume_point(cfg)
        run_id = _mlflow_run(cfg, _model_config(cfg), store)
        result, ckpt_path = _fit(cfg, run_id, resume_from)
        if result.status != "ok" or ckpt_path is None:
            tracking.set_run_status(run_id, "FAILED")
        raise_if_stopped(result, ckpt_path, cfg.run_name)
        logged, promoted = _finish_model(cfg, store, run_id, ckpt_path, result)
    return TrainResult(
        run_id=run_id,
        final_step=result.final_step,
        checkpoint_path=ckpt_path,
        model_uri=logged.model_uri,
        registered_version=logged.registered_version,
        val_scores=result.val_scores,
        promoted=promoted,
        best_step=result.best_step,
        stopped_early=result.stopped_early,
        segments=result.segments,
        seconds=time.perf_counter() - t0,
    )


def _fit(cfg: TrainConfig, run_id: str, resume_from: str | None) -> tuple[WorkerResult, str | None]:
    """Run the workers (:func:`pipeline.train.worker.train_loop_per_worker`) on Ray Train -> (rank 0's
    result, the latest checkpoint's path)."""
    connect_ray(cfg.ray_address)
    link = DriverLink.create()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": dataclasses.asdict(cfg),
            "run_id": run_id,
            "link": link,
            "resume_from": resume_from,
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=run_config(cfg),
    )
    try:
        with link.printing():
            result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 (ray.train.TrainingFailedError and friends)
        tracking.set_run_status(run_id, "FAILED")
        raise NowcastError(
            f"training run {cfg.run_name!r} failed: {exc}\nRe-run with the same --run-name "
            f"{cfg.run_name} (and --storage-path {cfg.storage_path}) to resume from its last "
            f"checkpoint; Ray's own logs are in {ray_logs_dir()}."
        ) from exc
    if not isinstance(result.return_value, WorkerResult):
        tracking.set_run_status(run_id, "FAILED")
        raise NowcastError(
            f"the workers of run {cfg.run_name!r} ended without a result; re-run with the same --run-name "
            f"to resume; Ray's own logs are in {ray_logs_dir()}."
        )
    return result.return_value, result.checkpoint.path if result.checkpoint is not None else None
