"""The one training step: ``nowcast train``, the benchmarks and the sweeps all train through it.

:class:`TrainStep` does one optimizer step, on either of two paths with the same semantics:

plain
    zero the gradients; forecast (under bf16 autocast on a CUDA device when ``autocast_dtype`` is
    set); float32 loss ``loss_fn(forecast, *targets)``; backward; global gradient norm, clipped to
    ``clip_norm``; loss and norm averaged over ranks by ``reduce_fn``; then, if either is not finite,
    :class:`NonFiniteLoss` is raised *before* the optimizer step (weights and optimizer state stay
    those of the last good step; gradients are cleared); else ``optimizer.step()``.
captured
    the same body recorded once as one CUDA graph and replayed at every step (no host work per
    step but the copy of the batch). A non-finite loss or norm skips the update on the device
    (fused Adam's ``found_inf``), and the step then raises :class:`NonFiniteLoss` as well.

The captured path needs CUDA tensors, fused Adam (:func:`trajgru.fast.fused_adam`), a model not
wrapped in ``DistributedDataParallel`` (its gradient all-reduce is not captured) and batches of one
shape. Where any of these is missing, or the capture fails, the plain path runs and
``fallback_reason`` says why; a batch of another shape than the captured one runs the plain path.

Example::

    step = TrainStep(model, fused_adam(model.parameters(), 1e-3), BalancedLoss(), clip_norm=50.0,
                     capture_example=(inputs, truth, mask))
    loss, grad_norm = step(inputs, truth, mask, step=1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from .fast import GraphReplay, ParamSnapshot, graphs_possible

__all__ = ["NonFiniteLoss", "TrainStep"]


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became NaN/inf at a step; the update was not applied."""

    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"non-finite loss {loss} / grad norm {grad_norm} at step {step}")
        self.step, self.loss, self.grad_norm = step, loss, grad_norm


class TrainStep(GraphReplay):
    """One training step of ``model`` (see the module docstring for both paths).

    Parameters
    ----------
    model : nn.Module on its device (optionally DDP-wrapped, optionally with the fast path on)
    optimizer : any optimizer; fused Adam for the captured path (its groups are switched to
        ``capturable=True`` with a device-tensor lr, which LR schedulers ``fill_``)
    loss_fn : ``loss_fn(forecast_float32, *targets) -> 0-dim tensor``; capturable for the captured
        path (no host-device copies)
    clip_norm : global gradient-norm clip (``math.inf``: none)
    autocast_dtype : e.g. ``torch.bfloat16``: the forecast runs under autocast on CUDA devices
        (ignored elsewhere); None: float32
    reduce_fn : maps the 2-element float tensor (loss, grad norm) on the model's device to its mean
        over ranks; None on one worker
    capture_example : ``(inputs, *targets)`` device tensors with the shapes of every batch: try the
        captured path; None: the plain path
    warmup : eager steps before capture (compilation, autotuning); undone before the first real step
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[..., torch.Tensor],
        *,
        clip_norm: float,
        autocast_dtype: torch.dtype | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        capture_example: Sequence[torch.Tensor] | None = None,
        warmup: int = 2,
    ):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.clip_norm, self.reduce_fn = float(clip_norm), reduce_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.device = self.params[0].device
        self.autocast_dtype = autocast_dtype if self.device.type == "cuda" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.fallback_reason = self._why_not_captured(capture_example)
        if self.fallback_reason is None:
            self.static_batch = [t.detach().to(self.device).clone() for t in capture_example]
            self._capture_or_run_eagerly(warmup)

    def _why_not_captured(self, capture_example) -> str | None:
        """None when the captured path can be tried, else the reason it is not."""
        if capture_example is None:
            return "no CUDA graph requested"
        reason = graphs_possible([*capture_example, *self.params])
        if reason is None and isinstance(self.model, nn.parallel.DistributedDataParallel):
            reason = "the model is DistributedDataParallel (several workers): its all-reduce is not captured"
        if reason is None and not all(g.get("fused") for g in self.optimizer.param_groups):
            reason = "the optimizer is not fused Adam (use trajgru.fast.fused_adam)"
        return reason

    # -- the body shared by both paths
    def _forward_backward(self, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Forecast, loss, backward and clipping -> (loss, grad norm) as 0-dim float32 device tensors."""
        dtype = self.autocast_dtype or torch.bfloat16
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None):
            pred = self.model(inputs)
        loss = self.loss_fn(pred.float(), *targets).float()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        return loss.detach(), norm.detach().float()

    def __call__(self, inputs: torch.Tensor, *targets: torch.Tensor, step: int = 0) -> tuple[float, float]:
        """Train on one batch -> (loss, grad norm), averaged over ranks; :class:`NonFiniteLoss` (tagged
        with ``step``) when either is not finite, with the update not applied."""
        if self.graph is not None and self._fits(inputs, targets):
            for dst, src in zip(self.static_batch, (inputs, *targets)):
                dst.copy_(src, non_blocking=True)
            self.graph.replay()
            loss, norm = self.static_loss, self.static_norm
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss, norm = self._forward_backward(inputs.to(self.device), [t.to(self.device) for t in targets])
        stats = torch.stack([loss, norm])
        if self.reduce_fn is not None:
            stats = self.reduce_fn(stats)  # on the model's device (NCCL reduces CUDA tensors only)
        loss_v, norm_v = (float(v) for v in stats.cpu())
        if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(step, loss_v, norm_v)
        if self.graph is None or not self._fits(inputs, targets):
            self.optimizer.step()
        return loss_v, norm_v

    def _fits(self, inputs, targets) -> bool:
        return all(a.shape == b.shape for a, b in zip(self.static_batch, (inputs, *targets)))

    # -- the captured path
    def _graph_body(self) -> None:
        loss, norm = self._forward_backward(self.static_batch[0], self.static_batch[1:])
        self.found_inf.copy_((~(torch.isfinite(loss) & torch.isfinite(norm))).float())
        self.optimizer.found_inf = self.found_inf  # read by fused Adam: skip the update if 1
        try:
            self.optimizer.step()
        finally:
            # only the captured kernels may see it: a stale flag would skip every later plain step
            del self.optimizer.found_inf
        self.static_loss, self.static_norm = loss, norm

    def _capture(self, warmup: int) -> None:
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=self.device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=self.device)
        snapshot = ParamSnapshot(self.params, self.optimizer)
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
