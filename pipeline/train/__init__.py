"""``nowcast train``: data-parallel TrajGRU training on Ray Train, tracked in MLflow.

One code path from a laptop to a cluster: ``TorchTrainer`` with ``workers`` processes (CPU:
gloo, GPU: NCCL + bf16 autocast) on a local Ray cluster, or on the one at ``ray_address`` /
``RAY_ADDRESS``. On a multi-node cluster the store, ``storage_path`` and a SQLite tracking
file must be on a filesystem every node sees (or use an MLflow server); all paths handed to the
workers are absolute.

Example::

    from pipeline.train import TrainConfig, train
    res = train(TrainConfig(store="store.zarr", preset="tiny", workers=2, steps=200,
                            run_name="tiny-1", register_as="nowcast"))
    res.model_uri, res.registered_version, res.promoted

Determinism and resumption
--------------------------
Step ``s`` (1-based) of rank ``r`` trains on a batch fixed by ``(seed, s, r)`` alone
(:func:`batch_indices`: a per-epoch permutation of the rank's slice of the training clips), so
a run restored from a checkpoint taken after step ``k`` continues with exactly the batches of
steps ``k+1, k+2, ...``. A checkpoint (every ``checkpoint_every`` steps and at the end) holds
the model, optimizer, scheduler, step, RNG states, the MLflow run id, the last validation
scores and ``segments``: one ``[first_step, last_step]`` pair per worker-group attempt whose
steps survive in this checkpoint's lineage. Expanded, the segments must be exactly
``1..final_step``: the record that no step was trained twice or skipped.

Checkpoints use the format of ``pipeline.checkpoints`` (read weights-only). A second ``nowcast train``
of the same run (same ``run_name`` and ``storage_path``) is refused while one runs.

Re-running with the same ``run_name`` and ``storage_path`` resumes from the latest checkpoint
(Ray Train V2 restores its checkpoint manager from storage); ``max_failures`` restarts a
crashed worker group from the latest checkpoint within one ``train`` call.

MLflow
------
The driver creates (or, on resume, finds by the tag ``nowcast.run_name``) the run and logs
parameters, the store fingerprint and the code version; rank 0 logs step metrics, validation
skill, system metrics and artifacts (skill-vs-lead PNG, forecast GIFs) into that run. After
training, the driver logs the final model, registers it under ``register_as`` and moves the
``champion`` alias if its validation score (``trajgru.metrics.champion_score``) is better.

The package
-----------
``config``      :class:`TrainConfig`, the recipes and config files
``worker``      the Ray Train worker loop (one :class:`trajgru.step.TrainStep` per step)
``validation``  validation on the valid split (:func:`pipeline.scoring.score_clips`) and its logging
``driver``      :func:`train`: checks, the run's lock, resume, Ray Train, registration
"""

from pipeline.train.config import (
    LR_SCHEDULES,
    MAX_STEPS,
    PRESET_RECIPES,
    RECIPES,
    TrainConfig,
    load_config_file,
    lr_factor,
)
from pipeline.train.driver import (
    RUN_RECORD,
    TrainResult,
    check_run_store,
    check_splits,
    raise_if_stopped,
    resume_point,
    run_config,
    train,
)
from pipeline.train.validation import score_validation, validation_metrics, validation_starts
from pipeline.train.worker import (
    StepBatchSampler,
    TrainState,
    WorkerResult,
    add_step,
    batch_indices,
    checkpoint_payload,
    expand_segments,
    train_loop_per_worker,
)

__all__ = [
    "LR_SCHEDULES",
    "MAX_STEPS",
    "PRESET_RECIPES",
    "RECIPES",
    "RUN_RECORD",
    "StepBatchSampler",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "WorkerResult",
    "add_step",
    "batch_indices",
    "check_run_store",
    "check_splits",
    "checkpoint_payload",
    "expand_segments",
    "load_config_file",
    "lr_factor",
    "raise_if_stopped",
    "resume_point",
    "run_config",
    "score_validation",
    "train",
    "train_loop_per_worker",
    "validation_metrics",
    "validation_starts",
]
