"""Events: dips of the regularity series, found with Persistence1D and grouped in time.

Persistence1D is the 0-dimensional persistent homology of the sublevel sets of a 1-D
series: sweep a level upwards; a local minimum starts a component (an interval of samples
below the level); where two components meet, at a local maximum, the one with the higher
minimum dies (the elder rule), and its persistence is (value of that maximum − value of its
minimum). Ties are broken by index (earlier = lower), so a plateau yields one minimum, at its
first sample. The global minimum never dies; we pair it with the global maximum (the last of
tied maxima) and give it the series' range as persistence, a finite number a table can store.
A constant series thus has one minimum of persistence 0, a monotone series one minimum at
its low end.

An event (Chong & Tay: minima grouped within a 50-frame window) is built as follows:
0. each run of consecutive scored frames is its own series (frames on the two sides of a decode
   gap are not neighbours): its lowest minimum gets the run's range, so a dip whose bottom did
   not decode is two events, one on each side of the gap;
1. keep the minima with persistence ≥ `persistence_threshold`;
2. chain minima whose frames are ≤ `window` apart into one group;
3. each minimum of depth p at value m spans the contiguous frames around it where the
   regularity stays below m + p/2 ("full width at half depth": the dip without its
   shoulders, independent of how far away the next peak is); a group spans from its first
   member's start to its last member's end, and groups whose spans overlap or touch are merged;
4. the peak is the lowest frame of the span.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# The `events` table (docs/ARCHITECTURE.md); the score job adds camera/date/video_id/model_id.
EVENTS_SCHEMA = pa.schema([
    ("camera", pa.string()),
    ("date", pa.string()),
    ("video_id", pa.string()),
    ("event_id", pa.int32()),           # 0, 1, … in time order within the video
    ("start_frame", pa.int64()),
    ("end_frame", pa.int64()),          # inclusive
    ("peak_frame", pa.int64()),         # the frame of lowest regularity
    ("start_time_s", pa.float64()),
    ("end_time_s", pa.float64()),
    ("peak_time_s", pa.float64()),
    ("min_regularity", pa.float32()),   # the dipping column's value at the peak (`score` names it; s_r by default)
    ("max_anomaly_score", pa.float32()),  # max calibrated score inside the event (NaN if none)
    ("persistence", pa.float32()),      # largest persistence among the event's minima
    ("score", pa.string()),             # the frames column whose dips these are (score --events-from)
    ("model_id", pa.string()),
])

PERSISTENCE_DEFAULT = 0.1
WINDOW_DEFAULT = 50
# Per-video regularity-like columns (in [0, 1], low = irregular) that events can follow.
EVENT_SCORES = ("regularity", "combined_regularity", "motion_regularity")


@dataclass(frozen=True)
class EventSettings:
    """How a scoring run turns dips into events; part of its run_id.

    `score` defaults to the paper's regularity; `combined_regularity` also raises events for a
    sudden motion that regularity does not see (docs/PERFORMANCE.md, session 8).
    """

    score: str = "regularity"
    persistence: float = PERSISTENCE_DEFAULT
    window: int = WINDOW_DEFAULT
    min_seconds: float = 0.0   # the design: an event should last 2-3 s to be meaningful; 0 keeps all

    def __post_init__(self) -> None:
        if self.score not in EVENT_SCORES:
            raise ValueError(f"events can follow {', '.join(EVENT_SCORES)}, not {self.score!r}")
        if not (self.persistence >= 0 and self.window >= 0 and self.min_seconds >= 0):
            raise ValueError("event persistence, window and minimum seconds must not be negative")

    def key(self) -> str:
        """The settings as run_id text; unchanged from before `score` and `min_seconds` existed
        for their defaults."""
        text = f"p={self.persistence}|w={self.window}"
        text = text if self.score == "regularity" else f"{text}|ev={self.score}"
        return text if not self.min_seconds else f"{text}|min_s={self.min_seconds}"


@dataclass
class PersistencePairs:
    """Local minima of a series with their persistence, sorted by position."""

    min_index: np.ndarray    # (K,) int64, position of each local minimum
    max_index: np.ndarray    # (K,) int64, the maximum where it dies (global max for the global min)
    persistence: np.ndarray  # (K,) float64, value(max) − value(min)


def persistence_pairs(values: np.ndarray) -> PersistencePairs:
    """Persistence1D of a 1-D series in O(N log N): minima paired with maxima.

    Components of the sublevel set are intervals, so a union-find reduces to storing, at both
    ends of each interval, the other end and the position of its minimum.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("the series contains NaN")
    n = v.size
    if n == 0:
        return PersistencePairs(*(np.zeros(0, np.int64),) * 2, np.zeros(0))
    order = np.argsort(v, kind="stable")        # ties: lower index first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    below = np.zeros(n, bool)                   # samples already under the sweeping level
    other_end = np.zeros(n, np.int64)           # at an interval's end: its other end
    birth = np.zeros(n, np.int64)               # at an interval's ends: index of its minimum
    mins, maxs = [], []
    for i in order.tolist():
        left = i - 1 if i > 0 and below[i - 1] else -1       # right end of the left interval
        right = i + 1 if i + 1 < n and below[i + 1] else -1  # left end of the right interval
        lo = other_end[left] if left >= 0 else i
        hi = other_end[right] if right >= 0 else i
        if left >= 0 and right >= 0:
            a, b = birth[left], birth[right]
            elder, younger = (a, b) if rank[a] < rank[b] else (b, a)
            mins.append(younger)
            maxs.append(i)
            m = elder
        elif left >= 0:
            m = birth[left]
        elif right >= 0:
            m = birth[right]
        else:
            m = i                                # a new local minimum is born
        below[i] = True
        other_end[lo], other_end[hi] = hi, lo
        birth[lo] = birth[hi] = m
    mins.append(int(order[0]))                   # the global minimum: paired with the max
    maxs.append(int(order[-1]))
    min_index = np.array(mins, np.int64)
    max_index = np.array(maxs, np.int64)
    by_position = np.argsort(min_index)
    min_index, max_index = min_index[by_position], max_index[by_position]
    return PersistencePairs(min_index, max_index, v[max_index] - v[min_index])


