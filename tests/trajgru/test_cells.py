"""Recurrent cells against step-by-step references written from the paper's equations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trajgru.cells import ConvGRUCell, ConvLSTMCell, TrajGRUCell, msra_prelu_init_
from trajgru.warp import warp

SLOPE = 0.2


def randomise_flow_head(cell: TrajGRUCell, scale: float = 0.05) -> None:
    """Give the (zero-initialised) flow output conv random weights so warps are non-trivial."""
    with torch.no_grad():
        cell.flow_out.weight.normal_(0, scale)
        cell.flow_out.bias.uniform_(-1.5, 1.5)


def reference_trajgru_step(cell: TrajGRUCell, x, h):
    """One TrajGRU step, transcribed from the MXNet code: L separate warps, flow-major concat."""
    c, n_flows = cell.hidden_channels, cell.n_flows
    f = F.conv2d(h, cell.h2f.weight, cell.h2f.bias, padding=2)
    if x is not None:
        f = f + F.conv2d(x, cell.i2f.weight, cell.i2f.bias, padding=2)
    f = F.leaky_relu(f, SLOPE)
    flows = F.conv2d(f, cell.flow_out.weight, cell.flow_out.bias, padding=2)
    warped = [warp(h, -flows[:, 2 * l : 2 * l + 2]) for l in range(n_flows)]
    h2h = F.conv2d(torch.cat(warped, dim=1), cell.h2h_weight_flow_major(), cell.h2h.bias)
    h2h_r, h2h_u, h2h_h = h2h[:, :c], h2h[:, c : 2 * c], h2h[:, 2 * c :]
    if x is None:
        r, u = torch.sigmoid(h2h_r), torch.sigmoid(h2h_u)
        new = F.leaky_relu(r * h2h_h, SLOPE)
    else:
        i2h = F.conv2d(x, cell.i2h.weight, cell.i2h.bias, padding=1)
        i2h_r, i2h_u, i2h_h = i2h[:, :c], i2h[:, c : 2 * c], i2h[:, 2 * c :]
        r, u = torch.sigmoid(i2h_r + h2h_r), torch.sigmoid(i2h_u + h2h_u)
        new = F.leaky_relu(i2h_h + r * h2h_h, SLOPE)
    return u * h + (1 - u) * new


def reference_convgru_step(cell: ConvGRUCell, x, h):
    c = cell.hidden_channels
    k = cell.h2h.kernel_size[0]
    h2h = F.conv2d(h, cell.h2h.weight, cell.h2h.bias, padding=k // 2)
    i2h = 0 if x is None else F.conv2d(x, cell.i2h.weight, cell.i2h.bias, padding=1)
    i2h_r = 0 if x is None else i2h[:, :c]
    i2h_u = 0 if x is None else i2h[:, c : 2 * c]
    i2h_h = 0 if x is None else i2h[:, 2 * c :]
    r = torch.sigmoid(i2h_r + h2h[:, :c])
    u = torch.sigmoid(i2h_u + h2h[:, c : 2 * c])
    new = F.leaky_relu(i2h_h + r * h2h[:, 2 * c :], SLOPE)
    return u * h + (1 - u) * new


def reference_convlstm_step(cell: ConvLSTMCell, x, h, c_prev):
    ch = cell.hidden_channels
    k = cell.h2h.kernel_size[0]
    g = F.conv2d(h, cell.h2h.weight, cell.h2h.bias, padding=k // 2)
    if x is not None:
        g = g + F.conv2d(x, cell.i2h.weight, cell.i2h.bias, padding=1)
    gi, gf, gc, go = (g[:, n * ch : (n + 1) * ch] for n in range(4))
    i = torch.sigmoid(gi + cell.w_ci * c_prev)
    f = torch.sigmoid(gf + cell.w_cf * c_prev)
    c = f * c_prev + i * torch.tanh(gc)
    o = torch.sigmoid(go + cell.w_co * c)
    return o * torch.tanh(c), c


def run_reference(step, inputs, h0, seq_len):
    h, outs = h0, []
    for t in range(seq_len):
        h = step(None if inputs is None else inputs[t], h)
        outs.append(h)
    return torch.stack(outs)


# ---------------------------------------------------------------- TrajGRU


@pytest.mark.parametrize("with_input", [True, False])
def test_trajgru_matches_reference(with_input):
    cin = 3 if with_input else None
    cell = TrajGRUCell(cin, 4, n_flows=3, flow_channels=8)
    randomise_flow_head(cell)
    s, b, hh, ww = 4, 2, 9, 11
    inputs = torch.randn(s, b, 3, hh, ww) if with_input else None
    h0 = torch.randn(b, 4, hh, ww) * 0.5
    outs, h_final = cell(inputs, state=h0, seq_len=s)
    ref = run_reference(lambda x, h: reference_trajgru_step(cell, x, h), inputs, h0, s)
    assert outs.shape == (s, b, 4, hh, ww)
    torch.testing.assert_close(outs, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_final, outs[-1])
    # the flows really moved things: the same cell with identity warps differs
    flows = cell.flows(None, h0)
    assert flows.abs().max() > 0.5


def test_trajgru_flow_head_zero_initialised_gives_identity_warp():
    cell = TrajGRUCell(2, 5, n_flows=4, flow_channels=8)
    assert torch.count_nonzero(cell.flow_out.weight) == 0
    assert torch.count_nonzero(cell.flow_out.bias) == 0
    x = torch.randn(3, 2, 6, 7)
    h = torch.randn(3, 5, 6, 7)
    i2f = F.conv2d(x, cell.i2f.weight, cell.i2f.bias, padding=2)
    flows = cell.flows(i2f, h)
    assert flows.shape == (3, 4, 2, 6, 7) and torch.count_nonzero(flows) == 0
    # warped h2h == 1x1 conv of L identical copies of h
    expected = F.conv2d(torch.cat([h] * 4, dim=1), cell.h2h_weight_flow_major(), cell.h2h.bias)
    torch.testing.assert_close(cell.warped_h2h(h, flows), expected, atol=1e-5, rtol=1e-5)


def test_trajgru_batched_warp_conv_equals_flow_loop():
    """warp_stack + channel-major 1x1 weight == L separate warps, flow-major concat."""
    cell = TrajGRUCell(None, 6, n_flows=5, flow_channels=8)
    randomise_flow_head(cell, scale=0.2)
    h = torch.randn(2, 6, 8, 8)
    flows = cell.flows(None, h)
    loop = torch.cat([warp(h, -flows[:, l]) for l in range(5)], dim=1)
    expected = F.conv2d(loop, cell.h2h_weight_flow_major(), cell.h2h.bias)
    torch.testing.assert_close(cell.warped_h2h(h, flows), expected, atol=1e-5, rtol=1e-5)
    # the permutation is a real one: element (o, l*C + c) of flow-major is (o, c*L + l) here
    w, wf = cell.h2h.weight, cell.h2h_weight_flow_major()
    assert torch.equal(wf[:, 2 * 6 + 1], w[:, 1 * 5 + 2])
    assert not torch.equal(wf, w)


def test_trajgru_gradcheck_float64():
    cell = TrajGRUCell(2, 3, n_flows=2, flow_channels=4).double()
    randomise_flow_head(cell, scale=0.1)
    x = torch.randn(2, 1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: cell(a, state=b)[0], (x, h0), eps=1e-6, atol=1e-4)


def test_trajgru_parameters_reach_every_weight():
    cell = TrajGRUCell(2, 3, n_flows=2, flow_channels=4)
    randomise_flow_head(cell)
    outs, _ = cell(torch.randn(3, 2, 2, 6, 6))
    outs.square().sum().backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_trajgru_flow_head_gets_gradient_from_zero_init():
    """Training can leave the identity warp: zero-initialised flow weights get gradients."""
    cell = TrajGRUCell(2, 3, n_flows=2, flow_channels=4)
    outs, _ = cell(torch.randn(3, 2, 2, 6, 6))
    outs.square().sum().backward()
    assert cell.flow_out.weight.grad.abs().sum() > 0


def test_no_input_cell_has_no_input_weights_and_needs_state():
    cell = TrajGRUCell(None, 4, n_flows=2)
    names = {n for n, _ in cell.named_parameters()}
    assert not any(n.startswith(("i2h", "i2f")) for n in names)
    with pytest.raises(ValueError, match="state and seq_len"):
        cell(None, seq_len=3)
    with pytest.raises(ValueError, match="without inputs"):
        cell(torch.zeros(2, 1, 4, 5, 5))
    outs, _ = cell(None, state=torch.randn(1, 4, 5, 5), seq_len=3)
    assert outs.shape == (3, 1, 4, 5, 5)


def test_input_checks():
    cell = ConvGRUCell(3, 4)
    with pytest.raises(ValueError, match="expects inputs"):
        cell(torch.zeros(2, 1, 2, 5, 5))
    with pytest.raises(ValueError, match="seq_len"):
        cell(torch.zeros(2, 1, 3, 5, 5), seq_len=3)


def test_zero_state_default():
    cell = TrajGRUCell(2, 3, n_flows=2, flow_channels=4)
    x = torch.randn(2, 1, 2, 5, 5)
    a, _ = cell(x)
    b, _ = cell(x, state=torch.zeros(1, 3, 5, 5))
    torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- ConvGRU / ConvLSTM


@pytest.mark.parametrize("with_input", [True, False])
def test_convgru_matches_reference(with_input):
    cell = ConvGRUCell(3 if with_input else None, 4, h2h_kernel=5)
    inputs = torch.randn(3, 2, 3, 7, 6) if with_input else None
    h0 = torch.randn(2, 4, 7, 6)
    outs, h = cell(inputs, state=h0, seq_len=3)
    ref = run_reference(lambda x, hh: reference_convgru_step(cell, x, hh), inputs, h0, 3)
    torch.testing.assert_close(outs, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h, ref[-1])


@pytest.mark.parametrize("with_input", [True, False])
def test_convlstm_matches_reference(with_input):
    cell = ConvLSTMCell(3 if with_input else None, 4, height=7, width=6, h2h_kernel=3)
    with torch.no_grad():  # non-zero peepholes so they are exercised
        for p in (cell.w_ci, cell.w_cf, cell.w_co):
            p.normal_(0, 0.5)
    inputs = torch.randn(3, 2, 3, 7, 6) if with_input else None
    h0, c0 = torch.randn(2, 4, 7, 6), torch.randn(2, 4, 7, 6)
    outs, (h, c) = cell(inputs, state=(h0, c0), seq_len=3)
    state, ref = (h0, c0), []
    for t in range(3):
        state = reference_convlstm_step(cell, None if inputs is None else inputs[t], *state)
        ref.append(state[0])
    torch.testing.assert_close(outs, torch.stack(ref), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c, state[1], atol=1e-5, rtol=1e-5)


def test_convlstm_peepholes_are_registered_trainable_parameters():
    cell = ConvLSTMCell(2, 3, height=5, width=5)
    params = dict(cell.named_parameters())
    for name in ("w_ci", "w_cf", "w_co"):
        assert name in params and params[name].shape == (3, 5, 5) and params[name].requires_grad
    outs, _ = cell(torch.randn(3, 1, 2, 5, 5))
    outs.sum().backward()
    for name in ("w_ci", "w_cf", "w_co"):
        assert params[name].grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="built for"):
        cell(torch.randn(2, 1, 2, 6, 6))


def test_convgru_gradcheck_float64():
    cell = ConvGRUCell(2, 3, h2h_kernel=3).double()
    x = torch.randn(2, 1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: cell(a)[0], (x,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- init


def test_msra_prelu_init_std():
    w = torch.empty(64, 32, 5, 5)
    msra_prelu_init_(w, 0.2)
    fan_avg = (64 + 32) * 25 / 2
    expected = math.sqrt(2.0 / (1.04 * fan_avg))
    assert abs(w.std().item() / expected - 1) < 0.03
    assert abs(w.mean().item()) < 0.1 * expected


def test_cell_biases_zero_and_weights_msra():
    cell = TrajGRUCell(8, 32, n_flows=3)
    assert torch.count_nonzero(cell.i2h.bias) == 0
    fan_avg = (cell.h2f.weight.shape[0] + cell.h2f.weight.shape[1]) * 25 / 2
    expected = math.sqrt(2.0 / (1.04 * fan_avg))
    assert abs(cell.h2f.weight.std().item() / expected - 1) < 0.1
