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

Checkpoints use the format of ``pipeline.checkpoints`` (read weights-only).

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
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import yaml
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointConsistencyMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader

from pipeline import checkpoints, files, tracking, viz
from pipeline.dataset import ClipDataset, augment_clips, collate_clips, rank_slice
from pipeline.errors import NowcastError, check, check_name, check_types
from pipeline.raycluster import DriverGone, DriverLink, connect_ray, ray_logs_dir
from pipeline.store import Store
from trajgru.fast import enable_fast_path, fused_adam
from trajgru.losses import BalancedLoss
from trajgru.metrics import SkillScores, champion_score
from trajgru.model import PRESETS, build_model

#: Training recipes: the values of the TrainConfig fields left None. A run uses the recipe named by
#: ``--recipe``, by default the one named like its preset. Evidence for each is in the README
#: ("Recipes") and benchmarks/results/.
#:
#: - "hko7-paper": the paper's recipe (Shi et al. 2017): global batch 4, Adam lr 1e-4 (beta1 0.5), clip
#:   50, lr x0.7 every 20k iterations down to 1e-6, 100k iterations, no augmentation.
#: - "tiny": chosen from measured runs (benchmarks/skill_sweep.py): batch 16, Adam lr 1e-3 (beta1
#:   0.9) with a linear warm-up over 5% of the steps and a cosine decay to 1e-5, and random
#:   dihedral augmentation (flips and 90-degree turns of whole clips).
RECIPES: dict[str, dict[str, Any]] = {
    "hko7-paper": dict(
        steps=100_000,
        batch_size=4,
        lr=1e-4,
        beta1=0.5,
        lr_schedule="step",
        warmup_steps=0,
        lr_decay_every=20_000,
        min_lr=1e-6,
        augment=False,
        checkpoint_every=5_000,
        val_every=5_000,
        val_clips=256,
        log_every=50,
        early_stop_patience=0,
    ),
    "tiny": dict(
        steps=3_000,
        batch_size=16,
        lr=1e-3,
        beta1=0.9,
        lr_schedule="cosine",
        warmup_steps=150,
        lr_decay_every=20_000,
        min_lr=1e-5,
        augment=True,
        checkpoint_every=250,
        val_every=250,
        val_clips=256,
        log_every=50,
        early_stop_patience=0,
    ),
}
#: `nowcast demo`: the tiny recipe shortened to what 2 CPU cores train in about 5 minutes.
RECIPES["tiny-demo"] = dict(
    RECIPES["tiny"],
    steps=400,
    batch_size=8,
    lr=2e-3,
    warmup_steps=20,
    checkpoint_every=100,
    val_every=100,
    val_clips=64,
    log_every=20,
)
RECIPES["hko7"] = dict(RECIPES["hko7-paper"])
RECIPES["mnist++"] = dict(RECIPES["hko7-paper"])
LR_SCHEDULES = ("step", "cosine")


