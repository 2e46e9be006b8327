"""The HKO-7 encoder-forecaster network, its presets and ``build_model``.

Layout (N recurrent stages; the ``hko7`` preset has N = 3)::

    frames (S_in, B, 1, H, W) in [0, 1]
      -> concat normalised (x, y) coordinate grid and a ones channel  (4 channels)
      -> first conv + leaky                            (stage-0 resolution)
      -> RNN_0 -> conv+leaky -> RNN_1 -> ... -> RNN_{N-1}       (encoder)
    forecaster, starting from each encoder RNN's final state, no input at the top:
      RNN_{N-1} -> deconv+leaky -> ... -> RNN_0 -> last deconv+leaky
      -> conv3x3+leaky -> conv1x1 -> (S_out, B, 1, H, W)   (no final activation)

As in the original code (``nowcasting/encoder_forecaster.py``), the encoder's downsampling
conv after stage i has the channels of stage i+1, the forecaster's upsampling deconv
after stage i has the channels of stage i, and transposed convolutions have no bias.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cells import LEAKY_SLOPE, ConvGRUCell, ConvLSTMCell, TrajGRUCell, init_conv_
from .fast import enable_fast_path

__all__ = [
    "ModelConfig",
    "EncoderForecaster",
    "PRESETS",
    "CELLS",
    "build_model",
    "model_from_config",
]

CELLS = ("trajgru", "convgru", "convlstm")

# Conv specs: (channels, kernel, stride, pad); resampling specs: (kernel, stride, pad).
PRESETS: dict[str, dict[str, Any]] = {
    # Shi et al. 2017, experiments/hko/configurations/trajgru_55_55_33_1_64_1_192_1_192_13_13_9_b4.yml
    "hko7": dict(
        in_len=5,
        out_len=20,
        height=480,
        width=480,
        coord_channels=True,
        first_conv=(8, 7, 5, 1),
        last_deconv=(8, 7, 5, 1),
        downsample=((5, 3, 1), (3, 2, 1)),
        upsample=((5, 3, 1), (4, 2, 1)),
        filters=(64, 192, 192),
        n_flows=(13, 13, 9),
        h2h_kernel=(5, 5, 3),
    ),
    # experiments/movingmnist/configurations/trajgru_1_64_1_96_1_96_L13.yml
    "mnist++": dict(
        in_len=10,
        out_len=10,
        height=64,
        width=64,
        coord_channels=False,
        first_conv=(16, 3, 1, 1),
        last_deconv=(16, 3, 1, 1),
        downsample=((3, 2, 1), (3, 2, 1)),
        upsample=((4, 2, 1), (4, 2, 1)),
        filters=(64, 96, 96),
        n_flows=(13, 13, 13),
        h2h_kernel=(5, 5, 5),
    ),
    # Small network for tests, the demo and CPU-only training (total stride 8: 96 -> 24 -> 12).
    "tiny": dict(
        in_len=5,
        out_len=20,
        height=96,
        width=96,
        coord_channels=True,
        first_conv=(8, 6, 4, 1),
        last_deconv=(4, 6, 4, 1),
        final_channels=4,
        downsample=((3, 2, 1),),
        upsample=((4, 2, 1),),
        filters=(16, 32),
        n_flows=(5, 5),
        h2h_kernel=(3, 3),
        flow_channels=16,
    ),
}


def _tuplify(value):
    """Lists (e.g. from JSON) back to nested tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuplify(v) for v in value)
    return value


