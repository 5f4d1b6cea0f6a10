"""Models: shapes, the ConvLSTM step against a hand computation, overfitting, the registry."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vadray.models import build, check_size, names, spec
from vadray.preprocess import NormStats, PartialSums
from vadray.synth import render_video
from vadray.models.convlstm_ae import ConvLSTMCell

TINY = {"convlstm_ae": {"encoder_channels": [32, 16], "lstm_channels": [16, 8, 16]},
        "conv_ae": {"channels": [32, 16, 8]}}


@pytest.fixture(autouse=True)
def one_thread():
    """Many small ops on a shared 2-core machine: one intra-op thread is many times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("size", [27, 35])
def test_output_shape_matches_input(name, size):
    model = build(name)  # the paper's widths
    x = torch.randn(2, 10, 1, size, size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("size", [26, 30, 19, 11])
def test_sizes_the_strides_cannot_invert_are_refused(name, size):
    with pytest.raises(ValueError, match="11 \\+ 8k"):
        check_size(name, size)


def test_paper_sizes_are_accepted():
    for size in (27, 35, 59, 115, 227):
        check_size("convlstm_ae", size)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _conv_same(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero padding: x (C_in, H, W), w (C_out, C_in, k, k) → (C_out, H, W)."""
    c_out, _, k, _ = w.shape
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((c_out, x.shape[1], x.shape[2]))
    for o in range(c_out):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                out[o, i, j] = np.sum(xp[:, i:i + k, j:j + k] * w[o])
    return out


def test_convlstm_cell_step_matches_the_papers_equations_by_hand():
    torch.manual_seed(3)
    cell = ConvLSTMCell(in_channels=2, hidden_channels=1, kernel=3, peephole=True).double()
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    h_prev = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    c_prev = torch.randn(1, 1, 4, 5, dtype=torch.float64)
    h, c = cell(x, (h_prev, c_prev))

    # Eqs. 7-12, written out with the cell's own weights: gates over [x, h] plus peepholes.
    w = cell.input_conv.weight.detach().numpy()     # (4, 3, 3, 3): rows i, f, candidate, o
    b = cell.input_conv.bias.detach().numpy()
    w_peep_if = cell.peep_if.weight.detach().numpy()  # (2, 1, 3, 3): i, f
    w_peep_o = cell.peep_o.weight.detach().numpy()    # (1, 1, 3, 3)
    xh = np.concatenate([x[0].numpy(), h_prev[0].numpy()])
    C_prev = c_prev[0].numpy()
    pre = _conv_same(xh, w) + b[:, None, None]
    peep = _conv_same(C_prev, w_peep_if)
    f = _sigmoid(pre[1] + peep[1])                              # eq. 7
    i = _sigmoid(pre[0] + peep[0])                              # eq. 8
    candidate = np.tanh(pre[2])                                 # eq. 9
    C = f * C_prev[0] + i * candidate                           # eq. 10
    o = _sigmoid(pre[3] + _conv_same(C[None], w_peep_o)[0])     # eq. 11
    H = o * np.tanh(C)                                          # eq. 12
    np.testing.assert_allclose(c[0, 0].detach().numpy(), C, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h[0, 0].detach().numpy(), H, rtol=1e-10, atol=1e-12)


def test_without_peepholes_the_cell_state_does_not_reach_the_gates():
    torch.manual_seed(0)
    cell = ConvLSTMCell(1, 2, peephole=False)
    x, h0 = torch.randn(1, 1, 3, 3), torch.randn(1, 2, 3, 3)
    c_a, c_b = torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3)
    _, c1 = cell(x, (h0, c_a))
    _, c2 = cell(x, (h0, c_b))
    # c = f*c_prev + i*g: with gates independent of c_prev the difference is exactly f.
    gates = cell.input_conv(torch.cat([x, h0], 1)).chunk(4, 1)
    torch.testing.assert_close(c2 - c1, torch.sigmoid(gates[1]))


def _two_normalised_volumes(size: int = 27) -> torch.Tensor:
    """(2, 10, 1, S, S): synthetic walkers, standardised with their own statistics."""
    frames = render_video(size, size, 20, seed=0)[0]                 # (20, S, S) uint8
    stats = NormStats.from_sums(PartialSums.of(frames))
    return torch.from_numpy(stats.normalize(frames).reshape(2, 10, 1, size, size))


@pytest.mark.parametrize("name", names())
def test_each_model_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    model = build(name, **TINY[name])
    x = _two_normalised_volumes()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(model(x), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Predicting zeros gives the input's variance (≈ 0.9 here); memorising must go far below,
    # including at the frame border and at values beyond ±1 (the linear output layer).
    assert losses[-1] < 0.25 * losses[0], losses[::10]


@pytest.mark.parametrize("name", names())
def test_registry_rebuilds_the_same_architecture_from_json(name):
    model = build(name, **TINY[name])
    description = json.loads(json.dumps(spec(model)))     # what a model card stores
    again = build(description["name"], **description["params"])
    assert description["name"] == name
    assert {k: v.shape for k, v in again.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 10, 1, 27, 27)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))


def test_registry_refuses_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="unknown model"):
        build("no_such_model")
    with pytest.raises(ValueError, match="no parameter"):
        build("convlstm_ae", hidden=3)


def test_conv_ae_checks_the_number_of_frames():
    model = build("conv_ae", T=10, **TINY["conv_ae"])
    with pytest.raises(ValueError, match="T=10"):
        model(torch.randn(1, 8, 1, 27, 27))
