"""Convolutional recurrent cells: TrajGRU, ConvGRU and ConvLSTM.

Every cell runs a whole sequence::

    outputs, state = cell(inputs, state=None, seq_len=None)

with ``inputs`` of shape (S, B, C_in, H, W) (or ``None`` for a cell without input, as in
the first block of the forecaster, which then needs ``state`` and ``seq_len``) and
``outputs`` of shape (S, B, C_hidden, H, W). The state is ``h`` (B, C_hidden, H, W) for the
GRUs and ``(h, c)`` for ConvLSTM; ``state=None`` starts from zeros.

The input-to-hidden convolution (and TrajGRU's input-to-flow convolution) does not depend
on the recurrent state, so it runs once over all S*B frames instead of once per step.

Fast path (``cell.fast_path = True``, set by :func:`trajgru.fast.enable_fast_path`): where
``trajgru.kernels.use_triton(cell.kernel_backend, ...)`` allows (CUDA tensors and Triton),
TrajGRU's L warps, their concatenation and the 1x1 convolution become one Triton kernel
plus one GEMM, and the GRU gates one Triton kernel each way. Elsewhere (CPU) the cells
run the plain code below, unchanged. Channels-last activations keep their layout through
the sequence loop either way.

Initialisation follows the original MXNet code: ``MSRAPrelu(slope=0.2)`` (He init for a
leaky ReLU with slope 0.2, averaged fan), zero biases, and TrajGRU's last flow
convolution zero-initialised so that training starts from identity warps.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kernels import use_triton
from .kernels.gru_gates import gru_gates_triton
from .kernels.warp_concat import warp_concat_triton
from .warp import warp_stack

__all__ = ["TrajGRUCell", "ConvGRUCell", "ConvLSTMCell", "msra_prelu_init_"]

LEAKY_SLOPE = 0.2


def msra_prelu_init_(weight: torch.Tensor, slope: float = LEAKY_SLOPE) -> torch.Tensor:
    """MXNet ``MSRAPrelu(factor_type="avg", slope)``: N(0, 2 / ((1 + slope^2) * fan_avg)).

    ``fan_avg = (fan_in + fan_out) / 2`` with fans counted as channels x kernel area, which
    is the same for a convolution (out, in, k, k) and a transposed one (in, out, k, k).
    """
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2.0
    std = math.sqrt(2.0 / ((1.0 + slope**2) * fan_avg))
    with torch.no_grad():
        return weight.normal_(0.0, std)


def init_conv_(module: nn.Module, slope: float = LEAKY_SLOPE) -> None:
    """MSRA-PReLU init for every (transposed) convolution in ``module``; zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            msra_prelu_init_(m.weight, slope)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    """'Same'-padded stride-1 convolution (odd kernel)."""
    if kernel % 2 != 1:
        raise ValueError(f"kernel size must be odd for a same-size convolution, got {kernel}")
    return nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)


def is_channels_last(t: torch.Tensor) -> bool:
    """True if a (B, C, H, W) tensor (C > 1) is stored channels-last (NHWC)."""
    return t.dim() == 4 and t.shape[1] > 1 and t.stride(1) == 1 and t.stride(3) == t.shape[1]


def stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(frames, 0)`` -> (S, B, C, H, W), keeping channels-last frames NHWC.

    ``torch.stack`` of channels-last frames returns a contiguous (NCHW-ordered) tensor, so
    every later per-frame convolution would convert the layout back; here the result has
    (S, B, H, W, C) memory order and ``flatten(0, 1)`` / ``unbind(0)`` give channels-last
    views. Values are identical either way.
    """
    if is_channels_last(frames[0]):
        return torch.stack([f.permute(0, 2, 3, 1) for f in frames], dim=0).permute(0, 1, 4, 2, 3)
    return torch.stack(frames, dim=0)


def zeros_state(like: torch.Tensor, batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Zeros (B, C, H, W) with ``like``'s dtype and device, channels-last if ``like`` is."""
    z = like.new_zeros(batch, channels, height, width)
    return z.contiguous(memory_format=torch.channels_last) if is_channels_last(like) else z