@dataclass
class ModelConfig:
    """Everything needed to rebuild an :class:`EncoderForecaster` (JSON-able via ``to_dict``).

    Spatial fields are pixels; ``first_conv``/``last_deconv`` are (channels, kernel, stride,
    pad); ``downsample[i]`` (kernel, stride, pad) goes from stage i to i+1 in the encoder;
    ``upsample[i]`` from stage i+1 to i in the forecaster. ``filters``, ``n_flows`` (TrajGRU's
    L) and ``h2h_kernel`` (ConvGRU/ConvLSTM) have one entry per recurrent stage.
    """

    preset: str = "hko7"
    cell: str = "trajgru"
    in_len: int = 5
    out_len: int = 20
    height: int = 480
    width: int = 480
    in_channels: int = 1
    coord_channels: bool = True
    first_conv: tuple = (8, 7, 5, 1)
    last_deconv: tuple = (8, 7, 5, 1)
    downsample: tuple = ((5, 3, 1), (3, 2, 1))
    upsample: tuple = ((5, 3, 1), (4, 2, 1))
    filters: tuple = (64, 192, 192)
    n_flows: tuple = (13, 13, 9)
    h2h_kernel: tuple = (5, 5, 3)
    i2h_kernel: int = 3
    flow_channels: int = 32
    flow_kernel: int = 5
    final_channels: int = 8
    leaky_slope: float = LEAKY_SLOPE

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _tuplify(getattr(self, f.name)))
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists); ``model_from_config`` reverses it."""
        return json_safe(dataclasses.asdict(self))

    @property
    def n_stages(self) -> int:
        return len(self.filters)

    @property
    def total_stride(self) -> int:
        """Input pixels per pixel of the coarsest feature map."""
        return self.first_conv[2] * math.prod(d[1] for d in self.downsample)

    def feature_sizes(self) -> list[tuple[int, int]]:
        """(height, width) of the feature maps of each recurrent stage."""
        h, w = self.height, self.width
        _, k, s, p = self.first_conv
        h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        sizes = [(h, w)]
        for k, s, p in self.downsample:
            h, w = _conv_out(h, k, s, p), _conv_out(w, k, s, p)
            sizes.append((h, w))
        return sizes

    def validate(self) -> None:
        """Raise ValueError if the config cannot build a network that maps H x W to H x W."""
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        n = self.n_stages
        for name in ("n_flows", "h2h_kernel"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs one entry per stage ({n}), got {getattr(self, name)}")
        for name in ("downsample", "upsample"):
            if len(getattr(self, name)) != n - 1:
                raise ValueError(
                    f"{name} needs {n - 1} (kernel, stride, pad) entries, got {getattr(self, name)}"
                )
        if self.in_len < 1 or self.out_len < 1:
            raise ValueError(f"in_len and out_len must be >= 1, got {self.in_len}, {self.out_len}")
        stride = self.total_stride
        for name, size in (("height", self.height), ("width", self.width)):
            if size <= 0 or size % stride:
                raise ValueError(
                    f"{name}={size} must be a positive multiple of the preset's total stride {stride} "
                    f"(e.g. {max(1, round(size / stride)) * stride})"
                )
        sizes = self.feature_sizes()
        # The forecaster must climb back to exactly the encoder's sizes.
        for i in range(n - 1, 0, -1):
            k, s, p = self.upsample[i - 1]
            up = (_deconv_out(sizes[i][0], k, s, p), _deconv_out(sizes[i][1], k, s, p))
            if up != sizes[i - 1]:
                raise ValueError(
                    f"upsample {self.upsample[i - 1]} maps {sizes[i]} to {up}, not the encoder's {sizes[i - 1]}"
                )
        _, k, s, p = self.last_deconv
        out = (_deconv_out(sizes[0][0], k, s, p), _deconv_out(sizes[0][1], k, s, p))
        if out != (self.height, self.width):
            raise ValueError(f"last_deconv {self.last_deconv} gives {out}, not {(self.height, self.width)}")
        if min(min(hw) for hw in sizes) < 2:
            raise ValueError(f"feature maps {sizes} are too small (need >= 2x2 at every stage)")


def json_safe(value):
    """Nested tuples to lists, so ``json.dumps`` round-trips."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _deconv_out(size: int, k: int, s: int, p: int) -> int:
    return (size - 1) * s - 2 * p + k


