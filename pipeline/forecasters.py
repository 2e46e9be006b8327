"""Forecasters: one callable from radar inputs to forecasts, whatever produced it.

:func:`load_forecaster` turns any of these model URIs into a :class:`Forecaster`::

    models:/NAME@ALIAS      registered model by alias (e.g. models:/nowcast@champion)
    models:/NAME/VERSION    registered model by version number
    /path/to/checkpoint     a checkpoint directory written by ``nowcast train`` (or its
                            model_state.pt, or a Ray Train run directory: its latest checkpoint)
    persistence             last observed frame repeated
    optical-flow            optical-flow extrapolation (also spelt optical_flow)

Trained models are rebuilt from the model files of ``pipeline.checkpoints`` (never unpickled);
registered models are found through ``pipeline.tracking``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import checkpoints
from pipeline.errors import NowcastError
from pipeline.tracking import registered_model_files
from trajgru import baselines
from trajgru.fast import enable_fast_path

#: The baseline forecasters by name (the one list of them).
BASELINES = ("persistence", "optical-flow")
_BASELINE_SPELLINGS = {
    "persistence": "persistence",
    "optical-flow": "optical-flow",
    "optical_flow": "optical-flow",
}
_BASELINE_FNS = {"persistence": baselines.persistence, "optical-flow": baselines.optical_flow}
#: Input and output frames of a baseline when nothing else sets them (the HKO-7 protocol: 5 -> 20).
BASELINE_IN_LEN = 5
BASELINE_OUT_LEN = 20

URI_HELP = (
    "use models:/NAME@ALIAS, models:/NAME/VERSION, a checkpoint directory written by "
    "`nowcast train`, 'persistence' or 'optical-flow'"
)


@dataclass
class Forecaster:
    """A callable from radar inputs to forecasts, whatever produced it.

    ``forecaster(inputs)``: inputs torch float (in_len, B, 1, H, W) pixel values in [0, 1] ->
    forecast (out_len, B, 1, H, W) on ``device`` (inputs are moved there), computed under
    ``torch.no_grad``. Model outputs are not clamped (clamp when writing frames).
    """

    fn: Callable[[Any], Any]
    in_len: int
    out_len: int
    name: str
    run_id: str | None = None
    model_config: dict | None = None
    device: str = "cpu"
    module: Any = field(default=None, repr=False)  # the nn.Module for trained models

    def __call__(self, inputs):
        if inputs.shape[0] != self.in_len:
            raise NowcastError(f"{self.name} needs {self.in_len} input frames, got {inputs.shape[0]}")
        with torch.no_grad():
            return self.fn(inputs.to(self.device))

    def forecast_frames(self, frames_u8: np.ndarray) -> np.ndarray:
        """(in_len, H, W) uint8 stored pixels -> (out_len, H, W) float pixel values clamped to [0, 1]."""
        x = torch.from_numpy(frames_u8.astype(np.float32) / 255.0)[:, None, None]  # (in_len, 1, 1, H, W)
        return self(x)[:, 0, 0].float().clamp(0.0, 1.0).cpu().numpy()

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) the model was built for, or None when it takes any size (baselines)."""
        config = self.model_config or {}
        h, w = config.get("height"), config.get("width")
        return (int(h), int(w)) if h is not None and w is not None else None

    def check_frame_size(self, data_hw: tuple[int, int], where: str) -> None:
        """NowcastError when the model's frame size differs from the data's (``where`` names the data)."""
        model_hw = self.frame_size
        if model_hw is not None and tuple(model_hw) != tuple(data_hw):
            raise NowcastError(
                f"{self.name} was trained on {model_hw[0]}x{model_hw[1]} frames but {where} holds "
                f"{data_hw[0]}x{data_hw[1]} frames; evaluate it on a store ingested at the model's size "
                "or train a model on this store"
            )


def baseline_name(uri: str) -> str | None:
    """The baseline a URI names (``optical_flow`` -> ``optical-flow``), or None for other URIs."""
    return _BASELINE_SPELLINGS.get(str(uri).strip())


def absolute_uri(uri: str) -> str:
    """Checkpoint paths -> absolute (Ray workers change directory); other URIs unchanged."""
    uri = str(uri).strip()
    if baseline_name(uri) or "://" in uri or uri.startswith("models:/"):
        return uri
    path = Path(uri).expanduser()
    return str(path.resolve()) if path.exists() else uri


def _model_forecaster(
    model, config: dict, name: str, run_id: str | None, device: str, fast_path: bool
) -> Forecaster:
    if fast_path:
        enable_fast_path(model)
    return Forecaster(
        model, int(config["in_len"]), int(config["out_len"]), name, run_id, config, device, module=model
    )


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; other names pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_forecaster(
    uri: str,
    tracking_uri: str | None = None,
    device: str = "cpu",
    in_len: int | None = None,
    out_len: int | None = None,
    fast_path: bool = True,
) -> Forecaster:
    """A :class:`Forecaster` for ``uri`` (see the module doc for the forms).

    ``in_len``/``out_len`` apply to the baselines only (a trained model has its own); None =
    :data:`BASELINE_IN_LEN` / :data:`BASELINE_OUT_LEN`. ``fast_path`` runs a trained model on
    ``trajgru.fast.enable_fast_path`` (fused kernels and channels-last on a GPU, channels-last on the
    CPU; the same weights). Raises NowcastError for unknown URIs, missing checkpoints, unknown
    registered models or an unreachable tracking server.
    """
    device = resolve_device(device)
    uri = str(uri).strip()
    baseline = baseline_name(uri)
    if baseline is not None:
        fn, n_out = _BASELINE_FNS[baseline], int(out_len or BASELINE_OUT_LEN)
        return Forecaster(
            lambda x: fn(x, n_out), int(in_len or BASELINE_IN_LEN), n_out, baseline, device=device
        )
    if uri.startswith("models:/"):
        model_dir, name, run_id = registered_model_files(uri, tracking_uri)
        model, config = checkpoints.load_model_files(model_dir, device)
        return _model_forecaster(model, config, name, run_id, device, fast_path)
    path = Path(uri).expanduser()
    if path.exists():
        try:
            ckpt = checkpoints.find(path.resolve())
        except NowcastError as exc:
            raise NowcastError(f"{exc}; {URI_HELP}") from None
        model, config = checkpoints.load_model_files(ckpt, device)
        return _model_forecaster(model, config, str(ckpt), checkpoints.run_id(ckpt), device, fast_path)
    raise NowcastError(f"unknown model {uri!r} (no such file or directory); {URI_HELP}", exit_code=2)
