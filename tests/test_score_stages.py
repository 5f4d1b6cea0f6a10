"""The score job's stages without the Ray pipeline: per-video tables that do not depend on
how a video is cut into segments (with or without decode gaps; the real VolumeRows,
ScoreVolumes rows and video assembly, the decoder replaced by one that loses chosen frames,
the model by a fixed function), and the model actor's errors against the other trainers'."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vadray.score_stages as score_stages
from vadray.decode import DecodedFrames, index_runs
from vadray.errors import read_errors
from vadray.preprocess import NormStats, PartialSums
from vadray.score_stages import (ScoreVolumes, VolumeRows, gap_edge_starts, score_segment_plan,
                                 scored_as_far_as_it_decodes, video_means)
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

    def decode_planned(seg, size, errors_uri, storage_options, model_id=None):
        idx = np.array([i for i in range(seg["first"], seg["decode_last"]) if i not in lost], np.int64)
        gone = np.array(sorted(i for i in lost if seg["first"] <= i < seg["decode_last"]), np.int64)
        frames = np.stack([_frame(int(i)) for i in idx]) if idx.size else np.zeros((0, S, S), np.uint8)
        return DecodedFrames(idx, idx / FPS, frames, index_runs(gone), "lost" if gone.size else "")

    monkeypatch.setattr(score_stages, "decode_planned", decode_planned)
    segments = plan_segments(num_frames, FPS, segment_frames / FPS, **score_segment_plan(T, hop))   # score's own
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


def test_a_segment_that_decoded_nothing_still_reaches_the_driver(trained_checkpoint, tmp_path):
    """VolumeRows sends one empty row for a segment without volumes, and the model actor's
    code passes it through, so the driver can count that video's segments in."""
    import pyarrow as pa

    from vadray.checkpoint import read_card
    from vadray.score_stages import ScoreVolumes, VolumeRows

    card = read_card(str(trained_checkpoint))
    size, T = int(card["input"]["size"]), int(card["input"]["T"])
    missing = str(tmp_path / "gone.mp4")  # decode fails: the error goes to errors/, no frames
    seg = {"video_id": "gone", "video_key": "gone", "camera": "c", "uri": missing, "identity": "x",
           "num_frames": 30, "segment": 1, "segments": 3, "first": 13, "last": 26, "decode_last": 30,
           "pts": list(range(13, 30)), "time_base": 0.1, "start_pts": 0, "fps": 10.0, "width": 64,
           "height": 48, "codec": "h264", "frame_uris": [], "piece_offsets": [], "keyframes": []}
    rows = VolumeRows(str(tmp_path / "out"), size, T, 5, {})(seg)
    assert len(rows) == 1 and rows[0]["starts"] == [] and (rows[0]["part"], rows[0]["parts"]) == (0, 1)
    out = ScoreVolumes(str(trained_checkpoint), {}, 16, 8)(pa.Table.from_pylist(rows)).to_pylist()
    assert len(out) == 1 and out[0]["done_frame_index"] == [] and out[0]["seam_frame_index"] == []
    assert (out[0]["segment"], out[0]["segments"], out[0]["parts"]) == (1, 3, 1)
    assert read_errors(str(tmp_path / "out" / "errors")).num_rows == 1


def test_a_model_actor_without_a_gpu_stays_on_the_cpu_where_cuda_is_visible(trained_checkpoint, monkeypatch):
    """Ray leaves CUDA_VISIBLE_DEVICES alone for actors that hold no GPU: `--gpus-per-actor 0`
    must still mean the CPU (and its --actor-threads), not GPU 0 outside Ray's accounting."""
    import torch

    from vadray.score_stages import ScoreVolumes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ScoreVolumes(str(trained_checkpoint), {}, 16, 8, threads=1, use_gpu=False).device.type == "cpu"


def test_a_frame_folders_frame_rate_is_part_of_the_run_id():
    """--frame-fps sets a frame folder's times and events: a rerun with another value skipped the
    finished folders without the 'other settings' warning (score review)."""
    import hashlib

    from vadray.events import EventSettings
    from vadray.score import scoring_run_id

    settings = ("convlstm_ae-0123456789ab", 5, 8, EventSettings())
    before = hashlib.sha1(f"convlstm_ae-0123456789ab|hop=5|grid=8|{EventSettings().key()}".encode()).hexdigest()
    assert scoring_run_id(*settings) == scoring_run_id(*settings, frame_fps=10.0) == "score-" + before[:10]
    assert scoring_run_id(*settings, frame_fps=25.0) != scoring_run_id(*settings)


