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
(:func:`batch_indices`: a per-epoch permutation of the rank's shard of the training clips), so
a run restored from a checkpoint taken after step ``k`` continues with exactly the batches of
steps ``k+1, k+2, ...``. A checkpoint (every ``checkpoint_every`` steps and at the end) holds
the model, optimizer, scheduler, step, RNG states, the MLflow run id, the last validation
scores and ``segments``: one ``[first_step, last_step]`` pair per worker-group attempt whose
steps survive in this checkpoint's lineage. Expanded, the segments must be exactly
``1..final_step``: the record that no step was trained twice or skipped.

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
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import NowcastError
from pipeline.raycluster import connect_ray

RUN_NAME_TAG = "nowcast.run_name"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"

#: Preset-dependent defaults for the fields left None in TrainConfig. "hko7" is the paper's
#: recipe (Shi et al. 2017): global batch 4, Adam lr 1e-4 (beta1 0.5), clip 50, lr x0.7 every
#: 20k iterations down to 1e-6, 100k iterations.
RECIPES: dict[str, dict[str, Any]] = {
    "hko7": dict(steps=100_000, batch_size=4, lr=1e-4, lr_decay_every=20_000,
                 checkpoint_every=5_000, val_every=5_000, val_clips=256, log_every=50),
    "mnist++": dict(steps=100_000, batch_size=4, lr=1e-4, lr_decay_every=20_000,
                    checkpoint_every=5_000, val_every=5_000, val_clips=256, log_every=50),
    "tiny": dict(steps=200, batch_size=4, lr=1e-3, lr_decay_every=20_000,
                 checkpoint_every=50, val_every=100, val_clips=16, log_every=10),
}


@dataclass
class TrainConfig:
    """Options of ``nowcast train``; fields left None take the preset's :data:`RECIPES` value.

    Paths may be relative here: :meth:`resolved` makes them absolute before Ray sees them.
    ``fail_at_step`` is for tests: the last rank kills its own process once, at that step.
    """

    store: str
    preset: str = "tiny"
    cell: str = "trajgru"
    workers: int = 2
    use_gpu: bool = False
    steps: int | None = None
    batch_size: int | None = None          # global batch (split evenly over workers)
    lr: float | None = None
    beta1: float = 0.5
    clip_norm: float = 50.0                # global gradient norm
    lr_decay: float = 0.7
    lr_decay_every: int | None = None      # steps
    min_lr: float = 1e-6
    mse_weight: float = 1.0
    mae_weight: float = 1.0
    checkpoint_every: int | None = None    # steps
    val_every: int | None = None           # steps (0 = only at the end)
    val_clips: int | None = None           # cap on sequential validation clips
    log_every: int | None = None           # steps between console/MLflow step metrics
    gif_clips: int = 2                     # validation clips drawn as GIFs
    run_name: str | None = None
    storage_path: str | None = None        # default ./ray_results
    ray_address: str | None = None         # default env RAY_ADDRESS, else a local cluster
    tracking_uri: str | None = None
    experiment: str = "nowcast"
    register_as: str | None = None
    seed: int = 0
    height: int | None = None              # must match the store's frames if given
    width: int | None = None
    in_len: int | None = None              # model override (preset default otherwise)
    out_len: int | None = None
    max_failures: int = 2
    num_dataloader_workers: int = 0
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    model_format: str | None = None        # MLflow model: "pt2", "pickle", None = pt2 else pickle
    fail_at_step: int | None = None        # testing only

    def resolved(self) -> "TrainConfig":
        """A copy with preset defaults filled in, absolute paths and a run name; validated."""
        if self.preset not in RECIPES:
            raise NowcastError(f"unknown preset {self.preset!r}; choose one of {', '.join(RECIPES)}",
                               exit_code=2)
        values = dataclasses.asdict(self)
        for key, default in RECIPES[self.preset].items():
            if values[key] is None:
                values[key] = default
        values["store"] = str(Path(self.store).expanduser().resolve())
        values["storage_path"] = str(Path(self.storage_path or "ray_results").expanduser().resolve())
        values["ray_address"] = self.ray_address or os.environ.get("RAY_ADDRESS") or None
        from pipeline.tracking import resolve_tracking_uri

        values["tracking_uri"] = resolve_tracking_uri(self.tracking_uri)
        if not values["run_name"]:
            values["run_name"] = f"{self.preset}-{self.cell}-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """NowcastError (exit code 2) for inconsistent values."""
        def bad(msg):
            raise NowcastError(msg, exit_code=2)

        if self.workers < 1:
            bad(f"--workers must be >= 1, got {self.workers}")
        for name in ("steps", "batch_size", "checkpoint_every", "lr_decay_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size % self.workers:
            bad(f"global batch size {self.batch_size} must be a multiple of --workers {self.workers}")
        if self.lr is not None and not self.lr > 0:
            bad(f"learning rate must be > 0, got {self.lr}")
        if not 0 < self.lr_decay <= 1:
            bad(f"lr_decay must be in (0, 1], got {self.lr_decay}")

    def model_overrides(self) -> dict[str, int]:
        """ModelConfig overrides given by this config (height, width, in_len, out_len)."""
        names = ("height", "width", "in_len", "out_len")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    run_id: str                      # MLflow run
    final_step: int
    checkpoint_path: str | None      # latest Ray checkpoint directory (load_forecaster accepts it)
    model_uri: str | None            # logged MLflow model
    registered_version: int | None
    val_scores: dict | None          # SkillScores.to_json_dict() of the last validation
    promoted: bool
    segments: list = field(default_factory=list)   # [[first, last] step per attempt]
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
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 (yaml/json errors)
        raise NowcastError(f"cannot parse config file {path}: {exc}", exit_code=2) from exc
    data = data or {}
    if not isinstance(data, dict):
        raise NowcastError(f"config file {path} must hold a mapping of option: value", exit_code=2)
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise NowcastError(f"unknown option(s) {unknown} in {path}; valid: {', '.join(sorted(known))}",
                           exit_code=2)
    return data


# --------------------------------------------------------------------------- pure helpers
def lr_factor(step: int, decay: float, every: int, base_lr: float, min_lr: float) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps:
    ``max(decay ** (step // every), min_lr / base_lr)`` (the HKO-7 step schedule)."""
    return max(decay ** (step // every), min_lr / base_lr)


def batch_indices(step: int, batch: int, n_items: int, seed: int, rank: int) -> np.ndarray:
    """Indices into a rank's shard (length ``n_items``) for training step ``step`` (1-based).

    Sample ``k = (step - 1) * batch + j`` of the rank's stream is item ``perm_e[k % n_items]``
    of epoch ``e = k // n_items``'s permutation, drawn from ``(seed, rank, e)``: a pure
    function of its arguments, so a resumed run sees exactly the batches it would have seen.
    Every item is used once per epoch. Returns int64 (batch,).
    """
    if n_items < 1:
        raise ValueError("the shard is empty")
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
    import sys

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
    return x[:in_len], x[in_len:in_len + out_len], m[in_len:in_len + out_len]


def train_step(model, optimizer, loss_fn, inputs, truth, mask, *, step: int, clip_norm: float,
               autocast_device: str | None = None, reduce_fn=None) -> tuple[float, float]:
    """One optimizer step; returns ``(loss, grad_norm)`` (the loss averaged over ranks if
    ``reduce_fn`` is given: it maps a 1-element float tensor to its cross-rank mean).

    Raises :class:`NonFiniteLoss` *before* the optimizer step if the loss or the global
    gradient norm is not finite, so the weights stay those of the last good step.
    ``autocast_device`` ("cuda") enables bf16 autocast for the forward pass.
    """
    import torch

    optimizer.zero_grad(set_to_none=True)
    if autocast_device:
        with torch.autocast(autocast_device, dtype=torch.bfloat16):
            pred = model(inputs)
    else:
        pred = model(inputs)
    loss = loss_fn(pred.float(), truth, mask)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    stats = torch.stack([loss.detach().float(), grad_norm.detach().float()])
    if reduce_fn is not None:
        stats = reduce_fn(stats)   # on the model's device (NCCL reduces CUDA tensors only)
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


# --------------------------------------------------------------------------- worker side
def _rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(out_dir: Path, model, optimizer, scheduler, step: int, segments, run_id,
                     val_scores, champion: float | None) -> None:
    """Write a checkpoint directory: model files + train_state.pt + meta.json."""
    import torch

    from pipeline.tracking import save_model_files

    save_model_files(model, out_dir)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "rng": _rng_state()}, out_dir / STATE_FILE)
    meta = {"step": step, "segments": segments, "mlflow_run_id": run_id,
            "val_scores": val_scores, "champion_score": champion}
    (out_dir / META_FILE).write_text(json.dumps(meta))


def read_checkpoint_meta(checkpoint_dir: str | Path) -> dict:
    """The ``meta.json`` of a checkpoint: step, segments, mlflow_run_id, val_scores, champion_score."""
    return json.loads((Path(checkpoint_dir) / META_FILE).read_text())


class _Rank0Logger:
    """MLflow logging from rank 0 into the driver-created run (no-op on other ranks)."""

    def __init__(self, cfg: TrainConfig, run_id: str, active: bool):
        self.active = active
        self.run_id = run_id
        if not active:
            return
        import mlflow

        mlflow.set_tracking_uri(cfg.tracking_uri)
        self.mlflow = mlflow
        kwargs = {}
        if cfg.system_metrics:
            try:
                import psutil  # noqa: F401

                kwargs["log_system_metrics"] = True
                mlflow.set_system_metrics_sampling_interval(cfg.system_metrics_interval_s)
            except ImportError:
                pass
        mlflow.start_run(run_id=run_id, **kwargs)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.active:
            clean = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
            self.mlflow.log_metrics(clean, step=step)

    def artifacts(self, local_dir: Path, artifact_path: str) -> None:
        if self.active:
            self.mlflow.log_artifacts(str(local_dir), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        if self.active:
            self.mlflow.end_run(status)


def validation_metrics(result: dict) -> dict[str, float]:
    """Flat MLflow metrics from ``SkillScores.result()``: CSI/HSS per threshold averaged over
    lead times (``val_csi_5mm_h`` ...), mean B-MSE/B-MAE, and the champion score."""
    from pipeline.tracking import CHAMPION_METRIC
    from trajgru.metrics import champion_score, nanmean

    out: dict[str, float] = {}
    for key in ("csi", "hss"):
        arr = np.asarray(result[key], dtype=np.float64)
        for j, thr in enumerate(result["thresholds"]):
            out[f"val_{key}_{thr:g}mm_h"] = float(nanmean(arr[:, j]))
    for key in ("b_mse", "b_mae", "mse", "mae"):
        if key in result:
            out[f"val_{key}"] = float(nanmean(np.asarray(result[key], dtype=np.float64)))
    out[CHAMPION_METRIC] = float(champion_score(result))
    return out


def _validate(model, cfg: TrainConfig, starts_s: np.ndarray, in_len: int, out_len: int, device,
              rank: int, world: int, step: int, logger: _Rank0Logger, autocast_device):
    """Sequential-protocol validation on ``starts_s`` sharded over ranks; merged on rank 0.

    Returns ``(SkillScores.to_json_dict(), champion score)`` on every rank (broadcast).
    """
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from pipeline.dataset import ClipDataset, collate_clips, rank_slice
    from pipeline.store import Store
    from trajgru.metrics import SkillScores, champion_score

    module = getattr(model, "module", model)
    module.eval()
    mine = rank_slice(starts_s, rank, world)
    scores = SkillScores(out_len)
    gifs = []
    if len(mine):
        loader = DataLoader(ClipDataset(Store.open(cfg.store), mine, seq_len=in_len + out_len),
                            batch_size=max(1, cfg.batch_size // cfg.workers), collate_fn=collate_clips)
        with torch.no_grad():
            for frames, masks in loader:
                inputs, truth, mask = split_clip(frames.to(device), masks.to(device), in_len, out_len)
                if autocast_device:
                    with torch.autocast(autocast_device, dtype=torch.bfloat16):
                        pred = module(inputs)
                else:
                    pred = module(inputs)
                pred = pred.float().clamp(0, 1)
                scores.update(pred, truth, mask)
                for b in range(inputs.shape[1]):
                    if rank == 0 and len(gifs) < cfg.gif_clips:
                        gifs.append((inputs[:, b, 0].cpu().numpy(), truth[:, b, 0].cpu().numpy(),
                                     pred[:, b, 0].cpu().numpy()))
    module.train()
    if world > 1 and dist.is_initialized():
        gathered = [None] * world
        dist.all_gather_object(gathered, scores)
        merged = SkillScores(out_len)
        for other in gathered:
            merged.merge(other)
        scores = merged
    if scores.n_sequences == 0:
        return None, float("nan")
    result = scores.result()
    champ = float(champion_score(result))
    if rank == 0:
        logger.metrics(validation_metrics(result), step)
        _log_validation_artifacts(result, gifs, step, logger)
    return scores.to_json_dict(), champ


def _log_validation_artifacts(result: dict, gifs: list, step: int, logger: _Rank0Logger) -> None:
    """Skill-vs-lead PNG and forecast-vs-truth GIFs under artifacts ``validation/step_N``."""
    if not logger.active:
        return
    from pipeline import viz

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        viz.plot_skill_vs_lead(result, tmp / f"skill_vs_lead_step{step}.png",
                               title=f"validation, step {step}")
        for i, (inputs, truth, pred) in enumerate(gifs):
            viz.forecast_gif(inputs, truth, pred, tmp / f"forecast_clip{i}_step{step}.gif",
                             title=f"validation clip {i}, step {step}")
        logger.artifacts(tmp, f"validation/step_{step}")


def _all_mean_fn(world: int):
    """Cross-rank mean of a small float tensor on the training device (identity on one worker)."""
    import torch.distributed as dist

    def reduce(t):
        if world > 1 and dist.is_initialized():
            t = t.clone()
            dist.all_reduce(t)
            t /= world
        return t

    return reduce


def _build_and_restore(cfg: TrainConfig, device):
    """Model (prepared for DDP), optimizer, scheduler and restored training state."""
    import torch
    import ray.train
    import ray.train.torch

    from trajgru.model import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.preset, cfg.cell, **cfg.model_overrides())
    state, meta = None, None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            from pipeline.tracking import MODEL_STATE_FILE

            model.load_state_dict(torch.load(Path(d) / MODEL_STATE_FILE, map_location="cpu",
                                             weights_only=True))
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
            meta = read_checkpoint_meta(d)
    model_config = model.config.to_dict()
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.lr_decay, cfg.lr_decay_every, cfg.lr, cfg.min_lr))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
    return model, model_config, optimizer, scheduler, meta


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


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train worker function. ``config = {"cfg": resolved TrainConfig dict, "run_id": str}``.

    Returns (rank 0's value is ``Result.return_value``) ``{"status": "ok" | "non_finite",
    "final_step", "segments", "val_scores", "champion_score", "message"}``.
    """
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint, CheckpointConsistencyMode
    from torch.utils.data import DataLoader

    from pipeline.dataset import ClipDataset, collate_clips, rank_slice
    from pipeline.store import Store
    from trajgru.losses import BalancedLoss

    cfg = TrainConfig(**config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    autocast_device = "cuda" if cfg.use_gpu and device.type == "cuda" else None

    model, model_config, optimizer, scheduler, meta = _build_and_restore(cfg, device)
    in_len, out_len = model_config["in_len"], model_config["out_len"]
    start = meta["step"] if meta else 0
    segments = meta["segments"] if meta else []
    val_scores = meta["val_scores"] if meta else None
    champ = meta["champion_score"] if meta else None
    logger = _Rank0Logger(cfg, config["run_id"], active=rank == 0)
    per_worker = cfg.batch_size // world

    train_starts = shard(clip_starts(cfg.store, "train", "random"), rank, world)
    if len(train_starts) == 0:
        raise RuntimeError(f"rank {rank} has no training clips: the store's train split is too "
                           f"small for {world} workers")
    val_starts = Store.open(cfg.store).clip_starts("valid", "sequent")[: cfg.val_clips]
    loader = DataLoader(
        ClipDataset(Store.open(cfg.store), train_starts, seq_len=in_len + out_len),
        batch_sampler=StepBatchSampler(len(train_starts), per_worker, cfg.seed, rank, start + 1, cfg.steps),
        num_workers=cfg.num_dataloader_workers,
        collate_fn=collate_clips,
    )
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    loss_fn = BalancedLoss(cfg.mse_weight, cfg.mae_weight)
    reduce_fn = _all_mean_fn(world)
    if rank == 0:
        worker_print(f"[train] {'resuming after' if start else 'starting at'} step {start} of {cfg.steps}; "
              f"{world} worker(s), global batch {cfg.batch_size}, {len(train_starts)} train clips "
              f"on rank 0, {len(val_starts)} validation clips", flush=True)

    def checkpoint_and_report(step, metrics):
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if rank == 0:
                _save_checkpoint(Path(tmp), model, optimizer, scheduler, step, segments,
                                 config["run_id"], val_scores, champ)
                ckpt = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        # Wait until Ray Train has registered this checkpoint: a crash right after a report
        # could otherwise lose it (reports are collected by the controller's periodic poll).
        ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)

    status, message = "ok", ""
    t_window, n_window = time.perf_counter(), 0
    step = start
    new_attempt = True
    last_ckpt_step = start
    for step, (frames, masks) in zip(range(start + 1, cfg.steps + 1), loader):
        _maybe_fail(cfg, step, rank, world)
        inputs, truth, mask = split_clip(frames, masks, in_len, out_len)
        try:
            loss, gnorm = train_step(model, optimizer, loss_fn, inputs, truth, mask, step=step,
                                     clip_norm=cfg.clip_norm, autocast_device=autocast_device,
                                     reduce_fn=reduce_fn)
        except NonFiniteLoss as exc:
            status = "non_finite"
            message = (f"{exc}; the run stopped and its last good checkpoint (step "
                       f"{last_ckpt_step}) is kept")
            step -= 1
            break
        add_step(segments, step, new_attempt)
        new_attempt = False
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        n_window += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            dt = time.perf_counter() - t_window
            sps = n_window * cfg.batch_size / max(dt, 1e-9)
            logger.metrics({"loss": loss, "lr": lr, "grad_norm": gnorm, "samples_per_s": sps}, step)
            if rank == 0:
                eta = (cfg.steps - step) * cfg.batch_size / max(sps, 1e-9)
                worker_print(f"[train] step {step}/{cfg.steps}  loss {loss:.5f}  lr {lr:.2e}  "
                      f"{sps:.2f} samples/s  ETA {_format_eta(eta)}", flush=True)
            t_window, n_window = time.perf_counter(), 0
        if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps:
            val_scores, champ = _validate(model, cfg, val_starts, in_len, out_len, device, rank,
                                          world, step, logger, autocast_device)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint_and_report(step, {"step": step, "loss": loss})
            last_ckpt_step = step
    if status == "ok" and start >= cfg.steps and rank == 0:
        worker_print(f"[train] already at step {start}: nothing to train", flush=True)
    logger.end("FINISHED" if status == "ok" else "FAILED")
    return {"status": status, "final_step": segments[-1][1] if segments else start,
            "segments": segments, "val_scores": val_scores, "champion_score": champ,
            "message": message}


# --------------------------------------------------------------------------- driver side
def _check_store(cfg: TrainConfig) -> tuple[int, int]:
    """The store's frame (H, W); NowcastError if height/width overrides disagree."""
    from pipeline.store import open_store

    group = open_store(cfg.store)
    _, height, width = group["frames"].shape
    for name, want, have in (("height", cfg.height, height), ("width", cfg.width, width)):
        if want is not None and want != have:
            raise NowcastError(
                f"--{name} {want} differs from the store's frames ({height}x{width}); "
                "ingest a store at the size you want to train on, or drop the option.", exit_code=2)
    return height, width


def _mlflow_run(cfg: TrainConfig, model_config: dict) -> str:
    """Find the MLflow run of ``cfg.run_name`` (resume) or create it and log its parameters."""
    import mlflow

    from pipeline.store import Store
    from pipeline.tracking import code_version, setup_experiment

    exp_id = setup_experiment(cfg.tracking_uri, cfg.experiment)
    client = mlflow.MlflowClient()
    found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{cfg.run_name}'",
                               max_results=1, order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=cfg.run_name, tags={RUN_NAME_TAG: cfg.run_name})
    run_id = run.info.run_id
    params = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "fail_at_step"}
    params.update({f"model.{k}": v for k, v in model_config.items()})
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                           for k, v in params.items()})
        mlflow.log_dict(Store.open(cfg.store).fingerprint(), "store_fingerprint.json")
        mlflow.log_dict(model_config, "model_config.json")
        mlflow.set_tags({"code_version": code_version(), "store": cfg.store})
    # start_run/end_run marked it FINISHED; rank 0 reopens it as RUNNING.
    return run_id


