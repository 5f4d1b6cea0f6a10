"""The paper's preprocessing, in one place so ingest, training and scoring cannot drift.

Frames arrive as uint8 grey (size×size). Normalisation (Chong & Tay): scale to [0,1],
subtract the training footage's mean image, divide by ONE global standard deviation of the
mean-subtracted training footage. Not a per-frame z-score: that divides away the energy an
anomaly adds (Ped2: AUC ≈ 0.86 with global statistics against ≈ 0.5 per frame).

Statistics are built from additive partial sums (`PartialSums`) so that Ray tasks can compute
them where the frames are and the driver only adds small arrays.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np


@dataclass
class PartialSums:
    """Additive sufficient statistics of uint8 frames scaled to [0,1]."""

    count: int
    sum_image: np.ndarray      # (S, S) float64, Σ x
    sumsq_image: np.ndarray    # (S, S) float64, Σ x²

    @classmethod
    def of(cls, frames: np.ndarray) -> "PartialSums":
        x = frames.astype(np.float64) / 255.0  # (N, S, S)
        return cls(int(x.shape[0]), x.sum(axis=0), np.square(x).sum(axis=0))

    def __add__(self, other: "PartialSums") -> "PartialSums":
        return PartialSums(self.count + other.count, self.sum_image + other.sum_image,
                           self.sumsq_image + other.sumsq_image)


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
        n = sums.count
        mean_image = sums.sum_image / n
        per_pixel_var = np.maximum(sums.sumsq_image / n - np.square(mean_image), 0.0)
        pixel_mean = float(mean_image.mean())
        pixel_var = float(sums.sumsq_image.sum() / (n * mean_image.size) - pixel_mean**2)
        return cls(
            size=int(mean_image.shape[0]),
            num_frames=n,
            mean_image=mean_image.astype(np.float32),
            std=float(np.sqrt(per_pixel_var.mean())),
            pixel_mean=pixel_mean,
            pixel_std=float(np.sqrt(max(pixel_var, 0.0))),
        )

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (..., S, S) → float32 (..., S, S), zero mean and unit global variance."""
        if frames.shape[-2:] != self.mean_image.shape:
            raise ValueError(f"frames are {frames.shape[-2:]} but the statistics are for "
                             f"{self.mean_image.shape}: ingest at --size {self.size}")
        x = frames.astype(np.float32) * np.float32(1.0 / 255.0)
        x -= self.mean_image
        x *= np.float32(1.0 / max(self.std, 1e-6))
        return x

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
        size = int(d["size"])
        mean = np.frombuffer(base64.b64decode(d["mean_image_f32_b64"]), dtype="<f4").reshape(size, size)
        return cls(size=size, num_frames=int(d["num_frames"]), mean_image=mean.astype(np.float32),
                   std=float(d["std"]), pixel_mean=float(d["pixel_mean"]), pixel_std=float(d["pixel_std"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "NormStats":
        return cls.from_dict(json.loads(text))
