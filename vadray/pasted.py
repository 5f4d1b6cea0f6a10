"""Synthetic anomalies pasted into normal validation volumes, for choosing the epoch.

An autoencoder that keeps lowering its validation loss also learns to reconstruct anomalies
(DESIGN.md: on Ped2 the test AUC fell from 0.82 to 0.79 over 50 epochs while both losses
fell), so the lowest validation loss is not the best detector. Test labels may never choose
the model; normal footage with anomalies made up from it may. Each validation volume gets a
twin in which a patch of the scene's own texture crosses the frame far faster than anything
normal moves (half the frame over the volume's T frames). The selection score is how well
the model's per-volume reconstruction error tells the twins from the originals (ROC AUC):
the same volumes on both sides, so differences between videos cannot decide it.
"""
from __future__ import annotations

import numpy as np
import torch


def paste_fast_patches(volumes: torch.Tensor, seed: int, patch_fraction: float = 1 / 6) -> torch.Tensor:
    """(B, T, S, S) uint8 → a copy with one fast-moving textured patch per volume.

    The patch (S·patch_fraction square) is cut at a random place of each frame (the texture
    moves with the scene) and pasted along a straight path whose ends are at least S/2 apart.
    A volume's patch depends only on the seed and the volume's own pixels, so it gets the
    same patch at every epoch however the validation set is ordered or batched. The original
    tensor is not modified.
    """
    b, t, s = volumes.shape[0], volumes.shape[1], volumes.shape[-1]
    p = max(2, int(round(s * patch_fraction)))
    if p >= s:
        raise ValueError(f"frames of {s} px are too small for a {p}-px patch")
    keys = volumes[:, 0, ::7, ::7].long().sum(dim=(1, 2)).tolist()  # content keys, (B,)
    room = s - p
    out = volumes.clone()
    steps = np.linspace(0.0, 1.0, t)
    for i in range(b):
        rng = np.random.default_rng([seed, keys[i]])
        src_y, src_x = rng.integers(0, room + 1, size=2)
        while True:  # a path long enough to be fast: ≥ S/2 over the volume
            start, end = rng.integers(0, room + 1, size=(2, 2))
            if np.hypot(*(end - start)) >= s / 2:
                break
        path = np.rint(start[None, :] + steps[:, None] * (end - start)[None, :]).astype(int)
        for k, (y, x) in enumerate(path):
            out[i, k, y:y + p, x:x + p] = volumes[i, k, src_y:src_y + p, src_x:src_x + p]
    return out


def volume_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-volume mean over frames of the frame's L2 error, (B,): scoring's e(t), averaged."""
    frame = (x.float() - y.float()).square().flatten(2).sum(dim=2).sqrt()  # (B, T)
    return frame.mean(dim=1)


def twin_auc(clean: np.ndarray, pasted: np.ndarray) -> float:
    """ROC AUC of pasted-volume errors against clean-volume errors (0.5: blind, 1: perfect)."""
    from vadray.metrics import frame_auc

    labels = np.concatenate([np.zeros(len(clean)), np.ones(len(pasted))])
    return frame_auc(labels, np.concatenate([clean, pasted]))