def raise_if_stopped(summary: dict, checkpoint_path: str | None, run_name: str) -> None:
    """NowcastError if the workers stopped on a non-finite loss or left no checkpoint."""
    if summary.get("status") == "non_finite":
        raise NowcastError(
            f"training stopped: {summary.get('message')}. Last good checkpoint: "
            f"{checkpoint_path or 'none (the failure came before the first checkpoint)'}. Lower "
            "--lr or --clip-norm, or check the store for corrupt frames; then re-run.")
    if checkpoint_path is None:
        raise NowcastError(f"run {run_name!r} produced no checkpoint; check --steps.")


def _finish_model(cfg: TrainConfig, run_id: str, checkpoint_dir: str, summary: dict):
    """Log the final model into the run, register it and apply the champion rule."""
    import mlflow

    from pipeline.dataset import ClipDataset
    from pipeline.store import Store
    clip_starts = lambda store, split, protocol: Store.open(store).clip_starts(split, protocol)  # noqa: E731
    from pipeline.tracking import load_model_files, log_and_register_model, promote_if_better

    model, mcfg = load_model_files(checkpoint_dir)
    example = _input_example(cfg, mcfg, ClipDataset, clip_starts)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        logged = log_and_register_model(model, example, cfg.register_as,
                                        serialization_format=cfg.model_format)
    promoted = False
    if logged.registered_version is not None:
        score = summary.get("champion_score")
        score = float("nan") if score is None else float(score)
        promoted = promote_if_better(cfg.register_as, logged.registered_version, score)
        print(f"[train] registered {cfg.register_as} version {logged.registered_version}"
              f"{' (now champion)' if promoted else ''}", flush=True)
    return logged, promoted


