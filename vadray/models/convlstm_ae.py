"""Chong & Tay (2017): spatiotemporal autoencoder = conv encoder, ConvLSTM stack, deconv decoder.

    (B, T, 1, S, S) ─ Conv(1→128, 11×11, /4) ─ tanh ─ Conv(128→64, 5×5, /2) ─ tanh      spatial encoder
                    ─ ConvLSTM 64 ─ ConvLSTM 32 ─ ConvLSTM 64 (3×3, same padding)       temporal enc-dec
                    ─ Deconv(64→128, 5×5, ×2) ─ tanh ─ Deconv(128→1, 11×11, ×4)         spatial decoder

Output scaling. The paper ends in tanh, but its inputs are globally standardised (mean image
subtracted, divided by one global std), so they exceed ±1 and a tanh output could never
reconstruct them. We keep the standardised input (`steps.normalize`) and make the LAST
deconvolution linear; tanh stays everywhere else in the spatial parts, as in the paper.

Peepholes. The ConvLSTM follows the paper's equations 7-12: forget and input gates see
[h(t-1), x(t), C(t-1)], the output gate sees [h(t-1), x(t), C(t)], and the candidate sees
[h(t-1), x(t)]; "sees" is a 3×3 convolution over the concatenation (the paper convolves the
cell state too, unlike Shi et al.'s element-wise peepholes). A convolution over a
concatenation is the sum of convolutions over its parts, which is how it is computed here.

Sizes: the strides invert exactly for S = 11 + 8k, k ≥ 2 (27, 35, 59, 115, 227); the
latent map is (k-1)×(k-1) (26×26 at 227).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


def check_size(size: int) -> None:
    """Raise ValueError unless the conv strides invert exactly for S×S frames."""
    if size < 27 or (size - 11) % 8 != 0:
        raise ValueError(f"frame size {size} does not fit the autoencoder: it needs "
                         f"S = 11 + 8k with k >= 2 (27, 35, 59, 115, 227, ...)")


@dataclass
class ConvLSTMAEConfig:
    encoder_channels: tuple[int, int] = (128, 64)
    lstm_channels: tuple[int, ...] = (64, 32, 64)
    lstm_kernel: int = 3
    peephole: bool = True

    def to_params(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class ConvLSTMCell(nn.Module):
    """One ConvLSTM layer's step, the paper's eqs. 7-12 (peepholes as convolutions)."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int = 3, peephole: bool = True):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.peephole = peephole
        pad = kernel // 2
        # [x, h] → pre-activations of the 4 gates (i, f, candidate, o), with their biases.
        self.input_conv = nn.Conv2d(in_channels + hidden_channels, 4 * hidden_channels, kernel, padding=pad)
        if peephole:
            # C(t-1) → input and forget gates; C(t) → output gate. Biases are in input_conv.
            self.peep_if = nn.Conv2d(hidden_channels, 2 * hidden_channels, kernel, padding=pad, bias=False)
            self.peep_o = nn.Conv2d(hidden_channels, hidden_channels, kernel, padding=pad, bias=False)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h_prev, c_prev = state                                  # (B, H, h, w) each
        gates = self.input_conv(torch.cat([x, h_prev], dim=1))  # (B, 4H, h, w)
        i_pre, f_pre, g_pre, o_pre = gates.chunk(4, dim=1)
        if self.peephole:
            peep_i, peep_f = self.peep_if(c_prev).chunk(2, dim=1)
            i_pre, f_pre = i_pre + peep_i, f_pre + peep_f
        i, f = torch.sigmoid(i_pre), torch.sigmoid(f_pre)       # eqs. 8, 7
        candidate = torch.tanh(g_pre)                           # eq. 9
        c = f * c_prev + i * candidate                          # eq. 10
        if self.peephole:
            o_pre = o_pre + self.peep_o(c)
        o = torch.sigmoid(o_pre)                                # eq. 11
        h = o * torch.tanh(c)                                   # eq. 12
        return h, c

    def init_state(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, height, width = like.shape
        zeros = like.new_zeros(b, self.hidden_channels, height, width)
        return zeros, zeros


class ConvLSTM(nn.Module):
    """A ConvLSTM layer over a sequence: (B, T, C, h, w) → (B, T, H, h, w), zero initial state."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int = 3, peephole: bool = True):
        super().__init__()
        self.cell = ConvLSTMCell(in_channels, hidden_channels, kernel, peephole)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        state = self.cell.init_state(seq[:, 0])
        outputs = []
        for t in range(seq.shape[1]):
            state = self.cell(seq[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1)


class ConvLSTMAE(nn.Module):
    """Input and output (B, T, 1, S, S) in normalised units; any T, S = 11 + 8k."""

    name = "convlstm_ae"

    def __init__(self, config: ConvLSTMAEConfig | None = None):
        super().__init__()
        self.config = config = config or ConvLSTMAEConfig()
        c1, c2 = config.encoder_channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 11, stride=4), nn.Tanh(),
            nn.Conv2d(c1, c2, 5, stride=2), nn.Tanh(),
        )
        layers, in_ch = [], c2
        for hidden in config.lstm_channels:
            layers.append(ConvLSTM(in_ch, hidden, config.lstm_kernel, config.peephole))
            in_ch = hidden
        self.temporal = nn.Sequential(*layers)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(in_ch, c1, 5, stride=2), nn.Tanh(),
            nn.ConvTranspose2d(c1, 1, 11, stride=4),  # linear: see the module docstring
        )

    check_size = staticmethod(check_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        z = self.encoder(x.flatten(0, 1))            # (B*T, 64, k-1, k-1)
        z = z.unflatten(0, (b, t))                   # (B, T, 64, k-1, k-1)
        z = self.temporal(z)                         # (B, T, 64, k-1, k-1)
        y = self.decoder(z.flatten(0, 1))            # (B*T, 1, S, S)
        return y.unflatten(0, (b, t))                # (B, T, 1, S, S)
