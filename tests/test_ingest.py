"""The ingest job on a real local Ray: local folders, S3 (moto server), bad inputs, Ped2."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest

import videos
from conftest import PED2, TEST_SIZE, ped2
from vadray import storage
from vadray.cli import main
from vadray.decode import decode_segment
from vadray.probe import probe
from vadray.errors import read_errors
from vadray.clip_shards import read_stats
from vadray.ingest import run_ingest
from vadray.listing import list_videos
from vadray.preprocess import NormStats, PartialSums


def read_clips(output: str, storage_options=None):
    fs, path = storage.pyarrow_fs(storage.join(output, "clips"), storage_options)
    return pads.dataset(path, filesystem=fs, partitioning="hive").to_table().to_pandas()


def frames_of(clips, video_id: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    rows = clips[clips.video_id == video_id].sort_values("start_frame")
    index = np.concatenate([np.arange(r.start_frame, r.start_frame + r.num_frames) for r in rows.itertuples()])
    frames = np.concatenate([np.frombuffer(r.frames, np.uint8).reshape(r.num_frames, size, size)
                             for r in rows.itertuples()])
    return index, frames


def test_ingest_local_archive_tiles_videos_and_reruns_idempotently(ray_session, synth_archive, tmp_path):
    out = str(tmp_path / "out")
    summary = run_ingest(str(synth_archive), out, camera="lobby", size=TEST_SIZE, segment_seconds=1.3)
    assert (summary.videos, summary.videos_failed, summary.failures, summary.frames) == (2, 0, 0, 60)
    assert summary.segments == 6  # 30 frames at 10 fps in 13-frame segments, per video
    clips = read_clips(out)
    assert set(clips.video_id) == {"video001", "video002"} and set(clips.camera) == {"lobby"}
    for vid in ("video001", "video002"):
        index, frames = frames_of(clips, vid, TEST_SIZE)
        np.testing.assert_array_equal(index, np.arange(30))  # seams: nothing lost, nothing twice
        path = str(synth_archive / f"{vid}.mp4")
        whole = decode_segment(path, probe(path), 0, 30, TEST_SIZE)
        np.testing.assert_array_equal(frames, whole.frames)
    row = clips.sort_values(["video_id", "start_frame"]).iloc[1]
    assert (row.width, row.height, row["size"], row.fps) == (64, 48, TEST_SIZE, 10.0)
    np.testing.assert_allclose(row.time_s, (row.start_frame + np.arange(row.num_frames)) / 10.0)

    stats = read_stats(out)
    all_frames = np.concatenate([frames_of(clips, v, TEST_SIZE)[1] for v in ("video001", "video002")])
    direct = NormStats.from_sums(PartialSums.of(all_frames))
    np.testing.assert_allclose(stats.mean_image, direct.mean_image, rtol=1e-5)
    assert stats.std == pytest.approx(direct.std) and stats.num_frames == 60

    again = run_ingest(str(synth_archive), out, camera="lobby", size=TEST_SIZE, segment_seconds=2.0)
    assert again.frames == 60
    assert len(read_clips(out).pipe(lambda c: c[c.video_id == "video001"]).pipe(
        lambda c: np.concatenate([np.arange(s, s + n) for s, n in zip(c.start_frame, c.num_frames)]))) == 30
    assert read_stats(out).num_frames == 60  # replaced, not duplicated

    # a same-named sibling makes video001.mp4 keep its extension: its shards under the old id go
    # (backfill review: the footage was in the shards and the statistics twice)
    # (a `video001` ingested from another folder is another file, and stays)
    src = tmp_path / "src"
    shutil.copytree(synth_archive, src)
    shutil.copy(src / "video002.mp4", src / "video001.mkv")
    beside = run_ingest(str(src), out, camera="lobby", size=TEST_SIZE)
    assert beside.frames == 90 and read_stats(out).num_frames == 120   # video002 is replaced: one id
    assert read_clips(out).groupby("video_id").num_frames.sum().to_dict() == {
        "video001": 30, "video001.mp4": 30, "video001.mkv": 30, "video002": 30}
    renamed_out = str(tmp_path / "renamed")
    (src / "video001.mkv").rename(tmp_path / "later.mkv")
    assert run_ingest(str(src), renamed_out, camera="lobby", size=TEST_SIZE).frames == 60
    (tmp_path / "later.mkv").rename(src / "video001.mkv")
    assert run_ingest(str(src), renamed_out, camera="lobby", size=TEST_SIZE).frames == 90
    assert read_stats(renamed_out).num_frames == 90
    assert read_clips(renamed_out).groupby("video_id").num_frames.sum().to_dict() == {
        "video001.mp4": 30, "video001.mkv": 30, "video002": 30}
    os.remove(src / "video001.mkv")   # the sibling goes: video001.mp4 is video001 again, its shards once
    assert run_ingest(str(src), renamed_out, camera="lobby", size=TEST_SIZE).frames == 60
    assert read_clips(renamed_out).groupby("video_id").num_frames.sum().to_dict() == {
        "video001": 30, "video001.mkv": 30, "video002": 30}   # (a deleted file keeps its shards)
    assert read_stats(renamed_out).num_frames == 90


def test_no_statistics_stand_for_shards_that_are_gone(ray_session, synth_archive, tmp_path):
    """A video ingested, then its file broken and ingested again: its shards go (footage that is
    gone) and, none being left, so do the statistics training would read (fixes review)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(synth_archive / "video001.mp4", src / "video001.mp4")
    out = str(tmp_path / "out")
    # (pathlib.Path locations, as Python callers pass them: a TypeError before, API review)
    assert run_ingest(src, tmp_path / "out", size=TEST_SIZE).frames == 30 and read_stats(out).num_frames == 30
    (src / "video001.mp4").write_bytes(b"not a video any more" * 100)
    broken = run_ingest(str(src), out, size=TEST_SIZE)
    assert (broken.frames, broken.videos_failed, broken.print_and_exit_status()) == (0, 1, 3)
    with pytest.raises(FileNotFoundError):
        read_stats(out)


