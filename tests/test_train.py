"""Training: volume building (seams, never across videos), the split, errors, and real Ray Train runs."""
from __future__ import annotations

import argparse

import functools
import json
import operator
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import vadray
from vadray import scoring
from vadray.cli import main as cli_main
from vadray.errors import safe_key
from vadray.exits import UsageError
from vadray.clip_shards import clip_table
from vadray.preprocess import NormStats, PartialSums
from vadray import train as train_job
from vadray.train import ignored_on_resume, run_training
from vadray.steps import normalize
from vadray.trainvolumes import count_volumes, discover, split_by_video, volume_dataset
from vadray.volumes import gather, stream_volumes, volume_starts

TINY = {"encoder_channels": [8, 4], "lstm_channels": [4, 4, 4]}


def write_clip_shards(output, videos: dict[str, np.ndarray], chunk: int, files_per_video: int = 1, seed: int = 0,
                      lost: dict[str, list[int]] | None = None):
    """Clip shards made by ingest's own `clip_table`, awkwardly laid out: rows of ≤ `chunk`
    frames, several files per video, rows shuffled inside a file, so only start_frame says the
    order. `lost`: frames the decoder lost, per video (a gap in the shards)."""
    rng = np.random.default_rng(seed)
    for video_id, frames in videos.items():
        index = np.arange(frames.shape[0])
        index = index[~np.isin(index, (lost or {}).get(video_id, []))]
        seg = {"video_id": video_id, "camera": "default", "uri": f"/src/{video_id}.mp4", "fps": 10.0,
               "width": 64, "height": 48, "video_key": safe_key(video_id)}
        table = pa.concat_tables([clip_table(seg, index[a:a + chunk], index[a:a + chunk] / 10, frames[index[a:a + chunk]],
                                             frames.shape[1]) for a in range(0, len(index), chunk)])
        folder = os.path.join(output, "clips", f"video_key={safe_key(video_id)}")
        os.makedirs(folder, exist_ok=True)
        for i, part in enumerate(np.array_split(np.arange(table.num_rows), files_per_video)):
            pq.write_table(table.take(rng.permutation(part)).drop_columns(["video_key"]),
                           os.path.join(folder, f"part-{i}.parquet"))
    stats = NormStats.from_sums(functools.reduce(operator.add, (PartialSums.of(f) for f in videos.values())))
    os.makedirs(os.path.join(output, "stats"), exist_ok=True)
    with open(os.path.join(output, "stats", "stats.json"), "w") as f:
        json.dump({**stats.to_dict(), "videos": len(videos), "source": "/src"}, f)


