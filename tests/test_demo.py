"""The demo path end to end at a tiny size, and the report's error maps."""
from __future__ import annotations

import math
import os

import numpy as np

from vadray.checkpoint import read_card
from vadray.demo import run_demo
from vadray.errormap import ErrorMaps


def test_demo_runs_the_whole_pipeline_at_a_tiny_size(ray_session, tmp_path, capsys):
    result = run_demo(str(tmp_path / "demo"), size=27, epochs=1, videos=2, frames=30)
    metrics, paths = result["metrics"], result["paths"]
    assert metrics["coverage"]["evaluated_frames"] == 90 and result["failures"] == 0
    for column in ("regularity", "anomaly_score", "cell_error_max", "motion_regularity", "motion_error",
                   "combined_regularity"):
        assert 0.5 < metrics[column]["auc"] <= 1.0 and not math.isnan(metrics[column]["eer"])   # better than chance
    # Even at 27 px after one epoch the synthetic anomalies stand out (measured here: regularity
    # 0.875, combined 0.976, 3 of 3 events detected); chance would be 0.5.
    assert metrics["regularity"]["auc"] > 0.7 and metrics["combined_regularity"]["auc"] > 0.8
    assert metrics["events"]["gt_detected"] >= 2
    pngs = [f for f in os.listdir(paths["report"]) if f.endswith(".png")]
    assert len(pngs) == 3 and os.path.getsize(os.path.join(paths["report"], "index.html")) > 500
    printed = capsys.readouterr().out
    assert "frame-level AUC (regularity, the paper's score)" in printed and "index.html" in printed


def test_error_map_points_at_the_frame(trained_checkpoint, synth_test_archive):
    maps = ErrorMaps(str(trained_checkpoint))
    emap = maps(str(synth_test_archive / "test001.mp4"), 29)  # the last frame: volume clipped to the end
    assert emap.shape == (27, 27) and emap.dtype == np.float32 and emap.min() >= 0 and emap.max() > 0
    assert maps(str(synth_test_archive / "frame_labels.csv"), 0) is None  # not a video: no map, no crash
    assert maps.model_id == read_card(str(trained_checkpoint))["model_id"]   # report compares it with the scores'


def test_error_map_is_highest_where_an_unseen_object_is(trained_checkpoint, tmp_path):
    """A white block the model never saw, in frames 10-20 of a normal scene: the map of frame
    15 rises most on the block (the walkers' own errors are in both maps), and the block's
    area errs far more than in the same video without it."""
    import videos

    clean = videos.frames(30, seed=1)
    pasted = clean.copy()
    pasted[10:21, 12:28, 36:56] = 255                 # rows 12-27, cols 36-55 of 48×64
    for name, images in (("clean", clean), ("pasted", pasted)):
        videos._encode(str(tmp_path / f"{name}.mp4"), images, "libx264", "yuv420p", "gray")
    maps = ErrorMaps(str(trained_checkpoint))
    with_block, without = maps(str(tmp_path / "pasted.mp4"), 15), maps(str(tmp_path / "clean.mp4"), 15)
    rows, cols = slice(12 * 27 // 48, 28 * 27 // 48), slice(36 * 27 // 64, 56 * 27 // 64)   # the block at 27 px
    inside = np.zeros((27, 27), bool)
    inside[rows, cols] = True
    assert inside.ravel()[np.argmax(with_block - without)], "the largest rise is not on the block"
    assert with_block[inside].mean() > 3 * without[inside].mean()


def test_error_map_of_a_frame_folder_matches_the_same_frames_as_a_video(trained_checkpoint, synth_test_archive,
                                                                        tmp_path):
    """UCSD distributes clips as folders of stills: their events get error maps too."""
    import av

    folder = tmp_path / "test001"
    folder.mkdir()
    with av.open(str(synth_test_archive / "test001.mp4")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            av.VideoFrame.from_ndarray(frame.to_ndarray(format="gray"), format="gray").save(str(folder / f"{i}.png"))
    maps = ErrorMaps(str(trained_checkpoint))
    from_video = maps(str(synth_test_archive / "test001.mp4"), 15)
    from_folder = maps(str(folder), 15)
    assert from_folder is not None and from_folder.shape == from_video.shape
    assert np.corrcoef(from_folder.ravel(), from_video.ravel())[0, 1] > 0.9
