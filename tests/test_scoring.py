"""Scoring math: errors, cells, seam-exact assembly, regularity, calibration."""
import numpy as np
import pytest

from vadray import scoring
from vadray.volumes import gather, volume_starts


def test_frame_errors_is_l2_norm_per_frame():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 6, 6)).astype(np.float32)
    recon = rng.normal(size=(3, 4, 6, 6)).astype(np.float32)
    e = scoring.frame_errors(x, recon)
    assert e.shape == (3, 4)
    for v in range(3):
        for t in range(4):
            assert e[v, t] == pytest.approx(np.linalg.norm((x[v, t] - recon[v, t]).ravel()), rel=1e-6)


def test_frame_errors_accepts_channel_dim_of_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    recon = x + 0.5
    plain = scoring.frame_errors(x, recon)
    # every pixel is off by 0.5: the norm over 25 pixels is 0.5 * 5
    np.testing.assert_allclose(plain, 2.5, rtol=1e-6)
    np.testing.assert_array_equal(scoring.frame_errors(x[..., None], recon[..., None]), plain)
    np.testing.assert_array_equal(scoring.frame_errors(x[:, :, None], recon[:, :, None]), plain)
    with pytest.raises(ValueError):
        scoring.frame_errors(x, recon[:, :2])


@pytest.mark.parametrize("size,grid", [(16, 8), (27, 8), (10, 3)])
def test_cell_errors_match_array_split_cells(size, grid):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(2, 3, size, size))
    recon = rng.normal(size=(2, 3, size, size))
    cells = scoring.cell_errors(x, recon, grid=grid)
    assert cells.shape == (2, 3, grid * grid)
    sq = (x - recon) ** 2
    for v in range(2):
        for t in range(3):
            expected = [np.sqrt(block.sum())
                        for band in np.array_split(sq[v, t], grid, axis=0)
                        for block in np.array_split(band, grid, axis=1)]
            np.testing.assert_allclose(cells[v, t], expected, rtol=1e-6)
    # the cells partition the frame: their squares add up to the frame's squared error
    np.testing.assert_allclose((cells ** 2).sum(-1), scoring.frame_errors(x, recon) ** 2, rtol=1e-5)


def test_cell_errors_localise_a_small_anomaly():
    x = np.zeros((1, 1, 27, 27), np.float32)
    recon = x.copy()
    recon[0, 0, 25, 25] = 3.0          # one pixel in the bottom-right cell
    cells = scoring.cell_errors(x, recon, grid=8).reshape(8, 8)
    assert cells[7, 7] == pytest.approx(3.0)
    assert np.count_nonzero(cells) == 1
    with pytest.raises(ValueError):
        scoring.cell_errors(x, recon, grid=28)


def _naive_means(starts, T, errs):
    per_frame = {}
    for s, row in zip(starts, errs):
        for k in range(T):
            per_frame.setdefault(int(s) + k, []).append(row[k])
    frames = sorted(per_frame)
    return np.array(frames), np.array([np.mean(per_frame[f]) for f in frames])


def test_accumulate_means_over_containing_volumes():
    T = 4
    starts = np.array([5, 6, 7])     # frames 5..10
    errs = np.arange(12, dtype=float).reshape(3, T)
    means = scoring.accumulate(starts, T, errs).mean()
    frames, expected = _naive_means(starts, T, errs)
    np.testing.assert_array_equal(means.frame_index, frames)
    np.testing.assert_allclose(means.recon_error, expected)
    # frame 5 is only in the first volume; frame 8 is in all three
    assert means.count.tolist() == [1, 2, 3, 3, 2, 1]
    assert means.recon_error[0] == errs[0, 0]
    assert means.recon_error[3] == pytest.approx((errs[0, 3] + errs[1, 2] + errs[2, 1]) / 3)