def _make_cell(cfg: ModelConfig, stage: int, in_channels: int | None, size: tuple[int, int]) -> nn.Module:
    hidden = cfg.filters[stage]
    if cfg.cell == "trajgru":
        return TrajGRUCell(
            in_channels,
            hidden,
            n_flows=cfg.n_flows[stage],
            i2h_kernel=cfg.i2h_kernel,
            flow_channels=cfg.flow_channels,
            flow_kernel=cfg.flow_kernel,
            slope=cfg.leaky_slope,
        )
    if cfg.cell == "convgru":
        return ConvGRUCell(
            in_channels,
            hidden,
            i2h_kernel=cfg.i2h_kernel,
            h2h_kernel=cfg.h2h_kernel[stage],
            slope=cfg.leaky_slope,
        )
    return ConvLSTMCell(
        in_channels,
        hidden,
        size[0],
        size[1],
        i2h_kernel=cfg.i2h_kernel,
        h2h_kernel=cfg.h2h_kernel[stage],
        slope=cfg.leaky_slope,
    )


class _ConvAct(nn.Module):
    """(Transposed) convolution + LeakyReLU applied to every frame of (S, B, C, H, W)."""

    def __init__(self, conv: nn.Module, slope: float | None):
        super().__init__()
        self.conv = conv
        self.slope = slope

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        s, b = seq.shape[:2]
        out = self.conv(seq.flatten(0, 1))
        if self.slope is not None:
            out = F.leaky_relu(out, self.slope)
        return out.unflatten(0, (s, b))


class EncoderForecaster(nn.Module):
    """Encoder-forecaster of Shi et al. (2017) built from a :class:`ModelConfig`.

    ``forward(inputs (in_len, B, 1, H, W) float in [0, 1]) -> (out_len, B, 1, H, W)``,
    no final activation (clamp to [0, 1] when writing frames).

    ``channels_last_activations`` (set by :func:`trajgru.fast.enable_fast_path`) makes the
    pre-encoded input channels-last, so no convolution converts layouts.
    """

    channels_last_activations: bool = False

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        c, slope = config, config.leaky_slope
        n = c.n_stages
        sizes = c.feature_sizes()
        stem_in = c.in_channels + (3 if c.coord_channels else 0)
        ch, k, s, p = c.first_conv
        self.stem = _ConvAct(nn.Conv2d(stem_in, ch, k, s, p), slope)
        enc_in = [ch] + [c.filters[i] for i in range(1, n)]
        self.encoder_rnns = nn.ModuleList(_make_cell(c, i, enc_in[i], sizes[i]) for i in range(n))
        self.downs = nn.ModuleList(
            _ConvAct(nn.Conv2d(c.filters[i], c.filters[i + 1], *c.downsample[i]), slope) for i in range(n - 1)
        )
        # forecaster stage i gets the upsampled output of stage i+1 (channels filters[i+1]).
        fc_in = [c.filters[i + 1] for i in range(n - 1)] + [None]
        self.forecaster_rnns = nn.ModuleList(_make_cell(c, i, fc_in[i], sizes[i]) for i in range(n))
        self.ups = nn.ModuleList(
            _ConvAct(
                nn.ConvTranspose2d(c.filters[i + 1], c.filters[i + 1], *c.upsample[i], bias=False), slope
            )
            for i in range(n - 1)
        )
        ch, k, s, p = c.last_deconv
        self.head = nn.ModuleDict(
            dict(
                deconv=_ConvAct(nn.ConvTranspose2d(c.filters[0], ch, k, s, p, bias=False), slope),
                conv=_ConvAct(nn.Conv2d(ch, c.final_channels, 3, 1, 1), slope),
                out=_ConvAct(nn.Conv2d(c.final_channels, 1, 1), None),
            )
        )
        for m in (self.stem, self.downs, self.ups, self.head):
            init_conv_(m, slope)
        self.register_buffer("_coords", self._coord_channels(c.height, c.width), persistent=False)

    @staticmethod
    def _coord_channels(height: int, width: int) -> torch.Tensor:
        """(3, H, W): x and y normalised to [-1, 1] (as the original grid_generator) and ones."""
        xs = torch.linspace(-1.0, 1.0, width).view(1, width).expand(height, width)
        ys = torch.linspace(-1.0, 1.0, height).view(height, 1).expand(height, width)
        return torch.stack((xs, ys, torch.ones(height, width)))

    def _pre_encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(S, B, 1, H, W) -> (S, B, 1 + 3, H, W) with the coordinate and ones channels."""
        if not self.config.coord_channels:
            return frames
        s, b, _, h, w = frames.shape
        coords = self._coords.to(frames.dtype).expand(s, b, 3, h, w)
        if self.channels_last_activations:  # (S, B, H, W, 4) memory order, same values
            last = (frames.permute(0, 1, 3, 4, 2), coords.permute(0, 1, 3, 4, 2))
            return torch.cat(last, dim=-1).permute(0, 1, 4, 2, 3)
        return torch.cat((frames, coords), dim=2)

    def _check_inputs(self, inputs: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_len, c.in_channels, c.height, c.width)
        got = tuple(inputs.shape)
        if inputs.dim() != 5 or (got[0], *got[2:]) != expected:
            raise ValueError(
                f"model expects inputs (in_len={c.in_len}, B, {c.in_channels}, {c.height}, {c.width}), "
                f"got {got}; rebuild with height/width/in_len overrides to change them"
            )

    def encode(self, inputs: torch.Tensor) -> list:
        """Run the encoder; returns each stage's final recurrent state (stage 0 first)."""
        self._check_inputs(inputs)
        x = self.stem(self._pre_encode(inputs))
        states = []
        for i, rnn in enumerate(self.encoder_rnns):
            out, state = rnn(x)
            states.append(state)
            if i < len(self.downs):
                x = self.downs[i](out)
        return states

    def forecast(self, states: list) -> torch.Tensor:
        """Run the forecaster from the encoder states: (out_len, B, 1, H, W)."""
        x = None
        for i in range(self.config.n_stages - 1, -1, -1):
            x, _ = self.forecaster_rnns[i](x, state=states[i], seq_len=self.config.out_len)
            if i > 0:
                x = self.ups[i - 1](x)
        for name in ("deconv", "conv", "out"):
            x = self.head[name](x)
        return x

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forecast(self.encode(inputs))

    def recurrent_cells(self) -> list[nn.Module]:
        return [*self.encoder_rnns, *self.forecaster_rnns]

    def compile_cells(self, **compile_kwargs) -> EncoderForecaster:
        """``torch.compile`` each cell's single-step function (static shapes) in place.

        Compiling per cell avoids the recompilation storm of compiling the whole unrolled
        model (each stage has different channel counts). Returns ``self``.
        """
        compile_kwargs.setdefault("dynamic", False)
        for cell in self.recurrent_cells():
            cell.step = torch.compile(cell.step, **compile_kwargs)
        return self


