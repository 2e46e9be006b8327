"""Forecasters: one callable from radar inputs to forecasts, whatever produced it.

:func:`load_forecaster` turns any of these model URIs into a :class:`Forecaster`::

    models:/NAME@ALIAS      registered model by alias (e.g. models:/nowcast@champion)
    models:/NAME/VERSION    registered model by version number
    /path/to/checkpoint     a checkpoint directory written by ``nowcast train`` (or its
                            model_state.pt, or a Ray Train run directory: its latest checkpoint)
    persistence             last observed frame repeated
    optical-flow            optical-flow extrapolation (also spelt optical_flow)
    extrapolation           pysteps: Lucas–Kanade motion + semi-Lagrangian extrapolation
    sprog                   pysteps: S-PROG
    steps[:members=M,seed=S]  pysteps: the STEPS ensemble (default 20 members, seed 0); see
                            :mod:`pipeline.baselines_pysteps` for every option

Trained models are rebuilt from the model files of ``pipeline.checkpoints`` (never unpickled);
registered models are found through ``pipeline.tracking``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import checkpoints
from pipeline.baselines_pysteps import PYSTEPS_BASELINES, PystepsBaseline, Radar, parse_spec
from pipeline.errors import NowcastError
from pipeline.tracking import registered_model_files
from trajgru import baselines
from trajgru.fast import enable_fast_path

#: The baseline forecasters by name (the one list of them).
BASELINES = ("persistence", "optical-flow", *PYSTEPS_BASELINES)
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
    "`nowcast train`, or a baseline: 'persistence', 'optical-flow', 'extrapolation', 'sprog', "
    "'steps' or 'steps:members=20,seed=1'"
)


@dataclass
class Forecaster:
    """A callable from radar inputs to forecasts, whatever produced it.

    ``forecaster(inputs, masks=None)``: inputs torch float (in_len, B, 1, H, W) pixel values in [0, 1]
    (masks: same shape, True = observed; used by the forecasters that take them, ``takes_masks``) ->
    forecast (out_len, B, 1, H, W) on ``device`` (inputs are moved there), computed under
    ``torch.no_grad``. Model outputs are not clamped (clamp when writing frames).
    Ensembles (``members > 1``) return their mean from the call and the members from :meth:`ensemble`.
    """

    fn: Callable[[Any], Any]
    in_len: int
    out_len: int
    name: str
    run_id: str | None = None
    model_config: dict | None = None
    device: str = "cpu"
    module: Any = field(default=None, repr=False)  # the nn.Module for trained models
    takes_masks: bool = False  # fn(inputs, masks) rather than fn(inputs)
    ensemble_fn: Callable[[Any, Any], Any] | None = field(
        default=None, repr=False
    )  # (inputs, masks) -> members
    members: int = 1

    def _args(self, inputs, masks) -> tuple:
        if inputs.shape[0] != self.in_len:
            raise NowcastError(f"{self.name} needs {self.in_len} input frames, got {inputs.shape[0]}")
        if not self.takes_masks:
            return (inputs.to(self.device),)
        return inputs.to(self.device), None if masks is None else masks.to(self.device)

    def __call__(self, inputs, masks=None):
        with torch.no_grad():
            return self.fn(*self._args(inputs, masks))

    def ensemble(self, inputs, masks=None):
        """Members (M, out_len, B, 1, H, W); a deterministic forecaster gives its forecast as M = 1."""
        with torch.no_grad():
            if self.ensemble_fn is None:
                return self.fn(*self._args(inputs, masks)).unsqueeze(0)
            return self.ensemble_fn(*self._args(inputs, masks))

    def forecast_frames(self, frames_u8: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """(in_len, H, W) uint8 stored pixels (masks: bool (in_len, H, W), True = valid, for the forecasters
        that take them) -> (out_len, H, W) float pixel values clamped to [0, 1] (an ensemble: its mean)."""
        return self(*_one_sequence(frames_u8, masks))[:, 0, 0].float().clamp(0.0, 1.0).cpu().numpy()

    def ensemble_frames(self, frames_u8: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`forecast_frames`, the members: (M, out_len, H, W) float pixel values in [0, 1]."""
        members = self.ensemble(*_one_sequence(frames_u8, masks))
        return members[:, :, 0, 0].float().clamp(0.0, 1.0).cpu().numpy()

    @property
    def digest(self) -> str:
        """What identifies this forecaster's forecasts: the SHA-256 of a trained model's parameters and buffers
        (in state-dict order), or ``baseline:<name>`` for a baseline."""
        if self.module is None:
            return f"baseline:{self.name}"
        sha = hashlib.sha256()
        for key, tensor in self.module.state_dict().items():
            sha.update(key.encode())
            sha.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return sha.hexdigest()

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


def _one_sequence(frames_u8: np.ndarray, masks: np.ndarray | None) -> tuple:
    """uint8 frames (S, H, W) and bool masks -> the model layout (S, 1, 1, H, W): (pixels, masks or None)."""
    x = torch.from_numpy(frames_u8.astype(np.float32) / 255.0)[:, None, None]
    return x, None if masks is None else torch.from_numpy(np.asarray(masks, dtype=bool))[:, None, None]


def baseline_name(uri: str) -> str | None:
    """The baseline a URI names (``optical_flow`` -> ``optical-flow``, ``steps`` ->
    ``steps:members=20,seed=0``), or None for other URIs. NowcastError for bad pysteps options."""
    spec = parse_spec(uri)
    return spec.label if spec is not None else _BASELINE_SPELLINGS.get(str(uri).strip())


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
    radar: Radar | None = None,
) -> Forecaster:
    """A :class:`Forecaster` for ``uri`` (see the module doc for the forms).

    ``in_len``/``out_len`` apply to the baselines only (a trained model has its own); None =
    :data:`BASELINE_IN_LEN` / :data:`BASELINE_OUT_LEN`. ``fast_path`` runs a trained model on
    ``trajgru.fast.enable_fast_path`` (fused kernels and channels-last on a GPU, channels-last on the
    CPU; the same weights). ``radar``: the Z–R relation, pixel size and cadence the pysteps baselines
    work with (the store's, :func:`pipeline.baselines_pysteps.store_radar`; None = HKO-7's).
    Raises NowcastError for unknown URIs, missing checkpoints, unknown
    registered models or an unreachable tracking server.
    """
    device = resolve_device(device)
    uri = str(uri).strip()
    spec = parse_spec(uri)
    if spec is not None:
        n_out = int(out_len or BASELINE_OUT_LEN)
        pysteps_fn = PystepsBaseline(spec, n_out, radar)
        return Forecaster(
            pysteps_fn,
            int(in_len or BASELINE_IN_LEN),
            n_out,
            spec.label,
            device=device,
            takes_masks=True,
            ensemble_fn=pysteps_fn.ensemble if pysteps_fn.members > 1 else None,
            members=pysteps_fn.members,
        )
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
