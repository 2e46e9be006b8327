"""Encoder-forecaster: presets, structure of the HKO-7 network, config round trip, training."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import trajgru
from trajgru import EncoderForecaster, ModelConfig, build_model, model_from_config
from trajgru import cells as cells_mod
from trajgru.cells import ConvGRUCell, ConvLSTMCell, TrajGRUCell

CELLS = ["trajgru", "convgru", "convlstm"]
CELL_CLASSES = {"trajgru": TrajGRUCell, "convgru": ConvGRUCell, "convlstm": ConvLSTMCell}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ hand-derived counts


def conv(cin, cout, k, bias=True):
    return cin * cout * k * k + (cout if bias else 0)


def trajgru_count(cin, c, n_flows, flow_ch=32):
    """i2h 3x3 -> 3C, i2f 5x5 -> 32, h2f 5x5 -> 32, flows 5x5 -> 2L, h2h 1x1 (L*C -> 3C)."""
    total = conv(c, flow_ch, 5) + conv(flow_ch, 2 * n_flows, 5) + conv(n_flows * c, 3 * c, 1)
    if cin is not None:
        total += conv(cin, 3 * c, 3) + conv(cin, flow_ch, 5)
    return total


def test_hko7_trajgru_parameter_count_matches_the_paper_network():
    model = build_model("hko7", "trajgru")
    expected = (
        conv(4, 8, 7)  # stem: frame + (x, y) grid + ones
        + trajgru_count(8, 64, 13)
        + conv(64, 192, 5)
        + trajgru_count(192, 192, 13)
        + conv(192, 192, 3)
        + trajgru_count(192, 192, 9)
        # forecaster: top block without input, deconvs without bias
        + trajgru_count(None, 192, 9)
        + conv(192, 192, 4, bias=False)
        + trajgru_count(192, 192, 13)
        + conv(192, 192, 5, bias=False)
        + trajgru_count(192, 64, 13)
        + conv(64, 8, 7, bias=False)
        + conv(8, 8, 3)
        + conv(8, 1, 1)
    )
    assert n_params(model) == expected


def test_hko7_structure():
    model = build_model("hko7")
    cfg = model.config
    assert (cfg.in_len, cfg.out_len, cfg.height, cfg.width) == (5, 20, 480, 480)
    assert cfg.feature_sizes() == [(96, 96), (32, 32), (16, 16)]
    assert cfg.total_stride == 30
    stem = model.stem.conv
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding) == (
        4,
        8,
        (7, 7),
        (5, 5),
        (1, 1),
    )
    downs = [
        (d.conv.out_channels, d.conv.kernel_size[0], d.conv.stride[0], d.conv.padding[0]) for d in model.downs
    ]
    assert downs == [(192, 5, 3, 1), (192, 3, 2, 1)]
    ups = [
        (u.conv.out_channels, u.conv.kernel_size[0], u.conv.stride[0], u.conv.padding[0]) for u in model.ups
    ]
    assert ups == [(192, 5, 3, 1), (192, 4, 2, 1)]  # ups[i]: stage i+1 -> stage i
    deconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 3 and all(d.bias is None for d in deconvs)
    last = model.head["deconv"].conv
    assert (last.out_channels, last.kernel_size[0], last.stride[0], last.padding[0]) == (8, 7, 5, 1)
    assert model.head["conv"].conv.kernel_size == (3, 3) and model.head["out"].conv.out_channels == 1
    assert model.head["out"].slope is None  # no final activation
    enc = [(c.in_channels, c.hidden_channels, c.n_flows) for c in model.encoder_rnns]
    assert enc == [(8, 64, 13), (192, 192, 13), (192, 192, 9)]
    fc = [(c.in_channels, c.hidden_channels, c.n_flows) for c in model.forecaster_rnns]
    assert fc == [(192, 64, 13), (192, 192, 13), (None, 192, 9)]
    trajs = [m for m in model.modules() if isinstance(m, TrajGRUCell)]
    assert len(trajs) == 6
    for cell in trajs:
        assert cell.i2h is None or cell.i2h.kernel_size == (3, 3)
        assert cell.h2f.out_channels == 32 and cell.h2f.kernel_size == (5, 5)
        assert cell.flow_out.kernel_size == (5, 5)
        assert torch.count_nonzero(cell.flow_out.weight) == 0


def test_hko7_convgru_uses_configured_h2h_kernels():
    model = build_model("hko7", "convgru")
    assert [c.h2h.kernel_size[0] for c in model.encoder_rnns] == [5, 5, 3]
    assert all(isinstance(c, ConvGRUCell) for c in model.recurrent_cells())


def test_hko7_forward_small_size():
    """The full HKO-7 network at 60x60 (a multiple of its total stride 30), batch 1."""
    model = build_model("hko7", height=60, width=60, in_len=2, out_len=3)
    with torch.no_grad():
        out = model(torch.rand(2, 1, 1, 60, 60))
    assert out.shape == (3, 1, 1, 60, 60) and torch.isfinite(out).all()


# ------------------------------------------------------------------ every preset x cell

SMALL = {
    "hko7": dict(height=60, width=60, in_len=2, out_len=3),
    "mnist++": dict(height=32, width=32, in_len=3, out_len=2),
    "tiny": dict(height=32, width=40, in_len=3, out_len=4),
}


@pytest.mark.parametrize("preset", list(SMALL))
@pytest.mark.parametrize("cell", CELLS)
def test_shapes_every_preset_and_cell(preset, cell):
    model = build_model(preset, cell, **SMALL[preset])
    cfg = model.config
    assert all(isinstance(c, CELL_CLASSES[cell]) for c in model.recurrent_cells())
    x = torch.rand(cfg.in_len, 2, 1, cfg.height, cfg.width)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (cfg.out_len, 2, 1, cfg.height, cfg.width)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_preset_defaults():
    mnist = build_model("mnist++").config
    assert (mnist.in_len, mnist.out_len, mnist.height, mnist.filters, mnist.n_flows) == (
        10,
        10,
        64,
        (64, 96, 96),
        (13, 13, 13),
    )
    tiny = build_model("tiny").config
    assert (tiny.in_len, tiny.out_len, tiny.height, tiny.width) == (5, 20, 96, 96)


def test_default_tiny_forward_shape():
    model = build_model("tiny")
    with torch.no_grad():
        out = model(torch.rand(5, 1, 1, 96, 96))
    assert out.shape == (20, 1, 1, 96, 96)


# ------------------------------------------------------------------ inputs and options


def test_coordinate_channels_are_the_normalised_grid_and_ones():
    model = build_model("tiny", height=16, width=24)
    x = torch.rand(5, 2, 1, 16, 24)
    pre = model._pre_encode(x)
    assert pre.shape == (5, 2, 4, 16, 24)
    torch.testing.assert_close(pre[:, :, 0], x[:, :, 0])
    i, j = 11, 17
    assert abs(pre[3, 1, 1, i, j].item() - (j / 23 * 2 - 1)) < 1e-6
    assert abs(pre[3, 1, 2, i, j].item() - (i / 15 * 2 - 1)) < 1e-6
    assert pre[0, 0, 1, 0, 0] == -1 and pre[0, 0, 1, 5, 23] == 1  # x: columns -1 .. 1
    assert pre[0, 0, 2, 0, 7] == -1 and pre[0, 0, 2, 15, 7] == 1  # y: rows -1 .. 1
    assert torch.all(pre[:, :, 3] == 1)
    nocoord = build_model("mnist++", height=32, width=32)
    assert nocoord.stem.conv.in_channels == 1


def test_zero_initialised_flows_make_every_warp_the_identity(monkeypatch):
    """At init the model equals the same model with warping replaced by copying h."""
    model = build_model("tiny", height=32, width=32, in_len=3, out_len=3)
    x = torch.rand(3, 2, 1, 32, 32)
    with torch.no_grad():
        out = model(x)
    calls = []

    def identity_stack(h, flows, negate=False):
        calls.append(flows.abs().max().item())
        return h.unsqueeze(2).expand(-1, -1, flows.shape[1], -1, -1)

    monkeypatch.setattr(cells_mod, "warp_stack", identity_stack)
    with torch.no_grad():
        out_identity = model(x)
    assert calls and max(calls) == 0.0  # every flow of every step is exactly zero
    torch.testing.assert_close(out, out_identity, atol=1e-6, rtol=1e-6)


def test_gradients_reach_every_parameter():
    """All parameters get gradients; the flow generator's first convs only once the
    zero-initialised flow head has moved (as in the original: a zero weight blocks them)."""
    model = build_model("tiny", height=32, width=32, in_len=3, out_len=3)
    x = torch.rand(3, 2, 1, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = {n for n, p in model.named_parameters() if p.grad.abs().sum() == 0}
    assert zero and all(n.split(".")[-2] in ("i2f", "h2f") for n in zero), zero
    opt.step()
    opt.zero_grad()
    model(x).square().mean().backward()
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_channels_last_gives_the_same_forecast():
    model = build_model("tiny", height=32, width=32, in_len=3, out_len=3)
    x = torch.rand(3, 1, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_bf16_autocast_cpu_runs():
    model = build_model("tiny", height=32, width=32, in_len=3, out_len=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(3, 1, 1, 32, 32))
    assert out.shape == (2, 1, 1, 32, 32) and torch.isfinite(out.float()).all()


# ------------------------------------------------------------------ config and errors


def test_config_json_round_trip_rebuilds_the_same_model():
    model = build_model("tiny", "convlstm", height=48, width=64, out_len=7)
    d = json.loads(json.dumps(model.config.to_dict()))
    assert d["preset"] == "tiny" and d["cell"] == "convlstm" and d["width"] == 64
    rebuilt = model_from_config(d)
    assert isinstance(rebuilt, EncoderForecaster)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(5, 1, 1, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
    assert model_from_config(model.config).config == model.config


def test_unknown_names_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown preset 'hko8'.*hko7"):
        build_model("hko8")
    with pytest.raises(ValueError, match="unknown cell 'lstm'.*trajgru"):
        build_model("tiny", "lstm")
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['heigth'\]"):
        build_model("tiny", heigth=64)
    with pytest.raises(ValueError, match="unknown model config field"):
        model_from_config({**build_model("tiny").config.to_dict(), "bogus": 1})


def test_size_not_divisible_by_stride_raises():
    with pytest.raises(ValueError, match="multiple of the preset's total stride 8"):
        build_model("tiny", height=100)
    with pytest.raises(ValueError, match="total stride 30"):
        build_model("hko7", height=500, width=500)


def test_wrong_input_shape_raises():
    model = build_model("tiny", height=32, width=32)
    with pytest.raises(ValueError, match="expects inputs"):
        model(torch.rand(5, 1, 1, 40, 32))
    with pytest.raises(ValueError, match="in_len=5"):
        model(torch.rand(4, 1, 1, 32, 32))


def test_public_api():
    assert trajgru.build_model is build_model and trajgru.ModelConfig is ModelConfig
    assert hasattr(trajgru, "units") and hasattr(trajgru.units, "pixel_to_dbz")
    assert isinstance(build_model("tiny").config, ModelConfig)


# ------------------------------------------------------------------ training


def moving_blob_batch(seq_len, batch, size, generator):
    """A Gaussian blob moving diagonally: learnable structure, values in [0, 1]."""
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    frames = torch.zeros(seq_len, batch, 1, size, size)
    start = torch.rand(batch, 2, generator=generator) * size / 3 + 4
    for t in range(seq_len):
        for b in range(batch):
            cy, cx = start[b] + t
            frames[t, b, 0] = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 18.0)
    return frames


def test_tiny_training_steps_reduce_the_loss():
    g = torch.Generator().manual_seed(0)
    model = build_model("tiny", height=32, width=32, out_len=10)
    frames = moving_blob_batch(15, 2, 32, g)
    inputs, target = frames[:5], frames[5:]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = nn.functional.mse_loss(model(inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------ CUDA (skipped without a GPU)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_forward_matches_cpu(cell):
    model = build_model("tiny", cell, height=32, width=32, in_len=3, out_len=4)
    for c in model.recurrent_cells():  # non-trivial flows
        if isinstance(c, TrajGRUCell):
            with torch.no_grad():
                c.flow_out.weight.normal_(0, 0.05)
    x = torch.rand(3, 2, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_autocast_training_step():
    model = build_model("tiny", height=64, width=64).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(5, 2, 1, 64, 64, device="cuda"), torch.rand(20, 2, 1, 64, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = nn.functional.mse_loss(model(x).float(), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.gpu
@needs_cuda
def test_compile_cells_matches_eager_cuda():
    model = build_model("tiny", height=32, width=32, in_len=3, out_len=3).cuda()
    x = torch.rand(3, 1, 1, 32, 32, device="cuda")
    with torch.no_grad():
        ref = model(x)
        out = model.compile_cells()(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
