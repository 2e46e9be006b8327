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
``CapturedTrainStep(model, optimizer, loss_fn, example_batch, clip_norm=...)``
    forward + loss + backward + gradient clipping + optimizer step replayed as one CUDA
    graph; a non-finite loss or gradient norm skips the update on the device (the weights
    and Adam moments stay those of the last good step), like the eager trainer.
``CapturedForecaster(model, example_inputs)``
    the forecast (no grad) replayed as one CUDA graph.

Both captured helpers run eagerly, with the same semantics, where CUDA graphs are not
available (CPU tensors), or where capture failed (``.fallback_reason`` says why).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .kernels import BACKENDS, interpreting, triton_available, use_triton

__all__ = [
    "enable_fast_path",
    "disable_fast_path",
    "fast_path_status",
    "fused_adam",
    "CapturedTrainStep",
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

    Same state-dict layout as the plain Adam. :class:`CapturedTrainStep` switches the groups
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


def _graphs_possible(tensors: Sequence[torch.Tensor]) -> str | None:
    """None if a CUDA graph can be captured over ``tensors``, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    if not all(t.is_cuda for t in tensors):
        return "tensors are not on a CUDA device"
    return None


class _Snapshot:
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


class _GraphReplay:
    """What CapturedTrainStep and CapturedForecaster share: capture once, or fall back to eager
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


class CapturedTrainStep(_GraphReplay):
    """A whole training step replayed as one CUDA graph (eager where graphs are unavailable).

    ``loss = loss_fn(model(batch[0]).float(), *batch[1:])``, then backward, then the global
    gradient norm (clipped to ``clip_norm`` if given), then ``optimizer.step()``, all on the
    device with no host synchronisation. If the loss or the gradient norm is not finite,
    the update is skipped on the device (fused Adam's ``found_inf``): weights and moments
    stay those of the last good step, as the eager trainer's check guarantees.

    Parameters
    ----------
    model : nn.Module on the device (ideally with :func:`enable_fast_path`)
    optimizer : for capture, ``torch.optim.Adam(fused=True)`` (see :func:`fused_adam`); its
        groups are switched to ``capturable=True`` and a 0-dim device-tensor lr (schedulers
        ``fill_`` it; ``state_dict()`` then holds that tensor).
    loss_fn : ``loss_fn(pred_float32, *batch[1:]) -> 0-dim tensor``; must itself be
        capturable (no host-device copies or syncs: e.g. constants already on the device).
    example_batch : tuple of device tensors with the shapes and dtypes of every batch.
    clip_norm : global gradient-norm clip (``clip_grad_norm_``), or None.
    autocast_dtype : e.g. ``torch.bfloat16`` (default) or None for float32.
    warmup : eager steps before capture (kernel compilation, cuDNN autotuning, lazy state);
        their effect on weights and optimizer state is undone before the first real step.

    Call ``step(*batch) -> (loss, grad_norm)``: 0-dim float32 device tensors, overwritten
    by the next call (``.item()`` them or clone). ``applied`` is 1.0 if the update was
    applied, 0.0 if skipped.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[..., torch.Tensor],
        example_batch: Sequence[torch.Tensor],
        *,
        clip_norm: float | None = None,
        autocast_dtype: torch.dtype | None = torch.bfloat16,
        warmup: int = 2,
        use_graph: bool = True,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.clip_norm = clip_norm
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.autocast_dtype = autocast_dtype if self.device.type == "cuda" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback_reason: str | None = None if use_graph else "use_graph=False"
        self.static_batch = [t.detach().clone() for t in example_batch]
        if self.fallback_reason is None:
            self.fallback_reason = _graphs_possible([*self.static_batch, *self.params])
        if self.fallback_reason is None and not all(g.get("fused") for g in optimizer.param_groups):
            self.fallback_reason = "the optimizer is not fused Adam (use trajgru.fast.fused_adam)"
        if self.fallback_reason is None:
            self._capture_or_run_eagerly(warmup)

    # -- the step body, shared by warm-up, capture and the eager fallback
    def _forward_backward(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        with _autocast(self.device, self.autocast_dtype):
            pred = self.model(batch[0])
        loss = self.loss_fn(pred.float(), *batch[1:]).float()
        loss.backward()
        if self.clip_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm, foreach=True)
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        return loss.detach(), norm.detach().float()

    def _graph_body(self) -> None:
        loss, norm = self._forward_backward(self.static_batch)
        bad = ~(torch.isfinite(loss) & torch.isfinite(norm))
        self.found_inf.copy_(bad.float())
        self.optimizer.found_inf = self.found_inf  # read by fused Adam: skip the update if 1
        try:
            self.optimizer.step()
        finally:
            # only the captured kernels may see it: a stale flag would silently skip every
            # later eager step of this optimizer
            del self.optimizer.found_inf
        self.static_loss, self.static_norm = loss, norm
        self.static_applied = 1.0 - self.found_inf

    def _prepare_optimizer(self) -> None:
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            if not torch.is_tensor(group["lr"]):
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=self.device)
        self.found_inf = torch.zeros(
            (), dtype=torch.float32, device=self.device
        )  # 0-dim, like the step counts

    def _capture(self, warmup: int) -> None:
        self._prepare_optimizer()
        snapshot = _Snapshot(self.params, self.optimizer)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self.optimizer.zero_grad(set_to_none=True)
                self._graph_body()
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        snapshot.restore()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_body()
        self.graph = graph
        torch.cuda.synchronize(self.device)
        snapshot.restore()  # capture runs nothing, but be exact anyway
        del snapshot

    def step(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on ``batch`` (same shapes as ``example_batch``)."""
        if len(batch) != len(self.static_batch):
            raise ValueError(f"expected {len(self.static_batch)} tensors, got {len(batch)}")
        if self.graph is None:
            return self._eager_step(batch)
        for dst, src in zip(self.static_batch, batch):
            if dst.shape != src.shape:
                raise ValueError(f"captured for shape {tuple(dst.shape)}, got {tuple(src.shape)}")
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_loss, self.static_norm

    __call__ = step

    @property
    def applied(self) -> float:
        """1.0 if the last step's update was applied, 0.0 if skipped (non-finite)."""
        if self.graph is None:
            return self._eager_applied
        return float(self.static_applied)

    def _eager_step(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        batch = [t.to(self.device) for t in batch]
        self.optimizer.zero_grad(set_to_none=True)
        loss, norm = self._forward_backward(batch)
        self._eager_applied = float(math.isfinite(loss.item()) and math.isfinite(norm.item()))
        if self._eager_applied:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return loss, norm


class CapturedForecaster(_GraphReplay):
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
            "use_graph=False" if not use_graph else _graphs_possible([self.static_inputs, *params])
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