def test_stats_cover_every_video_in_output_across_runs(ray_session, synth_archive, synth_test_archive,
                                                       tmp_path):
    """Stats come from the decode tasks' integer sums (no read-back pass); a second archive
    ingested into the same OUTPUT adds to them, and the result equals a direct computation."""
    out = str(tmp_path / "out")
    run_ingest(str(synth_archive), out, size=TEST_SIZE, segment_seconds=1.3)
    second = run_ingest(str(synth_test_archive), out, size=TEST_SIZE, segment_seconds=60.0)
    assert (second.frames, second.segments) == (90, 3)
    clips = read_clips(out)
    assert len(set(clips.video_id)) == 5
    frames = np.concatenate([frames_of(clips, v, TEST_SIZE)[1] for v in sorted(set(clips.video_id))])
    direct = NormStats.from_sums(PartialSums.of(frames))
    stats = read_stats(out)
    assert stats.num_frames == 150 == frames.shape[0]
    np.testing.assert_array_equal(stats.mean_image, direct.mean_image)  # exact integer sums
    assert stats.std == direct.std and stats.pixel_std == direct.pixel_std
    x = frames / 255.0
    assert stats.std == pytest.approx((x - x.mean(axis=0)).std(), rel=1e-9)


def test_bad_inputs_become_error_rows_and_the_rest_is_ingested(ray_session, tmp_path, capsys):
    src = tmp_path / "src"
    expected = videos.bad_inputs(str(src))
    from vadray.synth import write_video

    write_video(str(src / "good.mp4"), videos.frames(20))
    out = str(tmp_path / "out")
    status = main(["ingest", str(src), out, "--size", str(TEST_SIZE)])
    assert status == 3  # finished, some inputs failed
    printed = capsys.readouterr().out
    assert "7 videos (6 failed)" in printed and "20 frames" in printed
    errors = read_errors(storage.join(out, "errors")).to_pandas()
    got = dict(zip(errors.video_id, errors.error_type))
    assert got == expected
    assert all(errors.stage == "probe") and all(errors.message.str.len() > 10)
    # FFmpeg's reason without its errno and file name (a file read through s3fs is '<none>')
    assert not errors.message.str.contains("Errno|<none>").any(), errors.message.tolist()
    assert set(read_clips(out).video_id) == {"good"}