def test_segmented_assembly_is_bit_identical_to_unsegmented():
    rng = np.random.default_rng(7)
    T, C = 10, 4
    starts = volume_starts(83, T=T, stride=1, hop=1) + 1000   # source frame indices
    errs = rng.lognormal(size=(starts.size, T)) * 1e3
    cells = rng.lognormal(size=(starts.size, T, C))
    motion = rng.lognormal(size=(starts.size, T))
    whole = scoring.accumulate(starts, T, errs, cells, motion).mean()
    # three segments cut at arbitrary volumes, merged in a scrambled order
    cuts = [0, 17, 41, starts.size]
    parts = [scoring.accumulate(starts[a:b], T, errs[a:b], cells[a:b], motion[a:b]) for a, b in zip(cuts, cuts[1:])]
    merged = scoring.FrameSums.merge([parts[2], parts[0], parts[1]]).mean()
    np.testing.assert_array_equal(merged.frame_index, whole.frame_index)
    np.testing.assert_array_equal(merged.recon_error, whole.recon_error)
    np.testing.assert_array_equal(merged.cell_error, whole.cell_error)
    np.testing.assert_array_equal(merged.cell_error_max, whole.cell_error_max)
    np.testing.assert_array_equal(merged.motion_error, whole.motion_error)
    assert merged.frame_index[0] == 1000 and merged.frame_index[-1] == 1082
    np.testing.assert_allclose(whole.cell_error_max, whole.cell_error.max(axis=1))
    frames, expected = _naive_means(starts, T, errs)
    np.testing.assert_allclose(whole.recon_error, expected, rtol=1e-12)
    np.testing.assert_allclose(whole.motion_error, _naive_means(starts, T, motion)[1], rtol=1e-12)


def test_segments_finalise_inner_frames_and_pass_on_only_seams():
    rng = np.random.default_rng(8)
    T, C = 10, 3
    starts = volume_starts(100, T=T)                       # frames 0..99, volumes 0..90
    errs = rng.random((starts.size, T))
    cells = rng.random((starts.size, T, C))
    motion = rng.random((starts.size, T))
    whole = scoring.accumulate(starts, T, errs, cells, motion).mean()
    finished, seams = [], []
    for a, b in [(0, 30), (30, 61), (61, starts.size)]:
        done, rest = scoring.accumulate(starts[a:b], T, errs[a:b], cells[a:b], motion[a:b]).split(starts)
        finished.append(done)
        seams.append(rest)
    # a seam between volumes 29 and 30 leaves frames 30..38 incomplete on both sides
    assert seams[0].frame_index.tolist() == list(range(30, 39))
    assert seams[1].frame_index.tolist() == list(range(30, 39)) + list(range(61, 70))
    video = scoring.FrameMeans.concat(finished + [scoring.FrameSums.merge(seams).mean()])
    np.testing.assert_array_equal(video.frame_index, whole.frame_index)
    np.testing.assert_array_equal(video.recon_error, whole.recon_error)
    np.testing.assert_array_equal(video.cell_error_max, whole.cell_error_max)
    np.testing.assert_array_equal(video.motion_error, whole.motion_error)
    np.testing.assert_array_equal(video.count, whole.count)
    assert video.cell_error is None                            # dropped unless asked for
    with pytest.raises(ValueError):
        scoring.FrameMeans.concat([whole, whole])


def test_merge_rejects_a_volume_scored_twice():
    T = 3
    errs = np.ones((2, T))
    a = scoring.accumulate(np.array([0, 1]), T, errs)
    b = scoring.accumulate(np.array([1, 2]), T, errs)
    with pytest.raises(ValueError, match="twice"):
        scoring.FrameSums.merge([a, b])


def test_end_to_end_from_volumes_of_a_clip():
    rng = np.random.default_rng(3)
    frames = rng.normal(size=(20, 11, 11)).astype(np.float32)
    starts = volume_starts(20, T=5)
    x = gather(frames, starts, T=5)                  # (V, 5, 11, 11)
    recon = x * 0.0                                   # a model that outputs zeros
    means = scoring.accumulate(starts, 5, scoring.frame_errors(x, recon)).mean()
    # every volume sees the same frame content, so the mean is just the frame's norm
    np.testing.assert_allclose(means.recon_error, np.linalg.norm(frames.reshape(20, -1), axis=1), rtol=1e-5)