def test_a_model_actor_refuses_a_checkpoint_that_changed_since_the_run_began(trained_checkpoint):
    """Every model actor (and every restarted one) loads the checkpoint again: one retrained into
    the same folder during a backfill scored under the first model's id and markers, for good
    (score review)."""
    from vadray.checkpoint import read_card
    from vadray.exits import JobFailed
    from vadray.score_stages import ScoreVolumes

    model_id = read_card(str(trained_checkpoint))["model_id"]
    assert ScoreVolumes(str(trained_checkpoint), {}, 16, 8, model_id=model_id).T == 10
    with pytest.raises(JobFailed, match="changed during the run"):
        ScoreVolumes(str(trained_checkpoint), {}, 16, 8, model_id="convlstm_ae-000000000000")


def test_score_actor_and_ped2_direct_measure_the_same_errors(trained_checkpoint):
    """The score job's actor and `bench ped2-direct` share one forward-and-measure loop
    (`steps.frame_sums`): the same volumes give bit-identical per-frame errors, and they equal
    the paper's error computed plainly (numpy normalisation, the whole volume at once)."""
    import torch

    from vadray import scoring
    from vadray.bench.ped2_direct import Trainer
    from vadray.checkpoint import load_model
    from vadray.preprocess import NormStats
    from vadray.score_stages import ScoreVolumes
    from vadray.volumes import gather, volume_starts

    actor = ScoreVolumes(str(trained_checkpoint), {}, 4, 8)
    model, card = load_model(str(trained_checkpoint), {})
    stats, T = NormStats.from_dict(card["norm_stats"]), int(card["input"]["T"])
    frames = np.random.default_rng(0).integers(0, 256, (23, stats.size, stats.size), dtype=np.uint8)
    starts = volume_starts(len(frames), T, 1, 5)

    from_actor = actor.frame_sums(frames, np.arange(len(frames)), starts).mean()
    direct = Trainer(model, stats, torch.device("cpu"), 1e-4, 4, 0).frame_sums(frames, T, 5).mean()
    np.testing.assert_array_equal(from_actor.frame_index, direct.frame_index)
    for column in ("recon_error", "cell_error_max", "motion_error"):
        np.testing.assert_array_equal(getattr(from_actor, column), getattr(direct, column))

    x = gather(stats.normalize(frames), starts, T)
    with torch.inference_mode():
        y = model.eval()(torch.from_numpy(x).unsqueeze(2)).squeeze(2).numpy()
    plain = scoring.accumulate(starts, T, scoring.frame_errors(x, y)).mean()
    np.testing.assert_allclose(from_actor.recon_error, plain.recon_error, rtol=1e-5)
    assert np.isfinite(from_actor.motion_error).all() and (from_actor.recon_error > 0).all()


def test_both_trainers_calibrate_anomaly_score_the_same_way(trained_checkpoint, monkeypatch):
    """`vadray train` (streamed from the clip shards) and `bench ped2-direct` (frames in memory)
    compute the card's validation errors by one definition, so anomaly_score's scale does not
    depend on which of them made the checkpoint. 33 frames: the hop-5 grid ends before the
    last frame, where scoring would add a volume and the calibration does not."""
    import torch

    import vadray.calibration as calibration
    from vadray.bench.ped2_direct import Trainer, calibration_errors
    from vadray.checkpoint import load_model, weights_to_bytes
    from vadray.models import spec
    from vadray.preprocess import NormStats

    model, card = load_model(str(trained_checkpoint), {})
    stats, T = NormStats.from_dict(card["norm_stats"]), int(card["input"]["T"])
    frames = np.random.default_rng(3).integers(0, 256, (33, stats.size, stats.size), dtype=np.uint8)
    monkeypatch.setattr(calibration, "read_chunks", lambda *a: iter([(0, frames[:14]), (14, frames[14:])]))
    streamed = calibration.ValidationFrameErrors(spec(model), weights_to_bytes(model.state_dict()), stats.to_dict(),
                                                 "unused", {}, T)({"video_index": [0], "video_id": ["v"], "file_groups": ["[]"]})
    direct = calibration_errors(Trainer(model, stats, torch.device("cpu"), 1e-4, 4, 0), [frames], T)
    assert streamed["recon_error"].size == direct["recon_error"].size == 30   # starts 0, 5, …, 20
    for column in ("recon_error", "cell_error_max"):
        np.testing.assert_allclose(streamed[column], direct[column].astype(np.float32), rtol=1e-5)