@dataclass
class TrainConfig:
    """Options of ``nowcast train``; fields left None take the recipe's value (:data:`RECIPES`;
    ``recipe`` None = the recipe named like the preset).

    Paths may be relative here: :meth:`resolved` makes them absolute before Ray sees them.
    ``fail_at_step`` is for tests: the last rank kills its own process once, at that step.
    Values are checked on construction (NowcastError, exit code 2); None fields are checked once
    :meth:`resolved` fills them in.
    """

    store: str
    preset: str = "tiny"
    cell: str = "trajgru"
    workers: int = 2
    use_gpu: bool = False
    recipe: str | None = None  # a key of RECIPES (None: the preset's name)
    steps: int | None = None
    batch_size: int | None = None  # global batch (split evenly over workers)
    lr: float | None = None  # peak learning rate
    beta1: float | None = None
    clip_norm: float = 50.0  # global gradient norm
    lr_schedule: str | None = None  # "step" (x lr_decay every lr_decay_every) or "cosine" (to min_lr)
    warmup_steps: int | None = None  # linear warm-up from 0 to lr
    lr_decay: float = 0.7
    lr_decay_every: int | None = None  # steps
    min_lr: float | None = None
    augment: bool | None = None  # random flips / 90-degree turns of each training clip
    early_stop_patience: int | None = None  # stop after N validations without improvement (0: never)
    mse_weight: float = 1.0
    mae_weight: float = 1.0
    checkpoint_every: int | None = None  # steps
    val_every: int | None = None  # steps (0 = only at the end)
    val_clips: int | None = None  # cap on sequential validation clips
    log_every: int | None = None  # steps between console/MLflow step metrics
    gif_clips: int = 2  # validation clips drawn as GIFs
    run_name: str | None = None
    storage_path: str | None = None  # default ./ray_results
    ray_address: str | None = None  # default env RAY_ADDRESS, else a local cluster
    tracking_uri: str | None = None
    experiment: str = "nowcast"
    register_as: str | None = None
    seed: int = 0
    height: int | None = None  # must match the store's frames if given
    width: int | None = None
    in_len: int | None = None  # model override (preset default otherwise)
    out_len: int | None = None
    max_failures: int = 2
    num_dataloader_workers: int = 0
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    model_format: str | None = None  # MLflow model: "pt2", "pickle", None = pt2 else pickle
    fast_path: bool = True  # trajgru.fast: fused kernels + channels-last (GPU), channels-last (CPU)
    force: bool = False  # resume a run name on a store other than the one it started on
    fail_at_step: int | None = None  # testing only

    def __post_init__(self):
        check_types(self)  # every field: its type, coerced (YAML's "1e-3" -> 0.001) or refused
        check(self.preset in PRESETS, f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        check(
            self.recipe is None or self.recipe in RECIPES,
            f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}",
        )
        check(self.workers >= 1, f"--workers must be >= 1, got {self.workers}")
        check_name(self.run_name, "--run-name")
        check_name(self.register_as, "--register-as")
        for name in (
            "steps",
            "batch_size",
            "checkpoint_every",
            "lr_decay_every",
            "log_every",
            "val_clips",
            "height",
            "width",
            "in_len",
            "out_len",
            "fail_at_step",
        ):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be >= 1, got {value}")
        for name in (
            "warmup_steps",
            "early_stop_patience",
            "val_every",
            "gif_clips",
            "max_failures",
            "num_dataloader_workers",
            "mse_weight",
            "mae_weight",
            "seed",
        ):
            value = getattr(self, name)
            check(value is None or value >= 0, f"{name} must be >= 0, got {value}")
        check(self.clip_norm > 0, f"clip_norm must be > 0, got {self.clip_norm}")
        check(
            self.system_metrics_interval_s > 0,
            f"system_metrics_interval_s must be > 0, got {self.system_metrics_interval_s}",
        )
        check(self.mse_weight + self.mae_weight > 0, "mse_weight and mae_weight cannot both be 0")
        check(
            self.model_format in (None, "pt2", "pickle"),
            f"model_format must be pt2 or pickle, got {self.model_format!r}",
        )
        check(
            self.lr_schedule is None or self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}",
        )
        check(self.beta1 is None or 0 <= self.beta1 < 1, f"beta1 must be in [0, 1), got {self.beta1}")
        check(self.min_lr is None or self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}")
        check(
            self.batch_size is None or self.batch_size % self.workers == 0,
            f"global batch size {self.batch_size} must be a multiple of --workers {self.workers}",
        )
        check(self.lr is None or self.lr > 0, f"learning rate must be > 0, got {self.lr}")
        check(0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}")

    def resolved(self) -> TrainConfig:
        """A copy with preset defaults filled in, absolute paths and a run name (checked again)."""
        values = dataclasses.asdict(self)
        values["recipe"] = self.recipe or self.preset
        for key, default in RECIPES[values["recipe"]].items():
            if values[key] is None:
                values[key] = default
        values["store"] = str(Path(self.store).expanduser().resolve())
        values["storage_path"] = str(Path(self.storage_path or "ray_results").expanduser().resolve())
        values["ray_address"] = self.ray_address or os.environ.get("RAY_ADDRESS") or None
        values["tracking_uri"] = tracking.resolve_tracking_uri(self.tracking_uri)
        if not values["run_name"]:
            values["run_name"] = f"{self.preset}-{self.cell}-{time.strftime('%Y%m%d-%H%M%S')}"
        return TrainConfig(**values)

    def model_overrides(self) -> dict[str, int]:
        """ModelConfig overrides given by this config (height, width, in_len, out_len)."""
        names = ("height", "width", "in_len", "out_len")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


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


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read TrainConfig overrides from a YAML or JSON file (a flat mapping of field names).

    Unknown keys raise NowcastError (exit code 2) naming the valid ones.
    """
    path = Path(path)
    if not path.exists():
        raise NowcastError(f"config file {path} does not exist", exit_code=2)
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 (yaml/json errors)
        raise NowcastError(f"cannot parse config file {path}: {exc}", exit_code=2) from exc
    data = data or {}
    if not isinstance(data, dict):
        raise NowcastError(f"config file {path} must hold a mapping of option: value", exit_code=2)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NowcastError(
            f"unknown option(s) {unknown} in {path}; valid: {', '.join(sorted(known))}", exit_code=2
        )
    return data


# --------------------------------------------------------------------------- pure helpers
def lr_factor(
    step: int,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int,
    base_lr: float,
    min_lr: float,
    decay: float = 0.7,
    decay_every: int = 20_000,
) -> float:
    """Multiplier of the peak learning rate ``base_lr`` for the optimizer step that follows ``step``
    completed steps (``LambdaLR``'s argument).

    - warm-up: ``(step + 1) / warmup_steps`` while ``step < warmup_steps``;
    - "step" (HKO-7): ``max(decay ** (step // decay_every), min_lr / base_lr)``;
    - "cosine": from 1 after the warm-up down to ``min_lr / base_lr`` at ``total_steps``,
      ``f + (1 - f) (1 + cos(pi p)) / 2`` with ``f = min_lr / base_lr`` and p the fraction of the
      post-warm-up steps done.
    """
    floor = min_lr / base_lr
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "step":
        return max(decay ** (step // decay_every), floor)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(step: int, batch: int, n_items: int, seed: int, rank: int) -> np.ndarray:
    """Indices into a rank's slice (length ``n_items``) for training step ``step`` (1-based).

    Sample ``k = (step - 1) * batch + j`` of the rank's stream is item ``perm_e[k % n_items]``
    of epoch ``e = k // n_items``'s permutation, drawn from ``(seed, rank, e)``: a pure
    function of its arguments, so a resumed run sees exactly the batches it would have seen.
    Every item is used once per epoch. Returns int64 (batch,).
    """
    if n_items < 1:
        raise ValueError("the rank's slice is empty")
    ks = (step - 1) * batch + np.arange(batch)
    out = np.empty(batch, dtype=np.int64)
    for epoch in np.unique(ks // n_items):
        perm = np.random.default_rng([seed, rank, int(epoch)]).permutation(n_items)
        sel = ks // n_items == epoch
        out[sel] = perm[ks[sel] % n_items]
    return out


class StepBatchSampler:
    """Batch sampler yielding :func:`batch_indices` for steps ``first_step..last_step``."""

    def __init__(self, n_items: int, batch: int, seed: int, rank: int, first_step: int, last_step: int):
        self.n_items, self.batch, self.seed, self.rank = n_items, batch, seed, rank
        self.first_step, self.last_step = first_step, last_step

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def __iter__(self):
        for step in range(self.first_step, self.last_step + 1):
            yield batch_indices(step, self.batch, self.n_items, self.seed, self.rank).tolist()


def add_step(segments: list[list[int]], step: int, new_attempt: bool) -> None:
    """Record that ``step`` was trained: extend the last segment, or open a new one."""
    if new_attempt or not segments:
        segments.append([step, step])
    else:
        if step != segments[-1][1] + 1:
            raise RuntimeError(f"step {step} does not follow step {segments[-1][1]}")
        segments[-1][1] = step


def expand_segments(segments: list[list[int]]) -> list[int]:
    """``[[1, 4], [5, 8]]`` -> ``[1, 2, ..., 8]`` (the steps in a checkpoint's lineage)."""
    return [s for a, b in segments for s in range(a, b + 1)]


def worker_print(*parts, **kwargs) -> None:
    """Print from a Ray Train worker once.

    Ray Train V2 patches ``print`` to tee into its logger whenever ``sys.stdout`` is wrapped
    (MLflow wraps it), which shows every line twice on the driver; writing to the process's
    real stdout is forwarded once.
    """
    kwargs.pop("file", None)
    print(*parts, file=sys.__stdout__, **kwargs)


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became NaN/inf at a step."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"non-finite loss {loss} / grad norm {grad_norm} at step {step}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


def split_clip(frames, masks, in_len: int, out_len: int):
    """Collated (B, S, 1, H, W) frames/masks -> inputs (in_len,B,1,H,W), truth and mask
    (out_len,B,1,H,W) in sequence-first layout."""
    x = frames.transpose(0, 1)
    m = masks.transpose(0, 1)
    return x[:in_len], x[in_len : in_len + out_len], m[in_len : in_len + out_len]


def train_step(
    model,
    optimizer,
    loss_fn,
    inputs,
    truth,
    mask,
    *,
    step: int,
    clip_norm: float,
    autocast_device: str | None = None,
    reduce_fn=None,
) -> tuple[float, float]:
    """One optimizer step; returns ``(loss, grad_norm)`` (the loss averaged over ranks if
    ``reduce_fn`` is given: it maps a 1-element float tensor to its cross-rank mean).

    Raises :class:`NonFiniteLoss` *before* the optimizer step if the loss or the global
    gradient norm is not finite, so the weights stay those of the last good step.
    ``autocast_device`` ("cuda") enables bf16 autocast for the forward pass.
    """
    optimizer.zero_grad(set_to_none=True)
    pred = _forward(model, inputs, autocast_device)
    loss = loss_fn(pred.float(), truth, mask)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    stats = torch.stack([loss.detach().float(), grad_norm.detach().float()])
    if reduce_fn is not None:
        stats = reduce_fn(stats)  # on the model's device (NCCL reduces CUDA tensors only)
    stats = stats.cpu()
    loss_v, gnorm_v = float(stats[0]), float(stats[1])
    if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(step, loss_v, gnorm_v)
    optimizer.step()
    return loss_v, gnorm_v


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


def _forward(model, inputs, autocast_device: str | None):
    """The model's forecast, under bf16 autocast on ``autocast_device`` when given."""
    if autocast_device:
        with torch.autocast(autocast_device, dtype=torch.bfloat16):
            return model(inputs)
    return model(inputs)


# --------------------------------------------------------------------------- worker side
@dataclass
class WorkerContext:
    """What the steps of one Ray Train worker share (built once per worker)."""

    cfg: TrainConfig
    run_id: str  # the MLflow run (created by the driver)
    store: Store
    rank: int
    world: int
    device: Any  # torch.device
    autocast_device: str | None  # "cuda" for bf16 autocast, else None
    in_len: int
    out_len: int
    logger: tracking.RunLogger  # active on rank 0 only
    link: DriverLink | None = None  # to the driver's terminal (None: print to this worker's stdout)

    def say(self, text: str) -> None:
        """Print a progress line from rank 0 on the driver (:class:`DriverGone` once the driver is gone)."""
        if self.rank != 0:
            return
        if self.link is None:
            worker_print(f"[train] {text}", flush=True)
        else:
            self.link.say(f"[train] {text}")


@dataclass
class TrainState:
    """Where a run stands: restored from a checkpoint (meta.json and best/), saved into the next one."""

    step: int = 0
    segments: list = field(default_factory=list)  # [[first, last] step per attempt] (see add_step)
    val_scores: dict | None = None  # SkillScores.to_json_dict() of the last validation
    champion_score: float | None = None  # of the last validation
    best_step: int | None = None  # the best validation so far (highest champion score)
    best_score: float | None = None
    best_val_scores: dict | None = None
    best_weights: dict | None = None  # its state_dict (CPU tensors)
    stale_validations: int = 0  # validations since the best one
    stopped_early: bool = False

    @classmethod
    def restore(cls, meta: dict | None, best: tuple[dict, dict] | None) -> TrainState:
        """From a checkpoint's meta.json and :func:`pipeline.checkpoints.load_best` (None: a fresh run)."""
        if not meta:
            return cls()
        state = cls(
            meta["step"],
            meta["segments"],
            meta["val_scores"],
            meta["champion_score"],
            stale_validations=meta.get("stale_validations", 0),
            stopped_early=meta.get("stopped_early", False),
        )
        if best is not None:
            state.best_weights, best_meta = best
            state.best_step, state.best_score = best_meta["step"], best_meta["champion_score"]
            state.best_val_scores = best_meta["val_scores"]
        return state

    def record_validation(self, module, step: int, val_scores: dict | None, score: float) -> None:
        """Note a validation's scores; keep the weights of ``module`` when ``score`` beats the best so far
        (NaN never does)."""
        self.val_scores, self.champion_score = val_scores, score
        if math.isfinite(score) and (self.best_score is None or score > self.best_score):
            self.best_step, self.best_score, self.best_val_scores = step, score, val_scores
            self.best_weights = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            self.stale_validations = 0
        else:
            self.stale_validations += 1


def _optimizer_and_schedule(cfg: TrainConfig, model):
    """Adam (fused on a GPU with the fast path) and the learning-rate schedule (:func:`lr_factor`) of the recipe."""
    if cfg.fast_path:
        optimizer = fused_adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s,
            schedule=cfg.lr_schedule,
            total_steps=cfg.steps,
            warmup_steps=cfg.warmup_steps,
            base_lr=cfg.lr,
            min_lr=cfg.min_lr,
            decay=cfg.lr_decay,
            decay_every=cfg.lr_decay_every,
        ),
    )
    return optimizer, scheduler


def _build_and_restore(cfg: TrainConfig, resume_from: str | None = None):
    """Model (prepared for DDP), optimizer, scheduler and the state restored from Ray's latest
    checkpoint, or from ``resume_from`` when the driver set Ray's latest aside as damaged
    (:func:`resume_point`); a fresh state when there is none -> (model, model config dict, optimizer,
    scheduler, TrainState)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.preset, cfg.cell, **cfg.model_overrides())
    train_state, meta, best = None, None, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None and resume_from is not None and not checkpoints.is_model_dir(ckpt.path):
        ckpt = Checkpoint.from_directory(resume_from)  # Ray's latest was emptied as damaged
    if ckpt is not None:
        with ckpt.as_directory() as d:
            model_state, train_state, meta = checkpoints.load(d)
            best = checkpoints.load_best(d)
        model.load_state_dict(model_state)
    model_config = model.config.to_dict()
    if cfg.fast_path:
        enable_fast_path(model)  # before DDP wraps it: the layout of the parameters is DDP's bucket layout
    model = ray.train.torch.prepare_model(model)
    optimizer, scheduler = _optimizer_and_schedule(cfg, model)
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
        scheduler.load_state_dict(train_state["scheduler"])
        checkpoints.set_rng_state(train_state["rng"])
    return model, model_config, optimizer, scheduler, TrainState.restore(meta, best)


def _worker_context(
    cfg: TrainConfig, run_id: str, model_config: dict, link: DriverLink | None
) -> WorkerContext:
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    rank = ctx.get_world_rank()
    return WorkerContext(
        cfg=cfg,
        run_id=run_id,
        store=Store.open(cfg.store),
        rank=rank,
        world=ctx.get_world_size(),
        device=device,
        autocast_device="cuda" if cfg.use_gpu and device.type == "cuda" else None,
        in_len=model_config["in_len"],
        out_len=model_config["out_len"],
        logger=tracking.RunLogger(
            cfg.tracking_uri,
            run_id,
            active=rank == 0,
            system_metrics=cfg.system_metrics,
            system_metrics_interval_s=cfg.system_metrics_interval_s,
            resume_keys=("loss", tracking.CHAMPION_METRIC),
        ),
        link=link,
    )


def _train_loader(ctx: WorkerContext, first_step: int) -> tuple[DataLoader, int]:
    """This rank's batches for steps ``first_step..cfg.steps`` -> (loader, number of the rank's clips)."""
    cfg = ctx.cfg
    starts = rank_slice(ctx.store.clip_starts("train", "random"), ctx.rank, ctx.world)
    if len(starts) == 0:
        raise RuntimeError(
            f"rank {ctx.rank} has no training clips: the store's train split is too "
            f"small for {ctx.world} workers"
        )
    loader = DataLoader(
        ClipDataset(ctx.store, starts, seq_len=ctx.in_len + ctx.out_len),
        batch_sampler=StepBatchSampler(
            len(starts), cfg.batch_size // ctx.world, cfg.seed, ctx.rank, first_step, cfg.steps
        ),
        num_workers=cfg.num_dataloader_workers,
        collate_fn=collate_clips,
    )
    return ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False), len(starts)


class _StepLog:
    """Step metrics (loss, lr, grad norm, samples/s over the steps since the last line) every
    ``log_every`` steps and at the last step: to MLflow and, on rank 0, the console."""

    def __init__(self, ctx: WorkerContext):
        self.ctx = ctx
        self.t0, self.n = time.perf_counter(), 0

    def record(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        cfg = self.ctx.cfg
        self.n += 1
        if step % cfg.log_every and step != cfg.steps:
            return
        sps = self.n * cfg.batch_size / max(time.perf_counter() - self.t0, 1e-9)
        self.ctx.logger.metrics({"loss": loss, "lr": lr, "grad_norm": grad_norm, "samples_per_s": sps}, step)
        eta = (cfg.steps - step) * cfg.batch_size / max(sps, 1e-9)
        self.ctx.say(
            f"step {step}/{cfg.steps}  loss {loss:.5f}  lr {lr:.2e}  {sps:.2f} samples/s  "
            f"ETA {_format_eta(eta)}"
        )
        self.t0, self.n = time.perf_counter(), 0


def validation_metrics(result: dict) -> dict[str, float]:
    """MLflow metrics of a validation: :func:`pipeline.tracking.skill_metrics` on the ``valid`` split
    (``valid_csi_5mm_h`` ..., the names ``nowcast evaluate`` uses) and the champion score."""
    return {
        **tracking.skill_metrics(result, tracking.CHAMPION_SPLIT),
        tracking.CHAMPION_METRIC: float(champion_score(result)),
    }


def _score_clips(module, ctx: WorkerContext, starts_s: np.ndarray) -> tuple[SkillScores, list]:
    """Score ``module`` on this rank's validation clips -> (SkillScores, up to ``gif_clips`` (inputs,
    truth, forecast) examples on rank 0)."""
    scores, gifs = SkillScores(ctx.out_len), []
    if not len(starts_s):
        return scores, gifs
    loader = DataLoader(
        ClipDataset(ctx.store, starts_s, seq_len=ctx.in_len + ctx.out_len),
        batch_size=max(1, ctx.cfg.batch_size // ctx.cfg.workers),
        collate_fn=collate_clips,
    )
    with torch.no_grad():
        for frames, masks in loader:
            inputs, truth, mask = split_clip(
                frames.to(ctx.device), masks.to(ctx.device), ctx.in_len, ctx.out_len
            )
            pred = _forward(module, inputs, ctx.autocast_device).float().clamp(0, 1)
            scores.update(pred, truth, mask)
            for b in range(inputs.shape[1]):
                if ctx.rank == 0 and len(gifs) < ctx.cfg.gif_clips:
                    gifs.append(
                        (
                            inputs[:, b, 0].cpu().numpy(),
                            truth[:, b, 0].cpu().numpy(),
                            pred[:, b, 0].cpu().numpy(),
                        )
                    )
    return scores, gifs


def _merge_over_ranks(scores: SkillScores, ctx: WorkerContext) -> SkillScores:
    """Every rank's SkillScores merged (the pooled counts), on every rank."""
    if ctx.world == 1 or not dist.is_initialized():
        return scores
    gathered = [None] * ctx.world
    dist.all_gather_object(gathered, scores)
    merged = SkillScores(ctx.out_len)
    for other in gathered:
        merged.merge(other)
    return merged


