#!/usr/bin/env bash
# The pipeline run by the compose file's one-shot `pipeline` service, against the cluster's services.
# Every setting comes from the environment, so the same script runs outside containers
# (tests/test_docker.py runs it against a real `ray start --head` and a real `mlflow server`).
#   DATA_DIR                shared volume for archive, store and checkpoints (absolute path)
#   RAY_ADDRESS             Ray head (e.g. ray-head:6379)
#   MLFLOW_TRACKING_URI     MLflow server (e.g. http://mlflow:5000)
#   DASK_SCHEDULER_ADDRESS  optional Dask scheduler (e.g. tcp://dask-scheduler:8786)
#   SYNTH_DAYS SYNTH_FRAMES_PER_DAY SYNTH_SIZE TRAIN_STEPS TRAIN_WORKERS MODEL_NAME  sizes and names
set -euo pipefail
: "${DATA_DIR:?set DATA_DIR to the shared data folder}"
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray head address}"
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the MLflow server}"
SYNTH_DAYS=${SYNTH_DAYS:-6}
SYNTH_FRAMES_PER_DAY=${SYNTH_FRAMES_PER_DAY:-240}
SYNTH_SIZE=${SYNTH_SIZE:-96}
TRAIN_STEPS=${TRAIN_STEPS:-400}
TRAIN_WORKERS=${TRAIN_WORKERS:-2}
MODEL_NAME=${MODEL_NAME:-nowcast-tiny}

nowcast synth "$DATA_DIR/archive" --days "$SYNTH_DAYS" --frames-per-day "$SYNTH_FRAMES_PER_DAY" --size "$SYNTH_SIZE"
nowcast ingest "$DATA_DIR/archive" "$DATA_DIR/store.zarr"
nowcast info "$DATA_DIR/store.zarr"
nowcast train "$DATA_DIR/store.zarr" --preset tiny --workers "$TRAIN_WORKERS" --steps "$TRAIN_STEPS" \
  --storage-path "$DATA_DIR/ray_results" --register-as "$MODEL_NAME"
nowcast evaluate "$DATA_DIR/store.zarr" --model "models:/$MODEL_NAME@champion" --out-json "$DATA_DIR/eval-champion.json"
nowcast evaluate "$DATA_DIR/store.zarr" --model persistence --out-json "$DATA_DIR/eval-persistence.json"
nowcast predict --model "models:/$MODEL_NAME@champion" --store "$DATA_DIR/store.zarr" --out-dir "$DATA_DIR/forecast" --overwrite
