"""Synthetic anomalies pasted into normal validation volumes, for choosing the epoch.

An autoencoder that keeps lowering its validation loss also learns to reconstruct anomalies
(the design brief, ../shared/DESIGN.md: on Ped2 at 115 px the test AUC went 0.83, 0.86, 0.84,
0.80 over epochs 1-4; our 227-px run peaked at 0.82 and fell to 0.79 by epoch 50 while both
losses fell), so the lowest validation loss is not the best detector. Test labels may never
choose the model; normal footage with anomalies made up from it may. Each validation volume gets a
twin in which a patch of the scene's own texture crosses the frame far faster than anything
normal moves (half the frame over the volume's T frames). The selection score is how well
the model's per-volume reconstruction error tells the twins from the originals (ROC AUC):
the same volumes on both sides, so differences between videos cannot decide it.

Two kinds (`PASTES`, chosen by `--select`):
  synthetic          a patch of scene texture crossing half the frame in T frames. On Ped2 it
                     is too easy: its AUC rises with training while the real one falls.
  synthetic_gliding  a copy of the volume's own moving object (a pedestrian, on Ped2), frozen
                     in its first-frame pose, gliding a quarter of the frame in T frames: a
                     normal appearance with abnormal motion, as Ped2's cyclists and
                     skateboarders are (about 4× walking speed). Four twins per volume, so
                     its AUC on a small validation set moves in finer steps.
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
    keys = _content_keys(volumes)
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


def _content_keys(volumes: torch.Tensor) -> list[int]:
    return volumes[:, 0, ::7, ::7].long().sum(dim=(1, 2)).tolist()


def paste_gliding_objects(volumes: torch.Tensor, seed: int, twin: int = 0, **shape) -> torch.Tensor:
    """One twin of `gliding_twins` (the same pixels as twin `twin` of a call for several)."""
    return gliding_twins(volumes, seed, [twin], **shape)[0]


def gliding_twins(volumes: torch.Tensor, seed: int, twins, height_fraction: float = 1 / 6,
                  width_fraction: float = 1 / 12, glide_fraction: float = 1 / 4,
                  foreground_grey: float = 20.0) -> list[torch.Tensor]:
    """(B, T, S, S) uint8 → one copy per twin in which the volume's most moving object glides away.

    Background: the per-pixel median over the T frames. The object: the h×w box of frame 0
    (h = S·height_fraction, w = S·width_fraction, a standing person's shape) holding the most
    foreground (|frame − background|), blended in with alpha = foreground / foreground_grey
    (clipped to 1), so only the object moves, not its box of background. It starts where it
    is and glides S·glide_fraction along a random straight path that stays in the frame,
    without changing pose; twins differ only in the path. Background, object and alpha are
    found once for all twins. Deterministic per (seed, twin, volume content).
    """
    t, s = volumes.shape[1], volumes.shape[-1]
    h, w = max(2, round(s * height_fraction)), max(2, round(s * width_fraction))
    if h >= s or w >= s:
        raise ValueError(f"frames of {s} px are too small for a {h}×{w}-px object")
    frames = volumes.float()
    background = frames.median(dim=1).values                                   # (B, S, S)
    foreground = (frames[:, 0] - background).abs()
    box_sums = torch.nn.functional.avg_pool2d(foreground[:, None], (h, w), stride=1)[:, 0]  # (B, S-h+1, S-w+1)
    corners = [divmod(int(i), box_sums.shape[-1]) for i in box_sums.flatten(1).argmax(dim=1)]
    steps = np.linspace(0.0, 1.0, t)
    glide = s * glide_fraction
    keys = _content_keys(volumes)
    outs = []
    for twin in twins:
        out = frames.clone()
        for i, ((y0, x0), key) in enumerate(zip(corners, keys)):
            rng = np.random.default_rng([seed, twin, key])
            start = np.array([y0, x0], float)
            for _ in range(64):  # a direction whose end stays inside the frame
                angle = rng.uniform(0, 2 * np.pi)
                end = start + glide * np.array([np.sin(angle), np.cos(angle)])
                if 0 <= end[0] <= s - h and 0 <= end[1] <= s - w:
                    break
            else:
                end = np.clip(start + (np.array([s - h, s - w]) / 2 - start) * 2, 0, [s - h, s - w])
            obj = frames[i, 0, y0:y0 + h, x0:x0 + w]
            alpha = (foreground[i, y0:y0 + h, x0:x0 + w] / foreground_grey).clamp(0, 1)
            for k, (y, x) in enumerate(np.rint(start[None] + steps[:, None] * (end - start)[None]).astype(int)):
                region = out[i, k, y:y + h, x:x + w]
                out[i, k, y:y + h, x:x + w] = region * (1 - alpha) + obj * alpha
        outs.append(out.round_().clamp_(0, 255).to(torch.uint8))
    return outs


# Each kind of synthetic anomaly: (volumes, seed) → its pasted twins of the volumes.
PASTES = {
    "synthetic": lambda volumes, seed: [paste_fast_patches(volumes, seed)],
    "synthetic_gliding": lambda volumes, seed: gliding_twins(volumes, seed, range(4)),
}


def volume_errors(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-volume mean over frames of the frame's L2 error, (B,): scoring's e(t), averaged."""
    frame = (x.float() - y.float()).square().flatten(2).sum(dim=2).sqrt()  # (B, T)
    return frame.mean(dim=1)


def twin_auc(clean: np.ndarray, pasted: np.ndarray) -> float:
    """ROC AUC of pasted-volume errors against clean-volume errors (0.5: blind, 1: perfect)."""
    from vadray.metrics import frame_auc

    labels = np.concatenate([np.zeros(len(clean)), np.ones(len(pasted))])
    return frame_auc(labels, np.concatenate([clean, pasted]))
