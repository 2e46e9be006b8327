"""Validation inside ``nowcast train``: the HKO-7 sequential protocol on the valid split, scored by the
project's one clip scorer (:func:`pipeline.scoring.score_clips`), split over the ranks and merged, logged
to MLflow by rank 0 (metrics under the names ``nowcast evaluate`` uses, a skill-vs-lead PNG, forecast
GIFs)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist

from pipeline import tracking, viz
from pipeline.dataset import rank_slice
from pipeline.forecasters import Forecaster
from pipeline.scoring import score_clips
from pipeline.store import Store
from trajgru.metrics import SkillScores, champion_score

if TYPE_CHECKING:
    from pipeline.train.worker import WorkerContext


def forward(model, inputs, autocast_device: str | None):
    """The model's forecast, under bf16 autocast on ``autocast_device`` when given."""
    if autocast_device:
        with torch.autocast(autocast_device, dtype=torch.bfloat16):
            return model(inputs)
    return model(inputs)


def validation_metrics(result: dict) -> dict[str, float]:
    """MLflow metrics of a validation: :func:`pipeline.tracking.skill_metrics` on the ``valid`` split
    (``valid_csi_5mm_h`` ..., the names ``nowcast evaluate`` uses) and the champion score."""
    return {
        **tracking.skill_metrics(result, tracking.CHAMPION_SPLIT),
        tracking.CHAMPION_METRIC: float(champion_score(result)),
    }


def _validation_forecaster(module, ctx: WorkerContext) -> Forecaster:
    """The model being trained as a :class:`pipeline.forecasters.Forecaster` (bf16 autocast on a GPU)."""
    return Forecaster(
        fn=lambda inputs: forward(module, inputs, ctx.autocast_device),
        in_len=ctx.in_len,
        out_len=ctx.out_len,
        name="validation",
        device=str(ctx.device),
    )


def _gif_collector(ctx: WorkerContext, gifs: list):
    """An ``on_batch`` for :func:`pipeline.scoring.score_clips` that keeps up to ``gif_clips`` (inputs,
    truth, forecast) numpy examples (rank 0 only)."""

    def keep(inputs, truth, pred) -> None:
        for b in range(inputs.shape[1]):
            if ctx.rank == 0 and len(gifs) < ctx.cfg.gif_clips:
                gifs.append((inputs[:, b, 0].numpy(), truth[:, b, 0].numpy(), pred[:, b, 0].numpy()))

    return keep


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
    gifs: list = []
    scores = score_clips(
        _validation_forecaster(module, ctx),
        ctx.store,
        rank_slice(starts_s, ctx.rank, ctx.world),
        ctx.in_len,
        ctx.out_len,
        batch_size=max(1, ctx.cfg.batch_size // ctx.cfg.workers),
        on_batch=_gif_collector(ctx, gifs),
    )
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


def validation_starts(store: Store, max_clips: int | None) -> np.ndarray:
    """The validation split's sequential clip starts; at most ``max_clips`` of them, evenly spaced over
    the split (so a capped validation still sees every part of it)."""
    starts = store.clip_starts("valid", "sequent")
    if max_clips is None or len(starts) <= max_clips:
        return starts
    return starts[np.unique(np.linspace(0, len(starts) - 1, max_clips).round().astype(np.int64))]
