"""The GPU fast path: fused kernels, channels-last, fused Adam, CUDA-graph captured steps.

Everything here is opt-in and has a portable fallback: on a CPU every function returns a
working object that runs portable PyTorch code (channels-last, eager steps).

API
---
``enable_fast_path(model)`` / ``disable_fast_path(model)``
    Switch a model (from :func:`trajgru.build_model`) to channels-last activations and, on
    CUDA, the fused Triton kernels (warp + concat + GEMM, GRU gates). Call after
    ``model.to(device)`` and before building the optimizer. Portable: on the CPU only the
    layout changes (which is faster there too).
``fast_path_status(model)``
    What is active, for logs.
``fused_adam(params, lr, betas)``
    ``torch.optim.Adam(fused=True, capturable=True)`` with a tensor learning rate on CUDA
    (LR schedulers still work: they ``fill_`` a tensor lr); the ordinary Adam elsewhere.
``CapturedForecaster(model, example_inputs)``
    the forecast (no grad) replayed as one CUDA graph; eager, with the same semantics, where
    CUDA graphs are not available (CPU tensors) or capture failed (``.fallback_reason`` says why).

The captured *training* step is :class:`trajgru.step.TrainStep` (the project's one training step),
built on :class:`GraphReplay` and :class:`ParamSnapshot` from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from .kernels import BACKENDS, interpreting, triton_available, use_triton

__all__ = [
    "enable_fast_path",
    "disable_fast_path",
    "fast_path_status",
    "fused_adam",
    "GraphReplay",
    "ParamSnapshot",
    "graphs_possible",
    "CapturedForecaster",
]


def _unwrap(model: nn.Module) -> nn.Module:
    """The EncoderForecaster inside a DistributedDataParallel (or similar ``.module``) wrapper."""
    while not hasattr(model, "recurrent_cells") and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _cells(model: nn.Module) -> list[nn.Module]:
    model = _unwrap(model)
    if not hasattr(model, "recurrent_cells"):
        raise TypeError(f"expected a trajgru EncoderForecaster, got {type(model).__name__}")
    return list(model.recurrent_cells())


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def enable_fast_path(model: nn.Module, *, channels_last: bool = True, backend: str = "auto") -> nn.Module:
    """Turn on the fast path of ``model`` in place and return it.

    On CUDA: channels-last weights and activations, and the fused Triton kernels (warp +
    concat + GEMM, GRU gates). On the CPU: channels-last only, which is portable and
    measured faster there (oneDNN convolutions without layout reorders; see
    ``benchmarks/bench_trajgru.py``); the kernels stay off.

    Parameters
    ----------
    model : EncoderForecaster (or a ``.module`` wrapper of one), already on its device
    channels_last : convert the convolution weights (and so every activation) to channels-last
    backend : "auto" (Triton kernels on CUDA tensors, plain code elsewhere), "triton"
        (kernels also on CPU tensors under ``TRITON_INTERPRET=1``; tests) or "torch"
        (layout only).

    The parameters keep their names, shapes and values (only strides change), so state
    dicts and checkpoints are the same as the plain model's. Build the optimizer after
    this call (channels-last parameters get channels-last optimizer state).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    for cell in _cells(model):
        cell.fast_path = True
        cell.kernel_backend = backend
    _unwrap(model).channels_last_activations = bool(channels_last)
    return model


def disable_fast_path(model: nn.Module) -> nn.Module:
    """Back to the plain path (contiguous weights, no custom kernels), in place."""
    for cell in _cells(model):
        cell.fast_path = False
        cell.kernel_backend = "auto"
    _unwrap(model).channels_last_activations = False
    model.to(memory_format=torch.contiguous_format)
    return model


def fast_path_status(model: nn.Module) -> dict:
    """What the fast path does for ``model`` on its current device (JSON-able)."""
    cells = _cells(model)
    device = _model_device(model)
    probe = torch.empty(0, device=device)
    enabled = any(c.fast_path for c in cells)
    try:
        kernels = enabled and use_triton(cells[0].kernel_backend, probe)
    except RuntimeError:
        kernels = False
    return dict(
        enabled=enabled,
        device=str(device),
        triton_available=triton_available(),
        triton_interpreter=interpreting(),
        triton_kernels_active=bool(kernels),
        channels_last=bool(getattr(_unwrap(model), "channels_last_activations", False)),
    )