def _run_end(s: np.ndarray, pos: int, level: float, step: int) -> int:
    """Last index from `pos` in direction `step` (±1) before s rises to ≥ level.

    Searches in doubling chunks, so the cost follows the dip's width, not the video's length.
    """
    n, edge, chunk = s.size, pos, 64
    while True:
        if step > 0:
            part = s[edge + 1: edge + 1 + chunk]
        else:
            part = s[max(edge - chunk, 0): edge][::-1]
        if part.size == 0:
            return edge
        above = np.flatnonzero(part >= level)
        if above.size:
            return edge + step * int(above[0])
        edge += step * part.size
        if edge in (0, n - 1):
            return edge
        chunk *= 2


def _merged_spans(group_of: np.ndarray, starts: np.ndarray, ends: np.ndarray, pers: np.ndarray,
                  run: np.ndarray) -> list[tuple[int, int, float]]:
    """(first, last position, persistence) of each event in time order. A group's span can
    reach back over an earlier group (a deep minimum's half-depth span is wide), so spans are
    merged with an interval sweep: events never overlap or touch, nor cross a gap."""
    groups = [group_of == g for g in range(int(group_of[-1]) + 1)]
    spans = sorted((int(starts[m].min()), int(ends[m].max()), float(pers[m].max())) for m in groups)
    merged: list[tuple[int, int, float]] = []
    for a, b, p in spans:
        if merged and a <= merged[-1][1] + 1 and run[a] == run[merged[-1][1]]:
            a0, b0, p0 = merged[-1]
            merged[-1] = (a0, max(b, b0), max(p, p0))
        else:
            merged.append((a, b, p))
    return merged


