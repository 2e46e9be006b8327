"""The checkpoint format: what ``nowcast train`` writes, and how everything else reads it.

A checkpoint is a directory::

    model_config.json   model.config.to_dict()            (rebuilt with trajgru.model_from_config)
    model_state.pt      the model's state_dict             (tensors only)
    train_state.pt      optimizer, scheduler, step, RNG    (tensors and plain Python values only)
    meta.json           step, segments, mlflow_run_id, val_scores, champion_score, best_step, ...
    best/               the best validated weights so far (a model directory + its meta.json:
                        step, champion_score, val_scores, mlflow_run_id); absent before the first validation

The two model files alone are a *model directory*: the logged MLflow model carries them as
``extra_files``. Whoever serves a checkpoint (``nowcast evaluate/predict PATH``, the registry) uses its
``best/`` weights: :func:`find` resolves a checkpoint to them. Every ``.pt`` file is loaded with
``torch.load(weights_only=True)``: reading a checkpoint never unpickles code, whoever wrote it.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import NowcastError
from trajgru import model_from_config

MODEL_CONFIG_FILE = "model_config.json"
MODEL_STATE_FILE = "model_state.pt"
TRAIN_STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
#: Sub-directory of a checkpoint holding the best validated weights (see :func:`save`).
BEST_DIR = "best"
#: The meta.json key of the MLflow run that trained the checkpoint.
RUN_ID_KEY = "mlflow_run_id"


# --------------------------------------------------------------------------- model files
def save_model_files(model, out_dir: Path | str) -> tuple[Path, Path]:
    """Write ``model_config.json`` and ``model_state.pt`` for an EncoderForecaster.

    ``model`` may be wrapped (DDP): its ``.module`` is used. Tensors are moved to the CPU.
    Returns the two paths.
    """
    module = getattr(model, "module", model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / MODEL_CONFIG_FILE
    state_path = out_dir / MODEL_STATE_FILE
    config_path.write_text(json.dumps(module.config.to_dict(), indent=1, sort_keys=True))
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, state_path)
    return config_path, state_path


def _load_weights_only(path: Path):
    """``torch.load(path, weights_only=True)`` on the CPU; NowcastError when the file holds more than tensors
    and plain values (a pickle that would run code, or an older nowcast's format): it is never unpickled."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise NowcastError(
            f"{path} holds more than tensors and plain values, so it is not loaded (a checkpoint "
            "of an older nowcast, or not written by nowcast at all); start a new run with another "
            "--run-name, or use checkpoints you trust"
        ) from exc


def load_model_state(model_dir: Path | str) -> dict:
    """The ``state_dict`` in ``model_dir/model_state.pt`` (CPU tensors; weights-only: :func:`_load_weights_only`)."""
    return _load_weights_only(Path(model_dir) / MODEL_STATE_FILE)


def load_model_files(model_dir: Path | str, device: str = "cpu"):
    """Rebuild a model from ``model_config.json`` + ``model_state.pt`` in ``model_dir``.

    Returns ``(model in eval mode on device, config dict)``.
    """
    config = json.loads((Path(model_dir) / MODEL_CONFIG_FILE).read_text())
    model = model_from_config(config)
    model.load_state_dict(load_model_state(model_dir))
    return model.to(device).eval(), config


def is_model_dir(path: Path | str) -> bool:
    """True when ``path`` holds the model files."""
    return (Path(path) / MODEL_CONFIG_FILE).exists()


# --------------------------------------------------------------------------- checkpoints
def save(
    out_dir: Path | str, model, train_state: dict, meta: dict, best: tuple[dict, dict] | None = None
) -> None:
    """Write a checkpoint directory: the model files, ``train_state.pt``, ``meta.json`` and ``best/``.

    train_state : {"optimizer": state_dict, "scheduler": state_dict, "step": int, "rng": :func:`rng_state`}
        (tensors and plain Python values, so that :func:`load_train_state` can read it weights-only).
    meta : JSON-able; ``step``, ``segments``, :data:`RUN_ID_KEY`, ``val_scores``, ``champion_score``.
    best : (state_dict, meta) of the best validated weights so far, written as the model directory
        ``best/`` (with the model's config) and its ``meta.json``; None writes no ``best/``.
    """
    out_dir = Path(out_dir)
    save_model_files(model, out_dir)
    torch.save(train_state, out_dir / TRAIN_STATE_FILE)
    (out_dir / META_FILE).write_text(json.dumps(meta))
    if best is not None:
        state, best_meta = best
        best_dir = out_dir / BEST_DIR
        best_dir.mkdir(exist_ok=True)
        module = getattr(model, "module", model)
        (best_dir / MODEL_CONFIG_FILE).write_text(
            json.dumps(module.config.to_dict(), indent=1, sort_keys=True)
        )
        torch.save({k: v.detach().cpu() for k, v in state.items()}, best_dir / MODEL_STATE_FILE)
        (best_dir / META_FILE).write_text(json.dumps(best_meta))