def fused_adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999), **kwargs) -> torch.optim.Adam:
    """Adam for the fast path: ``fused=True`` on CUDA (one multi-tensor kernel for all
    parameters), plain ``torch.optim.Adam(params, lr, betas)`` elsewhere.

    Same state-dict layout as the plain Adam. :class:`trajgru.step.TrainStep` switches the groups
    to ``capturable=True`` with a device-tensor ``lr`` when it captures (LR schedulers then
    update that tensor in place).
    """
    params = list(params)
    devices = {p.device.type for p in params if isinstance(p, torch.Tensor)} or {"cpu"}
    if devices == {"cuda"}:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True, **kwargs)
    return torch.optim.Adam(params, lr=lr, betas=betas, **kwargs)


# ---------------------------------------------------------------- CUDA graphs


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def graphs_possible(tensors: Sequence[torch.Tensor]) -> str | None:
    """None if a CUDA graph can be captured over ``tensors``, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not all(t.is_cuda for t in tensors):
        return "tensors are not on a CUDA device"
    return None


class ParamSnapshot:
    """Copies of parameters and optimizer state, restored in place (same storage)."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer | None):
        self.params = params
        self.values = [p.detach().clone() for p in params]
        self.optimizer = optimizer
        self.state: dict[int, dict] = {}
        if optimizer is not None:
            for i, p in enumerate(params):
                st = optimizer.state.get(p)
                if st:
                    self.state[i] = {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for p, v in zip(self.params, self.values):
            p.copy_(v)
        if self.optimizer is None:
            return
        for i, p in enumerate(self.params):
            st = self.optimizer.state.get(p)
            if not st:
                continue
            saved = self.state.get(i)
            for k, v in st.items():
                if not torch.is_tensor(v):
                    continue
                if saved is None:
                    v.zero_()  # state made by the warm-up: a fresh Adam state is all zeros (step 0)
                else:
                    v.copy_(saved[k])


class GraphReplay:
    """What trajgru.step.TrainStep and CapturedForecaster share: capture once, or fall back to eager
    calls with the reason in ``fallback_reason`` (set by the subclass's ``__init__``)."""

    graph: torch.cuda.CUDAGraph | None
    fallback_reason: str | None
    device: torch.device

    def _capture_or_run_eagerly(self, warmup: int) -> None:
        try:
            self._capture(warmup)
        except Exception as exc:  # capture unsupported by some op: run eagerly instead
            self.graph = None
            self.fallback_reason = f"capture failed: {type(exc).__name__}: {exc}"
            warnings.warn(f"{type(self).__name__} runs eagerly: {self.fallback_reason}", stacklevel=3)
            torch.cuda.synchronize(self.device)

    @property
    def graphed(self) -> bool:
        return self.graph is not None


class CapturedForecaster(GraphReplay):
    """``model(inputs)`` without gradients, replayed as one CUDA graph (eager elsewhere).

    Parameters
    ----------
    model : nn.Module on the device; the graph reads its current weights at every replay,
        so training or ``load_state_dict`` in between is seen.
    example_inputs : device tensor with the shape and dtype of every call's input
        (e.g. (in_len, B, 1, H, W)).
    autocast_dtype : ``torch.bfloat16`` (default) or None.

    ``__call__(inputs)`` returns the forecast as a float32 tensor that the next call
    overwrites (clone it to keep it). Inputs of another shape (e.g. a last, smaller batch)
    run eagerly, with the same autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: torch.Tensor,
        *,
        autocast_dtype: torch.dtype | None = torch.bfloat16,
        warmup: int = 2,
        use_graph: bool = True,
    ):
        self.model = model
        self.device = example_inputs.device
        self.autocast_dtype = autocast_dtype if self.device.type == "cuda" else None
        self.static_inputs = example_inputs.detach().clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        params = list(model.parameters())
        self.fallback_reason = (
            "use_graph=False" if not use_graph else graphs_possible([self.static_inputs, *params])
        )
        if self.fallback_reason is None:
            self._capture_or_run_eagerly(warmup)

    def _run(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast(self.device, self.autocast_dtype):
            return self.model(inputs).float()

    def _capture(self, warmup: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self._run(self.static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_output = self._run(self.static_inputs)
        self.graph = graph

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.graph is None or inputs.shape != self.static_inputs.shape:
            return self._run(inputs.to(self.device))
        self.static_inputs.copy_(inputs, non_blocking=True)
        self.graph.replay()
        return self.static_output