def build_model(
    preset: str = "hko7",
    cell: str = "trajgru",
    *,
    device: str | torch.device | None = None,
    fast_path: bool = False,
    **overrides,
) -> EncoderForecaster:
    """Build an encoder-forecaster from a named preset.

    Parameters
    ----------
    preset : "hko7" (480x480, 5 -> 20, the paper's HKO-7 network), "mnist++" (64x64,
        10 -> 10, filters 64/96/96, L = 13) or "tiny" (96x96, 5 -> 20, for CPUs and tests;
        any height/width divisible by 8).
    cell : "trajgru", "convgru" or "convlstm".
    device : move the model there (default: stay on the CPU).
    fast_path : :func:`trajgru.fast.enable_fast_path` after the move (channels-last; plus the
        fused Triton kernels on CUDA). Same parameters and state dict either way.
    **overrides : any :class:`ModelConfig` field, e.g. ``height=240, width=240, out_len=10``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(CELLS)}")
    known = {f.name for f in dataclasses.fields(ModelConfig)} - {"preset", "cell"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid: {', '.join(sorted(known))}")
    fields = {**PRESETS[preset], **overrides}
    model = EncoderForecaster(ModelConfig(preset=preset, cell=cell, **fields))
    if device is not None:
        model = model.to(device)
    if fast_path:
        enable_fast_path(model)
    return model


def model_from_config(config: dict[str, Any] | ModelConfig) -> EncoderForecaster:
    """Rebuild a model (fresh weights) from ``model.config.to_dict()`` or a ModelConfig."""
    if isinstance(config, ModelConfig):
        return EncoderForecaster(ModelConfig(**dataclasses.asdict(config)))
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown model config field(s) {unknown}; valid: {', '.join(sorted(known))}")
    return EncoderForecaster(ModelConfig(**config))