def _input_example(cfg: TrainConfig, mcfg: dict, ClipDataset, clip_starts) -> np.ndarray:
    """Two validation (or training) clips' inputs, float32 (in_len, 2, 1, H, W)."""
    in_len = mcfg["in_len"]
    for split in ("valid", "train"):
        starts = clip_starts(cfg.store, split, "sequent" if split == "valid" else "random")
        if len(starts):
            ds = ClipDataset(Store.open(cfg.store), starts[:2], seq_len=in_len)
            clips = [ds[i][0].numpy() for i in range(len(ds))]
            while len(clips) < 2:
                clips.append(clips[0])
            return np.stack(clips, axis=1).astype(np.float32)
    return np.zeros((in_len, 2, 1, mcfg["height"], mcfg["width"]), dtype=np.float32)


def _model_config(cfg: TrainConfig, height: int, width: int) -> dict:
    from trajgru.model import build_model

    overrides = {**cfg.model_overrides(), "height": height, "width": width}
    try:
        return build_model(cfg.preset, cfg.cell, **overrides).config.to_dict()
    except ValueError as exc:
        raise NowcastError(f"cannot build the {cfg.preset} model: {exc}", exit_code=2) from exc


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume) a model as configured; see the module docstring.

    Raises NowcastError on bad options, a missing store, unreachable Ray/MLflow, a worker
    failure beyond ``max_failures`` (re-run with the same run name to resume) or a
    non-finite loss.
    """
    t0 = time.perf_counter()
    cfg = cfg.resolved()
    height, width = _check_store(cfg)
    cfg = dataclasses.replace(cfg, height=height, width=width)
    model_config = _model_config(cfg, height, width)
    run_id = _mlflow_run(cfg, model_config)
    connect_ray(cfg.ray_address)

    import mlflow
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=cfg.run_name, storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 (ray.train.TrainingFailedError and friends)
        mlflow.MlflowClient().set_terminated(run_id, "FAILED")
        raise NowcastError(
            f"training run {cfg.run_name!r} failed: {exc}\nRe-run with the same --run-name "
            f"{cfg.run_name} (and --storage-path {cfg.storage_path}) to resume from its last "
            "checkpoint.") from exc
    summary = result.return_value or {}
    ckpt_path = result.checkpoint.path if result.checkpoint is not None else None
    if summary.get("status") != "ok" or ckpt_path is None:
        mlflow.MlflowClient().set_terminated(run_id, "FAILED")
    raise_if_stopped(summary, ckpt_path, cfg.run_name)
    final_step = int(summary.get("final_step") or read_checkpoint_meta(ckpt_path)["step"])
    logged, promoted = _finish_model(cfg, run_id, ckpt_path, summary)
    return TrainResult(
        run_id=run_id, final_step=final_step, checkpoint_path=ckpt_path,
        model_uri=logged.model_uri, registered_version=logged.registered_version,
        val_scores=summary.get("val_scores"), promoted=promoted,
        segments=summary.get("segments") or [], seconds=time.perf_counter() - t0,
    )
