"""Scoring math (Chong & Tay): per-frame errors, per-cell errors, assembly, regularity.

Pure numpy so that evaluation, tests and the Ray scoring job all call the same functions.

Shapes: V volumes of T frames of S×S pixels; C = grid² cells; F frames of one video.

Assembly over overlapping volumes must not depend on how a video was cut into segments:
a frame's error is the mean over the stride-1 volumes that contain it, and those volumes
may have been scored by different tasks. `FrameSums` therefore keeps one slot per
(frame, position of the frame inside the volume): every volume fills its own slots, parts
are merged by placing slots, and the mean adds the slots in a fixed order. Given the same
per-volume errors, segmented and unsegmented scoring give bit-identical results, not merely
close ones. (The model itself may round a volume's reconstruction differently in the last bits,
~1e-8, when it is batched with other volumes, as moved segment boundaries do on CPU.)

Per segment:  sums = volume_sums(starts, x, recon)   (e, cells and m of each model batch)
              done, seam = sums.split(all_starts_of_the_video)
Per video:    means = FrameMeans.concat(dones + [FrameSums.merge(seams).mean()])
              score_columns(means, card["validation"])   (regularity, anomaly_score, motion, combined)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

GRID_DEFAULT = 8

# The `frames` table (docs/ARCHITECTURE.md, "OUTPUT of score"); errors in normalised units.
FRAMES_SCHEMA = pa.schema([
    ("camera", pa.string()),
    ("date", pa.string()),             # YYYY-MM-DD or "unknown"
    ("video_id", pa.string()),
    ("source_uri", pa.string()),
    ("frame_index", pa.int64()),       # source frame index, 0-based
    ("time_s", pa.float64()),          # presentation time, seconds from stream start
    ("recon_error", pa.float32()),     # e(t), mean over the volumes containing the frame
    ("regularity", pa.float32()),      # s_r(t) = 1 - (e - min e) / max e, per video
    ("anomaly_score", pa.float32()),   # (e - mean_val) / std_val, comparable across videos
    ("cell_error_max", pa.float32()),  # max over grid cells of the cell L2 norm (normalised units),
                                       # each cell averaged over the frame's volumes
    ("motion_error", pa.float32()),    # m(t) = ‖r_t − r_{t−1}‖, r = x − x̂: the residual's change
    ("motion_regularity", pa.float32()),  # 1 - (m - min m) / max m, per video, as regularity
    ("combined_regularity", pa.float32()),  # min(regularity, motion_regularity) per frame
    ("brightness_gain", pa.float32()),  # median(frame) / median(training mean image): 1 = lit as in training
    ("model_id", pa.string()),
    ("run_id", pa.string()),
])


def _as_frames(a: np.ndarray) -> np.ndarray:
    """(V, T, S, S), (V, T, 1, S, S) or (V, T, S, S, 1) → (V, T, S, S)."""
    a = np.asarray(a)
    if a.ndim == 5:
        if a.shape[2] == 1:
            return a[:, :, 0]
        if a.shape[4] == 1:
            return a[..., 0]
    if a.ndim != 4:
        raise ValueError(f"expected volumes (V, T, S, S) with an optional channel of 1, got {a.shape}")
    return a


def _residual(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """x − recon as float32 (V, T, S, S), after checking that the shapes agree."""
    x, recon = _as_frames(x), _as_frames(recon)
    if x.shape != recon.shape:
        raise ValueError(f"input {x.shape} and reconstruction {recon.shape} differ in shape")
    return x.astype(np.float32, copy=False) - recon.astype(np.float32, copy=False)


def _squared_diff(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    diff = _residual(x, recon)
    return np.square(diff, out=diff)  # (V, T, S, S)


def frame_errors(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """e = ‖x − recon‖₂ over the pixels of each frame of each volume → (V, T) float64."""
    return _frame_norms(_squared_diff(x, recon))


def _frame_norms(sq: np.ndarray) -> np.ndarray:
    return np.sqrt(sq.sum(axis=(-2, -1), dtype=np.float64))


def motion_errors(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """m = ‖r_t − r_{t−1}‖₂ over the pixels, r = x − recon, per frame of each volume → (V, T).

    The residual's change between consecutive frames: what the model gets steadily wrong (a
    walker's blurred outline, the pavement's texture) cancels, a residual that moves (an
    object faster than the model can follow) does not. The first frame of a volume takes the
    value of the second (it has no predecessor inside the volume). Ped2 at 227 px: frame AUC
    0.849 per-video normalised against the paper's regularity's 0.791 with the same model, but
    0.784 against 0.837 at 59 px (docs/PERFORMANCE.md).
    """
    return _motion_norms(_residual(x, recon))


def _motion_norms(residual: np.ndarray) -> np.ndarray:
    if residual.shape[1] < 2:
        raise ValueError("motion needs volumes of at least 2 frames")
    change = np.diff(residual, axis=1)                                       # (V, T-1, S, S)
    m = np.sqrt(np.square(change, out=change).sum(axis=(-2, -1), dtype=np.float64))
    return np.concatenate([m[:, :1], m], axis=1)


def cell_bounds(size: int, grid: int = GRID_DEFAULT) -> np.ndarray:
    """Start offsets (grid,) of the cells along one side, as `np.array_split` cuts them."""
    if not 1 <= grid <= size:
        raise ValueError(f"grid {grid} must be between 1 and the frame size {size}")
    sizes = np.full(grid, size // grid, dtype=np.int64)
    sizes[: size % grid] += 1          # array_split puts the remainder in the first cells
    return np.concatenate([[0], np.cumsum(sizes)[:-1]])


def cell_errors(x: np.ndarray, recon: np.ndarray, grid: int = GRID_DEFAULT) -> np.ndarray:
    """Per-cell L2 error: squared error map cut into grid×grid cells → (V, T, grid*grid).

    Cells are numbered row-major (cell row, cell column). A small anomaly that the
    whole-frame norm averages away still dominates its own cell.
    """
    return _cell_norms(_squared_diff(x, recon), grid)


def _cell_norms(sq: np.ndarray, grid: int) -> np.ndarray:
    rows = cell_bounds(sq.shape[-2], grid)                    # sq: (V, T, S, S)
    cols = cell_bounds(sq.shape[-1], grid)
    per_row = np.add.reduceat(sq, rows, axis=-2, dtype=np.float64)  # (V, T, grid, S)
    per_cell = np.add.reduceat(per_row, cols, axis=-1)        # (V, T, grid, grid)
    return np.sqrt(per_cell).reshape(*sq.shape[:2], grid * grid)


@dataclass
class FrameMeans:
    """Per-frame scores of one video (or of the frames a set of volumes covers)."""

    frame_index: np.ndarray      # (F,) int64, sorted source frame indices
    recon_error: np.ndarray      # (F,) float64, mean over the volumes containing the frame
    count: np.ndarray            # (F,) int64, how many volumes contained the frame
    cell_error: np.ndarray | None = None      # (F, C) float64, per-cell means
    cell_error_max: np.ndarray | None = None  # (F,) float64, max over cells of cell_error
    motion_error: np.ndarray | None = None    # (F,) float64, mean over volumes of `motion_errors`

    @classmethod
    def concat(cls, parts: list["FrameMeans"]) -> "FrameMeans":
        """Join disjoint sets of frames, sorted by frame index. The (F, C) per-cell means are
        dropped (a whole video's worth is large): only their max per frame goes on."""
        frames = np.concatenate([p.frame_index for p in parts])
        order = np.argsort(frames, kind="stable")
        if np.any(np.diff(frames[order]) == 0):
            raise ValueError("a frame appears in two parts")
        pick = lambda name: (None if any(getattr(p, name) is None for p in parts)  # noqa: E731
                             else np.concatenate([getattr(p, name) for p in parts])[order])
        return cls(frames[order], pick("recon_error"), pick("count"),
                   None, pick("cell_error_max"), pick("motion_error"))


@dataclass
class FrameSums:
    """Additive per-frame partial results; merge the parts of a video, then take `mean`.

    Slot k of frame f holds the error of f inside the (stride-1) volume that starts at f − k,
    so every (frame, slot) is written by exactly one volume and merging never adds floats.
    """

    frame_index: np.ndarray             # (F,) int64, sorted, unique
    err_slots: np.ndarray               # (F, T) float64, 0 where empty
    filled: np.ndarray                  # (F, T) bool
    cell_slots: np.ndarray | None = None  # (F, T, C) float64, 0 where empty
    motion_slots: np.ndarray | None = None  # (F, T) float64, 0 where empty

    @property
    def count(self) -> np.ndarray:
        return self.filled.sum(axis=1)  # (F,)

    @classmethod
    def empty(cls, T: int, cells: int | None = None, motion: bool = False) -> "FrameSums":
        return cls(np.zeros(0, np.int64), np.zeros((0, T)), np.zeros((0, T), bool),
                   None if cells is None else np.zeros((0, T, cells)), np.zeros((0, T)) if motion else None)

    @classmethod
    def merge(cls, parts: list["FrameSums"]) -> "FrameSums":
        """Combine parts scored by different tasks; a volume present in two parts is an error."""
        if not parts:
            raise ValueError("nothing to merge")
        T = parts[0].err_slots.shape[1]
        with_cells = [p.cell_slots is not None for p in parts]
        with_motion = [p.motion_slots is not None for p in parts]
        if any(p.err_slots.shape[1] != T for p in parts) or len(set(with_cells)) > 1 or len(set(with_motion)) > 1:
            raise ValueError("parts differ in T or in whether they carry cell or motion errors")
        frames = np.unique(np.concatenate([p.frame_index for p in parts]))
        err = np.zeros((frames.size, T))
        filled = np.zeros((frames.size, T), bool)
        cells = motion = None
        if with_cells[0]:
            cells = np.zeros((frames.size, T, parts[0].cell_slots.shape[2]))
        if with_motion[0]:
            motion = np.zeros((frames.size, T))
        for part in parts:
            rows = np.searchsorted(frames, part.frame_index)
            if np.any(filled[rows] & part.filled):
                raise ValueError("a volume appears in two parts: segments must not score the "
                                 "same volume twice")
            err[rows] = np.where(part.filled, part.err_slots, err[rows])
            if cells is not None:
                cells[rows] = np.where(part.filled[:, :, None], part.cell_slots, cells[rows])
            if motion is not None:
                motion[rows] = np.where(part.filled, part.motion_slots, motion[rows])
            filled[rows] |= part.filled
        return cls(frames, err, filled, cells, motion)

    def split(self, all_starts: np.ndarray, hold_before: int = 0) -> tuple[FrameMeans, "FrameSums"]:
        """(means of the frames whose volumes are all here, partial sums of the other frames).

        all_starts (V_all,) are the start frames of every volume of the whole video; frames
        before `hold_before` are never final here. A segment task finalises its inner frames
        itself and hands on only the T−1 frames at each seam, so a video's assembly holds seam
        slots, never (F, T, C) for the whole video. The means are bit-identical to unsegmented
        ones: `mean` adds slots in a fixed order.
        """
        all_starts = np.sort(np.asarray(all_starts, np.int64))
        T = self.err_slots.shape[1]
        expected = (np.searchsorted(all_starts, self.frame_index, side="right")
                    - np.searchsorted(all_starts, self.frame_index - T + 1, side="left"))  # stride 1
        done = (self.count == expected) & (self.frame_index >= hold_before)
        return self._rows(done).mean(), self._rows(~done)

    def _rows(self, keep: np.ndarray) -> "FrameSums":
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return FrameSums(self.frame_index[keep], self.err_slots[keep], self.filled[keep],
                         pick(self.cell_slots), pick(self.motion_slots))

    def mean(self) -> FrameMeans:
        """Per-frame mean over the volumes that contain each frame (frames with ≥ 1 volume)."""
        count = self.count
        keep = count > 0
        T = self.err_slots.shape[1]
        err_total = np.zeros(int(keep.sum()))
        cell_total = None if self.cell_slots is None else np.zeros((err_total.size, self.cell_slots.shape[2]))
        motion_total = None if self.motion_slots is None else np.zeros(err_total.size)
        for k in range(T):  # fixed order of addition: the result cannot depend on segmentation
            err_total += self.err_slots[keep, k]
            if cell_total is not None:
                cell_total += self.cell_slots[keep, k]
            if motion_total is not None:
                motion_total += self.motion_slots[keep, k]
        n = count[keep]
        out = FrameMeans(self.frame_index[keep], err_total / n, n)
        if motion_total is not None:
            out.motion_error = motion_total / n
        if cell_total is not None:
            out.cell_error = cell_total / n[:, None]
            out.cell_error_max = out.cell_error.max(axis=1)
        return out


def accumulate(starts: np.ndarray, T: int, errs: np.ndarray, cells: np.ndarray | None = None,
               motion: np.ndarray | None = None) -> FrameSums:
    """Spread per-volume errors onto frames.

    starts (V,) source frame index of each volume's first frame; errs (V, T) from
    `frame_errors`; cells (V, T, C) from `cell_errors` or None; motion (V, T) from
    `motion_errors` or None. Volumes are stride 1, as `FrameSums` and its seam rule assume.
    """
    starts = np.asarray(starts, dtype=np.int64)
    errs = np.asarray(errs, dtype=np.float64)
    V = starts.size
    if errs.shape != (V, T):
        raise ValueError(f"errs must be (V, T) = ({V}, {T}), got {errs.shape}")
    if cells is not None:
        cells = np.asarray(cells, dtype=np.float64)
        if cells.ndim != 3 or cells.shape[:2] != (V, T):
            raise ValueError(f"cells must be (V, T, C) with (V, T) = ({V}, {T}), got {cells.shape}")
    if motion is not None:
        motion = np.asarray(motion, dtype=np.float64)
        if motion.shape != (V, T):
            raise ValueError(f"motion must be (V, T) = ({V}, {T}), got {motion.shape}")
    if V == 0:
        return FrameSums.empty(T, None if cells is None else cells.shape[2], motion is not None)
    if np.unique(starts).size != V:
        raise ValueError("duplicate volume starts")
    slot = np.arange(T)
    frame_of = starts[:, None] + slot[None, :]                   # (V, T)
    frames, inverse = np.unique(frame_of, return_inverse=True)
    inverse = inverse.reshape(V, T)
    slot_of = np.broadcast_to(slot, (V, T))
    err = np.zeros((frames.size, T))
    filled = np.zeros((frames.size, T), bool)
    err[inverse, slot_of] = errs        # distinct starts ⇒ each (frame, slot) written once
    filled[inverse, slot_of] = True
    cell_slots = None
    if cells is not None:
        cell_slots = np.zeros((frames.size, T, cells.shape[2]))
        cell_slots[inverse, slot_of] = cells
    motion_slots = None
    if motion is not None:
        motion_slots = np.zeros((frames.size, T))
        motion_slots[inverse, slot_of] = motion
    return FrameSums(frames, err, filled, cell_slots, motion_slots)


def volume_sums(starts: np.ndarray, x: np.ndarray, recon: np.ndarray, grid: int = GRID_DEFAULT,
                motion: bool = True) -> FrameSums:
    """One model batch of stride-1 volumes → `FrameSums` of e, the cell grid and m.

    What the score job, the validation calibration and ped2-direct do per batch, with the
    residual and its square computed once for all three scores; the values are those of
    `frame_errors`, `cell_errors` and `motion_errors`, bit for bit.
    """
    residual = _residual(x, recon)                            # (V, T, S, S)
    squared = np.square(residual)
    return accumulate(starts, residual.shape[1], _frame_norms(squared), _cell_norms(squared, grid),
                      _motion_norms(residual) if motion else None)


def regularity(e: np.ndarray) -> np.ndarray:
    """The paper's regularity of one video: s_r = 1 − (e − min e) / max e.

    Divides by max e, as Chong & Tay write it (most public code uses max − min), so s_r
    lies in [min e / max e, 1]. A constant series gives all ones; when max e = 0 (every error
    zero, a perfect reconstruction) s_a is taken as 0 and s_r = 1 rather than NaN. A NaN or
    infinite error gives NaN (evaluate counts it as a missing score); it neither turns the video
    into ones nor sets its max.
    """
    e = np.asarray(e, dtype=np.float64)
    finite = np.isfinite(e)
    if not finite.any():
        return np.full_like(e, np.nan)
    lowest, highest = e[finite].min(), e[finite].max()
    s_r = 1.0 - (e - lowest) / highest if highest > 0 else np.ones_like(e)
    return np.where(finite, s_r, np.nan)


def combined_regularity(s_r: np.ndarray, s_m: np.ndarray) -> np.ndarray:
    """min(s_r, s_m) per frame: one score that misses neither kind of anomaly.

    `regularity` alone misses a sudden motion of normal objects, `motion_regularity` alone a
    still one. Chosen among three fusions on changes staged in normal footage (no test label):
    mean pooled AUC 0.915 against 0.871 for the mean of the two (docs/PERFORMANCE.md, session 8).
    """
    return np.minimum(s_r, s_m)


# `vadray score --hop`'s default, and the hop at which the model card's validation distribution
# (anomaly_score's scale) is measured: a frame's error averages fewer volumes at a larger hop and
# carries the volume-position ripple of that hop, so the two must agree.
SCORE_HOP = 5


def score_columns(means: FrameMeans, validation: dict | None) -> dict[str, np.ndarray]:
    """The `frames` table's error and score columns of one whole video, float64.

    `validation` is the card's "validation" dict for `anomaly_score`; without one (ped2-direct's
    per-epoch diagnostics run before calibration) that column is left out.
    """
    columns = {"recon_error": means.recon_error, "regularity": regularity(means.recon_error)}
    if validation is not None:
        columns["anomaly_score"] = calibrate(means.recon_error, validation)
    if means.cell_error_max is not None:
        columns["cell_error_max"] = means.cell_error_max
    if means.motion_error is not None:
        columns["motion_error"] = means.motion_error
        columns["motion_regularity"] = regularity(means.motion_error)
        columns["combined_regularity"] = combined_regularity(columns["regularity"], columns["motion_regularity"])
    return columns


def calibrate(e: np.ndarray, validation: dict, key: str = "frame_error") -> np.ndarray:
    """Anomaly score (e − μ) / σ with the checkpoint card's validation distribution.

    `validation` is the card's "validation" dict; `key` picks which distribution
    ("frame_error" for recon_error). One threshold then means the same for every video,
    unlike the per-video min-max of `regularity`. A missing or degenerate distribution
    (σ ≤ 0 or not finite) is a bad checkpoint and raises ValueError.
    """
    try:
        stats = validation[key]
        mean, std = float(stats["mean"]), float(stats["std"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"the checkpoint card has no usable validation[{key!r}] mean/std") from None
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ValueError(f"validation[{key!r}] has mean {mean} and std {std}: cannot calibrate")
    return (np.asarray(e, dtype=np.float64) - mean) / std