def test_require_room_counts_whole_gpus_for_fractional_actors(monkeypatch):
    """Fractions of a GPU do not add up across GPUs: three 0.6-GPU actors need three GPUs."""
    import ray

    from vadray.exits import UsageError
    from vadray.raylib import require_room

    def with_resources(**have):
        monkeypatch.setattr(ray, "cluster_resources", lambda: have)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with_resources(CPU=16, GPU=2)
    require_room(2, 0, 0.6, "two")                       # one per GPU
    require_room(4, 0, 0.5, "four")                      # two per GPU
    with pytest.raises(UsageError, match="3 GPUs, and this Ray has 2"):
        require_room(3, 0, 0.6, "three")
    with pytest.raises(UsageError, match="ask for fewer, or fewer CPUs each"):
        require_room(16, 1, 0, "sixteen")                # no CPU left to decode
    with_resources(CPU=2)
    with pytest.raises(UsageError, match="1 GPU, and this Ray has 0: .*run on CPU"):
        require_room(1, 0, 1, "one")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")   # a cluster may grow: only a warning
    require_room(1, 0, 1, "one")


def test_a_frame_with_a_non_finite_error_is_missing_not_fatal(tmp_path, monkeypatch):
    """Code review: a NaN error reached detect_events, which raised, and the whole video was
    filed as a `write` failure; an infinite one made the video's max e infinite, so every other
    frame's regularity was 1. Now those frames' scores are missing (NaN), events skip them, the
    video's other frames and events are written, and an errors row names the frames."""
    import pyarrow.parquet as pq

    from vadray.events import EventSettings
    from vadray.scoring import FrameMeans

    error = np.ones(60)
    error[20:26] = [3.0, 5.0, 8.0, 5.0, 3.0, 2.0]   # one dip of regularity at frame 22
    error[40], error[41] = np.nan, np.inf
    means = FrameMeans(np.arange(60), error, np.ones(60, np.int64), None, error.copy(), error.copy())
    monkeypatch.setattr(score_stages, "video_means", lambda rows, T, cells: (means, np.arange(60) / 10.0,
                                                                              np.ones(60)))
    card = {"model_id": "m-1", "input": {"T": 10}, "validation": {"frame_error": {"mean": 1.0, "std": 0.5}}}
    assemble = score_stages.AssembleVideo(str(tmp_path), card, "run", {"v": "2024-01-01"}, EventSettings(), 2, {})
    head = {"camera": "default", "video_id": "v", "uri": "/x/v.mp4", "video_key": "v-key", "num_frames": 60,
            "identity": "size=1"}
    result = assemble([head])
    assert (result["frames"], result["events"], result["complete"]) == (60, 1, True)
    frames = pq.read_table(tmp_path / "frames").to_pandas().sort_values("frame_index")
    regularity = frames.regularity.to_numpy()
    assert np.isnan(regularity[[40, 41]]).all()
    assert regularity[22] == pytest.approx(1 - 7 / 8)   # max e is 8, not infinity
    events = pq.read_table(tmp_path / "events").to_pandas()
    assert events.peak_frame.tolist() == [22]
    [row] = read_errors(str(tmp_path / "errors")).to_pylist()
    assert (row["stage"], row["error_type"]) == ("score", "unscored_frames")
    assert "NaN or infinite at 2 frames: 40-41" in row["message"]
    # --min-event-seconds: the dip spans frames 21-23, 0.2 s at 10 frames/s
    short = score_stages.AssembleVideo(str(tmp_path / "short"), card, "run", {}, EventSettings(min_seconds=0.3),
                                       2, {})
    assert short([head])["events"] == 0


def test_a_video_is_done_when_its_gaps_would_come_back_on_a_rerun():
    """Every segment's rows in and no decode raised: its unscored frames did not decode and will
    not (a rerun skips it). A decode that raised, or a row missing, leaves it partial."""
    def row(segment, part, parts, retry=False):
        return {"segment": segment, "segments": 2, "part": part, "parts": parts, "retry": retry}

    assert scored_as_far_as_it_decodes([row(1, 1, 2), row(0, 0, 1), row(1, 0, 2)])
    assert not scored_as_far_as_it_decodes([row(0, 0, 1), row(1, 0, 2)])             # a part missing
    assert not scored_as_far_as_it_decodes([row(0, 0, 1)])                           # a segment missing
    assert not scored_as_far_as_it_decodes([row(0, 0, 1), row(1, 0, 1, retry=True)])
    assert not scored_as_far_as_it_decodes([{"segment": 0, "segments": 1, "part": 0, "parts": 1}])
