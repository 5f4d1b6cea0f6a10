"""The scoring job on a real local Ray with a model trained in the test session."""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pyarrow.dataset as pads
import pytest

from conftest import PED2, ped2
from vadray import storage
from vadray.cli import main
from vadray.errors import read_errors
from vadray.exits import UsageError
from vadray.score import run_score
from vadray.manifest import video_date
from vadray.listing import VideoRef


def read_table(output: str, name: str, storage_options=None):
    fs, path = storage.pyarrow_fs(storage.join(output, name), storage_options)
    table = pads.dataset(path, filesystem=fs, partitioning="hive").to_table().to_pandas()
    return table.sort_values([c for c in ("video_id", "frame_index", "event_id") if c in table]).reset_index(drop=True)


def test_every_frame_scored_once_rerun_skips_and_force_is_identical(ray_session, trained_checkpoint,
                                                                     synth_test_archive, tmp_path, caplog,
                                                                     monkeypatch):
    import re

    import vadray.score

    out = str(tmp_path / "out")
    pipelines, real_scored_rows = [], vadray.score._scored_rows
    monkeypatch.setattr(vadray.score, "_scored_rows", lambda *a, **k: pipelines.append(real_scored_rows(*a, **k))
                        or pipelines[-1])
    first = run_score(str(synth_test_archive), out, str(trained_checkpoint), camera="lobby", segment_seconds=1.3)
    assert (first.videos, first.skipped, first.failures, first.frames) == (3, 0, 0, 90)
    # Each segment is decoded by a task of its own, apart from the probe and the model actors: a
    # flat_map was fused into the probe task, so one task decoded all of a video's segments
    operators = [line for line in pipelines[0].stats().splitlines() if line.startswith("Operator")]
    decode = [line for line in operators if "VolumeRows" in line]
    assert len(decode) == 1 and "->" not in decode[0], operators
    assert int(re.search(r"(\d+) tasks executed", decode[0]).group(1)) > first.videos, decode
    frames = read_table(out, "frames")
    assert len(frames) == 90 and set(frames.camera) == {"lobby"} and set(frames.date) == {"unknown"}
    for vid, rows in frames.groupby("video_id"):
        np.testing.assert_array_equal(rows.frame_index, np.arange(30))  # first and last frames too
        np.testing.assert_allclose(rows.time_s, np.arange(30) / 10.0)
        e = rows.recon_error.to_numpy(np.float64)
        np.testing.assert_allclose(rows.regularity, 1 - (e - e.min()) / e.max(), rtol=1e-5)
        m = rows.motion_error.to_numpy(np.float64)
        np.testing.assert_allclose(rows.motion_regularity, 1 - (m - m.min()) / m.max(), rtol=1e-5)
        np.testing.assert_array_equal(rows.combined_regularity, np.minimum(rows.regularity, rows.motion_regularity))
    assert frames.regularity.between(0, 1).all() and (frames.recon_error > 0).all()
    assert (frames.motion_error > 0).all() and frames.motion_regularity.between(0, 1).all()
    assert frames.anomaly_score.notna().all() and (frames.cell_error_max > 0).all()
    events = read_table(out, "events")
    assert set(events.video_id) <= set(frames.video_id) and (events.end_frame >= events.start_frame).all()
    assert set(events.score) == {"regularity"}   # the paper's score by default

    again = run_score(str(synth_test_archive), out, str(trained_checkpoint), camera="lobby", segment_seconds=1.3)
    assert (again.skipped, again.frames) == (3, 0)  # resumable: finished videos are not redone
    assert "other settings" not in caplog.text
    other = run_score(str(synth_test_archive), out, str(trained_checkpoint), camera="lobby", persistence=0.3)
    assert (other.skipped, other.frames) == (3, 0)  # a rerun with other settings says the tables would mix
    assert f"other settings (run_id {frames.run_id.iloc[0]};" in caplog.text
    forced = run_score(str(synth_test_archive), out, str(trained_checkpoint), camera="lobby",
                       segment_seconds=100, force=True)  # one segment per video this time
    assert forced.frames == 90
    rescored = read_table(out, "frames")
    # Seams are exact: segmenting differently gives bit-identical rows, and nothing is duplicated.
    assert rescored.equals(frames)
    assert read_table(out, "events").equals(events)


def test_a_file_scored_under_another_id_keeps_only_its_new_rows(ray_session, trained_checkpoint,
                                                                synth_test_archive, tmp_path, caplog):
    """A file's id is its path below SOURCE, and it changes when a day folder is scored after its
    camera's folder (`0900`, scored as `2024-05-03/0900`) or when a same-named sibling goes
    (`a.mp4` becomes `a`): the same footage must not stand twice (analyst and fixes reviews)."""
    day = tmp_path / "camA" / "2024-05-03"
    day.mkdir(parents=True)
    clip = next(synth_test_archive.glob("*.mp4"))
    shutil.copy(clip, day / "0900.mp4")
    shutil.copy(clip, day / "0900.mkv")          # a sibling: ids 0900.mp4 and 0900.mkv
    out = str(tmp_path / "out")

    def ids() -> list[tuple[str, str, int]]:
        frames = pads.dataset(os.path.join(out, "frames"), partitioning="hive").to_table().to_pandas()
        return sorted((v, str(d), len(g)) for (v, d), g in frames.groupby(["video_id", "date"]))

    assert run_score(str(tmp_path / "camA"), out, str(trained_checkpoint)).frames == 60
    os.remove(day / "0900.mkv")                  # 0900.mp4 is 2024-05-03/0900 now
    assert run_score(str(tmp_path / "camA"), out, str(trained_checkpoint)).frames == 30
    assert ids() == [("2024-05-03/0900", "2024-05-03", 30), ("2024-05-03/0900.mkv", "2024-05-03", 30)]
    assert "scored before under another video id" in caplog.text
    from vadray.errors import safe_key
    assert f"(e.g. '2024-05-03/0900', whose rows were filed under the key '{safe_key('2024-05-03/0900.mp4')}'" \
        in caplog.text   # the new id, and the old one's file key (not "e.g. <old key>, now <new id>")
    assert run_score(str(day), out, str(trained_checkpoint)).frames == 30   # the day folder: 0900
    assert ids() == [("0900", "unknown", 30), ("2024-05-03/0900.mkv", "2024-05-03", 30)]
    assert run_score(str(tmp_path / "camA"), out, str(trained_checkpoint)).frames == 30   # and back
    assert ids() == [("2024-05-03/0900", "2024-05-03", 30), ("2024-05-03/0900.mkv", "2024-05-03", 30)]
    assert run_score(str(tmp_path / "camA"), out, str(trained_checkpoint)).skipped == 1


