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

from pipeline.baselines_pysteps import Radar, pixel_to_rain, rain_to_pixel
from pipeline.dataset import ClipDataset, collate_clips
from pipeline.errors import NowcastError
from pipeline.forecasters import Forecaster
from pipeline.progress import track
from pipeline.store import Store
from pipeline.verification import Verification
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
    verification: Verification | None = None,
    radar: Radar | None = None,
) -> SkillScores:
    """Score ``forecaster`` on the clips starting at ``starts_s`` (int64 epoch s) in this process.

    ``progress`` shows a bar over the batches; ``on_batch`` sees every batch's inputs, truth and
    clamped forecast (e.g. to draw a few as GIFs). Returns a :class:`trajgru.metrics.SkillScores`
    (seq_len = out_len); NowcastError when the forecaster returns the wrong shape. ``verification``
    (when given) is updated in place, in rain rate through ``radar.zr`` (the store's Z–R,
    :func:`pipeline.baselines_pysteps.store_radar`; None: HKO-7's). An ensemble is scored on its mean.
    """
    skill = SkillScores(out_len, thresholds_mm_h)
    zr = (radar or Radar()).zr
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
            pred, members_mm_h = _forecast(forecaster, inputs, masks[:in_len], out_len, zr)
            truth, truth_masks = frames[in_len : in_len + out_len], masks[in_len : in_len + out_len]
            skill.update(pred, truth.contiguous(), truth_masks.contiguous())
            if on_batch is not None:
                on_batch(inputs, truth, pred)
            if verification is not None:  # forecast rain outside the last input's coverage: none (as predict)
                members_mm_h = np.where(masks[in_len - 1, :, 0].numpy() > 0, members_mm_h, 0.0)
                truth_mm_h = pixel_to_rain(truth[:, :, 0].numpy(), truth_masks[:, :, 0].numpy() > 0, zr)
                verification.update(members_mm_h, truth_mm_h)
    return skill


def _forecast(
    forecaster: Forecaster, inputs: torch.Tensor, masks: torch.Tensor, out_len: int, zr
) -> tuple[torch.Tensor, np.ndarray]:
    """(deterministic forecast pixels (out_len, B, 1, H, W) clamped to [0, 1] on the CPU, members in rain
    rate (M, out_len, B, H, W) mm/h). An ensemble's deterministic forecast is its mean in rain rate."""
    members = forecaster.ensemble(inputs, masks)
    expected = (out_len, *inputs.shape[1:])
    if (
        members.dim() != 6
        or members.shape[1] < out_len
        or tuple(members.shape[2:]) != tuple(inputs.shape[1:])
    ):
        raise NowcastError(
            f"{forecaster.name} returned shape {tuple(members.shape[1:])} for inputs "
            f"{tuple(inputs.shape)}; expected {expected}"
        )
    members = members[:, :out_len].float().clamp(0.0, 1.0).cpu()
    members_mm_h = pixel_to_rain(members[:, :, :, 0].numpy(), None, zr)
    if members.shape[0] == 1:
        return members[0], members_mm_h
    mean_pixel = rain_to_pixel(members_mm_h.mean(axis=0), zr)
    return torch.from_numpy(mean_pixel).unsqueeze(2), members_mm_h