def _over_sequence(conv: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of (S, B, C, H, W) as one batch of S*B frames."""
    seq, batch = inputs.shape[:2]
    out = conv(inputs.flatten(0, 1))
    return out.unflatten(0, (seq, batch))


class _SequenceCell(nn.Module):
    """Shared sequence loop; subclasses implement ``_precompute`` and ``step``."""

    hidden_channels: int
    in_channels: int | None
    #: use the Triton kernels where ``kernel_backend`` allows (see module doc)
    fast_path: bool = False
    #: "auto" (Triton on CUDA), "triton" (also on CPU under TRITON_INTERPRET=1), "torch"
    kernel_backend: str = "auto"

    def _use_kernels(self, *tensors: torch.Tensor) -> bool:
        """Whether this call runs the fast-path kernels on ``tensors``."""
        return self.fast_path and use_triton(self.kernel_backend, *tensors)

    def _gates(self, i2h, h2h, h, slope):
        """GRU gates: the fused kernel on the fast path (same dtypes only), else the plain code."""
        same_dtype = h2h.dtype == h.dtype and (i2h is None or i2h.dtype == h.dtype)
        if same_dtype and self._use_kernels(h2h, h):
            return gru_gates_triton(i2h, h2h, h, slope)
        return _gru_update(i2h, h2h, h, slope)

    def _sequence_constants(self) -> dict:
        """Per-forward tensors shared by every step (e.g. re-laid-out weights); default none."""
        return {}

    def _precompute(self, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-sequence work that does not depend on the state: tensors (S, B, ., H, W)."""
        raise NotImplementedError

    def step(self, pre: tuple[torch.Tensor, ...] | None, state, consts: dict | None = None):
        """One time step: returns ``(h_t (B, C_h, H, W), new_state)``; ``consts`` from
        :meth:`_sequence_constants`."""
        raise NotImplementedError

    def zero_state(self, batch: int, height: int, width: int, like: torch.Tensor):
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor | None = None, state=None, seq_len: int | None = None):
        """Run the cell over a sequence.

        Parameters
        ----------
        inputs : (S, B, C_in, H, W) tensor or None
            ``None`` only for a cell built with ``in_channels=None``.
        state : initial state or None (zeros; needs ``inputs`` for the shape)
        seq_len : number of steps; required without ``inputs``, else must equal S.

        Returns
        -------
        outputs : (S, B, C_h, H, W) tensor
        state : final state (``h`` or ``(h, c)``)
        """
        seq_len = self._check(inputs, state, seq_len)
        if inputs is None:
            pre_all = None
        else:
            pre_all = self._precompute(inputs)
            if state is None:
                s, b, _, h, w = inputs.shape
                state = self.zero_state(b, h, w, like=pre_all[0])
        # unbind, not p[t]: the backward of S separate selects would write S full-size
        # zero tensors; unbind's backward is a single stack.
        per_step = None if pre_all is None else list(zip(*(p.unbind(0) for p in pre_all)))
        consts = self._sequence_constants()
        outputs = []
        for t in range(seq_len):
            pre = None if per_step is None else per_step[t]
            h_t, state = self.step(pre, state, consts)
            outputs.append(h_t)
        return stack_frames(outputs), state

    def _check(self, inputs, state, seq_len) -> int:
        name = type(self).__name__
        if inputs is None:
            if state is None or seq_len is None:
                raise ValueError(f"{name} without inputs needs both state and seq_len")
            return int(seq_len)
        if self.in_channels is None:
            raise ValueError(f"{name} was built without inputs (in_channels=None); pass inputs=None")
        if inputs.dim() != 5 or inputs.shape[2] != self.in_channels:
            raise ValueError(
                f"{name} expects inputs (S, B, {self.in_channels}, H, W), got {tuple(inputs.shape)}"
            )
        if seq_len is not None and int(seq_len) != inputs.shape[0]:
            raise ValueError(f"seq_len={seq_len} does not match inputs of length {inputs.shape[0]}")
        return inputs.shape[0]


def _gru_update(
    i2h: torch.Tensor | None, h2h: torch.Tensor, h_prev: torch.Tensor, slope: float
) -> torch.Tensor:
    """GRU gates of the HKO-7 code (leaky candidate activation).

    r = sigmoid(i2h_r + h2h_r); u = sigmoid(i2h_u + h2h_u);
    h' = leaky(i2h_h + r * h2h_h); h_t = u * h_prev + (1 - u) * h'.
    ``i2h`` (B, 3C, H, W) or None (no input), ``h2h`` (B, 3C, H, W), ``h_prev`` (B, C, H, W).
    """
    # split / chunk rather than slicing: their backward is one concatenation, where each
    # slice's backward would allocate a zero tensor of the full size.
    c = h_prev.shape[1]
    h2h_ru, h2h_h = h2h.split((2 * c, c), dim=1)
    if i2h is None:
        ru = torch.sigmoid(h2h_ru)
        cand_pre = None
    else:
        i2h_ru, cand_pre = i2h.split((2 * c, c), dim=1)
        ru = torch.sigmoid(i2h_ru + h2h_ru)
    r, u = ru.chunk(2, dim=1)
    cand = r * h2h_h if cand_pre is None else torch.addcmul(cand_pre, r, h2h_h)
    cand = F.leaky_relu(cand, slope)
    # u * h_prev + (1 - u) * cand  ==  cand + u * (h_prev - cand)
    return torch.addcmul(cand, u, h_prev - cand)