def test_a_moved_file_keeps_every_models_scores_and_a_changed_one_is_named(tmp_path):
    """--moved-from without Ray: both models' markers and rows of the unchanged file follow it
    (frames and errors source_uri); a file whose mtime changed becomes a changed file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vadray.errors import error_row, safe_key, write_errors
    from vadray.manifest import mark_scored, manifest_marker, previous_scoring, scores_file
    from vadray.moved import repoint_moved

    new = [VideoRef("2024-05-01/a", "/new/cam/2024-05-01/a.mp4", size=5, mtime="1"),
           VideoRef("2024-05-01/b", "/new/cam/2024-05-01/b.mp4", size=6, mtime="9")]   # b's mtime changed
    old = [VideoRef(r.video_id, r.uri.replace("/new/", "/old/"), size=r.size, mtime="1") for r in new]
    out = str(tmp_path / "out")
    for model in ("m1-000000000001", "m2-000000000002"):
        for ref in old:
            mark_scored(out, "cam", ref.video_id, ref.identity(), model, ref.uri, True, {})
            path = tmp_path / "out" / "frames" / scores_file("cam", "2024-05-01", safe_key(ref.video_id), model)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"video_id": [ref.video_id] * 2, "source_uri": [ref.uri] * 2}), path)
        write_errors([error_row("2024-05-01/a", old[0].uri, "decode", "decode_failed", "gap")],
                     str(tmp_path / "out" / "errors"), "cam", f"{safe_key('2024-05-01/a')}-seg00000", {}, model)
    moved = repoint_moved(out, "cam", new, "/new/cam", "/old/cam/", "m1-000000000001", {})
    assert (moved.kept, moved.changed) == (1, 1)
    # b changed on the way: a file changed in place now, not another file claiming its id; the run's
    # model rescores it, and the other model's rows of the former content go (as for any change)
    previous = previous_scoring(out, "cam", new, "m1-000000000001", {})
    assert previous.uris == {"2024-05-01/b": new[1].uri} and list(previous.other_models_gone) == ["2024-05-01/b"]
    for model in ("m1-000000000001", "m2-000000000002"):
        assert previous_scoring(out, "cam", new, model, {}).done == {"2024-05-01/a"}
        frames = tmp_path / "out" / "frames" / scores_file("cam", "2024-05-01", safe_key("2024-05-01/a"), model)
        assert set(pq.ParquetFile(frames).read().column("source_uri").to_pylist()) == {new[0].uri}
        assert not (tmp_path / "out" / "manifest" / manifest_marker("cam", "2024-05-01/a", old[0].identity(),
                                                                     model)).exists()
    assert set(read_errors(str(tmp_path / "out" / "errors")).column("source_uri").to_pylist()) == {new[0].uri}
    again = repoint_moved(out, "cam", new, "/new/cam", "/old/cam", "m1-000000000001", {})   # a rerun: nothing to do
    assert (again.kept, again.changed) == (0, 0)


def test_a_file_scored_under_another_id_by_an_older_version_is_found_too(tmp_path):
    """A marker's digest hashes the frames-table version: a file scored as `0900` (its day folder)
    before an upgrade, then as `2024-05-01/0900` (its camera folder), kept both rows (score review)."""
    import hashlib

    from vadray.errors import safe_key
    from vadray.manifest import previous_scoring

    ref = VideoRef("2024-05-01/0900", "/archive/cam/2024-05-01/0900.mp4", size=10, mtime="1")
    old_digest = hashlib.sha1(f"{ref.identity()}|frames=3".encode()).hexdigest()[:12]
    folder = tmp_path / "manifest" / "camera=cam"
    folder.mkdir(parents=True)
    (folder / f"{safe_key('0900')}.m1.{old_digest}.done").write_text(ref.uri)
    previous = previous_scoring(str(tmp_path), "cam", [ref], "m1", {})
    assert previous.other_ids == {ref.video_id: [safe_key("0900")]}


def test_a_camera_renamed_between_runs_is_warned_about(tmp_path):
    """`--camera lobby` after `--camera default` scored the whole archive again beside the old
    rows, without a word (score review): the first run of a camera looks for these files'
    markers of this model under other cameras."""
    from vadray.manifest import mark_scored, scored_under_other_cameras

    refs = [VideoRef(f"2024-05-01/0{h}00", f"/archive/cam/2024-05-01/0{h}00.mp4", size=10, mtime="1") for h in (8, 9)]
    for ref in refs:
        mark_scored(str(tmp_path), "default", ref.video_id, ref.identity(), "m1", ref.uri, True, {})
    mark_scored(str(tmp_path), "other", refs[0].video_id, refs[0].identity(), "m2", refs[0].uri, True, {})
    assert scored_under_other_cameras(str(tmp_path), "lobby", refs, "m1", {}) == {"default": 2}
    assert scored_under_other_cameras(str(tmp_path), "default", refs, "m1", {}) == {}
    changed = [VideoRef(r.video_id, r.uri, size=11, mtime="2") for r in refs]   # other files: no warning
    assert scored_under_other_cameras(str(tmp_path), "lobby", changed, "m1", {}) == {}
    assert scored_under_other_cameras(str(tmp_path / "empty"), "lobby", refs, "m1", {}) == {}


def test_every_key_a_file_was_scored_under_goes_and_rows_under_an_older_date_too(tmp_path):
    """Markers of one file under two other keys (an OUTPUT that already held the duplicate) are
    both found, whichever sorts first, with their rows in any date= folder; a rescore also
    removes rows that an older vadray filed under another date (fixes review)."""
    from vadray.errors import safe_key
    from vadray.manifest import drop_other_ids, drop_previous, manifest_marker, previous_scoring, scores_file

    ref = VideoRef("2024-05-03/zz-0900", "/archive/camA/2024-05-03/zz-0900.mp4", size=10, mtime="1")
    for old_id, date, model in (("zz-0900", "unknown", "m1"), ("03/zz-0900", "unknown", "m1"),
                                ("2024-05-03/zz-0900", "2024-05-03", "m1"), ("x/zz-0900", "unknown", "m2")):
        marker = tmp_path / "manifest" / manifest_marker("cam", old_id, ref.identity(), model)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(ref.uri)
        for table in ("frames", "events"):
            path = tmp_path / table / scores_file("cam", date, safe_key(old_id), model)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"rows")
    previous = previous_scoring(str(tmp_path), "cam", [ref], "m1", {})   # another model's keys are its own
    assert ref.video_id in previous.done
    assert previous.other_ids == {ref.video_id: sorted([safe_key("zz-0900"), safe_key("03/zz-0900")])}
    assert drop_other_ids(str(tmp_path), "cam", "m1", previous, {}) == sorted(previous.other_ids[ref.video_id])
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted([f"{t}/{scores_file('cam', d, safe_key(v), m)}" for t in ("events", "frames")
                           for v, d, m in ((ref.video_id, "2024-05-03", "m1"), ("x/zz-0900", "unknown", "m2"))]
                          + [f"manifest/{manifest_marker('cam', v, ref.identity(), m)}"
                             for v, m in ((ref.video_id, "m1"), ("x/zz-0900", "m2"))])
    # the file that held an id and is in this run under a new one is no clash for the file that now
    # has the id: /src/x/a.mp4 scored as `a` from /src/x, then /src scored (`x/a`, and /src/a.mp4 is `a`)
    from vadray.manifest import check_same_files, mark_scored

    moved, taker = VideoRef("x/a", "/src/x/a.mp4", size=5, mtime="1"), VideoRef("a", "/src/a.mp4", size=6, mtime="2")
    out = tmp_path / "moved"
    mark_scored(str(out), "cam", "a", moved.identity(), "m1", moved.uri, True, {})
    previous = previous_scoring(str(out), "cam", [taker, moved], "m1", {})
    check_same_files("cam", [taker, moved], previous.uris)
    with pytest.raises(UsageError, match="scored from other files"):   # without it, it is one
        check_same_files("cam", [taker], previous_scoring(str(out), "cam", [taker], "m1", {}).uris)
    assert previous.other_ids == {"x/a": [safe_key("a")]}
    drop_previous(str(out), "cam", [taker, moved], "m1", previous, {})
    assert drop_other_ids(str(out), "cam", "m1", previous, {}) == [safe_key("a")]   # its marker already went
    assert not list(out.rglob("*.done"))
    # vadray before 2026-12-01 read 2024-0501 as a date; today's rule does not: a rescore finds both
    mixed = VideoRef("cam_2024-0501_0900", "x")
    for date in ("2024-05-01", "unknown"):
        path = tmp_path / "frames" / scores_file("cam", date, safe_key(mixed.video_id), "m1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"rows")
    drop_previous(str(tmp_path), "cam", [mixed], "m1", previous_scoring(str(tmp_path), "cam", [mixed], "m1", {}), {})
    assert not [p for p in (tmp_path / "frames").rglob("*") if safe_key(mixed.video_id) in p.name]


def test_two_cameras_with_the_same_file_names_share_one_output(ray_session, trained_checkpoint,
                                                               synth_test_archive, tmp_path, capsys, caplog):
    """A video in OUTPUT is (camera, video_id): scoring camera b neither un-finishes camera a's
    videos nor mixes them in the report, and evaluate asks which camera the labels mean."""
    from vadray.evaluate import evaluate_output
    from vadray.report import build_report

    out = str(tmp_path / "out")
    for camera in ("a", "b"):
        assert run_score(str(synth_test_archive), out, str(trained_checkpoint), camera=camera).frames == 90
    # the same model, as if trained on camera a's shards: scoring camera b with it is said (review)
    import json

    from vadray.checkpoint import load_model, save

    model, card = load_model(str(trained_checkpoint))
    save(str(tmp_path / "of_a"), model.state_dict(), {**card, "training_data": {**card["training_data"],
                                                                                "cameras": ["a"]}})
    with caplog.at_level(logging.WARNING, logger="vadray"):
        again = run_score(synth_test_archive, tmp_path / "out", tmp_path / "of_a", camera="a")   # Paths too
        assert "learnt camera" not in caplog.text
        assert run_score(str(synth_test_archive), out, str(tmp_path / "of_a"), camera="b").skipped == 3
    assert "learnt camera(s) 'a', and this run scores camera 'b'" in caplog.text
    assert json.loads((tmp_path / "of_a" / "card.json").read_text())["model_id"] == card["model_id"]
    assert (again.skipped, again.frames) == (3, 0)          # b did not remove a's markers
    frames = read_table(out, "frames")
    assert frames.groupby("camera").size().to_dict() == {"a": 90, "b": 90}
    rows = build_report(out, str(tmp_path / "report"), max_thumbnails=0)
    assert sorted((r["camera"], r["frames"]) for r in rows) == [("a", 30)] * 3 + [("b", 30)] * 3
    assert len({r["png"] for r in rows}) == 6
    labels = str(synth_test_archive / "frame_labels.csv")
    with pytest.raises(UsageError, match="pass --camera"):
        evaluate_output(out, labels)
    assert evaluate_output(out, labels, cameras=["b"])["coverage"]["evaluated_frames"] == 90


def test_other_models_rows_of_a_files_former_content_go_when_it_is_rescored(tmp_path):
    """A file changed and rescored by model m1 kept m2's rows of the old content, with no word:
    comparing m1 with m2, or evaluating m2 on the new labels, read footage that is gone
    (multi-model review). m3 scored this very content (under an older frames-table version) and
    keeps its rows; m4's marker names another file under the same id (a clash, not a change)."""
    from vadray.errors import safe_key
    from vadray.manifest import digests_of, drop_other_models_gone, manifest_marker, previous_scoring, scores_file

    now = VideoRef("2024-05-03/0900", "/archive/cam/2024-05-03/0900.mp4", size=20, mtime="2")
    before = VideoRef(now.video_id, now.uri, size=10, mtime="1")
    elsewhere = VideoRef(now.video_id, "/other/2024-05-03/0900.mp4", size=30, mtime="3")
    old_version = sorted(digests_of(now.identity()) - {manifest_marker("c", "v", now.identity(), "m").split(".")[-2]})
    scored = {"m1": [(before, None)], "m2": [(before, None)], "m3": [(now, old_version[0])],
              "m4": [(elsewhere, None)], "m5": [(before, None), (now, None)], "m6": [(before, None)],
              "m7": [(before, None)]}

    def mark(model, ref, digest=None):
        marker = manifest_marker("cam", ref.video_id, ref.identity(), model)
        if digest:
            marker = ".".join([*marker.split(".")[:-2], digest, "done"])
        (tmp_path / "manifest" / marker).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "manifest" / marker).write_text(ref.uri)

    for model, markers in scored.items():
        for ref, digest in markers:
            mark(model, ref, digest)
        for table in ("frames", "events"):
            path = tmp_path / table / scores_file("cam", "2024-05-03", safe_key(now.video_id), model)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"rows")
    previous = previous_scoring(str(tmp_path), "cam", [now], "m1", {})
    assert sorted(p.split(".")[-3] for p in previous.other_models_gone[now.video_id]) == ["m2", "m6", "m7"]
    mark("m6", now)   # m6 rescores the file in a run beside this one (fixes review: its new rows went)
    # m7's run beside this one has begun: its drop_previous took its old marker, and the rows it
    # writes next (at the same path) come before its new marker; they stay
    (tmp_path / "manifest" / manifest_marker("cam", before.video_id, before.identity(), "m7")).unlink()
    assert drop_other_models_gone(str(tmp_path), "cam", [now], previous, {}) == (["m2"], 1)
    rows = {p.name.split(".")[-2] for p in tmp_path.rglob("*.parquet")}
    assert rows == {"m1", "m3", "m4", "m5", "m6", "m7"}   # m1's own rows are drop_previous's; m2's are gone
    assert len(list(tmp_path.rglob("*.parquet"))) == 12
    assert sorted(p.name.split(".")[-3] for p in tmp_path.rglob("*.done")) == ["m1", "m3", "m4", "m5", "m5", "m6", "m6"]


