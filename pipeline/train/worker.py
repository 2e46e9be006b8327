"""The Ray Train worker of ``nowcast train``: one process per rank, from its checkpoint to the last step.

Determinism: step ``s`` (1-based) of rank ``r`` trains on a batch fixed by ``(seed, s, r)`` alone
(:func:`batch_indices`), so a run restored from a checkpoint taken after step ``k`` continues with exactly
the batches of steps ``k+1, k+2, ...``; ``segments`` record which steps each attempt trained
(:func:`add_step`). Every step is :class:`trajgru.step.TrainStep` (:func:`make_train_step`).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointConsistencyMode
from torch.utils.data import DataLoader

from pipeline import checkpoints, tracking
from pipeline.dataset import ClipDataset, augment_clips, collate_clips, rank_slice
from pipeline.raycluster import DriverGone, DriverLink
from pipeline.store import Store
from pipeline.train.config import TrainConfig, lr_factor
from pipeline.train.validation import score_validation, validation_starts
from trajgru.fast import enable_fast_path, fused_adam
from trajgru.losses import BalancedLoss
from trajgru.model import build_model
from trajgru.step import NonFiniteLoss, TrainStep


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


def split_clip(frames, masks, in_len: int, out_len: int):
    """Collated (B, S, 1, H, W) frames/masks -> inputs (in_len,B,1,H,W), truth and mask
    (out_len,B,1,H,W) in sequence-first layout."""
    x = frames.transpose(0, 1)
    m = masks.transpose(0, 1)
    return x[:in_len], x[in_len : in_len + out_len], m[in_len : in_len + out_len]


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}"


@dataclass
class WorkerResult:
    """What a worker's loop ends with (rank 0's is ``Result.return_value``)."""

    status: str  # "ok" | "non_finite" (the loss or gradient norm stopped being finite)
    final_step: int
    segments: list  # [[first, last] step per attempt]
    val_scores: dict | None  # SkillScores.to_json_dict() of the last validation
    champion_score: float | None  # of the last validation
    best_step: int | None  # of the best validated weights (the checkpoint's best/)
    best_score: float | None
    stopped_early: bool
    message: str  # why it stopped, when status is not "ok"


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
    """Adam (fused on a GPU with the fast path) and the learning-rate schedule (:func:`lr_factor`) of the
    recipe."""
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
        saved = train_state["optimizer"]
        for saved_group, group in zip(saved["param_groups"], optimizer.param_groups):
            # a captured step's groups hold a device-tensor lr and capturable=True: resume on any device
            saved_group.update(lr=float(saved_group["lr"]), capturable=group.get("capturable", False))
            saved_group.update(fused=group.get("fused"))
        optimizer.load_state_dict(saved)
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


def make_train_step(ctx: WorkerContext, model, optimizer, example_batch) -> TrainStep:
    """The run's :class:`trajgru.step.TrainStep`: one CUDA graph per step on a GPU with the fast path
    (every batch of a run has one shape: :class:`StepBatchSampler`, shape-keeping augmentation), else
    the plain step; rank 0 says which, and why not the graph."""
    cfg = ctx.cfg
    wanted = ctx.device.type == "cuda" and cfg.fast_path
    step = TrainStep(
        model,
        optimizer,
        BalancedLoss(cfg.mse_weight, cfg.mae_weight),
        clip_norm=cfg.clip_norm,
        autocast_dtype=torch.bfloat16 if ctx.autocast_device else None,
        reduce_fn=_all_mean_fn(ctx.world),
        capture_example=example_batch if wanted else None,
    )
    if step.graphed:
        ctx.say("training step: captured as one CUDA graph")
    else:
        reason = (
            step.fallback_reason if wanted else ("no GPU" if ctx.device.type != "cuda" else "--no-fast-path")
        )
        ctx.say(f"training step: plain ({reason})")
    return step


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


def _due(every: int | None, step: int, last: int) -> bool:
    """True every ``every`` steps (0/None: never) and at the last step."""
    return bool(every) and step % every == 0 or step == last


def train_loop_per_worker(config: dict) -> WorkerResult:
    """Ray Train worker function. ``config = {"cfg": resolved TrainConfig dict, "run_id": str, "link":
    DriverLink, "resume_from": a checkpoint path or None}``; rank 0's :class:`WorkerResult` is
    ``Result.return_value``."""
    cfg = TrainConfig(**config["cfg"])
    model, model_config, optimizer, scheduler, state = _build_and_restore(cfg, config.get("resume_from"))
    ctx = _worker_context(cfg, config["run_id"], model_config, config.get("link"))
    try:
        return _train_steps(ctx, model, optimizer, scheduler, state)
    except DriverGone:
        ctx.logger.end("KILLED")  # the driver was killed: stop here, log and checkpoint nothing more
        raise


def _train_steps(ctx: WorkerContext, model, optimizer, scheduler, state: TrainState) -> WorkerResult:
    """The training loop of :func:`train_loop_per_worker` from ``state.step`` on; returns its summary."""
    cfg = ctx.cfg
    start = state.step
    loader, n_clips = _train_loader(ctx, start + 1)
    val_starts = validation_starts(ctx.store, cfg.val_clips)
    step_log, train_step = _StepLog(ctx), None
    if state.stopped_early:
        ctx.say(
            f"stopped early at step {start} (no better validation in {cfg.early_stop_patience}); "
            "nothing to train"
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
        if cfg.augment:
            frames, masks = augment_clips(frames, masks, cfg.seed, ctx.rank, step)
        batch = split_clip(frames.to(ctx.device), masks.to(ctx.device), ctx.in_len, ctx.out_len)
        if train_step is None:
            train_step = make_train_step(ctx, model, optimizer, batch)
        try:
            loss, gnorm = train_step(*batch, step=step)
        except NonFiniteLoss as exc:
            status, message = "non_finite", str(exc)
            break
        add_step(state.segments, step, new_attempt)
        state.step, new_attempt = step, False
        lr = float(optimizer.param_groups[0]["lr"])  # a device tensor for the captured step
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
    return WorkerResult(
        status=status,
        final_step=state.segments[-1][1] if state.segments else start,
        segments=state.segments,
        val_scores=state.val_scores,
        champion_score=state.champion_score,
        best_step=state.best_step,
        best_score=state.best_score,
        stopped_early=state.stopped_early,
        message=message,
    )