def score_validation(model, ctx: WorkerContext, starts_s: np.ndarray, step: int) -> tuple[dict | None, float]:
    """Sequential-protocol validation on ``starts_s`` split over the ranks; merged, and logged by rank 0.

    Returns ``(SkillScores.to_json_dict(), champion score)`` on every rank (``(None, nan)`` without clips).
    """
    module = getattr(model, "module", model)
    module.eval()
    scores, gifs = _score_clips(module, ctx, rank_slice(starts_s, ctx.rank, ctx.world))
    module.train()
    scores = _merge_over_ranks(scores, ctx)
    if scores.n_sequences == 0:
        return None, float("nan")
    result = scores.result()
    if ctx.rank == 0:
        ctx.logger.metrics(validation_metrics(result), step)
        _log_validation_artifacts(result, gifs, step, ctx)
    return scores.to_json_dict(), float(champion_score(result))


def _log_validation_artifacts(result: dict, gifs: list, step: int, ctx: WorkerContext) -> None:
    """Skill-vs-lead PNG and forecast-vs-truth GIFs under artifacts ``validation/step_N``."""
    if not ctx.logger.active:
        return
    interval_min = ctx.store.interval_s / 60.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        viz.plot_skill_vs_lead(
            result,
            tmp / f"skill_vs_lead_step{step}.png",
            interval_min=interval_min,
            title=f"validation, step {step}",
        )
        for i, (inputs, truth, pred) in enumerate(gifs):
            viz.forecast_gif(
                inputs,
                truth,
                pred,
                tmp / f"forecast_clip{i}_step{step}.gif",
                interval_min=interval_min,
                title=f"validation clip {i}, step {step}",
            )
        ctx.logger.artifacts(tmp, f"validation/step_{step}", step=step)


