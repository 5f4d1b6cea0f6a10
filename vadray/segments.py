"""Cut a video's frames into segments that independent Ray tasks decode.

A segment owns frames [first, last) and decodes [first, decode_last): `overlap` extra frames
after its end, which only the owned frames' volumes use; only owned frames are stored. Owned
ranges tile the video exactly: nothing lost, nothing twice. Score decodes T frames past the
end (`score_stages.score_segment_plan`); ingest none, because training joins a video's chunks
and makes its volumes across the seams itself (`volumes.stream_volumes`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    index: int
    first: int
    last: int          # exclusive: owned frames are [first, last)
    decode_last: int   # exclusive: frames decoded, including the overlap after `last`


def plan_segments(num_frames: int, fps: float, segment_seconds: float,
                  overlap: int, multiple_of: int = 1) -> list[Segment]:
    """Owned ranges of about `segment_seconds` each, plus `overlap` decoded frames after each.
    Each range but the last is a multiple of `multiple_of` long (score: the hop, so that every
    segment starts on the hop grid of volume starts)."""
    if segment_seconds <= 0:
        raise ValueError("segment_seconds must be positive")
    per_segment = max(int(round(segment_seconds * (fps or 25.0))), 1)
    per_segment = -(-per_segment // multiple_of) * multiple_of
    segments = []
    for index, first in enumerate(range(0, num_frames, per_segment)):
        last = min(first + per_segment, num_frames)
        segments.append(Segment(index, first, last, min(last + overlap, num_frames)))
    return segments


def pack_units(pixels: list[int], frames: list[int], pixel_budget: int, frame_budget: int) -> list[list[int]]:
    """Group consecutive segments into work units of at most `pixel_budget` source pixels
    (decode time) and `frame_budget` frames (a task's memory); a segment over either budget
    is a unit of its own.

    Why: a Ray task costs ~0.1 s of scheduling turnaround however small its work, and a short
    clip (UCSD's are 120-200 frames) decodes in less than that; packing short segments into
    one task keeps the cores decoding instead of waiting (see docs/PERFORMANCE.md).
    """
    if pixel_budget <= 0 or frame_budget <= 0:
        raise ValueError("budgets must be positive")
    units: list[list[int]] = []
    unit_pixels = unit_frames = 0
    for i, (p, f) in enumerate(zip(pixels, frames, strict=True)):
        if units and unit_pixels + p <= pixel_budget and unit_frames + f <= frame_budget:
            units[-1].append(i)
            unit_pixels, unit_frames = unit_pixels + p, unit_frames + f
        else:
            units.append([i])
            unit_pixels, unit_frames = p, f
    return units
