"""The model step's math, shared by Ray Train's workers (`trainloop`), the single-process
trainer (`bench ped2-direct`), calibration and the score job's actors: normalise on the
device, reconstruct, measure per-frame errors, the validation pass and its synthetic-anomaly
AUC, early stopping. No Ray here.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vadray.pasted import PASTES


def normalize(volumes: torch.Tensor, mean_image: torch.Tensor, std: float) -> torch.Tensor:
    """uint8 (B, T, S, S) → float32 (B, T, 1, S, S): `NormStats.normalize` on the device."""
    x = volumes.float() * (1.0 / 255.0)
    x -= mean_image
    x *= 1.0 / max(std, 1e-6)
    return x.unsqueeze(2)


def reconstruct(model, volumes: torch.Tensor, mean_image: torch.Tensor, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's forward: uint8 (B, T, S, S) → (x, y) float32 (B, T, 1, S, S), the
    normalised input and its reconstruction; bf16 autocast on GPU."""
    x = normalize(volumes, mean_image, std)
    with torch.autocast(x.device.type, torch.bfloat16, enabled=x.device.type == "cuda"):
        y = model(x)
    return x, y.float()


class Reconstructor:
    """A trained model on its device, with the normalisation of the footage it learnt: uint8
    volumes (array or tensor) → (x, y) by `reconstruct`. The score actors, calibration and the
    report's error maps each hold one, so a frame's error is the same number in all three."""

    def __init__(self, model: torch.nn.Module, stats, use_gpu: bool = False):
        # Only a task or actor that holds a GPU uses one: Ray leaves CUDA visible to the others.
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.stats = stats   # a `preprocess.NormStats`
        self.mean_image = torch.from_numpy(stats.mean_image).to(self.device)

    def __call__(self, volumes) -> tuple[torch.Tensor, torch.Tensor]:
        return reconstruct(self.model, torch.as_tensor(volumes).to(self.device), self.mean_image, self.stats.std)


def frame_sums(batches, reconstruct, T: int, grid: int | None = None, motion: bool = True):
    """(starts (B,), uint8 volumes (B, T, S, S)) batches → `scoring.FrameSums` of e, the cell
    grid and m: the forward-and-measure loop of scoring, calibration and ped2-direct, so all
    three give the same errors for the same volumes. `reconstruct(volumes) -> (x, y)` as in
    `validation_pass`; one batch's float32 volumes are alive at a time."""
    from vadray import scoring

    grid = scoring.GRID_DEFAULT if grid is None else grid
    parts = []
    with torch.inference_mode():
        for starts, volumes in batches:
            x, y = reconstruct(volumes)
            parts.append(scoring.volume_sums(starts, x.cpu().numpy(), y.cpu().numpy(), grid, motion))
    return scoring.FrameSums.merge(parts) if parts else scoring.FrameSums.empty(T, grid * grid, motion)


# Inputs are standardised by the footage's own pixel std, so an all-zero output scores an MSE
# of at most about 1 on it: a model whose loss is 100 times that learnt nothing and will not.
DIVERGED_LOSS = 100.0
DIVERGED_WHY = f"not finite, or above {DIVERGED_LOSS:g} (an all-zero output scores about 1)"


def diverged(train_loss: float, val_loss: float | None) -> bool:
    """The loss is not finite, or above DIVERGED_LOSS (a huge learning rate can leave finite
    weights that are useless). A NaN validation loss alone is a validation set without volumes."""
    return not train_loss <= DIVERGED_LOSS or (val_loss is not None and val_loss > DIVERGED_LOSS)


def end_of_epoch(state: dict, epoch: int, selection_loss: float, patience: int) -> None:
    """Early stopping: remember the best epoch; stop after `patience` epochs without a better
    selection (validation) loss. A tie is no improvement; a NaN loss (`selection_value` of a
    run that `diverged`) never improves, and stops the run at once: no later epoch recovers."""
    if selection_loss < state["best_loss"]:
        state.update(best_loss=selection_loss, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    if not math.isfinite(selection_loss):
        state["stopped"] = "diverged"
    elif state["bad_epochs"] >= patience:
        state["stopped"] = "early_stop"


SELECTIONS = ("val_loss", *PASTES)  # validation loss, or a kind of pasted synthetic anomaly


def validation_pass(batches, reconstruct, paste, seed: int) -> tuple[float, int, float, int]:
    """(Σ loss·n, n, synthetic-anomaly AUC, volumes it was computed on) over the validation
    batches; `reconstruct(volumes uint8) -> (x, y)` in normalised units. With a `paste` (a value
    of `vadray.pasted.PASTES`), each volume is also scored with its pasted twins; else the AUC is NaN."""
    from vadray.pasted import twin_auc, volume_errors

    total, count, clean, pasted = 0.0, 0, [], []
    with torch.no_grad():
        for volumes in batches:
            x, y = reconstruct(volumes)
            total += torch.nn.functional.mse_loss(y, x).item() * len(volumes)
            count += len(volumes)
            if paste is not None:
                clean.append(volume_errors(x, y).cpu().numpy())
                for twin in paste(volumes, seed):
                    pasted.append(volume_errors(*reconstruct(twin)).cpu().numpy())
    auc = twin_auc(np.concatenate(clean), np.concatenate(pasted)) if clean else math.nan
    return total, count, auc, sum(len(c) for c in clean)


def selection_value(select: str, train_loss: float, val_loss: float | None, synthetic_auc: float | None) -> float:
    """The number early stopping and the final choice minimise: the validation loss, or minus
    the synthetic-anomaly AUC; the training loss when there is no validation set. An AUC on a
    small validation set ties often; the lower validation loss breaks a tie (by 1e-9 of it,
    far below any AUC step), so the epoch kept never depends on which of two equals came last.
    NaN when the run `diverged`."""
    if diverged(train_loss, val_loss):
        return math.nan
    if select in PASTES and synthetic_auc is not None and not math.isnan(synthetic_auc):
        tie_break = 1e-9 * val_loss if val_loss is not None and math.isfinite(val_loss) else 0.0
        return -synthetic_auc + tie_break
    if val_loss is not None and not math.isnan(val_loss):
        return val_loss
    return train_loss


def fresh_state() -> dict:
    """The loop state before the first epoch (what a checkpoint's state.json continues)."""
    return {"epoch": 0, "step": 0, "history": [], "best_loss": math.inf, "best_epoch": 0,
            "bad_epochs": 0, "stopped": None, "resumed_after_epochs": [],
            "torch_threads": torch.get_num_threads()}