def _all_mean_fn(world: int):
    """Cross-rank mean of a small float tensor on the training device (identity on one worker)."""

    def reduce(t):
        if world > 1 and dist.is_initialized():
            t = t.clone()
            dist.all_reduce(t)
            t /= world
        return t

    return reduce


def checkpoint_payload(optimizer, scheduler, state: TrainState, run_id: str):
    """What a checkpoint holds besides the model -> (train_state for train_state.pt, meta for meta.json,
    best = (state_dict, meta) for best/ or None)."""
    train_state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": state.step,
        "rng": checkpoints.rng_state(),
    }
    meta = {
        "step": state.step,
        "segments": state.segments,
        checkpoints.RUN_ID_KEY: run_id,
        "val_scores": state.val_scores,
        "champion_score": state.champion_score,
        "best_step": state.best_step,
        "stale_validations": state.stale_validations,
        "stopped_early": state.stopped_early,
    }
    best = None
    if state.best_weights is not None:
        best = (
            state.best_weights,
            {
                "step": state.best_step,
                "champion_score": state.best_score,
                "val_scores": state.best_val_scores,
                checkpoints.RUN_ID_KEY: run_id,
            },
        )
    return train_state, meta, best


def _checkpoint_and_report(
    ctx: WorkerContext, model, optimizer, scheduler, state: TrainState, metrics: dict
) -> None:
    """Rank 0 writes a checkpoint (only while the driver lives); every rank reports ``metrics`` (with it)
    to Ray Train."""
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = None
        if ctx.rank == 0:
            if ctx.link is not None:
                ctx.link.check()
            checkpoints.save(tmp, model, *checkpoint_payload(optimizer, scheduler, state, ctx.run_id))
            ckpt = Checkpoint.from_directory(tmp)
        ray.train.report(metrics, checkpoint=ckpt)
    # Wait until Ray Train has registered this checkpoint: a crash right after a report
    # could otherwise lose it (reports are collected by the controller's periodic poll).
    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)


