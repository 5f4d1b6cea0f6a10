"""Hasan et al. (2016) convolutional autoencoder, the survey's reference baseline.

The T frames of a volume are the input CHANNELS (no recurrence: motion is only what the
convolutions see across channels). The decoder mirrors the encoder, and unpooling puts
values back where the matching max-pooling took them from (its switches):

    (B, T, S, S) ─ Conv(T→512, 11×11, /4) ─ pool 2 ─ Conv(512→256, 5×5) ─ pool 2 ─ Conv(256→128, 3×3)
                 ─ Deconv(128→256, 3×3) ─ unpool ─ Deconv(256→512, 5×5) ─ unpool
                 ─ Deconv(512→T, 11×11, ×4)                                        → (B, T, S, S)

Same input contract as `convlstm_ae`: (B, T, 1, S, S) in and out, frames standardised with
the ingest statistics; likewise tanh in the hidden layers and a LINEAR output layer, so that
standardised inputs outside ±1 can be reconstructed. Our reading, not verified against the
paper's released model: the hidden activation (tanh, as in the Chong & Tay model) and each
deconvolution changing the width before its unpooling, so the switches' channels match.

Sizes: S = 11 + 8k, k ≥ 2, as for `convlstm_ae` (55 → 28 → 14 at 227).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from vadray.models.convlstm_ae import check_size


@dataclass
class ConvAEConfig:
    T: int = 10
    channels: tuple[int, int, int] = (512, 256, 128)

    def to_params(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class ConvAE(nn.Module):
    """Input and output (B, T, 1, S, S); T is fixed by the config (it is the channel count)."""

    name = "conv_ae"

    def __init__(self, config: ConvAEConfig | None = None):
        super().__init__()
        self.config = config = config or ConvAEConfig()
        c1, c2, c3 = config.channels
        self.conv1 = nn.Conv2d(config.T, c1, 11, stride=4)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.deconv1 = nn.ConvTranspose2d(c3, c2, 3, padding=1)
        self.deconv2 = nn.ConvTranspose2d(c2, c1, 5, padding=2)
        self.deconv3 = nn.ConvTranspose2d(c1, config.T, 11, stride=4)
        # ceil_mode (as Caffe pools): a floor-mode pool would drop the last row and column,
        # and the frame border they map to could never be reconstructed.
        self.pool = nn.MaxPool2d(2, ceil_mode=True, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)

    check_size = staticmethod(check_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.config.T:
            raise ValueError(f"conv_ae was built for T={self.config.T} frames, got {x.shape[1]}")
        z = x.squeeze(2)                                              # (B, T, S, S)
        a1 = torch.tanh(self.conv1(z))                                # (B, 512, 2k+1, 2k+1)
        p1, switches1 = self.pool(a1)                                 # (B, 512, k+1, k+1)
        a2 = torch.tanh(self.conv2(p1))                               # (B, 256, k+1, k+1)
        p2, switches2 = self.pool(a2)                                 # (B, 256, m, m), m = ⌈(k+1)/2⌉
        a3 = torch.tanh(self.conv3(p2))                               # (B, 128, m, m)
        d1 = torch.tanh(self.deconv1(a3))                             # (B, 256, m, m)
        u2 = self.unpool(d1, switches2, output_size=a2.shape[-2:])    # (B, 256, k+1, k+1)
        d2 = torch.tanh(self.deconv2(u2))                             # (B, 512, k+1, k+1)
        u1 = self.unpool(d2, switches1, output_size=a1.shape[-2:])    # (B, 512, 2k+1, 2k+1)
        return self.deconv3(u1).unsqueeze(2)                          # (B, T, 1, S, S), linear
