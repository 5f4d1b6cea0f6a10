"""Frames → fixed-length volumes (T frames, temporal stride), for training and scoring.

A volume is identified by the index of its first frame; it covers frames
start, start+stride, …, start+(T-1)*stride. Training uses strides 1, 2, 3 as temporal
augmentation; scoring uses stride 1 and a hop that still gives every frame a score.
"""
from __future__ import annotations

import numpy as np

from vadray.exits import UsageError

T_DEFAULT = 10


def span(T: int, stride: int) -> int:
    """Number of consecutive frames one volume covers."""
    return (T - 1) * stride + 1


def volume_starts(num_frames: int, T: int = T_DEFAULT, stride: int = 1, hop: int = 1,
                  cover_end: bool = True) -> np.ndarray:
    """Start offsets of volumes inside `num_frames` consecutive frames.

    With `cover_end`, a last volume ending exactly at the final frame is added when the hop
    would otherwise skip it, so that every frame lies in at least one volume (stride 1).
    """
    if T < 1 or stride < 1 or hop < 1:
        raise ValueError("T, stride and hop must be positive")
    last = num_frames - span(T, stride)
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.arange(0, last + 1, hop, dtype=np.int64)
    if cover_end and starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def frame_offsets(starts: np.ndarray, T: int = T_DEFAULT, stride: int = 1) -> np.ndarray:
    """(V, T) offsets of the frames each volume covers."""
    return starts[:, None] + stride * np.arange(T, dtype=np.int64)[None, :]


def gather(frames: np.ndarray, starts: np.ndarray, T: int = T_DEFAULT, stride: int = 1) -> np.ndarray:
    """frames (N, S, S) → volumes (V, T, S, S); a view-free gather, dtype kept."""
    return frames[frame_offsets(starts, T, stride)]


def stream_volumes(chunks, T: int = T_DEFAULT, strides=(1, 2, 3), hop: int = 1):
    """Volumes of ONE video from its chunks in frame order, across the seams between chunks.

    `chunks` yields (start_frame, frames (n, S, S)) in frame order without overlap (a
    ValueError says where they overlap). A gap (frames the decoder lost at ingest) ends one
    contiguous run and starts the next: no volume spans it. Yields (stride, starts (V,),
    volumes (V, T, S, S)) with absolute start frames: for each stride and each run, exactly
    the volumes of `volume_starts(len(run), T, stride, hop, cover_end=False)`, shifted by the
    run's first frame. Memory: one chunk plus the last (T-1)*max(strides) + hop frames before it.
    """
    buffer, buffer_start, next_start = None, None, {}
    for chunk_start, frames in chunks:
        chunk_start = int(chunk_start)
        expected = None if buffer is None else buffer_start + len(buffer)
        if expected is not None and chunk_start < expected:
            raise ValueError(f"chunks are not contiguous: frame {chunk_start} follows frame "
                             f"{expected - 1} (overlap)")
        if expected is None or chunk_start > expected:   # first chunk, or after a gap
            buffer, buffer_start = frames[:0], chunk_start
            next_start = {s: buffer_start for s in strides}
        buffer = np.concatenate([buffer, frames]) if len(buffer) else frames
        end = buffer_start + len(buffer)
        for s in strides:
            last = end - span(T, s)
            if next_start[s] > last:
                continue
            starts = np.arange(next_start[s], last + 1, hop, dtype=np.int64)
            yield s, starts, gather(buffer, starts - buffer_start, T, s)
            next_start[s] = int(starts[-1]) + hop
        drop = min(min(next_start.values()) - buffer_start, len(buffer))
        buffer, buffer_start = buffer[drop:], buffer_start + drop


def parse_strides(text: str) -> list[int]:
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--strides must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"--strides must be positive integers, got {text!r}")
    return sorted(set(values))   # "1,1" is stride 1 once: each volume is trained on once per epoch