def other_checkpoint(trained_checkpoint, folder) -> tuple[dict, dict]:
    """A second model (the trained one's weights × 0.9, its own model_id) saved to `folder`:
    (the trained card, the other card)."""
    import json

    from vadray.checkpoint import load_model, model_id, save

    model, card = load_model(str(trained_checkpoint))
    weights = {k: v * 0.9 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    other = dict(json.loads(json.dumps(card)), model_id=model_id(card["model"]["name"], weights))
    save(str(folder), weights, other)
    return card, other


def test_an_output_rescored_by_another_model_is_evaluated_and_plotted_one_model_at_a_time(
        ray_session, trained_checkpoint, synth_test_archive, tmp_path, caplog):
    """Each (video, model) is its own file: a second checkpoint adds rows beside the first's,
    and evaluate and report must not mix the two models' scores."""
    from vadray.evaluate import evaluate_output
    from vadray.report import build_report

    card, other = other_checkpoint(trained_checkpoint, tmp_path / "other")
    out = str(tmp_path / "out")
    for checkpoint in (str(trained_checkpoint), str(tmp_path / "other")):
        assert run_score(str(synth_test_archive), out, checkpoint).frames == 90
    assert read_table(out, "frames").groupby("model_id").size().to_dict() == {card["model_id"]: 90, other["model_id"]: 90}
    labels = str(synth_test_archive / "frame_labels.csv")
    with pytest.raises(UsageError, match="pass --model-id"):
        evaluate_output(out, labels)
    with pytest.raises(UsageError, match="pass --model-id"):
        build_report(out, str(tmp_path / "report"), max_thumbnails=0)
    result = evaluate_output(out, labels, model_ids=[other["model_id"]])
    assert result["coverage"]["evaluated_frames"] == 90 and result["coverage"]["duplicate_frame_rows"] == 0
    rows = build_report(out, str(tmp_path / "report"), max_thumbnails=0, model_ids=[card["model_id"]])
    assert [r["frames"] for r in rows] == [30, 30, 30]
    # a file's content changes and one model rescores it: the other model's rows of the former
    # content go too (multi-model review), and the archive's other videos keep both
    source = tmp_path / "source"
    shutil.copytree(synth_test_archive, source)
    run_score(str(source), str(tmp_path / "out2"), str(trained_checkpoint))
    run_score(str(source), str(tmp_path / "out2"), str(tmp_path / "other"))
    first = sorted(source.glob("*.mp4"))[0]
    shutil.copyfile(sorted(source.glob("*.mp4"))[1], first)
    with caplog.at_level(logging.WARNING, logger="vadray"):
        assert run_score(str(source), str(tmp_path / "out2"), str(tmp_path / "other")).frames == 30
    assert card["model_id"] in caplog.text and "changed since" in caplog.text
    counts = read_table(str(tmp_path / "out2"), "frames").groupby(["model_id", "video_id"]).size().to_dict()
    assert (card["model_id"], first.stem) not in counts and len(counts) == 5


def test_a_video_whose_tables_fail_to_write_is_an_error_row_not_the_end_of_the_job(tmp_path):
    from vadray.score import _WriteOrRecord

    def assemble(rows):
        if rows[0]["video_id"] == "cam/full-disk":
            raise OSError("No space left on device")
        return {"video_id": rows[0]["video_id"], "frames": 30, "events": 1, "complete": True}

    write = _WriteOrRecord(assemble, str(tmp_path / "errors"), {}, "convlstm-0123456789ab")
    assert write([{"video_id": "cam/ok", "uri": "/a/ok.mp4", "camera": "lobby"}])["frames"] == 30
    assert write([{"video_id": "cam/full-disk", "uri": "/a/full-disk.mp4", "camera": "lobby"}]) == {
        "video_id": "cam/full-disk", "frames": 0, "events": 0, "complete": False, "unrecorded_error": None}
    (row,) = read_errors(str(tmp_path / "errors")).to_pylist()
    assert (row["camera"], row["video_id"], row["stage"], row["error_type"], row["model_id"]) == (
        "lobby", "cam/full-disk", "write", "OSError", "convlstm-0123456789ab")
    assert "No space left" in row["message"]

    # The store fails for the errors row too (here: errors/ is a file): the job goes on, and
    # the row comes back for the summary to count instead of being lost.
    (tmp_path / "broken").write_text("not a folder")
    out = _WriteOrRecord(assemble, str(tmp_path / "broken"), {}, "convlstm-0123456789ab")(
        [{"video_id": "cam/full-disk", "uri": "/a/full-disk.mp4", "camera": "lobby"}])
    assert out["complete"] is False and out["unrecorded_error"]["error_type"] == "OSError"


def test_a_table_write_that_fails_half_way_leaves_no_file_readers_would_trip_on(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vadray import score_stages

    table = pa.table({"frame_index": list(range(100))})
    target = tmp_path / "frames" / "camera=c" / "date=unknown" / "v.m.parquet"
    score_stages.write_whole(table, str(target), {})
    assert pq.read_table(target).equals(table) and os.listdir(target.parent) == ["v.m.parquet"]

    def disk_full(table, where, **kwargs):
        with kwargs["filesystem"].open_output_stream(where) as f:
            f.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(score_stages.pq, "write_table", disk_full)
    with pytest.raises(OSError, match="No space"):
        score_stages.write_whole(table, str(tmp_path / "frames" / "camera=c" / "date=unknown" / "w.m.parquet"), {})
    assert os.listdir(target.parent) == ["v.m.parquet"]     # no truncated w, no hidden leftover


@pytest.mark.parametrize("damage, says", [("zero_std", "cannot calibrate"), ("no_validation", "no usable validation")])
def test_a_card_that_cannot_calibrate_is_refused_before_any_work(trained_checkpoint, synth_test_archive, tmp_path,
                                                                 damage, says):
    """Every video's anomaly_score needs the card's calibration: without it (a per-epoch
    diagnostic card) the job would decode and score everything, then fail every write."""
    import json

    bad = tmp_path / "bad"
    shutil.copytree(trained_checkpoint, bad)
    (card_path,) = bad.rglob("card.json")
    card = json.loads(card_path.read_text())
    if damage == "zero_std":
        card["validation"]["frame_error"]["std"] = 0.0
    else:
        card["validation"] = None
    card_path.write_text(json.dumps(card))
    with pytest.raises(UsageError, match=says):
        run_score(str(synth_test_archive), str(tmp_path / "out"), str(bad))
    assert not (tmp_path / "out").exists()


def actor_that_dies_once(marker: str):
    """A model actor that kills its own process after its first batch, as a lost node would:
    Ray restarts it and retries the batch. Made in a function so that Ray pickles it by value."""
    import os

    from vadray.score_stages import ScoreVolumes

    class DiesOnce(ScoreVolumes):
        def __call__(self, batch):
            out = super().__call__(batch)
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return out

    return DiesOnce


def test_a_checkpoint_that_changed_during_the_run_fails_it_in_one_line(ray_session, trained_checkpoint,
                                                                      synth_test_archive, tmp_path, capsys):
    """A model actor that finds another model in the checkpoint folder refuses to start; Ray hands
    the driver an ActorDiedError holding the traceback, which must end the job as JobFailed does
    (exit 1, one line), not as a traceback (review of the change)."""
    from vadray import score as score_job
    from vadray.score_stages import ScoreVolumes

    class Retrained(ScoreVolumes):   # what an actor started after a retrain into the folder sees
        def __init__(self, *args, **kwargs):
            super().__init__(*args[:7], "convlstm_ae-000000000000", **kwargs)

    def with_retrained(*args, **kwargs):
        return run_score(*args, **kwargs, model_actor=Retrained)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(score_job, "run_score", with_retrained)
        assert main(["score", str(synth_test_archive), str(tmp_path / "out"), "--checkpoint",
                     str(trained_checkpoint)]) == 1
    assert "vadray score: failed: " in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*.done"))


def test_killed_actor_leaves_identical_tables(ray_session, trained_checkpoint, synth_test_archive, tmp_path):
    calm = str(tmp_path / "calm")
    run_score(str(synth_test_archive), calm, str(trained_checkpoint), segment_seconds=1.3, hop=2)
    marker = tmp_path / "killed-once"
    killed = str(tmp_path / "killed")
    summary = run_score(str(synth_test_archive), killed, str(trained_checkpoint), segment_seconds=1.3, hop=2,
                        model_actor=actor_that_dies_once(str(marker)))
    assert marker.exists()  # the actor did die mid-run
    assert summary.failures == 0 and summary.frames == 90
    assert read_table(killed, "frames").equals(read_table(calm, "frames"))
    assert read_table(killed, "events").equals(read_table(calm, "events"))


def test_sigterm_ends_a_score_run_as_ctrl_c_does_and_the_rerun_completes_it(ray_session, trained_checkpoint,
                                                                            synth_test_archive, tmp_path):
    """`ray job stop`, `timeout`, systemd and Kubernetes stop a job with SIGTERM. Ray's handler
    answered it with a stack dump and an abort (exit 134); it is a stop that keeps finished
    work, says how to go on, and exits 143."""
    import signal
    import subprocess
    import sys
    import threading

    stopped = str(tmp_path / "stopped")
    argv = [sys.executable, "-m", "vadray.cli", "score", str(synth_test_archive), stopped,
            "--checkpoint", str(trained_checkpoint), "--segment-seconds", "1.3", "--hop", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    seen, started = [], threading.Event()

    def read():
        for line in proc.stdout:
            seen.append(line)
            if "scoring 3 videos" in line:   # logged once this process's Ray runs
                started.set()

    threading.Thread(target=read, daemon=True).start()
    assert started.wait(180), "".join(seen[-20:])
    # the process alone, as `ray job stop` and `kill PID` do (a signal to its whole group stops
    # its local Ray as well, and a main thread blocked in a Ray call then never runs the handler:
    # Ray ends the process after 60 s, exit 1; seen in CI, documented)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 143, "".join(seen[-20:])
    assert any("stopped (SIGTERM)" in line and "run the same command again" in line.lower()
               for line in seen), "".join(seen[-20:])
    assert not any("SIGTERM received" in line for line in seen)   # Ray's fatal-signal dump
    calm = str(tmp_path / "calm")
    run_score(str(synth_test_archive), calm, str(trained_checkpoint), segment_seconds=1.3, hop=2)
    rerun = run_score(str(synth_test_archive), stopped, str(trained_checkpoint), segment_seconds=1.3, hop=2)
    assert rerun.failures == 0 and rerun.skipped < 3   # the stop came before the end
    assert read_table(stopped, "frames").equals(read_table(calm, "frames"))
    assert read_table(stopped, "events").equals(read_table(calm, "events"))


def test_sigterm_is_handed_to_whatever_answers_ctrl_c_now(monkeypatch):
    """Ray Train's SIGINT handler aborts a fit cleanly; SIGTERM must take the same road."""
    import signal

    from vadray import exits

    cut_short = []
    monkeypatch.setattr(exits, "_exit_if_still_running", lambda: cut_short.append(True))   # not this pytest
    term_before, int_before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    calls = []
    try:
        exits.answer_sigterm_as_ctrl_c()
        signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
        signal.raise_signal(signal.SIGTERM)
        assert calls == [signal.SIGINT] and exits.stopped_by_sigterm()
        signal.raise_signal(signal.SIGTERM)   # `timeout` signals the process, then its group
        assert calls == [signal.SIGINT]       # once: a second KeyboardInterrupt would land in the clean-up
        assert cut_short == [True]            # and one watchdog for a clean-up that hangs
        exits.answer_sigterm_as_ctrl_c()      # the next command in this process
        assert not exits.stopped_by_sigterm()
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # a job a script started in the background
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, term_before)
        signal.signal(signal.SIGINT, int_before)
        exits._sigterm_received.clear()


def test_bad_file_becomes_an_error_row_and_the_rest_is_scored(ray_session, trained_checkpoint,
                                                              synth_test_archive, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(synth_test_archive, src)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)
    out = str(tmp_path / "out")
    status = main(["score", str(src), out, "--checkpoint", str(trained_checkpoint)])
    assert status == 3
    assert "4 videos (0 already done, 1 failed), 90 frames" in capsys.readouterr().out
    errors = read_errors(storage.join(out, "errors")).to_pandas()
    assert list(errors.video_id) == ["broken"] and errors.error_type[0] == "corrupt"
    assert read_table(out, "frames").video_id.nunique() == 3
    # a second camera with the same file names keeps its own error rows: fixing the file and
    # rescoring camera "default" clears that camera's row only
    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    shutil.copy(src / "broken.mp4", only_broken / "broken.mp4")
    assert run_score(str(only_broken), out, str(trained_checkpoint), camera="b").failures == 1
    assert sorted(read_errors(storage.join(out, "errors")).column("camera").to_pylist()) == ["b", "default"]
    shutil.copy(src / "test001.mp4", only_broken / "broken.mp4")
    assert run_score(str(only_broken), out, str(trained_checkpoint)).failures == 0
    (left,) = read_errors(storage.join(out, "errors")).to_pylist()
    assert (left["camera"], left["video_id"]) == ("b", "broken")


def test_two_models_scoring_one_output_keep_their_own_error_rows(ray_session, trained_checkpoint,
                                                                 synth_test_archive, tmp_path):
    """A broken file and one with a decode gap fail for each model: each run's errors rows
    carry its model_id, a second model's run leaves the first's rows alone, and each run's
    summary counts its own. When a file changes, the other model's rows of its former content
    go with its scores; a file it never scored keeps its row (its last attempt)."""
    import videos

    card, other = other_checkpoint(trained_checkpoint, tmp_path / "other")
    src = tmp_path / "src"
    shutil.copytree(synth_test_archive, src)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)
    videos.corrupt_packet_mp4(str(src / "hit.mp4"), n=40, bad=13)
    out = str(tmp_path / "out")

    def rows() -> set[tuple[str, str]]:
        return {(r["model_id"], r["video_id"]) for r in read_errors(storage.join(out, "errors")).to_pylist()}

    first = run_score(str(src), out, str(trained_checkpoint))
    second = run_score(str(src), out, str(tmp_path / "other"))
    assert first.videos_failed == second.videos_failed == 2 and first.failures == second.failures
    both = {(m, v) for m in (card["model_id"], other["model_id"]) for v in ("broken", "hit")}
    assert rows() == both
    assert {r["error_type"] for r in read_errors(storage.join(out, "errors"), model_id=other["model_id"]).to_pylist()
            if r["video_id"] == "broken"} == {"corrupt"}
    # a report of one model lists that model's failures, not the other's as well
    from vadray.report import _failures
    listed = _failures(out, None, None, None, None, other["model_id"])
    assert {(r["video_id"], r["model_id"]) for r in listed} == {("broken", other["model_id"]), ("hit", other["model_id"])}
    # both files are mended and the second model rescores them
    shutil.copy(src / "test001.mp4", src / "broken.mp4")
    shutil.copy(src / "test002.mp4", src / "hit.mp4")
    assert run_score(str(src), out, str(tmp_path / "other")).failures == 0
    assert rows() == {(card["model_id"], "broken")}


def test_a_moved_archive_keeps_the_scores_of_its_unchanged_files(ray_session, trained_checkpoint,
                                                                 synth_test_archive, tmp_path, capsys):
    """A new mount point makes every file another one: the run is refused. With --moved-from,
    the files that kept their size and mtime keep their rows, re-pointed at the new place, and
    one whose mtime changed on the way (a copy that did not keep it) is scored again."""
    old, new = tmp_path / "mnt-old" / "cam", tmp_path / "mnt-new" / "cam"
    shutil.copytree(synth_test_archive, old)
    out = str(tmp_path / "out")
    ckpt = ["--checkpoint", str(trained_checkpoint)]
    assert main(["score", str(old), out, *ckpt]) == 0
    before = read_table(out, "frames")
    new.parent.mkdir()
    os.rename(old, new)
    os.utime(new / "test002.mp4", (1_000_000, 1_000_000))
    capsys.readouterr()
    assert main(["score", str(new), out, *ckpt]) == 2
    assert "--moved-from" in capsys.readouterr().err
    assert main(["score", str(new), out, *ckpt, "--moved-from", str(old), "--force"]) == 2
    assert "pass one of them" in capsys.readouterr().err
    assert main(["score", str(new), out, *ckpt, "--moved-from", str(old)]) == 0
    assert "3 videos (2 already done, 0 failed), 30 frames" in capsys.readouterr().out
    after = read_table(out, "frames")
    assert sorted(set(after.source_uri)) == sorted(str(p) for p in new.glob("*.mp4"))
    assert after.drop(columns="source_uri").equals(before.drop(columns="source_uri"))
    assert main(["score", str(new), out, *ckpt]) == 0   # the markers name the new place now
    assert "(3 already done, 0 failed)" in capsys.readouterr().out


@pytest.mark.parametrize("bad", [13, 24])
def test_frames_beside_a_decode_gap_are_scored_whatever_the_segments(ray_session, trained_checkpoint,
                                                                    tmp_path, bad):
    """Sample `bad` of 40 is noise: it and the frames up to the next keyframe (every 10th) do
    not decode. The hop-5 volumes that touch the gap are dropped; volumes ending right before
    and starting right after it keep the decoded frames beside it scored. Short segments (1 s
    = 10 frames, seams everywhere) give the same table as one segment; the frames that did
    not decode are named in the errors table."""
    import videos

    src = tmp_path / "src"
    src.mkdir()
    videos.corrupt_packet_mp4(str(src / "hit.mp4"), n=40, bad=bad)
    gap = list(range(bad, -(-bad // 10) * 10 + (10 if bad % 10 == 0 else 0)))
    tables = {}
    for segment_seconds in (60.0, 1.0):
        out = str(tmp_path / f"out{segment_seconds}")
        status = main(["score", str(src), out, "--checkpoint", str(trained_checkpoint),
                       "--segment-seconds", str(segment_seconds)])
        assert status == 3
        errors = read_errors(storage.join(out, "errors")).to_pandas()
        assert "decode_failed" in set(errors.error_type)
        (unscored,) = errors.message[errors.error_type == "unscored_frames"]
        assert unscored.startswith(f"{len(gap)} of 40 frames have no score: {gap[0]}-{gap[-1]}.")
        tables[segment_seconds] = read_table(out, "frames").sort_values("frame_index").reset_index(drop=True)
    assert tables[60.0].frame_index.tolist() == [i for i in range(40) if i not in gap]
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(tables[60.0].drop(columns=["run_id"]), tables[1.0].drop(columns=["run_id"]))


def test_day_folders_scored_one_source_at_a_time_never_replace_each_other(ray_session, trained_checkpoint,
                                                                          synth_test_archive, tmp_path, capsys):
    days = tmp_path / "days"
    for day, clip in (("2024-05-01", "test001.mp4"), ("2024-05-02", "test002.mp4")):
        (days / day).mkdir(parents=True)
        shutil.copy(synth_test_archive / clip, days / day / "0900.mp4")
    out = str(tmp_path / "out")
    assert run_score(str(days / "2024-05-01"), out, str(trained_checkpoint)).frames == 30
    # both files are video '0900' of SOURCE: the second would silently replace the first's rows
    assert main(["score", str(days / "2024-05-02"), out, "--checkpoint", str(trained_checkpoint)]) == 2
    assert "scored from other files: '0900'" in capsys.readouterr().err
    assert set(read_table(out, "frames").source_uri) == {str(days / "2024-05-01" / "0900.mp4")}
    # from the folder above the dates, they are two videos with their date partitions
    both = str(tmp_path / "both")
    assert run_score(str(days), both, str(trained_checkpoint)).frames == 60
    frames = read_table(both, "frames")
    assert frames.groupby(["video_id", "date"]).size().to_dict() == {("2024-05-01/0900", "2024-05-01"): 30,
                                                                     ("2024-05-02/0900", "2024-05-02"): 30}


def test_a_file_replaced_by_a_broken_one_loses_its_old_rows_and_its_restoration_is_rescored(
        ray_session, trained_checkpoint, synth_test_archive, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_test_archive, src)
    kept = tmp_path / "kept.mp4"
    shutil.copy2(src / "test002.mp4", kept)                                      # its mtime too
    out = str(tmp_path / "out")
    assert run_score(str(src), out, str(trained_checkpoint)).frames == 90
    (src / "test002.mp4").write_text("not a video any more")
    broken = run_score(str(src), out, str(trained_checkpoint))
    assert (broken.skipped, broken.failures) == (2, 1)
    assert set(read_table(out, "frames").video_id) == {"test001", "test003"}    # no scores of gone footage
    assert set(read_table(out, "events").video_id) <= {"test001", "test003"}
    shutil.copy2(kept, src / "test002.mp4")       # the very same file again: same URI, size and mtime
    restored = run_score(str(src), out, str(trained_checkpoint))
    assert (restored.skipped, restored.frames, restored.failures) == (2, 30, 0)
    assert read_errors(storage.join(out, "errors")).num_rows == 0                # its error row went with it
    assert read_table(out, "frames").groupby("video_id").size().to_dict() == {f"test00{i}": 30 for i in (1, 2, 3)}


def test_partly_scored_and_renamed_videos_never_leave_rows_of_gone_footage(ray_session, trained_checkpoint,
                                                                            synth_test_archive, tmp_path, capsys,
                                                                            caplog):
    """Backfill review: a video with a decode gap (no 'done' marker) kept its rows when its file
    changed, even into one that fails, and another file with its id was not refused; a new
    `a.mkv` beside `a.mp4` made the same footage appear under two ids; a rerun forgot the
    failures of the videos it skipped and exited 0."""
    import videos
    from vadray.synth import write_video

    day = tmp_path / "src" / "2024-05-01"
    day.mkdir(parents=True)
    videos.corrupt_packet_mp4(str(day / "hit.mp4"), n=40, bad=15)      # frames 15-19 do not decode
    shutil.copy(synth_test_archive / "test001.mp4", day / "a.mp4")
    videos.truncated(str(day / "cut.mkv"))                              # scored whole, with a warning row
    out = str(tmp_path / "out")
    ckpt = ["--checkpoint", str(trained_checkpoint)]
    assert main(["score", str(tmp_path / "src"), out, *ckpt]) == 3
    first = capsys.readouterr().out
    assert "2 failed" in first and set(read_table(out, "frames").video_id) == {f"2024-05-01/{v}" for v in
                                                                              ("hit", "a", "cut")}
    # the same failures, the same status; hit's gap would come back, so it is done too (not rescored)
    assert main(["score", str(tmp_path / "src"), out, *ckpt]) == 3
    assert "(3 already done, 2 failed)" in capsys.readouterr().out

    (day / "hit.mp4").write_text("not a video any more")
    assert main(["score", str(tmp_path / "src"), out, *ckpt]) == 3
    assert "2024-05-01/hit" not in set(read_table(out, "frames").video_id)   # no rows of footage that is gone

    write_video(str(day / "a.mkv"), videos.frames(20, seed=5), codec="libx264")
    assert main(["score", str(tmp_path / "src"), out, *ckpt]) == 3
    assert "now keep their extension" in caplog.text and "'2024-05-01/a' is now '2024-05-01/a.mkv'" in caplog.text
    counts = read_table(out, "frames").groupby("video_id").size().to_dict()
    assert {k: v for k, v in counts.items() if "/a" in k} == {"2024-05-01/a.mp4": 30, "2024-05-01/a.mkv": 20}

    # a partly scored day-folder video and another day's file with its id: refused, not replaced
    for name in ("d1", "d2"):
        (tmp_path / name).mkdir()
    videos.corrupt_packet_mp4(str(tmp_path / "d1" / "0900.mp4"), n=40, bad=15)
    shutil.copy(synth_test_archive / "test002.mp4", tmp_path / "d2" / "0900.mp4")
    days = str(tmp_path / "days")
    assert main(["score", str(tmp_path / "d1"), days, *ckpt]) == 3
    assert main(["score", str(tmp_path / "d2"), days, *ckpt]) == 2
    assert "scored from other files: '0900'" in capsys.readouterr().err
    # another folder's 0900.mp4 beside a 0900.mkv: ids 0900.mp4 and 0900.mkv, and d1's '0900' is
    # another file's, which stays (fixes review); a refused --force deletes nothing either
    (tmp_path / "d3").mkdir()
    shutil.copy(synth_test_archive / "test003.mp4", tmp_path / "d3" / "0900.mp4")
    write_video(str(tmp_path / "d3" / "0900.mkv"), videos.frames(20, seed=6), codec="libx264")
    assert main(["score", str(tmp_path / "d3"), days, *ckpt]) == 0
    d1_rows = read_table(days, "frames").pipe(lambda f: f[f.video_id == "0900"])
    assert len(d1_rows) == 35 and set(d1_rows.source_uri) == {str(tmp_path / "d1" / "0900.mp4")}
    assert main(["score", str(tmp_path / "d3"), days, *ckpt, "--force", "--actors", "50"]) == 2
    assert len(read_table(days, "frames")) == 35 + 30 + 20


def test_bad_arguments_exit_2(tmp_path, trained_checkpoint, synth_test_archive, capsys):
    assert main(["score", str(synth_test_archive), str(tmp_path / "o"), "--checkpoint", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    assert main(["score", str(synth_test_archive), str(tmp_path / "o"), "--checkpoint",
                 str(trained_checkpoint), "--hop", "11"]) == 2
    assert main(["score", str(synth_test_archive), str(tmp_path / "o"), "--checkpoint",
                 str(trained_checkpoint), "--actor-threads", "0"]) == 2
    assert "--actor-threads" in capsys.readouterr().err
    for flag, value, said in (("--grid", "0", "--grid must be between 1"), ("--grid", "1000", "frame size"),
                              ("--frame-fps", "0", "--frame-fps")):
        assert main(["score", str(synth_test_archive), str(tmp_path / "o"), "--checkpoint",
                     str(trained_checkpoint), flag, value]) == 2
        assert said in capsys.readouterr().err
    with pytest.raises(SystemExit):   # argparse's choices: exit 2 with the list
        main(["score", str(synth_test_archive), str(tmp_path / "o"), "--checkpoint", str(trained_checkpoint),
              "--events-from", "anomaly_score"])
    assert "combined_regularity" in capsys.readouterr().err
    with pytest.raises(UsageError, match="events can follow"):
        run_score(str(synth_test_archive), str(tmp_path / "o"), str(trained_checkpoint), events_from="recon_error")
    assert not (tmp_path / "o").exists()


def test_model_actors_this_ray_cannot_hold_are_refused(ray_session, trained_checkpoint, synth_test_archive,
                                                         tmp_path):
    """As many CPU actors as CPUs (nothing left to decode) or a GPU this Ray does not have:
    the job sat at 'Total Progress: 0/?' until Ray Data's 30-minute timeout."""
    cpus = int(ray_session.cluster_resources()["CPU"])
    gpus = int(ray_session.cluster_resources().get("GPU", 0))
    with pytest.raises(UsageError, match=f"--actors {cpus}"):
        run_score(str(synth_test_archive), str(tmp_path / "o"), str(trained_checkpoint), actors=cpus)
    with pytest.raises(UsageError, match=f"and this Ray has {gpus}"):   # one more GPU than there is
        run_score(str(synth_test_archive), str(tmp_path / "o"), str(trained_checkpoint), actors=gpus + 1,
                  gpus_per_actor=1)
    assert not (tmp_path / "o").exists()


def test_events_follow_the_score_asked_for(ray_session, trained_checkpoint, synth_test_archive, tmp_path):
    """--events-from combined_regularity: every event is a dip of that column, and says so."""
    runs = {}
    for column in ("regularity", "combined_regularity"):
        out = str(tmp_path / column)
        run_score(str(synth_test_archive), out, str(trained_checkpoint), hop=2, events_from=column)
        frames, events = read_table(out, "frames"), read_table(out, "events")
        assert len(events) > 0 and set(events.score) == {column}
        for ev in events.itertuples():
            span = frames[(frames.video_id == ev.video_id) & frames.frame_index.between(ev.start_frame, ev.end_frame)]
            peak = span.set_index("frame_index")[column]
            assert ev.min_regularity == peak[ev.peak_frame] == peak.min()
        runs[column] = (set(frames.run_id), events)
    assert runs["regularity"][0] != runs["combined_regularity"][0]   # the run_id records the choice
    assert not runs["regularity"][1][["video_id", "peak_frame"]].equals(
        runs["combined_regularity"][1][["video_id", "peak_frame"]])


def test_dates_come_from_paths():
    assert video_date(VideoRef("cam3/2024-05-01/0900", "x")) == "2024-05-01"
    assert video_date(VideoRef("cam3/20240501_0900", "x")) == "2024-05-01"
    assert video_date(VideoRef("Test001", "x")) == "unknown"
    assert video_date(VideoRef("cam3/20241341", "x")) == "unknown"
    assert video_date(VideoRef("cam3/2024/05/01/0900", "x")) == "2024-05-01"   # a folder per year, month, day
    assert video_date(VideoRef("cam3/2024_05_01-0900", "x")) == "2024-05-01"
    assert video_date(VideoRef("cam3/2024-05/01/0900", "x")) == "unknown"      # separators that differ
    assert video_date(VideoRef("05/01/0900", "x")) == "unknown"                # no year below SOURCE
    assert video_date(VideoRef("ch01_20240501120000", "x")) == "2024-05-01"     # recorders' date and time
    assert video_date(VideoRef("20240501090000-20240501100000", "x")) == "2024-05-01"
    assert video_date(VideoRef("cam_202405011200", "x")) == "2024-05-01"
    assert video_date(VideoRef("2024050112000", "x")) == "unknown"             # 13 digits: not a date and time
    assert video_date(VideoRef("1714550400000", "x")) == "unknown"             # epoch milliseconds
    assert video_date(VideoRef("cam/20241239_0900", "x")) == "unknown"         # no 39th day


def test_the_settings_of_skipped_videos_are_read_from_a_bounded_sample(tmp_path, monkeypatch):
    """A year's rerun must not read a year of files to say the settings differ."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vadray.errors import safe_key
    from vadray.manifest import scores_file, settings_of_done

    refs = [VideoRef(f"2024-05-{1 + k % 28:02d}/{k:04d}", "x") for k in range(44)]
    for k, ref in enumerate(refs):
        path = tmp_path / "frames" / scores_file("cam", video_date(ref), safe_key(ref.video_id), "m1")
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"run_id": [f"score-{'b' if k == 20 else 'a'}"]}), path)
    opened = []
    real_open = pq.ParquetFile

    def counting(handle, *args, **kwargs):
        opened.append(handle)
        return real_open(handle, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counting)
    found = settings_of_done(str(tmp_path), "cam", refs, "m1", {}, sample=8)
    assert len(opened) == 8 and found == {"score-a", "score-b"}   # every 5th video: 20 is among them


def test_a_rescore_removes_the_rows_an_older_vadray_filed_under_date_unknown(tmp_path):
    """Before 2024/05/01 folders were read as dates, such a video's rows went to date=unknown:
    rescored (--force, or a changed file), they must not stay beside the new date's."""
    from vadray.errors import safe_key
    from vadray.manifest import Previous, drop_previous, scores_file

    ref = VideoRef("2024/05/01/0900", "x")
    kept = VideoRef("0800", "y")
    for table in ("frames", "events"):
        for date, video in (("unknown", ref), ("2024-05-01", ref), ("unknown", kept)):
            path = tmp_path / table / scores_file("cam", date, safe_key(video.video_id), "m1")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"rows")
    drop_previous(str(tmp_path), "cam", [ref], "m1", Previous(), {})
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    assert left == [f"{t}/{scores_file('cam', 'unknown', safe_key('0800'), 'm1')}" for t in ("events", "frames")]


def test_s3_to_s3(ray_session, trained_checkpoint, synth_test_archive, s3_bucket):
    bucket, options = s3_bucket
    fs, _ = storage.url_to_fs(f"s3://{bucket}", options)
    for f in synth_test_archive.glob("*.mp4"):
        fs.put(str(f), f"{bucket}/cam1/2025-01-31/{f.name}")
    out = f"s3://{bucket}/scores"
    summary = run_score(f"s3://{bucket}/cam1", out, str(trained_checkpoint), camera="cam1",
                        storage_options=options, checkpoint_storage_options={})
    assert (summary.failures, summary.frames) == (0, 90)
    frames = read_table(out, "frames", options)
    assert len(frames) == 90 and set(frames.date) == {"2025-01-31"}
    assert set(frames.video_id) == {f"2025-01-31/test00{i}" for i in (1, 2, 3)}
    # an object replaced in place is rescored; its old marker goes in the run's one bulk delete
    fs.put(str(synth_test_archive / "test002.mp4"), f"{bucket}/cam1/2025-01-31/test001.mp4")
    again = run_score(f"s3://{bucket}/cam1", out, str(trained_checkpoint), camera="cam1",
                      storage_options=options, checkpoint_storage_options={})
    assert (again.skipped, again.frames) == (2, 30)
    fs.invalidate_cache()
    assert len(fs.find(f"{bucket}/scores/manifest/camera=cam1")) == 3
    rescored = read_table(out, "frames", options)
    assert len(rescored) == 90 and rescored[rescored.video_id == "2025-01-31/test001"].source_uri.nunique() == 1
    # the markers' URIs are read back from the store: another day's file under the same id is refused
    for day in ("day1", "day2"):
        fs.put(str(synth_test_archive / "test003.mp4"), f"{bucket}/{day}/0900.mp4")
    days_out = f"s3://{bucket}/days"
    assert run_score(f"s3://{bucket}/day1", days_out, str(trained_checkpoint), storage_options=options,
                     checkpoint_storage_options={}).frames == 30
    with pytest.raises(UsageError, match=f"from s3://{bucket}/day1/0900.mp4"):
        run_score(f"s3://{bucket}/day2", days_out, str(trained_checkpoint), storage_options=options,
                  checkpoint_storage_options={})
    # the archive moves to another prefix (a server-side copy keeps the ETag): its scores follow it
    fs.copy(f"{bucket}/day1/0900.mp4", f"{bucket}/moved/day1/0900.mp4")
    moved = run_score(f"s3://{bucket}/moved/day1", days_out, str(trained_checkpoint), storage_options=options,
                      checkpoint_storage_options={}, moved_from=f"s3://{bucket}/day1")
    assert (moved.skipped, moved.frames) == (1, 0)
    assert set(read_table(days_out, "frames", options).source_uri) == {f"s3://{bucket}/moved/day1/0900.mp4"}


@ped2
@pytest.mark.slow
def test_ped2_test_videos_give_2010_frame_rows(ray_session, trained_checkpoint, tmp_path):
    # The tiny test model works at 27×27: this checks the pipeline on real footage, not the AUC.
    out = str(tmp_path / "ped2")
    summary = run_score(str(PED2 / "test"), out, str(trained_checkpoint), hop=10, batch_size=64)
    assert (summary.videos, summary.failures, summary.frames) == (12, 0, 2010)
    frames = read_table(out, "frames")
    assert len(frames) == 2010 and frames.groupby("video_id").frame_index.apply(
        lambda s: (s.to_numpy() == np.arange(len(s))).all()).all()


def test_threads_per_worker_share_the_node_cpus(ray_session):
    from vadray.raylib import threads_per_worker

    assert [threads_per_worker(n) for n in (1, 2, 5)] == [2, 1, 1]  # the session's Ray has 2 CPUs


def test_gain_correction_keeps_a_brighter_twin_of_a_video_normal(ray_session, trained_checkpoint, tmp_path):
    """A ×1.3 copy of a normal clip (a light switched on) reads as anomalous unless gain-corrected;
    `brightness_gain` shows the light either way."""
    from vadray.synth import render_video, write_video

    src = tmp_path / "src"
    images = render_video(64, 48, 30, seed=11)[0]
    write_video(str(src / "plain.mp4"), images)
    write_video(str(src / "brighter.mp4"), np.clip(images * 1.3, 0, 255).astype(np.uint8))
    mean_error, run_ids = {}, set()
    for corrected in (False, True):
        out = str(tmp_path / f"out-{corrected}")
        if corrected:   # through the CLI flag
            assert main(["score", str(src), out, "--checkpoint", str(trained_checkpoint), "--gain-correction"]) == 0
        else:
            assert run_score(str(src), out, str(trained_checkpoint)).frames == 60
        frames = read_table(out, "frames")
        assert len(frames) == 60
        mean_error[corrected] = frames.groupby("video_id").recon_error.mean()
        run_ids |= set(frames.run_id)
        gain = frames.groupby("video_id").brightness_gain.median()    # of the source, either way
        assert gain["brighter"] / gain["plain"] == pytest.approx(1.3, abs=0.05)
    assert len(run_ids) == 2   # the tables say which setting wrote them
    plain, corrected = mean_error[False], mean_error[True]
    assert plain["brighter"] > 1.3 * plain["plain"]
    assert abs(corrected["brighter"] / corrected["plain"] - 1) < 0.1


def test_on_s3_a_file_scored_before_under_another_id_is_found(s3_bucket):
    """A day folder scored as SOURCE (ids `0900`…), then its camera's folder (`2024-05-01/0900`…):
    on S3 only the markers under the new keys' common prefix were listed, so the old ids' rows
    stayed beside the new ones, the footage twice with no warning (many-files review)."""
    from vadray.errors import safe_key
    import s3fs

    from vadray.listing import VideoRef
    from vadray.manifest import drop_other_ids, mark_scored, previous_scoring, scores_file

    bucket, options = s3_bucket
    out = f"s3://{bucket}/scores"
    uris = [f"s3://{bucket}/a/cam/2024-05-01/{hhmm}.mp4" for hhmm in ("0900", "0910")]
    day = [VideoRef(uri.rsplit("/", 1)[1][:-4], uri, 10, etag="e") for uri in uris]
    for ref in day:
        mark_scored(out, "lobby", ref.video_id, ref.identity(), "m1", ref.uri, True, options)
    month = [VideoRef(f"2024-05-01/{ref.video_id}", ref.uri, 10, etag="e") for ref in day]
    previous = previous_scoring(out, "lobby", month, "m1", options)
    assert previous.done == set()
    assert previous.other_ids == {new.video_id: [safe_key(old.video_id)] for new, old in zip(month, day)}
    # their rows go, found by name in one listing of each table; another model's and another key's stay
    fs = s3fs.S3FileSystem(**options)
    kept = [f"{bucket}/scores/frames/{scores_file('lobby', 'unknown', safe_key('0900'), 'm2')}",
            f"{bucket}/scores/events/{scores_file('lobby', 'unknown', safe_key('0920'), 'm1')}"]
    gone = [f"{bucket}/scores/{table}/{scores_file('lobby', 'unknown', safe_key(ref.video_id), 'm1')}"
            for ref in day for table in ("frames", "events")]
    for path in kept + gone:
        fs.pipe_file(path, b"rows")
    assert drop_other_ids(out, "lobby", "m1", previous, options) == sorted(safe_key(r.video_id) for r in day)
    fs.invalidate_cache()
    assert sorted(fs.find(f"{bucket}/scores/frames") + fs.find(f"{bucket}/scores/events")) == sorted(kept)
    assert fs.find(f"{bucket}/scores/manifest") == []
