"""Cut a video's frames into segments that independent Ray tasks decode.

A segment owns frames [first, last) and decodes [first, decode_last): `overlap` extra frames
after its end so that a job which needs whole volumes at a seam (scoring: T-1 frames at
stride 1; training volumes at stride 3 need (T-1)*3 = 27) has them, while only the owned
frames are stored. Owned ranges tile the video exactly: nothing lost, nothing twice.
"""
from __future__ import annotations

from dataclasses import dataclass

# No 10-frame volume of stride up to 3 is lost at a seam: it spans (10-1)*3+1 = 28 frames.
MAX_VOLUME_OVERLAP = 27


@dataclass(frozen=True)
class Segment:
    index: int
    first: int
    last: int          # exclusive: owned frames are [first, last)
    decode_last: int   # exclusive: frames decoded, including the overlap after `last`


def plan_segments(num_frames: int, fps: float, segment_seconds: float,
                  overlap: int = MAX_VOLUME_OVERLAP, min_frames: int = 1) -> list[Segment]:
    """Owned ranges of about `segment_seconds` each, plus `overlap` decoded frames after each."""
    if segment_seconds <= 0:
        raise ValueError("segment_seconds must be positive")
    per_segment = max(int(round(segment_seconds * (fps or 25.0))), min_frames, 1)
    segments = []
    for index, first in enumerate(range(0, num_frames, per_segment)):
        last = min(first + per_segment, num_frames)
        segments.append(Segment(index, first, last, min(last + overlap, num_frames)))
    return segments