def _maybe_fail(cfg: TrainConfig, step: int, rank: int, world: int) -> None:
    """Testing hook: the last rank kills its own process once at ``fail_at_step``."""
    if cfg.fail_at_step is None or step != cfg.fail_at_step or rank != world - 1:
        return
    marker = Path(cfg.storage_path) / cfg.run_name / f".failed_at_{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    worker_print(f"[train] fail_at_step={step}: rank {rank} exits abruptly (test hook)", flush=True)
    os._exit(17)


def _due(every: int | None, step: int, last: int) -> bool:
    """True every ``every`` steps (0/None: never) and at the last step."""
    return bool(every) and step % every == 0 or step == last


def validation_starts(store: Store, max_clips: int | None) -> np.ndarray:
    """The validation split's sequential clip starts; at most ``max_clips`` of them, evenly spaced over
    the split (so a capped validation still sees every part of it)."""
    starts = store.clip_starts("valid", "sequent")
    if max_clips is None or len(starts) <= max_clips:
        return starts
    return starts[np.unique(np.linspace(0, len(starts) - 1, max_clips).round().astype(np.int64))]


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train worker function. ``config = {"cfg": resolved TrainConfig dict, "run_id": str}``.

    Returns (rank 0's value is ``Result.return_value``) ``{"status": "ok" | "non_finite",
    "final_step", "segments", "val_scores", "champion_score", "best_step", "best_score",
    "stopped_early", "message"}``; ``champion_score`` is the last validation's, ``best_score`` that of
    the best validated weights (the checkpoint's ``best/``).
    """
    cfg = TrainConfig(**config["cfg"])
    model, model_config, optimizer, scheduler, state = _build_and_restore(cfg, config.get("resume_from"))
    ctx = _worker_context(cfg, config["run_id"], model_config, config.get("link"))
    try:
        return _train_steps(ctx, model, optimizer, scheduler, state)
    except DriverGone:
        ctx.logger.end("KILLED")  # the driver was killed: stop here, log and checkpoint nothing more
        raise


def _train_steps(ctx: WorkerContext, model, optimizer, scheduler, state: TrainState) -> dict:
    """The training loop of :func:`train_loop_per_worker` from ``state.step`` on; returns its summary."""
    cfg = ctx.cfg
    start = state.step
    loader, n_clips = _train_loader(ctx, start + 1)
    val_starts = validation_starts(ctx.store, cfg.val_clips)
    loss_fn, reduce_fn, step_log = (
        BalancedLoss(cfg.mse_weight, cfg.mae_weight),
        _all_mean_fn(ctx.world),
        _StepLog(ctx),
    )
    if state.stopped_early:
        ctx.say(
            f"stopped early at step {start} (no better validation in {cfg.early_stop_patience}); nothing to train"
        )
        loader = []
    else:
        ctx.say(
            f"{'resuming after' if start else 'starting at'} step {start} of {cfg.steps}; {ctx.world} "
            f"worker(s), global batch {cfg.batch_size}, {n_clips} train clips on rank 0, {len(val_starts)} "
            "validation clips"
        )
    status, message, new_attempt = "ok", "", True
    for step, (frames, masks) in zip(range(start + 1, cfg.steps + 1), loader):
        _maybe_fail(cfg, step, ctx.rank, ctx.world)
        if cfg.augment:
            frames, masks = augment_clips(frames, masks, cfg.seed, ctx.rank, step)
        inputs, truth, mask = split_clip(frames, masks, ctx.in_len, ctx.out_len)
        try:
            loss, gnorm = train_step(
                model,
                optimizer,
                loss_fn,
                inputs,
                truth,
                mask,
                step=step,
                clip_norm=cfg.clip_norm,
                autocast_device=ctx.autocast_device,
                reduce_fn=reduce_fn,
            )
        except NonFiniteLoss as exc:
            status, message = "non_finite", str(exc)
            break
        add_step(state.segments, step, new_attempt)
        state.step, new_attempt = step, False
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        step_log.record(step, loss, lr, gnorm)
        if _due(cfg.val_every, step, cfg.steps):
            state.record_validation(
                getattr(model, "module", model), step, *score_validation(model, ctx, val_starts, step)
            )
            state.stopped_early = (
                bool(cfg.early_stop_patience) and state.stale_validations >= cfg.early_stop_patience
            )
        if _due(cfg.checkpoint_every, step, cfg.steps) or state.stopped_early:
            _checkpoint_and_report(ctx, model, optimizer, scheduler, state, {"step": step, "loss": loss})
        if state.stopped_early:
            ctx.say(
                f"stopping early at step {step}: no better validation score in the last "
                f"{cfg.early_stop_patience} validations (best: step {state.best_step})"
            )
            break
    if status == "ok" and start >= cfg.steps:
        ctx.say(f"already at step {start}: nothing to train")
    ctx.logger.end("FINISHED" if status == "ok" else "FAILED")
    return {
        "status": status,
        "final_step": state.segments[-1][1] if state.segments else start,
        "segments": state.segments,
        "val_scores": state.val_scores,
        "champion_score": state.champion_score,
        "best_step": state.best_step,
        "best_score": state.best_score,
        "stopped_early": state.stopped_early,
        "message": message,
    }


# --------------------------------------------------------------------------- driver side
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
        params = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "fail_at_step"}
        params.update({f"model.{k}": v for k, v in model_config.items()})
        tracking.log_run_setup(
            run_id,
            params,
            {"store_fingerprint.json": store.fingerprint(), "model_config.json": model_config},
            {"code_version": tracking.code_version(), "store": cfg.store},
        )
    return run_id


def raise_if_stopped(summary: dict, checkpoint_path: str | None, run_name: str) -> None:
    """NowcastError if the workers stopped on a non-finite loss or left no checkpoint."""
    if summary.get("status") == "non_finite":
        kept = (
            f"the last good checkpoint, {checkpoint_path} (step {checkpoints.read_meta(checkpoint_path)['step']}), "
            "is kept"
            if checkpoint_path
            else "there is no checkpoint yet (the failure came before the first one)"
        )
        raise NowcastError(
            f"training stopped: {summary.get('message')}; {kept}. Lower --lr or --clip-norm, or check the store "
            "for corrupt frames; then re-run."
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


def _finish_model(cfg: TrainConfig, store: Store, run_id: str, checkpoint_dir: str, summary: dict):
    """Log the checkpoint's best validated weights (the last ones when it was never validated) into the
    run, register them and apply the champion rule with their validation score."""
    model_dir = checkpoints.served_model_dir(checkpoint_dir)
    model, model_config = checkpoints.load_model_files(model_dir)
    best_step = summary.get("best_step")
    score = summary.get("best_score")
    score = float("nan") if score is None else float(score)
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
            f"{best_step or summary.get('final_step')} ({scored}){' (now champion)' if promoted else ''}",
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


def check_splits(cfg: TrainConfig, store: Store) -> None:
    """Before Ray starts: NowcastError when the train split cannot give every worker a clip; a warning
    when there is nothing to validate on (the model then gets no score and cannot become champion)."""
    n_train = len(store.clip_starts("train", "random"))
    if n_train < cfg.workers:
        raise NowcastError(
            f"the train split of {store.path} has {n_train} training clip(s) and {cfg.workers} worker(s) need at "
            "least one each; check the splits with `nowcast info`, re-ingest with more days in train (--split), "
            "or use fewer --workers",
            exit_code=2,
        )
    if not len(validation_starts(store, cfg.val_clips)):
        print(
            f"[train] warning: the valid split of {store.path} has no clips: the model gets no validation score "
            "and does not become champion",
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
                f"run {cfg.run_name!r} started on another store ({started_on.get('store')}) or on this one before "
                f"it changed, and {cfg.store} differs from it; resuming would train on different clips. Use "
                "another --run-name for a new run, or --force to resume on this store anyway",
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


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) a model as configured; see the module docstring.

    Raises NowcastError on bad options, a missing store, a train split too small for the workers, a
    resume on another store (without ``force``), unreachable Ray/MLflow, a worker failure beyond
    ``max_failures`` (re-run with the same run name to resume) or a non-finite loss.
    """
    t0 = time.perf_counter()
    store = Store.open(cfg.store)
    cfg = _with_store_frame_size(cfg.resolved(), store)
    check_splits(cfg, store)
    check_run_store(cfg, store)
    resume_from = resume_point(cfg)
    run_id = _mlflow_run(cfg, _model_config(cfg), store)
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
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
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
    summary = result.return_value or {}
    ckpt_path = result.checkpoint.path if result.checkpoint is not None else None
    if summary.get("status") != "ok" or ckpt_path is None:
        tracking.set_run_status(run_id, "FAILED")
    raise_if_stopped(summary, ckpt_path, cfg.run_name)
    final_step = int(summary.get("final_step") or checkpoints.read_meta(ckpt_path)["step"])
    logged, promoted = _finish_model(cfg, store, run_id, ckpt_path, summary)
    return TrainResult(
        run_id=run_id,
        final_step=final_step,
        checkpoint_path=ckpt_path,
        model_uri=logged.model_uri,
        registered_version=logged.registered_version,
        val_scores=summary.get("val_scores"),
        promoted=promoted,
        best_step=summary.get("best_step"),
        stopped_early=bool(summary.get("stopped_early")),
        segments=summary.get("segments") or [],
        seconds=time.perf_counter() - t0,
    )