def test_unusual_formats_through_the_job(ray_session, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    makers = {"ten_bit.mp4": videos.h264_10bit, "alpha.mov": videos.alpha_png_mov,
              "rgb.mkv": videos.rgb_ffv1_mkv, "uhd.mp4": videos.h264_4k, "vfr.mkv": videos.vfr_mkv,
              "part2.avi": videos.mpeg4_avi, "size_change.ts": videos.resolution_change_ts}
    expected_frames = {}
    for name, make in makers.items():
        make(str(src / name))
        expected_frames[name.rsplit(".", 1)[0]] = probe(str(src / name)).num_frames
    out = str(tmp_path / "out")
    summary = run_ingest(str(src), out, size=TEST_SIZE, segment_seconds=0.5)
    assert summary.failures == 0, summary.errors
    clips = read_clips(out)
    for vid, n in expected_frames.items():
        index, frames = frames_of(clips, vid, TEST_SIZE)
        np.testing.assert_array_equal(index, np.arange(n))
        assert frames.std() > 1


def test_unreachable_source_and_bad_options_exit_2(synth_archive, tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    for bad, said in (("{bad", "not valid JSON"), ("[1]", "must be a JSON object")):
        assert main(["ingest", str(synth_archive), str(tmp_path / "out"), "--storage-options", bad]) == 2
        assert said in capsys.readouterr().err
    assert main(["ingest", str(synth_archive), str(tmp_path / "out"), "--frame-fps", "0"]) == 2
    assert "--frame-fps" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("no videos here")
    assert main(["ingest", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no videos" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_secrets_are_never_printed(s3_bucket, tmp_path, capsys, caplog):
    """Credentials reach s3fs through --storage-options @FILE; no error path prints or logs
    them. Written on the command line they are refused (`ps` and Ray's job records show it)."""
    bucket, options = s3_bucket
    secret = "vadray-test-secret-Zq8"
    inline = json.dumps({**options, "secret": secret, "key": "AKIAVADRAYTESTKEY"})
    assert main(["ingest", f"s3://{bucket}/src", f"s3://{bucket}/out", "--storage-options", inline]) == 2
    said = capsys.readouterr()
    assert "--storage-options @FILE" in said.err and secret not in said.out + said.err + caplog.text
    (tmp_path / "s3.json").write_text(inline)
    given = f"@{tmp_path / 's3.json'}"
    for argv in (["ingest", f"s3://{bucket}/missing", f"s3://{bucket}/out"],
                 ["score", f"s3://{bucket}/missing", f"s3://{bucket}/out", "--checkpoint", f"s3://{bucket}/none"],
                 ["train", f"s3://{bucket}/missing", f"s3://{bucket}/ckpt"]):
        assert main([*argv, "--storage-options", given]) == 2
        said = capsys.readouterr()
        assert said.err.startswith(f"vadray {argv[0]}: error:")
        assert secret not in said.out + said.err + caplog.text and "AKIAVADRAYTESTKEY" not in said.err


def test_credentials_that_may_write_but_not_delete_are_refused_before_a_rerun_duplicates_shards(
        ray_session, synth_archive, s3_iam_server, tmp_path, capsys):
    """An append-only key (no s3:DeleteObject): S3 refuses each delete inside a 200 reply and
    s3fs's bulk delete drops those errors, so a rerun appended a second copy of every video's
    clips beside the first and exited 0. The write check asks whether its object went."""
    import s3fs

    from vadray.exits import JobFailed

    admin, no_delete = s3_iam_server["admin"], s3_iam_server["no_delete"]
    s3fs.S3FileSystem(**admin).put(str(synth_archive) + "/", "vadray-iam/src/", recursive=True)
    out = "s3://vadray-iam/out"
    assert run_ingest("s3://vadray-iam/src", out, size=TEST_SIZE, storage_options=admin).frames == 60
    fs = s3fs.S3FileSystem(**admin)
    clips_before = sorted(fs.find("vadray-iam/out/clips"))
    (tmp_path / "append-only.json").write_text(json.dumps(no_delete))
    argv = ["ingest", "s3://vadray-iam/src", out, "--size", str(TEST_SIZE),
            "--storage-options", f"@{tmp_path / 'append-only.json'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot delete in OUTPUT" in err and no_delete["secret"] not in err
    fs.invalidate_cache()
    assert sorted(fs.find("vadray-iam/out/clips")) == clips_before   # nothing added, nothing lost
    assert read_stats(out, admin).num_frames == 60
    # a delete refused past that check (a key denied on some objects only) is a clear failure too
    appender = s3fs.S3FileSystem(**no_delete, skip_instance_cache=True)
    with pytest.raises(JobFailed, match="could not delete 1 of 1 object"):
        storage.delete(appender, clips_before[0])
    assert fs.exists(clips_before[0])


def test_an_output_the_credentials_may_not_write_is_exit_2_before_any_work(s3_bucket, tmp_path, capsys,
                                                                         monkeypatch):
    """A read-only role: reading works, so the store is reachable, but writes are denied. Ingest
    and train ended in an 88- and a 49-line traceback half-way (security review); each output
    is now tried with a small object first."""
    import s3fs

    bucket, options = s3_bucket
    (tmp_path / "s3.json").write_text(json.dumps(options))

    async def denied(self, path, data, **kwargs):
        raise PermissionError("Access Denied")

    monkeypatch.setattr(s3fs.S3FileSystem, "_pipe_file", denied)
    s3fs.S3FileSystem.clear_instance_cache()   # cached instances bound the real method at creation
    labels = tmp_path / "labels.csv"
    labels.write_text("video,frame_index,label\n")
    try:
        for argv in (["ingest", str(tmp_path), f"s3://{bucket}/out"],
                     ["train", str(tmp_path), f"s3://{bucket}/ckpt"],
                     ["score", str(tmp_path), f"s3://{bucket}/scores", "--checkpoint", str(tmp_path)],
                     ["evaluate", str(tmp_path), "--labels", str(labels), "--json", f"s3://{bucket}/m/metrics.json"],
                     ["query", str(tmp_path), "SELECT 1", "--out", f"s3://{bucket}/q/x.csv"]):
            assert main([*argv, "--storage-options", f"@{tmp_path / 's3.json'}"]) == 2, argv
            err = capsys.readouterr().err
            assert "cannot write to" in err and "PermissionError: Access Denied" in err and "Traceback" not in err, err
            if argv[0] in ("evaluate", "query"):
                assert f"'{argv[-1]}'" in err   # the output file named as given, not its folder
        assert main(["evaluate", str(tmp_path), "--labels", str(labels), "--json", "s3://metrics.json",
                     "--storage-options", f"@{tmp_path / 's3.json'}"]) == 2
        assert "names a bucket, not a file" in capsys.readouterr().err
    finally:
        s3fs.S3FileSystem.clear_instance_cache()   # no later test may get an instance bound to `denied`


def test_an_unreachable_store_is_exit_2_before_any_work_for_every_command(synth_archive, tmp_path, capsys):
    """Schedulers retry on 1 and not on 2: an endpoint that is down is a bad argument, not a crash."""
    import socket

    with socket.socket() as s:       # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "vadray-unreachable-secret"
    (tmp_path / "s3.json").write_text(json.dumps({"key": "k", "secret": secret,
                                                  "endpoint_url": f"http://127.0.0.1:{port}",
                                                  "config_kwargs": {"retries": {"max_attempts": 1}}}))
    options = f"@{tmp_path / 's3.json'}"
    labels = tmp_path / "labels.csv"
    labels.write_text("video,frame_index,label\n")
    for argv in (["ingest", str(synth_archive), "s3://b/out"],
                 ["ingest", str(synth_archive), "s3://b"],            # a bare bucket as well
                 ["score", str(synth_archive), "s3://b/out", "--checkpoint", "s3://b/ckpt"],
                 ["train", "s3://b/shards", str(tmp_path / "ckpt")],
                 ["evaluate", "s3://b/out", "--labels", str(labels)],
                 ["report", "s3://b/out", str(tmp_path / "report")],
                 ["query", "s3://b/out", "SELECT 1"]):
        assert main([*argv, "--storage-options", options]) == 2, argv
        said = capsys.readouterr()
        assert "cannot reach" in said.err and "EndpointConnectionError" in said.err, argv
        assert secret not in said.out + said.err
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "report").exists()


def test_a_second_frame_size_or_camera_into_one_output_is_refused(ray_session, synth_archive, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert run_ingest(str(synth_archive), out, size=TEST_SIZE, camera="lobby").frames == 60
    assert main(["ingest", str(synth_archive), out, "--size", str(TEST_SIZE + 8), "--camera", "lobby"]) == 2
    assert f"holds {TEST_SIZE}-px shards" in capsys.readouterr().err
    # the same file names from another camera would replace lobby's clips
    assert main(["ingest", str(synth_archive), out, "--size", str(TEST_SIZE), "--camera", "gate"]) == 2
    assert "holds the shards of camera 'lobby'" in capsys.readouterr().err
    assert read_stats(out).size == TEST_SIZE and set(read_clips(out).camera) == {"lobby"}   # nothing lost
    # an OUTPUT of an earlier version: its stats.json names no camera, the clips still do
    stats_json = tmp_path / "out" / "stats" / "stats.json"
    stats_json.write_text(json.dumps({k: v for k, v in json.loads(stats_json.read_text()).items() if k != "camera"}))
    assert main(["ingest", str(synth_archive), out, "--size", str(TEST_SIZE), "--camera", "gate"]) == 2
    assert "holds the shards of camera 'lobby'" in capsys.readouterr().err


def test_s3_to_s3_through_a_real_s3_server(ray_session, synth_archive, s3_bucket, tmp_path, caplog):
    bucket, options = s3_bucket
    fs, _ = storage.url_to_fs(f"s3://{bucket}", options)
    for f in synth_archive.glob("*.mp4"):
        fs.put(str(f), f"{bucket}/archive/site-a/{f.name}")
    for marker in ("archive/", "archive/site-a/"):   # the empty "folder" objects S3 consoles make
        fs.pipe_file(f"{bucket}/{marker}", b"")
    out = f"s3://{bucket}/ingested"
    with caplog.at_level("INFO", logger="vadray"):
        summary = run_ingest(f"s3://{bucket}/archive", out, size=TEST_SIZE, segment_seconds=1.3,
                             storage_options=options)
    assert (summary.videos, summary.failures, summary.frames) == (2, 0, 60)
    assert "not read" not in caplog.text   # folder markers are no files to count
    clips = read_clips(out, options)
    assert set(clips.video_id) == {"site-a/video001", "site-a/video002"}
    assert set(clips.source_uri) == {f"s3://{bucket}/archive/site-a/video00{i}.mp4" for i in (1, 2)}
    local = str(tmp_path / "local")
    run_ingest(str(synth_archive), local, size=TEST_SIZE, segment_seconds=1.3)
    np.testing.assert_array_equal(frames_of(clips, "site-a/video001", TEST_SIZE)[1],
                                  frames_of(read_clips(local), "video001", TEST_SIZE)[1])
    s3_stats = read_stats(out, options)
    assert s3_stats.num_frames == 60 and s3_stats.std == pytest.approx(read_stats(local).std)
    # one process, the file replaced after its folder was listed: a listing of the file itself
    # must see the new one (s3fs answered from the folder's cached listing: a stale ETag)
    import s3fs

    listed = {r.video_id: r for r in list_videos(f"s3://{bucket}/archive", options)}["site-a/video001"]
    another_writer = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    another_writer.put(str(synth_archive / "video002.mp4"), f"{bucket}/archive/site-a/video001.mp4")
    now = list_videos(listed.uri, options)[0]
    assert (now.size, now.etag) != (listed.size, listed.etag)


@ped2
@pytest.mark.slow
def test_ped2_train_ingests_2550_frames_with_short_segments(ray_session, tmp_path):
    out = str(tmp_path / "ped2")
    summary = run_ingest(str(PED2 / "train"), out, size=227, segment_seconds=4.0)  # 40 < 120-180 frames
    assert (summary.videos, summary.failures, summary.frames) == (16, 0, 2550)
    clips = read_clips(out)
    assert set(clips["size"]) == {227} and clips.video_id.nunique() == 16
    for vid, rows in clips.groupby("video_id"):
        starts = np.concatenate([np.arange(s, s + n) for s, n in zip(rows.start_frame, rows.num_frames)])
        np.testing.assert_array_equal(np.sort(starts), np.arange(len(starts)))
    index, frames = frames_of(clips, "Train001", 227)
    path = str(PED2 / "train" / "Train001.mp4")
    whole = decode_segment(path, probe(path), 0, 120, 227)
    np.testing.assert_array_equal(frames, whole.frames)
