"""The one clip scorer: a forecaster's skill on clips of a store, for ``nowcast evaluate`` and for the
validation inside ``nowcast train`` (stages never import each other, so it lives below both).

Per clip starting at ``t`` (int64 epoch s): frames ``[0, in_len)`` are the input, frames
``[in_len, in_len + out_len)`` the truth, with their masks (absent frames are zeros with mask 0;
masked truth pixels are not scored). Forecasts are clamped to [0, 1] (pixel units), as frames would
be stored, and pooled into a :class:`trajgru.metrics.SkillScores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.dataset import ClipDataset, collate_clips
from pipeline.errors import NowcastError
from pipeline.forecasters import Forecaster
from pipeline.progress import track
from pipeline.store import Store
from trajgru.metrics import DEFAULT_THRESHOLDS_MM_H, SkillScores

#: ``on_batch(inputs, truth, forecast)``: CPU float tensors (in_len | out_len, B, 1, H, W), pixel units.
BatchCallback = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def clip_batches(
    store: Store, starts_s: np.ndarray, seq_len: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (frames, masks) torch float32 (seq_len, B, 1, H, W) over the clips, in order."""
    dataset = ClipDataset(store, np.asarray(starts_s, dtype=np.int64), seq_len=seq_len)
    loader = DataLoader(
        dataset, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=0, collate_fn=collate_clips
    )
    for frames, masks in loader:
        yield frames.transpose(0, 1), masks.transpose(0, 1)


def score_clips(
    forecaster: Forecaster,
    store: Store,
    starts_s: np.ndarray,
    in_len: int,
    out_len: int,
    batch_size: int = 4,
    thresholds_mm_h: Sequence[float] = DEFAULT_THRESHOLDS_MM_H,
    progress: bool = False,
    on_batch: BatchCallback | None = None,
) -> SkillScores:
    """Score ``forecaster`` on the clips starting at ``starts_s`` (int64 epoch s) in this process.

    ``progress`` shows a bar over the batches; ``on_batch`` sees every batch's inputs, truth and
    clamped forecast (e.g. to draw a few as GIFs). Returns a :class:`trajgru.metrics.SkillScores`
    (seq_len = out_len); NowcastError when the forecaster returns the wrong shape.
    """
    skill = SkillScores(out_len, thresholds_mm_h)
    if len(starts_s) == 0:
        return skill
    n_batches = -(-len(starts_s) // max(1, int(batch_size)))
    batches = track(
        clip_batches(store, starts_s, in_len + out_len, batch_size),
        f"evaluate {forecaster.name}",
        total=n_batches,
        enabled=progress,
        transient=True,
    )
    with torch.no_grad():
        for frames, masks in batches:
            inputs = frames[:in_len]
            pred = forecaster(inputs)
            if pred.shape[0] < out_len or tuple(pred.shape[1:]) != tuple(frames.shape[1:]):
                raise NowcastError(
                    f"{forecaster.name} returned shape {tuple(pred.shape)} for inputs "
                    f"{tuple(inputs.shape)}; expected ({out_len}, *{tuple(frames.shape[1:])})"
                )
            pred = pred[:out_len].float().clamp(0.0, 1.0).cpu()
            truth = frames[in_len : in_len + out_len].contiguous()
            skill.update(pred, truth, masks[in_len : in_len + out_len].contiguous())
            if on_batch is not None:
                on_batch(inputs, truth, pred)
    return skill