def test_regularity_follows_the_paper():
    e = np.array([2.0, 4.0, 10.0, 6.0])
    s_r = scoring.regularity(e)
    np.testing.assert_allclose(s_r, 1 - (e - 2.0) / 10.0)
    assert s_r.max() == 1.0 and s_r.min() == pytest.approx(0.2)   # min e / max e


def test_regularity_of_degenerate_series_has_no_nan():
    np.testing.assert_array_equal(scoring.regularity(np.full(5, 3.0)), np.ones(5))
    np.testing.assert_array_equal(scoring.regularity(np.zeros(4)), np.ones(4))
    assert scoring.regularity(np.array([])).size == 0


def test_calibrate_uses_validation_distribution():
    validation = {"frame_error": {"mean": 10.0, "std": 2.0, "quantiles": {"0.5": 10.0}, "n": 50},
                  "cell_error_max": {"mean": 1.0, "std": 0.5, "quantiles": {}, "n": 50}}
    np.testing.assert_allclose(scoring.calibrate(np.array([10.0, 14.0, 6.0]), validation), [0.0, 2.0, -2.0])
    np.testing.assert_allclose(scoring.calibrate(np.array([2.0]), validation, key="cell_error_max"), [2.0])
    with pytest.raises(ValueError):
        scoring.calibrate(np.ones(2), {"frame_error": {"mean": 1.0, "std": 0.0}})
    with pytest.raises(ValueError):
        scoring.calibrate(np.ones(2), {})


def test_video_rows_complete_when_every_segments_rows_are_in():
    from vadray.score_stages import VideoRows

    def row(video, segment, part, parts, segments=2):
        return {"video_id": video, "segment": segment, "segments": segments, "part": part, "parts": parts}

    videos = VideoRows()
    # Rows of two videos arrive interleaved and out of order; segment 1 of "a" has 3 rows.
    arrivals = [row("a", 1, 2, 3), row("b", 0, 0, 1, segments=1), row("a", 0, 0, 1), row("a", 1, 0, 3)]
    results = [videos.add(r) for r in arrivals]
    assert results[0] is None and results[2] is None and results[3] is None
    assert [r["video_id"] for r in results[1]] == ["b"]  # one segment, one row: complete at once
    done = videos.add(row("a", 1, 1, 3))
    assert sorted((r["segment"], r["part"]) for r in done) == [(0, 0), (1, 0), (1, 1), (1, 2)]
    assert videos.leftovers() == []
    videos.add(row("c", 0, 0, 1, segments=3))  # segments 1 and 2 never arrive
    assert [[r["video_id"] for r in rows] for rows in videos.leftovers()] == [["c"]]
    assert videos.in_progress() == []


def test_progress_names_the_segments_scored_of_the_videos_under_way(caplog):
    """An hour-long video is one video for minutes: between 'N of M videos written' lines
    nothing moved but Ray Data's bars (long-footage review). A segment counts when all its rows are in."""
    import logging

    from vadray.score import _VideoProgress
    from vadray.score_stages import VideoRows

    def row(video, segment, part, parts, segments):
        return {"video_id": video, "segment": segment, "segments": segments, "part": part, "parts": parts}

    videos = VideoRows()
    for r in [row("long", 0, 0, 1, 120), row("long", 1, 0, 2, 120), row("long", 1, 1, 2, 120),
              row("long", 2, 0, 2, 120), row("next", 0, 0, 1, 4)]:
        assert videos.add(r) is None
    assert videos.in_progress() == [("long", 2, 120), ("next", 1, 4)]   # segment 2 of "long" lacks a row
    progress = _VideoProgress(total=2, videos=videos)
    progress.last -= progress.PROGRESS_SECONDS
    with caplog.at_level(logging.INFO, logger="vadray.score"):
        progress.tick()
        progress.tick()   # no second line within PROGRESS_SECONDS
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("0 of 2 videos written (")
    assert lines[0].endswith("; scoring long 2 of 120 segments, next 1 of 4 segments"), lines