def load_best(checkpoint_dir: Path | str) -> tuple[dict, dict] | None:
    """The ``best/`` weights of a checkpoint -> (state_dict, meta), or None when it has none."""
    best_dir = Path(checkpoint_dir) / BEST_DIR
    if not is_model_dir(best_dir):
        return None
    return load_model_state(best_dir), read_meta(best_dir)


def served_model_dir(checkpoint_dir: Path | str) -> Path:
    """The model directory that serves a checkpoint: its ``best/`` weights when it has them, else its own."""
    best_dir = Path(checkpoint_dir) / BEST_DIR
    return best_dir if is_model_dir(best_dir) else Path(checkpoint_dir)


def load(checkpoint_dir: Path | str) -> tuple[dict, dict, dict]:
    """A whole checkpoint -> (model state_dict, train_state, meta); every file read weights-only."""
    return load_model_state(checkpoint_dir), load_train_state(checkpoint_dir), read_meta(checkpoint_dir)


def load_train_state(checkpoint_dir: Path | str) -> dict:
    """The ``train_state.pt`` of a checkpoint (CPU tensors; weights-only, see :func:`_load_weights_only`)."""
    return _load_weights_only(Path(checkpoint_dir) / TRAIN_STATE_FILE)


def problem(checkpoint_dir: Path | str) -> str | None:
    """Why the checkpoint at ``checkpoint_dir`` cannot be resumed from (a missing, truncated or foreign
    file; weights that do not fit its model config), or None when every file loads."""
    try:
        load_model_files(checkpoint_dir)
        load_train_state(checkpoint_dir)
        if not isinstance(read_meta(checkpoint_dir).get("step"), int):
            return f"{META_FILE} holds no step"
        if (Path(checkpoint_dir) / BEST_DIR).exists():
            load_model_files(Path(checkpoint_dir) / BEST_DIR)
            read_meta(Path(checkpoint_dir) / BEST_DIR)
    except Exception as exc:  # noqa: BLE001 (OSError, RuntimeError from torch's zip reader, JSON, NowcastError ...)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return None


def read_meta(checkpoint_dir: Path | str) -> dict:
    """The ``meta.json`` of a checkpoint: step, segments, mlflow_run_id, val_scores, champion_score."""
    return json.loads((Path(checkpoint_dir) / META_FILE).read_text())


def run_id(checkpoint_dir: Path | str) -> str | None:
    """The MLflow run that trained the checkpoint, or None when its meta.json does not say."""
    meta = Path(checkpoint_dir) / META_FILE
    return json.loads(meta.read_text()).get(RUN_ID_KEY) if meta.exists() else None


def find(path: Path | str) -> Path:
    """The model directory that serves ``path``: a checkpoint (or model) directory, a file inside one
    (e.g. its model_state.pt), or a Ray Train run directory (its latest checkpoint); a checkpoint with
    best validated weights is served by them (:func:`served_model_dir`).

    Raises NowcastError when ``path`` is none of these.
    """
    path = Path(path)
    if path.is_file():
        path = path.parent
    if is_model_dir(path):
        return served_model_dir(path)
    import ray.train  # here, not at the top: only a Ray run directory needs it, and it takes seconds to import

    try:
        latest = ray.train.Result.from_path(str(path)).checkpoint
    except Exception:  # noqa: BLE001 (RuntimeError / OSError: not a Ray Train run directory)
        latest = None
    if latest is not None and is_model_dir(latest.path):
        return served_model_dir(latest.path)
    raise NowcastError(
        f"{path} holds no {MODEL_CONFIG_FILE}: it is neither a checkpoint written by "
        "`nowcast train` nor a Ray Train run directory with one"
    )


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """Python, numpy and torch (and CUDA) RNG states as tensors and plain values (weights-only safe)."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {
                "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                "pos": int(np_state["state"]["pos"]),
            },
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = {
        "key": np_state["state"]["key"].numpy().astype(np.uint32),
        "pos": np_state["state"]["pos"],
    }
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
