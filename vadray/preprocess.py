"""The paper's preprocessing: the normalisation statistics and the numpy definition of the
normalisation. Training, scoring and calibration run its torch twin on their device
(`steps.normalize`); a test holds the two equal.

Frames arrive as uint8 grey (size×size). Normalisation (Chong & Tay): scale to [0,1],
subtract the training footage's mean image, divide by ONE global standard deviation of the
mean-subtracted training footage. Not a per-frame z-score: that divides away the energy an
anomaly adds (Ped2: AUC ≈ 0.86 with global statistics against ≈ 0.5 per frame).

Statistics are built from additive partial sums (`PartialSums`) so that Ray tasks can compute
them where the frames are and the driver only adds small arrays.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np


_SUM_BLOCK = 256      # frames per uint16 sum: 256 × 255 < 2¹⁶
_SQUARE_BLOCK = 16    # frames of uint16 squares at a time (1.6 MB at 227 px)
MIN_MEDIAN_LEVEL = 16  # grey levels: a darker median gives no gain (NaN); one level is > 6 % of it
GAIN_LIMIT = 4.0      # --gain-correction divides by a gain held to [1/4, 4]


@dataclass
class PartialSums:
    """Additive sufficient statistics of uint8 frames, as exact integers.

    Integers make the statistics independent of how frames were split between tasks (float
    sums differ in the last bits with the order of addition) and cheap to compute where the
    frames are: a per-pixel sum and a sum of squares.
    """

    count: int
    sum_image: np.ndarray  # (S, S) int64, Σ of pixel values (0..255)
    sumsq: int             # Σ over all pixels and frames of value²

    @classmethod
    def of(cls, frames: np.ndarray) -> "PartialSums":
        frames = np.asarray(frames, dtype=np.uint8)  # (N, S, S)
        shape = frames.shape[1:]
        sum_image, sumsq_image = np.zeros(shape, np.int64), np.zeros(shape, np.uint64)
        # uint16 is exact for a sum of 256 values or one square (255² < 2¹⁶) and twice as fast
        # to add as uint32: 0.025 instead of 0.04 ms per frame, of ~0.6 ms per frame in an ingest
        # task. The scratch arrays are made once: MB-sized temporaries per block would each be
        # fresh pages from the kernel (measured: 1.8 more page faults per frame).
        block_sum, partial = np.empty(shape, np.uint16), np.empty(shape, np.uint32)
        squares = np.empty((min(_SQUARE_BLOCK, len(frames)),) + shape, np.uint16)
        for i in range(0, frames.shape[0], _SUM_BLOCK):
            block = frames[i:i + _SUM_BLOCK]
            sum_image += np.sum(block, axis=0, dtype=np.uint16, out=block_sum)
            for j in range(0, block.shape[0], _SQUARE_BLOCK):
                few = block[j:j + _SQUARE_BLOCK]
                sq = np.square(few, out=squares[:len(few)], dtype=np.uint16)
                sumsq_image += np.sum(sq, axis=0, dtype=np.uint32, out=partial)
        return cls(int(frames.shape[0]), sum_image, int(sumsq_image.sum(dtype=np.uint64)))

    def __add__(self, other: "PartialSums") -> "PartialSums":
        return PartialSums(self.count + other.count, self.sum_image + other.sum_image,
                           self.sumsq + other.sumsq)


@dataclass
class NormStats:
    """Normalisation statistics of a training footage (the checkpoint carries them)."""

    size: int
    num_frames: int
    mean_image: np.ndarray  # (S, S) float32, per-pixel mean of x in [0,1]
    std: float              # global std of (x - mean_image) over all pixels and frames
    pixel_mean: float       # global mean of x
    pixel_std: float        # global std of x

    @classmethod
    def from_sums(cls, sums: PartialSums) -> "NormStats":
        if sums.count == 0:
            raise ValueError("no frames to compute normalisation statistics from")
        n, pixels = sums.count, sums.sum_image.size
        mean_image = sums.sum_image / (255.0 * n)           # per-pixel mean of x = value/255
        mean_sq = sums.sumsq / (255.0**2 * n * pixels)      # E[x²] over all pixels and frames
        pixel_mean = float(mean_image.mean())
        # The mean over pixels of the per-pixel variance = the variance of x - mean_image.
        residual_var = mean_sq - float(np.square(mean_image).mean())
        return cls(
            size=int(mean_image.shape[0]),
            num_frames=n,
            mean_image=mean_image.astype(np.float32),
            std=float(np.sqrt(max(residual_var, 0.0))),
            pixel_mean=pixel_mean,
            pixel_std=float(np.sqrt(max(mean_sq - pixel_mean**2, 0.0))),
        )

    def check_size(self, frames: np.ndarray) -> None:
        """Raise ValueError unless frames (..., S, S) are the statistics' size."""
        if frames.shape[-2:] != self.mean_image.shape:
            raise ValueError(f"frames are {frames.shape[-2:]} but the statistics are for "
                             f"{self.mean_image.shape}: ingest at --size {self.size}")

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (..., S, S) → float32 (..., S, S), zero mean and unit global variance."""
        self.check_size(frames)
        x = frames.astype(np.float32) * np.float32(1.0 / 255.0)
        x -= self.mean_image
        x *= np.float32(1.0 / max(self.std, 1e-6))
        return x

    def gain_corrected(self, frames: np.ndarray, gains: np.ndarray | None = None) -> np.ndarray:
        """uint8 (N, S, S) → uint8 frames divided by their gain against the training footage.

        g = `gains(frames)` (pass them when already computed). A light that brightens the whole
        scene by ×1.3 makes every later frame read as an anomaly in every score
        (docs/PERFORMANCE.md: AUC 1.0 for brightened against unchanged normal frames); the
        median ignores a foreground covering less than half of the frame, so an intruder barely
        moves g. Opt-in (`vadray score --gain-correction`): it changes the model's input, so
        `regularity` is then not the paper's score on the paper's input.

        A frame without a gain (NaN: too dark to measure one) is left as it is, and a gain is
        held to [1/4, 4]: a dim frame divided by 1/180 turned grey level 1 of noise into 182.
        """
        gains = self.gains(frames) if gains is None else np.asarray(gains, np.float64)
        divisor = np.where(np.isfinite(gains), np.clip(gains, 1 / GAIN_LIMIT, GAIN_LIMIT), 1.0)
        corrected = frames / divisor[:, None, None]
        return np.clip(np.rint(corrected), 0, 255).astype(np.uint8)

    def gains(self, frames: np.ndarray) -> np.ndarray:
        """(N,) float64 brightness gain of uint8 frames (N, S, S) against the training footage:
        median(frame) / median(255 · mean image); 1 when lit as in training. NaN where either
        median is below MIN_MEDIAN_LEVEL grey levels (a night frame, footage mostly black): a
        median of 0 or 1 says nothing about a gain (it gave 0, or a 180-fold one).

        The median comes from each frame's 256-bin histogram (the mean of its two middle values,
        one value when the pixel count is odd): the same number as np.median at half its cost,
        0.2 against 0.4 ms a 227² frame, which matters beside a GPU that reconstructs a frame in
        0.1 ms.
        """
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 3:
            raise ValueError(f"gains take uint8 frames (N, S, S), got {frames.dtype} {frames.shape}")
        reference = float(np.median(self.mean_image)) * 255.0
        pixels = frames.shape[1] * frames.shape[2]
        ranks = [(pixels - 1) // 2 + 1, pixels // 2 + 1]          # 1-based ranks of the middle values
        medians = [np.searchsorted(np.cumsum(np.bincount(f.ravel(), minlength=256)), ranks).mean()
                   for f in frames]
        medians = np.asarray(medians, np.float64).reshape(len(frames))
        if reference < MIN_MEDIAN_LEVEL:
            return np.full(len(frames), np.nan)
        return np.where(medians >= MIN_MEDIAN_LEVEL, medians / reference, np.nan)

    def to_dict(self) -> dict:
        """JSON-safe; the mean image as base64 float32 so cards never need pickle."""
        return {
            "size": self.size,
            "num_frames": self.num_frames,
            "std": self.std,
            "pixel_mean": self.pixel_mean,
            "pixel_std": self.pixel_std,
            "mean_image_f32_b64": base64.b64encode(self.mean_image.astype("<f4").tobytes()).decode(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        """Raises ValueError (KeyError, TypeError) for statistics no model could use: every
        input is divided by `std`, so a NaN there makes every loss and score NaN. (A zero std,
        footage that never changes, is floored where it divides: `steps.normalize`.)"""
        size = int(d["size"])
        mean = np.frombuffer(base64.b64decode(d["mean_image_f32_b64"]), dtype="<f4").reshape(size, size)
        stats = cls(size=size, num_frames=int(d["num_frames"]), mean_image=mean.astype(np.float32),
                    std=float(d["std"]), pixel_mean=float(d["pixel_mean"]), pixel_std=float(d["pixel_std"]))
        if not (np.isfinite(stats.std) and stats.std >= 0 and np.isfinite(stats.mean_image).all()):
            raise ValueError(f"normalisation statistics with std {stats.std} or a non-finite mean image")
        return stats