def test_motion_error_is_the_residuals_change_between_frames():
    """By hand: a residual that stays put scores 0, one that moves scores its L2 change."""
    T, S = 4, 3
    x = np.zeros((2, T, S, S), np.float32)
    recon = np.zeros_like(x)
    x[0, :, 1, 1] = 2.0                      # volume 0: the same residual in every frame
    for t in range(T):                       # volume 1: a residual of 1 that moves one pixel a frame
        x[1, t, 0, t % S] = 1.0
    m = scoring.motion_errors(x, recon)
    assert m.shape == (2, T)
    np.testing.assert_array_equal(m[0], np.zeros(T))
    # frame t − 1 had the 1 elsewhere: two pixels of ±1, ‖·‖ = √2; frame 0 takes frame 1's value
    np.testing.assert_allclose(m[1], np.full(T, np.sqrt(2.0)))
    # the paper's error does not see the difference: both volumes err in one pixel per frame
    np.testing.assert_allclose(scoring.frame_errors(x, recon), [[2.0] * T, [1.0] * T])
    shifted = x + 5.0                        # a constant offset of input and reconstruction cancels
    np.testing.assert_allclose(scoring.motion_errors(shifted, recon + 5.0), m, atol=1e-6)
    with pytest.raises(ValueError, match="2 frames"):
        scoring.motion_errors(x[:, :1], recon[:, :1])
    with pytest.raises(ValueError, match="motion must be"):
        scoring.accumulate(np.array([0, 5]), T, np.ones((2, T)), motion=np.ones((2, T - 1)))


def test_volume_sums_equal_the_three_scores_bit_for_bit():
    """The score job's one-residual path gives exactly what the public functions give."""
    rng = np.random.default_rng(3)
    T, S = 5, 19
    x = rng.normal(size=(4, T, 1, S, S)).astype(np.float32)
    recon = rng.normal(size=(4, T, 1, S, S)).astype(np.float32)
    starts = np.array([0, 2, 7, 9])
    sums = scoring.volume_sums(starts, x, recon, grid=4)
    by_hand = scoring.accumulate(starts, T, scoring.frame_errors(x, recon), scoring.cell_errors(x, recon, 4),
                                 scoring.motion_errors(x, recon))
    ours, theirs = sums.mean(), by_hand.mean()
    for name in ("frame_index", "recon_error", "count", "cell_error", "cell_error_max", "motion_error"):
        assert getattr(ours, name) is not None, name
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name), err_msg=name)
    assert scoring.volume_sums(starts, x, recon, motion=False).mean().motion_error is None


def test_score_columns_are_the_frames_tables_scores():
    means = scoring.FrameMeans(np.arange(4), np.array([1.0, 2.0, 4.0, 3.0]), np.ones(4, np.int64), None,
                               np.array([5.0, 6.0, 7.0, 8.0]), np.array([0.5, 1.0, 0.25, 1.0]))
    cols = scoring.score_columns(means, {"frame_error": {"mean": 2.0, "std": 0.5}})
    np.testing.assert_allclose(cols["regularity"], [1.0, 0.75, 0.25, 0.5])        # 1 − (e − 1) / 4
    np.testing.assert_allclose(cols["anomaly_score"], [-2.0, 0.0, 4.0, 2.0])
    np.testing.assert_allclose(cols["motion_regularity"], [0.75, 0.25, 1.0, 0.25])  # 1 − (m − .25) / 1
    np.testing.assert_allclose(cols["combined_regularity"], [0.75, 0.25, 0.25, 0.25])  # the lower of the two
    assert set(cols) - {"anomaly_score"} == set(scoring.score_columns(means, None))
    assert set(cols) <= set(scoring.FRAMES_SCHEMA.names)
