"""Score's per-video tables must not depend on how a video is cut into segments, with or
without decode gaps. Pure: the real VolumeRows, ScoreVolumes rows and video assembly, with
the decoder replaced by one that loses chosen frames and the model by a fixed function."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vadray.score_stages as score_stages
from vadray.decode import DecodedFrames, index_runs
from vadray.preprocess import NormStats, PartialSums
from vadray.score_stages import ScoreVolumes, VolumeRows, gap_edge_starts, video_means
from vadray.segments import plan_segments

S, GRID, FPS = 8, 2, 10.0


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (S, S), dtype=np.uint8)


class _Model(ScoreVolumes):
    """ScoreVolumes with a fixed 'reconstruction': each frame's residual depends on the whole
    volume it sits in (its mean over time), as a real model's does."""

    def __init__(self, T: int):  # noqa: D107 — no checkpoint: everything ScoreVolumes reads
        self.stats = NormStats.from_sums(PartialSums.of(np.stack([_frame(i) for i in range(20)])))
        self.mean_image = torch.from_numpy(self.stats.mean_image)
        self.T, self.batch_size, self.grid, self.gain_correction = T, 4, GRID, False
        self.device = torch.device("cpu")

    def reconstruct(self, volumes):
        x = volumes.float().unsqueeze(2) / 255.0
        return x, x.mean(dim=1, keepdim=True).expand_as(x) * 0.9


def _score(monkeypatch, num_frames: int, lost: set[int], T: int, hop: int, segment_frames: int):
    """(frame_index, recon_error, cell_error_max, motion_error) of a video scored in segments."""

    def decode_planned(seg, size, errors_uri, storage_options):
        idx = np.array([i for i in range(seg["first"], seg["decode_last"]) if i not in lost], np.int64)
        gone = np.array(sorted(i for i in lost if seg["first"] <= i < seg["decode_last"]), np.int64)
        frames = np.stack([_frame(int(i)) for i in idx]) if idx.size else np.zeros((0, S, S), np.uint8)
        return DecodedFrames(idx, idx / FPS, frames, index_runs(gone), "lost" if gone.size else "")

    monkeypatch.setattr(score_stages, "decode_planned", decode_planned)
    segments = plan_segments(num_frames, FPS, segment_frames / FPS, overlap=T, multiple_of=hop)
    volume_rows, model, scored = VolumeRows("unused", S, T, hop, {}), _Model(T), []
    for s in segments:
        seg = {"video_id": "v", "video_key": "v", "camera": "c", "uri": "u", "identity": "i",
               "num_frames": num_frames, "segment": s.index, "segments": len(segments),
               "first": s.first, "last": s.last, "decode_last": s.decode_last}
        import pyarrow as pa
        scored += model(pa.Table.from_pylist(volume_rows(seg))).to_pylist()
    means, _, _ = video_means(scored, T, GRID * GRID)
    return means


def _decoded_runs_of_a_volume(num_frames: int, lost: set[int], T: int) -> list[int]:
    """Frames that a volume of T decoded frames can cover: those that must get a score."""
    decoded = np.array([i for i in range(num_frames) if i not in lost], np.int64)
    runs = index_runs(decoded)
    return [i for a, b in runs if b - a >= T for i in range(a, b)]


@pytest.mark.parametrize("trial", range(40))
def test_any_segmentation_gives_the_one_segment_table(monkeypatch, trial):
    """Random video lengths, hops, segment lengths and decode gaps (lost frames up to the next
    'keyframe'): the scored frames and every score are bit-identical to one segment's, and
    every decoded frame inside a run of ≥ T decoded frames has a score."""
    rng = np.random.default_rng(trial)
    T = int(rng.choice([4, 10]))
    num_frames = int(rng.integers(3 * T, 90))
    hop = int(rng.integers(1, T + 1))
    lost: set[int] = set()
    for _ in range(int(rng.integers(0, 4))):
        a = int(rng.integers(0, num_frames))
        lost |= set(range(a, min(num_frames, a + int(rng.integers(1, 8)))))
    whole = _score(monkeypatch, num_frames, lost, T, hop, 10_000)
    assert whole.frame_index.tolist() == _decoded_runs_of_a_volume(num_frames, lost, T)
    for segment_frames in sorted({1, 2, T - 1, T, int(rng.integers(1, 2 * T + 3))}):
        cut = _score(monkeypatch, num_frames, lost, T, hop, segment_frames)
        where = f"T={T} hop={hop} frames={num_frames} lost={sorted(lost)} segment={segment_frames}"
        np.testing.assert_array_equal(cut.frame_index, whole.frame_index, err_msg=where)
        for column in ("recon_error", "count", "cell_error_max", "motion_error"):
            np.testing.assert_array_equal(getattr(cut, column), getattr(whole, column), err_msg=f"{column}: {where}")


def test_a_gap_ending_on_a_segment_boundary_off_the_hop_grid(monkeypatch):
    """The case a review found: frames 13-19 lost, hop 3, 10-frame segments. Frame 20 starts
    a segment; before segments were planned in multiples of the hop, no volume covered it."""
    lost = set(range(13, 20))
    cut = _score(monkeypatch, 40, lost, 10, 3, 10)
    assert 20 in cut.frame_index.tolist()
    assert cut.frame_index.tolist() == _decoded_runs_of_a_volume(40, lost, 10)


def test_gap_edge_starts():
    decoded = np.array([*range(0, 13), *range(20, 40)])
    owned = np.arange(0, 31, 5)
    np.testing.assert_array_equal(gap_edge_starts(decoded, owned, 0, 40, 40, 10), [3])   # 3-12; 20 is on the grid
    decoded = np.array([*range(0, 24), *range(30, 40)])
    np.testing.assert_array_equal(gap_edge_starts(decoded, owned, 0, 40, 40, 10), [14])  # 24 is lost, 30 is grid
    # a run shorter than a volume adds nothing; a run that starts the segment is the grid's
    np.testing.assert_array_equal(gap_edge_starts(np.array([*range(5, 12), *range(20, 40)]), owned, 5, 40, 40, 10),
                                  [])
    # segment [20, 30) decoding to 40: frame 37 is lost, so a volume ends right before it;
    # a run that starts after `last` belongs to the next segment
    np.testing.assert_array_equal(gap_edge_starts(np.arange(20, 37), np.array([20, 25]), 20, 30, 40, 10), [27])
    np.testing.assert_array_equal(gap_edge_starts(np.array([*range(20, 29), *range(30, 40)]), np.array([20, 25]),
                                                  20, 30, 40, 10), [])
