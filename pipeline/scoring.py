"""The one clip scorer: a forecaster's skill on clips of a store, for ``nowcast evaluate`` and for the
validation inside ``nowcast train`` (stages never import each other, so it lives below both).

Per clip starting at ``t`` (int64 epoch s): frames ``[0, in_len)`` are the input, frames
``[in_len, in_len + out_len)`` the truth, with their masks (absent frames are zeros with mask 0;
masked truth pixels are not scored). Forecasts are clamped to [0, 1] (pixel units), as frames would
be stored, and pooled into a :class:`trajgru.metrics.SkillScores`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

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


@dataclass
class ForecastBatch:
    """One batch of clips with its forecast. Pixel tensors are CPU float (S, B, 1, H, W); the rain-rate
    views (mm/h, computed on first use through the Z–R relation ``zr``) drop the channel axis."""

    inputs: torch.Tensor  # (in_len, B, 1, H, W)
    input_masks: torch.Tensor  # (in_len, B, 1, H, W), 1 = observed
    truth: torch.Tensor  # (out_len, B, 1, H, W)
    truth_masks: torch.Tensor  # (out_len, B, 1, H, W)
    forecast: torch.Tensor  # (out_len, B, 1, H, W), clamped to [0, 1]; an ensemble's mean
    raw_members_mm_h: np.ndarray = field(repr=False)  # (M, out_len, B, H, W)
    zr: object = field(repr=False)

    @cached_property
    def members_mm_h(self) -> np.ndarray:
        """(M, out_len, B, H, W) mm/h; 0 outside the last input's coverage (as predict writes it)."""
        return np.where(self.input_masks[-1, :, 0].numpy() > 0, self.raw_members_mm_h, 0.0)

    @cached_property
    def truth_mm_h(self) -> np.ndarray:
        """(out_len, B, H, W) mm/h, NaN where the truth is not observed (not scored)."""
        return pixel_to_rain(self.truth[:, :, 0].numpy(), self.truth_masks[:, :, 0].numpy() > 0, self.zr)

    @cached_property
    def last_observed_mm_h(self) -> np.ndarray:
        """(B, H, W) mm/h of the last input frame, NaN outside its coverage."""
        return pixel_to_rain(self.inputs[-1, :, 0].numpy(), self.input_masks[-1, :, 0].numpy() > 0, self.zr)


def forecast_clips(
    forecaster: Forecaster,
    store: Store,
    starts_s: np.ndarray,
    in_len: int,
    out_len: int,
    batch_size: int = 4,
    radar: Radar | None = None,
    progress: bool = False,
    label: str = "evaluate",
) -> Iterator[ForecastBatch]:
    """Forecast the clips starting at ``starts_s`` (int64 epoch s), in order, a batch at a time, under
    ``torch.no_grad`` (``radar.zr``: the store's Z–R, :func:`pipeline.baselines_pysteps.store_radar`; None:
    HKO-7's). ``progress`` shows a bar headed ``label``. NowcastError when the forecaster returns the wrong
    shape."""
    zr = (radar or Radar()).zr
    if len(starts_s) == 0:
        return
    n_batches = -(-len(starts_s) // max(1, int(batch_size)))
    batches = track(
        clip_batches(store, starts_s, in_len + out_len, batch_size),
        f"{label} {forecaster.name}",
        total=n_batches,
        enabled=progress,
        transient=True,
    )
    with torch.no_grad():
        for frames, masks in batches:
            inputs, input_masks = frames[:in_len], masks[:in_len]
            pred, members_mm_h = _forecast(forecaster, inputs, input_masks, out_len, zr)
            yield ForecastBatch(
                inputs,
                input_masks,
                frames[in_len : in_len + out_len].contiguous(),
                masks[in_len : in_len + out_len].contiguous(),
                pred,
                members_mm_h,
                zr,
            )


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
    for batch in forecast_clips(forecaster, store, starts_s, in_len, out_len, batch_size, radar, progress):
        skill.update(batch.forecast, batch.truth, batch.truth_masks)
        if on_batch is not None:
            on_batch(batch.inputs, batch.truth, batch.forecast)
        if verification is not None:
            verification.update(batch.members_mm_h, batch.truth_mm_h, batch.last_observed_mm_h)
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