def random_videos(lengths: dict[str, int], size: int = 27, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {vid: rng.integers(0, 256, (n, size, size), dtype=np.uint8) for vid, n in lengths.items()}


# ---------------------------------------------------------------- pure volume building

def test_stream_volumes_equal_whole_video_volumes_for_any_chunking():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n, hop = int(rng.integers(1, 70)), int(rng.integers(1, 6))
        frames = rng.integers(0, 256, (n, 3, 3), dtype=np.uint8)
        cuts = sorted(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 8))), replace=False)) if n > 1 else []
        bounds = [0, *cuts, n]
        chunks = [(50 + a, frames[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        got = {1: [], 2: [], 3: []}
        for stride, starts, volumes in stream_volumes(iter(chunks), 10, (1, 2, 3), hop):
            np.testing.assert_array_equal(volumes, gather(frames, starts - 50, 10, stride))
            got[stride] += starts.tolist()
        for stride in (1, 2, 3):
            expected = volume_starts(n, 10, stride, hop, cover_end=False) + 50
            assert got[stride] == expected.tolist(), (n, hop, stride, bounds)


def test_stream_volumes_restart_after_a_gap_and_refuse_overlaps():
    frames = np.arange(40, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    # frames 12-14 lost at ingest: runs 0-11 and 15-39, chunked across the gap and inside the runs
    chunks = [(0, frames[:8]), (8, frames[8:12]), (15, frames[15:21]), (21, frames[21:])]
    got = {}
    for stride, starts, volumes in stream_volumes(iter(chunks), 10, (1, 2), 2):
        np.testing.assert_array_equal(volumes, gather(frames, starts, 10, stride))   # no volume holds a lost frame
        got[stride] = got.get(stride, []) + starts.tolist()
    assert got[1] == [0, 2] + (volume_starts(25, 10, 1, 2, cover_end=False) + 15).tolist()
    assert got[2] == (volume_starts(25, 10, 2, 2, cover_end=False) + 15).tolist()  # 12 frames: no stride-2 volume
    with pytest.raises(ValueError, match="overlap"):
        list(stream_volumes(iter([(0, frames[:8]), (7, frames[7:])]), 10, (1,), 1))


def test_a_video_with_lost_frames_trains_on_its_contiguous_runs(tmp_path):
    """Ingest keeps the frames that decoded: the shards have a gap, and the volume count that
    sizes an epoch must match the volumes the workers get."""
    from vadray.trainvolumes import expand_to_volumes, video_items

    videos = random_videos({"a": 45, "b": 30})
    write_clip_shards(tmp_path, videos, chunk=7, files_per_video=2, lost={"a": [20, 21, 22]})
    shards = discover(str(tmp_path))
    a, b = shards.videos
    assert (a.num_frames, a.spans, b.spans) == (42, [20, 22], [30])
    made = sum(len(batch["start"]) for batch in expand_to_volumes(
        {k: np.array([item[k] for item in video_items(shards.videos)]) for k in ("video_index", "video_id", "file_groups")},
        shards.clips_uri, None, 10, [1, 2, 3], 1))
    assert made == count_volumes(shards.videos, 10, [1, 2, 3], 1) == (11 + 2) + (13 + 4) + (21 + 12 + 3)


def test_normalize_on_the_device_equals_normstats():
    frames = np.random.default_rng(1).integers(0, 256, (12, 27, 27), dtype=np.uint8)
    stats = NormStats.from_sums(PartialSums.of(frames))
    volumes = frames[:10][None]                                            # (1, T, S, S)
    got = normalize(torch.from_numpy(volumes), torch.from_numpy(stats.mean_image), stats.std)
    assert got.shape == (1, 10, 1, 27, 27)
    np.testing.assert_array_equal(got[0, :, 0].numpy(), stats.normalize(volumes[0]))


def test_early_stopping_keeps_the_best_epoch_and_waits_patience_epochs():
    from vadray.steps import end_of_epoch

    state = {"best_loss": float("inf"), "best_epoch": 0, "bad_epochs": 0, "epoch": 0, "stopped": None}
    val_losses = [0.9, 0.7, 0.75, 0.7, 0.72, 0.5, 0.8]          # a tie (0.7) is no improvement
    for epoch, loss in enumerate(val_losses, start=1):
        end_of_epoch(state, epoch, loss, patience=3)
        if state["stopped"]:
            break
    assert state["stopped"] == "early_stop" and state["epoch"] == 5   # 3 epochs after epoch 2
    assert state["best_epoch"] == 2 and state["best_loss"] == 0.7
    nan_state = dict(state, stopped=None, bad_epochs=0)
    end_of_epoch(nan_state, 6, float("nan"), patience=3)
    assert nan_state["best_epoch"] == 2 and nan_state["bad_epochs"] == 1


def test_a_huge_finite_loss_is_divergence_not_a_model():
    """--lr 1e8 gave a validation loss of 1.6e18, exit 0 and a useless final/ (train review):
    on standardised input an all-zero output scores about 1."""
    from vadray.steps import DIVERGED_LOSS, selection_value

    assert selection_value("val_loss", 0.9, 1.1, None) == 1.1
    for train_loss, val_loss in ((0.9, 1.6e18), (3e5, 1.1), (float("inf"), None), (float("nan"), 1.0),
                                 (0.9, float("inf"))):
        assert np.isnan(selection_value("val_loss", train_loss, val_loss, None)), (train_loss, val_loss)
        assert np.isnan(selection_value("synthetic", train_loss, val_loss, 0.9))
    assert selection_value("val_loss", DIVERGED_LOSS, None, None) == DIVERGED_LOSS
    # a NaN validation loss alone is a validation set without volumes, not divergence
    assert selection_value("val_loss", 0.9, float("nan"), None) == 0.9


# ---------------------------------------------------------------- shards on disk, split

def test_split_is_by_whole_video_and_deterministic(tmp_path):
    write_clip_shards(tmp_path, random_videos({f"cam/v{i}": 12 for i in range(10)}), chunk=5)
    videos = discover(str(tmp_path)).videos
    train, val = split_by_video(videos, 0.2)
    assert len(val) == 2 and len(train) == 8
    assert {v.video_id for v in train}.isdisjoint({v.video_id for v in val})
    again_train, again_val = split_by_video(list(reversed(videos)), 0.2)
    assert {v.video_id for v in again_val} == {v.video_id for v in val}
    assert split_by_video(videos, 0.0) == (videos, [])
    with pytest.raises(UsageError, match="at least 2"):
        split_by_video(videos[:1], 0.1)


def test_discover_accepts_the_clips_folder_and_reports_bad_paths(tmp_path):
    write_clip_shards(tmp_path / "out", random_videos({"a": 40, "b": 9}), chunk=7, files_per_video=2)
    direct = discover(str(tmp_path / "out" / "clips"))
    via_output = discover(str(tmp_path / "out"))
    assert [(v.video_id, v.num_frames) for v in direct.videos] == [("a", 40), ("b", 9)]
    assert [v.file_groups for v in direct.videos] == [v.file_groups for v in via_output.videos]
    assert len(direct.videos[0].file_groups) == 2   # two files that do not overlap: two groups
    assert count_volumes(direct.videos, 10, [1, 2, 3], 1) == (40 - 9) + (40 - 18) + (40 - 27)
    with pytest.raises(UsageError, match="does not exist"):
        discover(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="run `vadray ingest`"):
        discover(str(tmp_path / "empty"))
    # the stats/ beside clips/ is no clips folder (it failed on Parquet's magic bytes), and an
    # ingest whose every input failed holds errors/ only (train review)
    with pytest.raises(UsageError, match="run `vadray ingest`"):
        discover(str(tmp_path / "out" / "stats"))
    (tmp_path / "failed" / "errors").mkdir(parents=True)
    with pytest.raises(UsageError, match="only errors/: no input of its ingest decoded"):
        discover(str(tmp_path / "failed"))
    for table in ("frames", "events", "errors"):
        (tmp_path / "scored" / table).mkdir(parents=True)
    with pytest.raises(UsageError, match="is a score OUTPUT"):
        discover(str(tmp_path / "scored"))


def test_volumes_through_ray_data_cross_seams_and_never_span_videos(ray_session, tmp_path):
    videos = random_videos({"a": 45, "b": 31, "c": 8})      # c is shorter than one volume
    write_clip_shards(tmp_path, videos, chunk=7, files_per_video=2)
    shards = discover(str(tmp_path))
    rows = volume_dataset(shards, shards.videos, 10, [1, 2, 3], 2).take_all()
    order = [v.video_id for v in shards.videos]
    seen = {}
    for row in rows:
        video = order[row["video_index"]]
        expected = gather(videos[video], np.array([row["start"]]), 10, row["stride"])[0]
        np.testing.assert_array_equal(row["volume"], expected)   # frames of its own video only
        seen.setdefault((video, row["stride"]), []).append(row["start"])
    for video, frames in videos.items():
        for stride in (1, 2, 3):
            expected = volume_starts(len(frames), 10, stride, 2, cover_end=False).tolist()
            assert sorted(seen.get((video, stride), [])) == expected
    crossing = [r for r in rows if r["start"] // 7 != (r["start"] + 9 * r["stride"]) // 7]
    assert crossing, "no volume crossed a chunk seam"


def test_frame_size_that_the_model_cannot_take_is_a_usage_error(tmp_path):
    write_clip_shards(tmp_path / "out", random_videos({"a": 20, "b": 20}, size=31), chunk=8)
    with pytest.raises(UsageError, match="11 \\+ 8k"):
        run_training(str(tmp_path / "out"), str(tmp_path / "ckpt"))
    assert cli_main(["train", str(tmp_path / "out"), str(tmp_path / "ckpt2")]) == 2
    assert cli_main(["train", str(tmp_path / "missing"), str(tmp_path / "ckpt3")]) == 2
    assert not (tmp_path / "ckpt").exists()   # nothing written before the inputs are checked


def test_a_volume_length_in_model_params_is_refused_before_any_work(tmp_path):
    """conv_ae takes T as its channel count: --model-params '{"T": 8}' built a model that every
    10-frame training volume failed in, a traceback from inside the workers (code-health review)."""
    write_clip_shards(tmp_path / "out", random_videos({"a": 20, "b": 20}, size=27), chunk=8)
    for T in (8, 10.0, "10"):   # 10.0 passed and failed in nn.Conv2d with a TypeError (fixes review)
        with pytest.raises(UsageError, match=f"T={T!r}"):
            run_training(tmp_path / "out", tmp_path / "ckpt", model="conv_ae", model_params={"T": T})   # Paths too
    assert not (tmp_path / "ckpt").exists()


def test_model_params_that_build_a_model_that_cannot_run_are_refused_before_any_work(tmp_path):
    """An even lstm_kernel built a model whose forward pass failed in every worker, after run.json
    was written (so the corrected command was told to --resume, which replayed it); a channel
    count that is not a list was a TypeError traceback (train review)."""
    write_clip_shards(tmp_path / "out", random_videos({"a": 20, "b": 20}, size=27), chunk=8)
    for params, why in (({"lstm_kernel": 4}, "do not make a working convlstm_ae"),
                        ({"lstm_channels": 64}, "do not make a working convlstm_ae")):
        with pytest.raises(UsageError, match=why):
            run_training(tmp_path / "out", tmp_path / "ckpt", model_params=params)
    assert not (tmp_path / "ckpt").exists()


def test_settings_the_card_could_not_state_truly_are_refused_or_merged(tmp_path):
    """--strides 1,1 counted every volume twice in the card's volumes_per_epoch; 64 volumes over
    3 workers trained at 63 while the card said 64; a NaN std in stats.json trained to NaN and
    exited 0 (training review)."""
    from vadray.volumes import parse_strides

    assert parse_strides("3,1,1") == [1, 3]
    parser = argparse.ArgumentParser()
    train_job.add_arguments(parser)
    assert parse_strides(parser.parse_args(["shards", "ckpt"]).strides) == [1, 2, 3]   # the paper's
    with pytest.raises(UsageError, match="does not split evenly over 3 workers"):
        run_training(str(tmp_path / "shards"), str(tmp_path / "ckpt"), workers=3, batch_size=64)
    write_clip_shards(tmp_path / "out", random_videos({"a": 20, "b": 20}), chunk=8)
    stats = tmp_path / "out" / "stats" / "stats.json"
    stats.write_text(stats.read_text().replace('"std": ', '"std": NaN, "was": '))
    with pytest.raises(UsageError, match="stats.json cannot be used"):
        discover(str(tmp_path / "out"))


def test_a_folder_holding_a_model_is_never_overwritten(tmp_path):
    """A model with no run.json is no run to continue: the advice was 'pass --resume', and with
    it 'holds no vadray run' (train review). A model copied to the top was trained over: a new
    final/ beside it changed what `--checkpoint DIR` loads."""
    write_clip_shards(tmp_path / "shards", random_videos({"a": 20, "b": 20}), chunk=8)
    (tmp_path / "ckpt" / "final").mkdir(parents=True)
    (tmp_path / "ckpt" / "final" / "card.json").write_text("{}")
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "model.pt").write_bytes(b"weights")
    for folder in ("ckpt", "top"):
        for resume in (False, True):
            with pytest.raises(UsageError, match="no run.json describes: .* choose an empty CHECKPOINT_DIR"):
                run_training(str(tmp_path / "shards"), str(tmp_path / folder), resume=resume)
    assert (tmp_path / "ckpt" / "final" / "card.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path / "top")) == ["model.pt"]


@pytest.mark.parametrize("resources, says", [
    (dict(cpus_per_worker=0), "needs one of them above 0"),        # Ray Train: "Bundles cannot be empty"
    (dict(cpus_per_worker=-1, gpus_per_worker=1), "cannot be negative"),
    (dict(max_failures=-2), "--max-failures")])
def test_resources_no_worker_can_run_with_are_refused_before_anything_is_written(tmp_path, resources, says):
    write_clip_shards(tmp_path / "shards", random_videos({"a": 20, "b": 20}), chunk=8)
    with pytest.raises(UsageError, match=says):
        run_training(str(tmp_path / "shards"), str(tmp_path / "ckpt"), **resources)
    assert not (tmp_path / "ckpt").exists()


def test_workers_that_would_starve_the_data_tasks_are_refused(ray_session, tmp_path, caplog):
    write_clip_shards(tmp_path / "out", random_videos({"a": 20, "b": 20}), chunk=8)
    cpus = ray_session.cluster_resources()["CPU"]
    with pytest.raises(UsageError, match="cpus-per-worker"):
        run_training(str(tmp_path / "out"), str(tmp_path / "ckpt"), workers=2, cpus_per_worker=cpus / 2)
    # one 20-frame training video: a stride-3 volume spans 28 frames, and 11 + 2 volumes are not one
    # batch of 64; the card would list strides and a batch size that never trained (train review)
    assert ("yield 13 volumes an epoch (fewer than one batch of 64), none at stride(s) 3 (a volume at stride s "
            "spans 9·s + 1 frames): use longer footage or fewer strides or a smaller --batch-size") in caplog.text
    # a GPU this Ray does not have: Ray Train retried its worker group for ever, deaf to Ctrl-C
    gpus = int(ray_session.cluster_resources().get("GPU", 0))
    with pytest.raises(UsageError, match=f"and this Ray has {gpus}"):
        run_training(str(tmp_path / "out"), str(tmp_path / "ckpt"), workers=gpus + 1, cpus_per_worker=0.1,
                     gpus_per_worker=1)
    assert not (tmp_path / "ckpt").exists()


# ---------------------------------------------------------------- real Ray Train runs

@pytest.fixture(scope="module")
def ingested(tmp_path_factory, ray_session):
    """Three tiny H.264 clips (40 frames each) ingested at 27×27 by `vadray ingest`."""
    from vadray.ingest import run_ingest
    from vadray.synth import make_archive

    folder = tmp_path_factory.mktemp("train_archive")
    make_archive(str(folder / "archive"), num_videos=3, width=64, height=48, num_frames=40, seed=1)
    summary = run_ingest(str(folder / "archive"), str(folder / "out"), size=27, camera="lobby")
    assert summary.failures == 0 and summary.frames == 120
    return str(folder / "out")


RUN = dict(model_params=TINY, cpus_per_worker=0.5, epochs=3, batch_size=8, hop=4, val_fraction=0.34)


def _first_step_of_epoch(epoch: int, shards: str, workers: int, options=None) -> int:
    train, _ = split_by_video(discover(shards, options).videos, RUN["val_fraction"])
    per_worker = count_volumes(train, 10, [1, 2, 3], RUN["hop"]) // workers  # equal split
    steps_per_epoch = -(-per_worker // (RUN["batch_size"] // workers))
    return (epoch - 1) * steps_per_epoch + 1


@pytest.fixture(scope="module")
def interrupted_then_resumed(ingested, tmp_path_factory):
    """2 CPU workers, 3 epochs. Run 1 (no retries) dies in epoch 2: an interrupted job.
    Run 2 (--resume) continues after epoch 1; a worker dies in epoch 3 and FailureConfig
    restarts the group from epoch 2's checkpoint."""
    from ray.train import TrainingFailedError

    checkpoint_dir = tmp_path_factory.mktemp("ckpt") / "cam"
    outcome = {"checkpoint_dir": checkpoint_dir}
    try:
        run_training(ingested, str(checkpoint_dir), workers=2, max_failures=0,
                     fail_at_step=_first_step_of_epoch(2, ingested, 2), **RUN)
    except TrainingFailedError as exc:
        outcome["interruption"] = exc
    outcome["final_after_interruption"] = (checkpoint_dir / "final").exists()
    try:
        run_training(ingested, str(checkpoint_dir), workers=2, **RUN)
    except UsageError as exc:
        outcome["rerun_without_resume"] = exc
    sigint_before = signal.getsignal(signal.SIGINT)
    outcome["card"] = run_training(ingested, str(checkpoint_dir), workers=2, cpus_per_worker=0.5, max_failures=2,
                                   resume=True, epochs=99, fail_at_step=_first_step_of_epoch(3, ingested, 2))
    # Ray Train installs its own Ctrl-C handler in fit(); after it, calibration and the save
    # must answer Ctrl-C as the command does, not by swallowing two and exiting 0 on the third
    outcome["sigint_restored"] = signal.getsignal(signal.SIGINT) is sigint_before
    return outcome


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(interrupted_then_resumed):
    outcome = interrupted_then_resumed
    assert "interruption" in outcome and "injected failure" in str(outcome["interruption"])
    assert not outcome["final_after_interruption"]
    assert "--resume" in str(outcome["rerun_without_resume"])
    card = outcome["card"]
    assert card["training"]["resumed_after_epochs"][0] == 1     # --resume: after epoch 1's checkpoint
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3]
    assert card["epochs_run"] == 3                               # saved settings win over epochs=99
    assert outcome["sigint_restored"]


def test_an_aborted_run_is_not_a_finished_one():
    """Ray Train's Ctrl-C handler aborts the run and fit() returns its last checkpoint: only an
    early stop or the last epoch may become final/."""
    from vadray.trainloop import finished

    assert finished({"stopped": "early_stop", "epoch": 4}, 50) and finished({"stopped": None, "epoch": 50}, 50)
    assert not finished({"stopped": None, "epoch": 4}, 50)


@pytest.mark.slow
def test_ctrl_c_during_training_is_exit_130_and_leaves_no_final_model(ingested, tmp_path):
    """A real `vadray train` process gets SIGINT after its first epoch: Ray Train aborts the run
    and returns from fit(), which must not become a final model or exit 0/1."""
    import signal
    import subprocess
    import sys
    import threading

    ckpt = tmp_path / "ckpt"
    argv = [sys.executable, "-m", "vadray.cli", "train", ingested, str(ckpt), "--epochs", "500",
            "--model-params", json.dumps(TINY), "--batch-size", "8", "--hop", "4", "--val-fraction", "0.34",
            "--cpus-per-worker", "0.5"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, first_epoch = [], threading.Event()

    def read():
        for line in proc.stdout:
            seen.append(line)
            if "epoch 2/500" in line:
                first_epoch.set()

    threading.Thread(target=read, daemon=True).start()
    assert first_epoch.wait(240), "".join(seen[-20:])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130, "".join(seen[-20:])
    assert any("interrupted. Run it again with --resume" in line for line in seen)
    assert not (ckpt / "final").exists()


def test_resume_refuses_shards_that_changed_since_the_run_started(ingested, tmp_path):
    """A video ingested into SHARDS after the run started would change the statistics and could
    move into validation under a half-trained model: --resume says what changed instead."""
    from vadray.train import RUN_FILE, RUN_SETTINGS

    train, val = split_by_video(discover(ingested).videos, RUN["val_fraction"])
    footage = {"train": {v.video_id: v.num_frames for v in train}, "val": {v.video_id: v.num_frames for v in val},
               "stats_frames": 80}
    footage["train"].pop(train[0].video_id)
    settings = {"shards": ingested, "model": "convlstm_ae", "model_params": TINY, "epochs": 3, "batch_size": 8,
                "lr": 1e-4, "patience": 10, "strides": [1, 2, 3], "hop": 4, "val_fraction": RUN["val_fraction"],
                "seed": 0, "T": 10, "select": "val_loss"}
    assert set(settings) == set(RUN_SETTINGS)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / RUN_FILE).write_text(json.dumps(dict(settings, run_id="train-x", footage=footage)))
    with pytest.raises(UsageError) as info:
        run_training(ingested, str(tmp_path / "ckpt"), resume=True)
    assert f"train: new {train[0].video_id}" in str(info.value)
    assert "statistics over 120 frames (the run started on 80)" in str(info.value)


def test_resume_splits_the_runs_own_batch_size_over_the_workers(ingested, tmp_path):
    """--workers may change on resume, and the batch size is the run's: the split was checked on
    the command's --batch-size (64 refused a run of 60 over 3 workers; 63 let a run of 64 train
    at 63 over 3 while its card said 64) (train review)."""
    from vadray.train import RUN_FILE

    settings = {"shards": ingested, "model": "convlstm_ae", "model_params": TINY, "epochs": 3, "batch_size": 60,
                "lr": 1e-4, "patience": 10, "strides": [1, 2, 3], "hop": 4, "val_fraction": RUN["val_fraction"],
                "seed": 0, "T": 10, "select": "val_loss"}
    (tmp_path / "ckpt").mkdir()
    footage = {"train": {}, "val": {}, "stats_frames": 80}
    (tmp_path / "ckpt" / RUN_FILE).write_text(json.dumps(dict(settings, run_id="train-x", footage=footage)))
    with pytest.raises(UsageError) as info:   # 60 over 3 splits: on to the next check (changed footage)
        run_training(ingested, str(tmp_path / "ckpt"), resume=True, workers=3)
    assert "changed since the run started" in str(info.value)
    (tmp_path / "ckpt" / RUN_FILE).write_text(json.dumps(dict(settings, batch_size=64, run_id="train-x", footage=footage)))
    with pytest.raises(UsageError, match="the run was started with --batch-size 64, which does not split evenly"):
        run_training(ingested, str(tmp_path / "ckpt"), resume=True, workers=3, batch_size=63)


def test_a_diverged_epoch_ranks_last_after_ray_trains_saved_state_is_read_back():
    """Ray Train saves its checkpoint ranking as JSON, which writes inf as null: a run whose
    last epoch diverged (+inf), interrupted before final/ was written, could never be resumed
    (None < float in the ranking) (train review)."""
    from ray.train.v2._internal.execution.checkpoint.checkpoint_manager import _TrainingResultState

    from vadray.trainloop import best_of, ranked_loss

    def saved_and_read_back(epoch, selection):
        state = _TrainingResultState(checkpoint_dir_name=f"epoch{epoch}",
                                     metrics={"epoch": epoch, "selection_loss": ranked_loss(selection)})
        return (f"epoch{epoch}", json.loads(state.json())["metrics"])

    pairs = [saved_and_read_back(1, 0.7), saved_and_read_back(2, 0.5), saved_and_read_back(3, float("nan")),
             saved_and_read_back(4, float("inf")), saved_and_read_back(5, 0.5)]
    assert all(isinstance(m["selection_loss"], float) for _, m in pairs)
    assert best_of(pairs)[0] == "epoch2"                 # lowest, earlier on a tie
    assert best_of(pairs[2:4] + [("old", {"epoch": 9, "selection_loss": None})])[0] == "epoch3"


def test_resume_names_the_settings_it_does_not_take_from_the_command():
    saved = {"shards": "/data/cam", "epochs": 3, "lr": 1e-4, "strides": [1, 2, 3], "select": "val_loss"}
    given = dict(saved, epochs=50, strides=[1])
    assert ignored_on_resume(given, saved) == ["epochs 50 (saved 3)", "strides [1] (saved [1, 2, 3])"]
    assert ignored_on_resume(saved, saved) == []


@pytest.mark.slow
def test_a_failed_worker_resumes_from_the_last_checkpoint_and_finishes(interrupted_then_resumed):
    outcome = interrupted_then_resumed
    markers = list(outcome["checkpoint_dir"].glob(".injected-failure*"))
    assert len(markers) == 2                                     # both injected failures happened
    assert outcome["card"]["training"]["resumed_after_epochs"] == [1, 2]  # FailureConfig: after epoch 2
    assert outcome["card"]["training"]["stopped"] == "max_epochs"


@pytest.mark.slow
def test_the_final_checkpoint_is_the_best_by_validation_loss(interrupted_then_resumed):
    import ray.train

    outcome = interrupted_then_resumed
    card, checkpoint_dir = outcome["card"], outcome["checkpoint_dir"]
    val_losses = [h["val_loss"] for h in card["history"]]
    assert card["best_epoch"] == 1 + int(np.argmin(val_losses))
    assert card["best_val_loss"] == min(val_losses)
    result = ray.train.Result.from_path(str(checkpoint_dir / "run"))
    best = min(result.best_checkpoints, key=lambda cm: cm[1]["val_loss"])
    assert best[1]["epoch"] == card["best_epoch"]
    with best[0].as_directory() as folder:
        best_weights = torch.load(os.path.join(folder, "model.pt"), weights_only=True)
    final_weights = torch.load(checkpoint_dir / "final" / "model.pt", weights_only=True)
    for key in best_weights:
        torch.testing.assert_close(final_weights[key], best_weights[key])


@pytest.mark.slow
def test_the_card_describes_the_model_and_reloads(interrupted_then_resumed, ingested):
    outcome = interrupted_then_resumed
    card = outcome["card"]
    model, loaded_card = vadray.load_model(str(outcome["checkpoint_dir"]))
    assert loaded_card == json.loads(json.dumps(card))
    assert card["model"]["name"] == "convlstm_ae" and card["model"]["params"]["lstm_channels"] == [4, 4, 4]
    assert card["input"] == {**card["input"], "size": 27, "T": 10, "strides": [1, 2, 3], "hop": 4}
    assert NormStats.from_dict(card["norm_stats"]).size == 27
    assert card["training_data"]["videos"] == 3 and card["training_data"]["val_videos"] == 1
    assert card["training_data"]["frames"] == 120 and card["training_data"]["train_frames"] == 80
    assert set(card["versions"]) >= {"torch", "ray", "vadray", "python"}
    assert card["model_id"] == vadray.checkpoint.model_id("convlstm_ae", model.state_dict())
    assert card["run_id"].startswith("train-")
    assert os.path.isabs(card["training_data"]["shards"])   # --resume and readers work from any folder
    assert card["training_data"]["cameras"] == ["lobby"]      # a model is per camera: the card says which

    # The card's validation distribution is scoring's math on the held-out video, recomputed here.
    from vadray import storage
    from vadray.trainvolumes import read_chunks

    shards = discover(ingested)
    (val_video,) = [v for v in shards.videos if v.video_id in card["training_data"]["val_video_ids"]]
    fs, _ = storage.pyarrow_fs(shards.clips_uri)
    frames = np.concatenate([f for _, f in read_chunks(fs, val_video.file_groups, val_video.video_id)])
    starts = volume_starts(len(frames), 10, 1, scoring.SCORE_HOP, cover_end=False)   # as `vadray score` by default
    x = torch.from_numpy(shards.stats.normalize(gather(frames, starts, 10, 1)))[:, :, None]
    with torch.no_grad():
        y = model(x)
    means = scoring.accumulate(starts, 10, scoring.frame_errors(x.numpy(), y.numpy())).mean()
    validation = card["validation"]["frame_error"]
    assert validation["n"] == len(frames) == 40 and card["validation"]["volume_hop"] == scoring.SCORE_HOP

    # The 2-worker run's validation loss at the kept epoch is the loss over ALL validation
    # volumes (stride 1, every T frames), not over a per-worker share of them.
    starts = volume_starts(len(frames), 10, 1, 10, cover_end=False)
    x = torch.from_numpy(shards.stats.normalize(gather(frames, starts, 10, 1)))[:, :, None]
    with torch.no_grad():
        val_loss = torch.nn.functional.mse_loss(model(x), x).item()
    assert card["best_val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert validation["mean"] == pytest.approx(float(means.recon_error.mean()), rel=1e-4)
    assert card["validation"]["cell_error_max"]["n"] == 40


@pytest.mark.slow
def test_the_cli_trains_from_and_into_s3(ingested, s3_bucket, capsys, tmp_path):
    """`vadray train s3://… s3://…` (moto's S3 server): shards read and checkpoints written
    through the storage options, the final checkpoint loadable from the bucket."""
    import s3fs

    bucket, options = s3_bucket
    s3fs.S3FileSystem(**options).put(ingested, f"{bucket}/out", recursive=True)
    (tmp_path / "s3.json").write_text(json.dumps(options))   # credentials never on the command line
    checkpoint_dir = f"s3://{bucket}/models/cam"
    status = cli_main(["train", f"s3://{bucket}/out", checkpoint_dir, "--epochs", "1", "--workers", "1",
                       "--cpus-per-worker", "0.5", "--batch-size", "8", "--hop", "4", "--val-fraction", "0.34",
                       "--model-params", json.dumps(TINY), "--storage-options", f"@{tmp_path / 's3.json'}",
                       "--torch-threads", "1"])
    assert status == 0
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{"):])
    model, card = vadray.load_model(checkpoint_dir, storage_options=options)
    assert printed["model_id"] == card["model_id"] == vadray.checkpoint.model_id("convlstm_ae", model.state_dict())
    assert card["epochs_run"] == 1 and card["training_data"]["shards"] == f"s3://{bucket}/out"
    assert card["validation"]["frame_error"]["n"] == 40
    assert card["training"]["torch_threads_per_worker"] == 1   # as asked, not the default's 2


def test_a_run_that_diverges_from_its_first_epoch_leaves_its_folder_free(ingested, tmp_path):
    """It said 'Nothing was saved' but left run.json and run/: a rerun with a sane --lr was
    told to pass --resume, which took the saved --lr and diverged again (train review)."""
    from vadray.trainloop import Diverged

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Diverged, match="above 100"):
        run_training(ingested, str(ckpt), workers=1, **dict(RUN, epochs=1, lr=1e8))
    assert not (ckpt / "run.json").exists() and not (ckpt / "run").exists() and not (ckpt / "final").exists()
    card = run_training(ingested, str(ckpt), workers=1, **dict(RUN, epochs=1))
    assert card["epochs_run"] == 1 and np.isfinite(card["best_val_loss"])
    # a CPU worker reserves 1 CPU but trains with the node's 2 (1.5× faster an epoch at 59 px)
    assert card["training"]["torch_threads_per_worker"] == 2
    # --resume of a finished run calibrated and saved final/ again, with a new date (train review)
    saved = (ckpt / "final" / "card.json").read_bytes()
    assert run_training(ingested, str(ckpt), workers=1, resume=True, **RUN) == card
    assert (ckpt / "final" / "card.json").read_bytes() == saved


def test_select_synthetic_keeps_the_epoch_with_the_best_synthetic_auc(ingested, tmp_path):
    card = run_training(ingested, str(tmp_path / "ckpt"), workers=1, select="synthetic",
                        **dict(RUN, epochs=2))
    aucs = [h["synthetic_auc"] for h in card["history"]]
    assert all(0.5 < a <= 1.0 for a in aucs)   # the pasted anomalies stand out from the first epoch
    ranked = sorted(card["history"], key=lambda h: (-h["synthetic_auc"], h["val_loss"]))
    assert card["best_epoch"] == ranked[0]["epoch"]  # a tie goes to the lower validation loss
    assert card["best_synthetic_auc"] == max(aucs)
    assert card["best_val_loss"] == card["history"][card["best_epoch"] - 1]["val_loss"]
    assert card["training"]["selection"].startswith("maximum synthetic-anomaly AUC")
    with pytest.raises(UsageError, match="--select"):
        run_training(ingested, str(tmp_path / "other"), select="test_labels")


def test_validation_videos_without_frame_errors_calibrate_on_the_training_videos(ingested, tmp_path,
                                                                                   monkeypatch, caplog):
    """Code review: validation videos with no volume of T decoded frames in a row gave a card
    with frame_error mean null; score then refused it as 'not a finished training run's
    checkpoint'. Now the training videos calibrate it, and the card says so."""
    import vadray.train as train_module

    real = train_module.validation_frame_errors
    calls = []

    def none_on_validation(info, videos, *args, **kwargs):
        calls.append(len(videos))
        errors = real(info, videos, *args, **kwargs)
        if len(calls) == 1:   # the validation videos
            errors = {k: np.full_like(v, np.nan) for k, v in errors.items()}
        return errors

    monkeypatch.setattr(train_module, "validation_frame_errors", none_on_validation)
    with caplog.at_level("WARNING", logger="vadray.train"):
        card = run_training(ingested, str(tmp_path / "ckpt"), workers=1, **dict(RUN, epochs=1))
    assert calls == [1, 2]   # 3 videos, val_fraction 0.34: one validation video, then the two others
    assert card["validation"]["on"].startswith("training videos") and card["validation"]["videos"] == 2
    assert card["validation"]["frame_error"]["std"] > 0
    assert "calibrated on the training videos instead" in caplog.text
    from vadray.score import _usable_card
    assert _usable_card(str(tmp_path / "ckpt"), {}, 4, 4)["model_id"] == card["model_id"]