def detect_events(regularity: np.ndarray, times: np.ndarray | None = None, *,
                  frame_index: np.ndarray | None = None,
                  anomaly_score: np.ndarray | None = None,
                  persistence_threshold: float = PERSISTENCE_DEFAULT,
                  window: int = WINDOW_DEFAULT,
                  min_duration_s: float = 0.0) -> list[dict]:
    """Events of one video's regularity series (F,), as rows of EVENTS_SCHEMA. The series is
    `regularity` unless `score --events-from` names another column; the rows' min_regularity
    and peak_frame are then that column's.

    frame_index (F,) are the source frame indices (default 0..F-1) and `window` is in those
    frames; times (F,) seconds (NaN in the rows when None); anomaly_score (F,) fills
    max_anomaly_score. Events shorter than `min_duration_s` seconds are dropped (needs times).
    The rows lack camera/date/video_id/model_id, which the caller knows.
    """
    s = np.asarray(regularity, dtype=np.float64)
    n = s.size
    frames = np.arange(n, dtype=np.int64) if frame_index is None else np.asarray(frame_index, np.int64)
    t = np.full(n, np.nan) if times is None else np.asarray(times, np.float64)
    score = None if anomaly_score is None else np.asarray(anomaly_score, np.float64)
    if frames.shape != s.shape or t.shape != s.shape or (score is not None and score.shape != s.shape):
        raise ValueError("regularity, frame_index, times and anomaly_score must have the same length")
    # Runs of consecutive frames are separate series: frames on the two sides of a gap are not
    # neighbours, so a dip that opens a run is not swallowed by the run before it.
    run = np.r_[0, np.cumsum(np.diff(frames) != 1)] if n else np.zeros(0, np.int64)
    bounds = np.r_[0, np.flatnonzero(np.diff(run)) + 1, n]
    per_run = [(lo, persistence_pairs(s[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:])]
    mins = np.concatenate([lo + pairs.min_index for lo, pairs in per_run] or [np.zeros(0, np.int64)])
    pers = np.concatenate([pairs.persistence for _, pairs in per_run] or [np.zeros(0)])
    keep = pers >= persistence_threshold
    mins, pers = mins[keep], pers[keep]
    if mins.size == 0:
        return []
    # spans (positions, inclusive) of each minimum at half its depth, within its run of
    # consecutive frames: a span never reaches across frames without a score
    starts = np.array([_run_end(s, m, s[m] + p / 2, -1) for m, p in zip(mins, pers)])
    ends = np.array([_run_end(s, m, s[m] + p / 2, +1) for m, p in zip(mins, pers)])
    starts = np.maximum(starts, np.searchsorted(run, run[mins], "left"))
    ends = np.minimum(ends, np.searchsorted(run, run[mins], "right") - 1)
    # a new group begins where the next minimum is farther than `window` frames away, and
    # across frames without a score; groups whose spans overlap or touch are merged after
    new_group = np.ones(mins.size, bool)
    new_group[1:] = (frames[mins[1:]] - frames[mins[:-1]] > window) | (run[mins[1:]] != run[mins[:-1]])
    group_of = np.cumsum(new_group) - 1
    rows = []
    for a, b, p in _merged_spans(group_of, starts, ends, pers, run):
        peak = a + int(np.argmin(s[a:b + 1]))
        if times is not None and t[b] - t[a] < min_duration_s:
            continue
        rows.append({
            "event_id": len(rows),
            "start_frame": int(frames[a]), "end_frame": int(frames[b]), "peak_frame": int(frames[peak]),
            "start_time_s": float(t[a]), "end_time_s": float(t[b]), "peak_time_s": float(t[peak]),
            "min_regularity": float(s[peak]),
            "max_anomaly_score": float(np.max(score[a:b + 1])) if score is not None else float("nan"),
            "persistence": p,
        })
    return rows