class TrajGRUCell(_SequenceCell):
    """Trajectory GRU (Shi et al., NeurIPS 2017) over a sequence.

    Per step: flow generator ``f = leaky(conv5x5(x_t) + conv5x5(h_{t-1}))`` (32 channels),
    ``flows = conv5x5(f)`` (2L channels, zero-initialised, split into L (U, V) pairs);
    ``h_{t-1}`` warped by each ``-flow_l``; the L warped maps concatenated and mixed by a
    1x1 convolution to 3C channels (``h2h``, stored channel-major, see ``warped_h2h``); gates
    as in :func:`_gru_update`. Without input the i2h / i2f terms are absent.

    Parameters
    ----------
    in_channels : int or None
        Channels of the input; ``None`` for a block without input (no i2h/i2f weights).
    hidden_channels : int
    n_flows : int
        L, the number of links (flow fields) per step.
    i2h_kernel : int (odd)
    flow_channels, flow_kernel : hidden width and kernel of the flow generator (32, 5).
    slope : LeakyReLU slope (0.2).
    """

    def __init__(
        self,
        in_channels: int | None,
        hidden_channels: int,
        n_flows: int = 5,
        i2h_kernel: int = 3,
        flow_channels: int = 32,
        flow_kernel: int = 5,
        slope: float = LEAKY_SLOPE,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.n_flows = n_flows
        self.slope = slope
        c = hidden_channels
        if in_channels is not None:
            self.i2h = _conv(in_channels, 3 * c, i2h_kernel)
            self.i2f = _conv(in_channels, flow_channels, flow_kernel)
        else:
            self.i2h = None
            self.i2f = None
        self.h2f = _conv(c, flow_channels, flow_kernel)
        self.flow_out = _conv(flow_channels, 2 * n_flows, flow_kernel)
        # 1x1 conv over the L warped copies of h; input channel c*L + l (see warped_h2h).
        self.h2h = nn.Conv2d(c * n_flows, 3 * c, 1)
        init_conv_(self, slope)
        nn.init.zeros_(self.flow_out.weight)
        nn.init.zeros_(self.flow_out.bias)

    def zero_state(self, batch, height, width, like):
        return zeros_state(like, batch, self.hidden_channels, height, width)

    def _precompute(self, inputs):
        return _over_sequence(self.i2h, inputs), _over_sequence(self.i2f, inputs)

    def flow_fields(self, i2f: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """Flow generator: (B, 2L, H, W) displacements in pixels; channels (2l, 2l+1) = (U_l, V_l)."""
        f = self.h2f(h)
        if i2f is not None:
            f = f + i2f
        f = F.leaky_relu(f, self.slope)
        return self.flow_out(f)

    def flows(self, i2f: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
        """Flow generator: (B, L, 2, H, W) displacements in pixels, (U, V) per flow."""
        return self.flow_fields(i2f, h).unflatten(1, (self.n_flows, 2))

    def warped_h2h(self, h: torch.Tensor, flows: torch.Tensor) -> torch.Tensor:
        """1x1 conv of the L warped copies of ``h`` (warped by ``-flows``): (B, 3C, H, W).

        One batched ``grid_sample`` gives (B, C, L, H, W), viewed without a copy as
        (B, C*L, H, W). ``self.h2h`` therefore reads input channel ``c * L + l``; the
        original concatenates flow-major (``l * C + c``). The two are the same model up to
        a fixed permutation of the 1x1 weight's input axis (see ``h2h_weight_flow_major``).
        """
        warped = warp_stack(h, flows, negate=True)  # (B, C, L, H, W)
        return self.h2h(warped.flatten(1, 2))

    def h2h_weight_flow_major(self) -> torch.Tensor:
        """The h2h weight in the original's layout: (3C, L*C, 1, 1), input channel l*C + c."""
        c = self.hidden_channels
        return self.h2h.weight.unflatten(1, (c, self.n_flows)).transpose(1, 2).flatten(1, 2)

    def _sequence_constants(self) -> dict:
        """The flow-major h2h weight as a (3C, L*C) matrix, once per sequence (fast path).

        Under autocast it is cast to the autocast dtype here, once, rather than by every
        step's GEMM.
        """
        if not self.fast_path or not self._use_kernels(self.h2h.weight):
            return {}
        weight = self.h2h_weight_flow_major().flatten(1)
        device_type = weight.device.type
        if torch.is_autocast_enabled(device_type):
            weight = weight.to(torch.get_autocast_dtype(device_type))
        return {"h2h_weight": weight}

    def warped_h2h_fused(
        self, h: torch.Tensor, flow_fields: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Fast-path :meth:`warped_h2h`: Triton warp + concat, then one GEMM.

        ``h`` (B, C, H, W), ``flow_fields`` (B, 2L, H, W), ``weight`` (3C, L*C) flow-major.
        Returns (B, 3C, H, W) in channels-last memory order.
        """
        warped = warp_concat_triton(h, flow_fields, negate=True)  # (B, H, W, L*C)
        if weight.dtype != warped.dtype and not torch.is_autocast_enabled(warped.device.type):
            weight = weight.to(warped.dtype)
        bias = self.h2h.bias
        out = F.linear(warped, weight, None if bias is None else bias.to(weight.dtype))
        return out.permute(0, 3, 1, 2)

    def step(self, pre, h, consts=None):
        i2h, i2f = (None, None) if pre is None else pre
        weight = (consts or {}).get("h2h_weight")
        if weight is not None and self._use_kernels(h):
            h2h = self.warped_h2h_fused(h, self.flow_fields(i2f, h), weight)
        else:
            h2h = self.warped_h2h(h, self.flows(i2f, h))
        h_new = self._gates(i2h, h2h, h, self.slope)
        return h_new, h_new


class ConvGRUCell(_SequenceCell):
    """Convolutional GRU: the TrajGRU gates with ``h2h`` a k x k convolution of h."""

    def __init__(
        self,
        in_channels: int | None,
        hidden_channels: int,
        i2h_kernel: int = 3,
        h2h_kernel: int = 5,
        slope: float = LEAKY_SLOPE,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.slope = slope
        c = hidden_channels
        self.i2h = _conv(in_channels, 3 * c, i2h_kernel) if in_channels is not None else None
        self.h2h = _conv(c, 3 * c, h2h_kernel)
        init_conv_(self, slope)

    def zero_state(self, batch, height, width, like):
        return zeros_state(like, batch, self.hidden_channels, height, width)

    def _precompute(self, inputs):
        return (_over_sequence(self.i2h, inputs),)

    def step(self, pre, h, consts=None):
        i2h = None if pre is None else pre[0]
        h_new = self._gates(i2h, self.h2h(h), h, self.slope)
        return h_new, h_new


class ConvLSTMCell(_SequenceCell):
    """ConvLSTM with peepholes (Shi et al., NeurIPS 2015).

    i = sigmoid(W_xi*x + W_hi*h + w_ci o c + b_i); f = sigmoid(W_xf*x + W_hf*h + w_cf o c + b_f);
    c_t = f o c + i o tanh(W_xc*x + W_hc*h + b_c); o = sigmoid(W_xo*x + W_ho*h + w_co o c_t + b_o);
    h_t = o o tanh(c_t). The peephole weights ``w_ci, w_cf, w_co`` are Hadamard (per channel
    and pixel) registered parameters of shape (C, H, W), zero-initialised, so the cell is
    built for one feature-map size ``height x width``. State is ``(h, c)``.
    """

    def __init__(
        self,
        in_channels: int | None,
        hidden_channels: int,
        height: int,
        width: int,
        i2h_kernel: int = 3,
        h2h_kernel: int = 5,
        slope: float = LEAKY_SLOPE,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        c = hidden_channels
        self.i2h = _conv(in_channels, 4 * c, i2h_kernel) if in_channels is not None else None
        self.h2h = _conv(c, 4 * c, h2h_kernel)
        self.w_ci = nn.Parameter(torch.zeros(c, height, width))
        self.w_cf = nn.Parameter(torch.zeros(c, height, width))
        self.w_co = nn.Parameter(torch.zeros(c, height, width))
        init_conv_(self, slope)

    def zero_state(self, batch, height, width, like):
        z = zeros_state(like, batch, self.hidden_channels, height, width)
        return z, z.clone()

    def _precompute(self, inputs):
        return (_over_sequence(self.i2h, inputs),)

    def step(self, pre, state, consts=None):
        h, c_prev = state
        if c_prev.shape[-2:] != self.w_ci.shape[-2:]:
            raise ValueError(
                f"ConvLSTMCell was built for {tuple(self.w_ci.shape[-2:])} feature maps, "
                f"got {tuple(c_prev.shape[-2:])}"
            )
        gates = self.h2h(h)
        if pre is not None:
            gates = gates + pre[0]
        gi, gf, gc, go = gates.chunk(4, dim=1)
        i = torch.sigmoid(torch.addcmul(gi, self.w_ci, c_prev))
        f = torch.sigmoid(torch.addcmul(gf, self.w_cf, c_prev))
        c = f * c_prev + i * torch.tanh(gc)
        o = torch.sigmoid(torch.addcmul(go, self.w_co, c))
        h_new = o * torch.tanh(c)
        return h_new, (h_new, c)
