"""evaluate / report / query over small frames and events tables written in the documented layout."""
import json
import math
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import videos

from vadray import cli, evaluate, query, report
from vadray.errors import error_row, safe_key, write_errors
from vadray.events import EVENTS_SCHEMA
from vadray.exits import UsageError
from vadray.scoring import FRAMES_SCHEMA
from vadray.synth import write_video

FPS = 10.0


def _source_video(path):
    """40 dark frames; frames 20-25 carry a bright square (what the thumbnail must show)."""
    frames = np.full((40, 48, 64), 60, np.uint8)
    frames[20:26, 12:36, 16:48] = 220
    write_video(path, frames, fps=int(FPS))
    return path


def _write(root, table_name, camera, date, video_id, rows, schema, keep_partition_columns):
    folder = os.path.join(root, table_name, f"camera={camera}", f"date={date}")
    os.makedirs(folder, exist_ok=True)
    table = pa.Table.from_pylist([{"camera": camera, "date": date, "video_id": video_id, **r} for r in rows],
                                 schema=schema)
    if not keep_partition_columns:   # both layouts are valid: files with or without the partition columns
        table = table.drop_columns(["camera", "date"])
    pq.write_table(table, os.path.join(folder, f"{safe_key(video_id)}.parquet"))


def _frames(source, regularity, cell_nan_at=()):
    s_r = np.asarray(regularity, float)
    return [{"source_uri": source, "frame_index": i, "time_s": i / FPS, "recon_error": float(2 - s_r[i]),
             "regularity": float(s_r[i]), "anomaly_score": float(10 * (1 - s_r[i])),
             "cell_error_max": float("nan") if i in cell_nan_at else float(1 - s_r[i]),
             "model_id": "m1", "run_id": "r1"} for i in range(len(s_r))]


def _event(event_id, start, peak, end, min_regularity):
    return {"event_id": event_id, "start_frame": start, "end_frame": end, "peak_frame": peak,
            "start_time_s": start / FPS, "end_time_s": end / FPS, "peak_time_s": peak / FPS,
            "min_regularity": min_regularity, "max_anomaly_score": 10 * (1 - min_regularity),
            "persistence": 0.5, "model_id": "m1"}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """An OUTPUT with three videos, an errors table and a label CSV.

    A (cam1, 40 frames): labels 1 at 20..25 (s_r 0.4), s_r 0.9 elsewhere but 0.35 at frame 5.
    B (camera "3", 30 frames): labels 1 at 10..14 (s_r 0.5), 0.8 elsewhere; cell_error_max NaN at 0.
    C (no labels, 10 frames). Labels also for A frames 40, 41 and a video with no frames.
    """
    root = tmp_path_factory.mktemp("scored")
    out = str(root / "out")
    source_a = _source_video(str(root / "src" / "a.mp4"))
    s_a = np.full(40, 0.9)
    s_a[20:26], s_a[5] = 0.4, 0.35
    s_b = np.full(30, 0.8)
    s_b[10:15] = 0.5
    videos = {"cam1/2024-05-01/0900": ("cam1", "2024-05-01", source_a, s_a, (), True),
              "clipB": ("3", "unknown", str(root / "src" / "missing.mp4"), s_b, (0,), False),
              "clipC": ("3", "unknown", str(root / "src" / "missing.mp4"), np.full(10, 0.7), (), True)}
    for video_id, (camera, date, source, s_r, nan_at, keep) in videos.items():
        _write(out, "frames", camera, date, video_id, _frames(source, s_r, nan_at), FRAMES_SCHEMA, keep)
    _write(out, "events", "cam1", "2024-05-01", "cam1/2024-05-01/0900",
           [_event(0, 19, 22, 26, 0.4), _event(1, 30, 31, 32, 0.85)], EVENTS_SCHEMA, True)
    _write(out, "events", "3", "unknown", "clipC", [_event(0, 2, 3, 4, 0.7)], EVENTS_SCHEMA, False)
    write_errors([error_row("broken", "src/broken.mp4", "decode", "corrupt", "bad header")],
                 os.path.join(out, "errors"), "3", "broken")
    labels = root / "labels.csv"
    rows = ["video,frame_index,label"]
    rows += [f"cam1/2024-05-01/0900,{i},{int(20 <= i <= 25)}" for i in range(42)]
    rows += [f"clipB,{i},{int(10 <= i <= 14)}" for i in range(30)]
    rows += [f"ghost,{i},0" for i in range(3)]
    labels.write_text("\n".join(rows) + "\n")
    return {"out": out, "labels": str(labels), "root": root, "source_a": source_a}


def test_evaluate_counts_pairs_by_hand(scored):
    result = evaluate.evaluate_output(scored["out"], scored["labels"])
    # A: 6 positives at 1 - s_r = 0.6 beat 33 of 34 negatives (not the 0.65 at frame 5); B: AUC 1
    auc_a = 6 * 33 / (6 * 34)
    # pooled: 11 positives (0.6 ×6, 0.5 ×5) vs 59 negatives (0.1 ×33, 0.65, 0.2 ×25); each beats 58
    auc_micro = 11 * 58 / (11 * 59)
    for column in ("regularity", "anomaly_score"):
        m = result[column]
        assert m["auc"] == pytest.approx(auc_micro)
        assert m["auc_macro"] == pytest.approx((auc_a + 1.0) / 2)
        assert m["auc_per_video"]["cam1/2024-05-01/0900"] == pytest.approx(auc_a)
        assert m["frames"] == 70 and m["anomalous_frames"] == 11 and m["videos_in_macro"] == 2
    # ROC: the negative at 0.65 first (FPR 1/59), then all 11 positives: FNR reaches 0 on that
    # vertical segment while FPR = 1/59, so the curves cross at 1/59
    assert result["regularity"]["eer"] == pytest.approx(1 / 59)
    assert result["cell_error_max"]["missing_scores"] == 1 and result["cell_error_max"]["frames"] == 69
    c = result["coverage"]
    assert (c["frames"], c["evaluated_frames"], c["frames_without_labels"], c["labels_without_frames"]) == (80, 70, 10, 5)
    assert c["videos_without_labels"] == ["clipC"] and c["labelled_videos_without_frames"] == ["ghost"]
    e = result["events"]
    # A's event 19-26 hits [20, 25], 30-32 is a false alarm; B's [10, 14] is missed; C is unlabelled
    assert (e["gt_events"], e["gt_detected"], e["false_alarms"], e["detected_events"]) == (2, 1, 1, 2)


def test_evaluate_cli_writes_strict_json(scored, tmp_path, capsys):
    path = tmp_path / "m" / "metrics.json"
    assert cli.main(["evaluate", scored["out"], "--labels", scored["labels"], "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "regularity" in printed and "1 of 2 ground-truth events" in printed
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert set(data) >= {"regularity", "anomaly_score", "cell_error_max", "events", "coverage"}
    # which model and camera the figures are of (multi-model review: a metrics file did not say)
    assert data["selection"] == {"output": scored["out"], "model_id": "m1", "cameras": ["3", "cam1"]}
    assert "model m1, cameras 3, cam1" in printed
    # tables scored before the motion columns existed still evaluate; those scores say so
    assert data["motion_regularity"]["available"] is False and "no scores in the evaluated frames" in printed
    assert data["regularity"]["auc_macro"] == pytest.approx(evaluate.evaluate_output(
        scored["out"], scored["labels"])["regularity"]["auc_macro"])
    assert cli.main(["evaluate", str(tmp_path / "nothing"), "--labels", scored["labels"]]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("clip,frame,label\n")
    assert cli.main(["evaluate", scored["out"], "--labels", str(bad)]) == 2


def test_bad_label_files_get_a_clear_error_and_repeats_are_counted(scored, tmp_path, capsys):
    def evaluate_with(text: str) -> int:
        path = tmp_path / "labels.csv"
        path.write_text(text)
        return cli.main(["evaluate", scored["out"], "--labels", str(path)])

    base = (tmp_path / "ok.csv")
    good = open(scored["labels"]).read()
    for text, message in [("", "is empty"),
                          ("video,frame_index,label\nclipB,2.5,1\n", "whole numbers"),
                          ("video,frame_index,label\nclipB,3,0\nclipB,3,1\n", "labelled both 0 and 1 (clipB frame 3)"),
                          ("video,frame_index,label\nclipB.mp4,3,0\n", "no label matches a scored frame"),
                          ("video,frame_index,label\nclipB,3,0\nclipB,4,\n",
                           "1 row(s) are not, the first on line 3: video 'clipB', frame_index 4, label (blank)")]:
        capsys.readouterr()
        assert evaluate_with(text) == 2, message
        assert message in capsys.readouterr().err
    assert evaluate_with(good + good.split("\n", 1)[1]) == 0           # every row twice: same metrics
    assert "duplicate label rows: 75 (repeats; one kept)" in capsys.readouterr().out
    base.write_text(good)
    once = evaluate.evaluate_output(scored["out"], str(base))
    twice = evaluate.evaluate_output(scored["out"], str(tmp_path / "labels.csv"))
    assert twice["regularity"] == once["regularity"] and twice["coverage"]["duplicate_label_rows"] == 75


def test_the_readme_pandas_example_runs_as_written_and_agrees_with_duckdb(scored):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    code = readme.split("and in pandas", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    # the fixture's camera "3" (a name pyarrow would read as a number) in place of lobby; its
    # date partition is "unknown", inside the range "0" … "z"
    code = (code.replace('"scores/frames"', repr(os.path.join(scored["out"], "frames"))).replace('"lobby"', '"3"')
            .replace('"2024-05-01"', '"0"').replace('"2024-05-07"', '"z"'))
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    frames = namespace["frames"]
    assert sorted(frames["video_id"].unique()) == ["clipB", "clipC"] and len(frames) == 40
    sql = query.query(scored["out"], "SELECT min(regularity) AS low FROM frames WHERE camera = '3'")
    assert frames["regularity"].min() == pytest.approx(sql["low"].iloc[0])


def test_python_callers_pass_paths_single_names_and_get_clear_errors(scored, tmp_path):
    """From a notebook: pathlib.Path locations (a TypeError in every job), one name where a
    list is taken (split into letters), and the CLI's @FILE options string (API review)."""
    from pathlib import Path

    out, labels = Path(scored["out"]), Path(scored["labels"])
    both = evaluate.evaluate_output(out, labels, cameras="cam1", model_ids="m1")
    assert both["coverage"]["evaluated_frames"] == evaluate.evaluate_output(
        scored["out"], scored["labels"], cameras=["cam1"])["coverage"]["evaluated_frames"] > 0
    rows = report.build_report(out, tmp_path / "rep", videos="clipB", dates="unknown", max_thumbnails=0)
    assert [r["video_id"] for r in rows] == ["clipB"] and (tmp_path / "rep" / "index.html").exists()
    assert query.query(out, "SELECT count(*) AS n FROM frames")["n"][0] == 80
    with pytest.raises(UsageError, match="storage_options must be a dict"):
        evaluate.evaluate_output(out, labels, storage_options="@s3.json")


def test_query_local_views(scored, tmp_path, capsys):
    counts = query.query(scored["out"], "SELECT camera, video_id, count(*) AS n FROM frames GROUP BY ALL ORDER BY video_id")
    assert counts["video_id"].tolist() == ["cam1/2024-05-01/0900", "clipB", "clipC"]
    assert counts["n"].tolist() == [40, 30, 10]
    assert counts["camera"].tolist() == ["cam1", "3", "3"]      # partition values stay strings
    dips = query.query(scored["out"], "SELECT f.frame_index FROM frames f JOIN events e USING (video_id) "
                                      "WHERE f.frame_index = e.peak_frame ORDER BY 1")
    assert dips["frame_index"].tolist() == [3, 22, 31]
    errors = query.query(scored["out"], "SELECT camera, error_type FROM errors")
    assert errors.to_dict("records") == [{"camera": "3", "error_type": "corrupt"}]
    with pytest.raises(UsageError):
        query.query(scored["out"], "SELEC 1")
    written = tmp_path / "written.csv"
    for sql in (f"COPY (SELECT * FROM frames) TO '{written}'", "SELECT 1; SELECT 2", "CREATE TABLE t AS SELECT 1",
                f"EXPLAIN ANALYZE COPY (SELECT 42) TO '{written}'", f"-- a note\nexplain analyse COPY (SELECT 1) TO '{written}'",
                f"EXPLAIN (FORMAT json, ANALYZE) COPY (SELECT 1) TO '{written}'",
                f"EXPLAIN /* c */ ANALYZE COPY (SELECT 1) TO '{written}'", f"EXPLAIN\n-- x\nANALYZE COPY (SELECT 1) TO '{written}'"):
        with pytest.raises(UsageError, match="one SELECT"):
            query.query(scored["out"], sql)
    assert not written.exists()
    pivot = query.query(scored["out"], "PIVOT (SELECT camera, video_id FROM frames) ON camera USING count(*)")
    assert sorted(pivot.columns) == ["3", "cam1", "video_id"]
    # the documented schema's order, partitions first, local or s3:// alike
    assert query.query(scored["out"], "DESCRIBE frames")["column_name"].tolist()[:4] == ["camera", "date", "video_id", "source_uri"]
    out_csv, out_pq = tmp_path / "r.csv", tmp_path / "r.parquet"
    sql = "SELECT video_id, min(regularity) AS low FROM frames GROUP BY 1 ORDER BY 1"
    assert cli.main(["query", scored["out"], sql, "--out", str(out_csv)]) == 0
    assert cli.main(["query", scored["out"], sql, "--out", str(out_pq)]) == 0
    assert out_csv.read_text().splitlines()[0] == "video_id,low"
    assert pq.read_table(out_pq).column("low").to_pylist() == pytest.approx([0.35, 0.5, 0.7])
    assert cli.main(["query", scored["out"], "SELECT count(*) AS n FROM events"]) == 0
    assert "(1 rows)" in capsys.readouterr().out
    # An empty result keeps its SQL types (a file to append to others); a sum of integers is one.
    none = "SELECT camera, video_id, frame_index, regularity FROM frames WHERE regularity < 0"
    assert cli.main(["query", scored["out"], none, "--out", str(out_pq)]) == 0
    assert [str(t) for t in pq.read_schema(out_pq).types] == ["string", "string", "int64", "float"]
    assert cli.main(["query", scored["out"], "SELECT sum(frame_index) AS s FROM frames", "--out", str(out_pq)]) == 0
    assert pq.read_table(out_pq).column("s").type == pa.int64()
    capsys.readouterr()
    assert cli.main(["query", scored["out"], "SELECT sum(frame_index) AS s FROM frames"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["s", str(sum(range(40)) + sum(range(30)) + sum(range(10)))]


def test_query_reads_an_output_with_error_files_of_both_layouts(scored, tmp_path):
    """Error files of versions before the camera= folders sit in errors/ itself; a backfill that
    spans the upgrade has both, and DuckDB's hive reader refuses files at two depths."""
    import shutil

    from vadray.errors import FILE_SCHEMA

    out = tmp_path / "out"
    shutil.copytree(scored["out"], out)
    old = pa.Table.from_pylist([{"video_id": "old", "source_uri": "src/old.mp4", "stage": "probe",
                                 "error_type": "corrupt", "message": "bad"}], schema=FILE_SCHEMA)
    pq.write_table(old, out / "errors" / "old-12345678-probe.parquet")
    errors = query.query(str(out), "SELECT video_id, camera FROM errors ORDER BY video_id")
    assert errors["video_id"].tolist() == ["broken", "old"] and errors["camera"].tolist()[0] == "3"
    assert query.query(str(out), "SELECT count(*) AS n FROM frames")["n"].tolist() == [80]


def test_query_empty_events_and_errors_tables(tmp_path, capsys):
    out = tmp_path / "o"
    _write(str(out), "frames", "c", "unknown", "v", _frames("x.mp4", [1.0, 0.5]), FRAMES_SCHEMA, True)
    assert query.query(str(out), "SELECT count(*) AS n FROM events")["n"].tolist() == [0]
    assert query.query(str(out), "SELECT count(*) AS n FROM errors")["n"].tolist() == [0]
    assert cli.main(["query", str(out), "SELECT video_id, stage FROM errors"]) == 0
    assert capsys.readouterr().out.splitlines() == ["video_id  stage", "(0 rows)"]


def test_query_reads_partitions_below_the_tables_only(scored, tmp_path):
    """An OUTPUT inside a `key=value` folder (/data/camera=lobby/out): DuckDB's hive reader took
    every such folder of the path as a partition, so `camera` read 'lobby' and a `run` column
    appeared; and a documented column that no file has yet is null, not a binder error."""
    out = tmp_path / "camera=lobby" / "run=7" / "out"
    shutil.copytree(scored["out"], out)
    for path in (out / "frames").rglob("*.parquet"):   # files from before combined_regularity existed
        pq.write_table(pq.read_table(path).drop_columns(["combined_regularity"]), path)
    cameras = query.query(str(out), "SELECT DISTINCT camera FROM frames ORDER BY 1")
    assert cameras["camera"].tolist() == ["3", "cam1"]
    assert "run" not in query.query(str(out), "SELECT * FROM frames LIMIT 1").columns
    assert query.query(str(out), "SELECT count(combined_regularity) AS n FROM frames")["n"].tolist() == [0]


def test_s3_outputs_give_the_same_answers(scored, s3_bucket):
    import s3fs

    bucket, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    fs.put(scored["out"], f"{bucket}/run/out", recursive=True)
    fs.put(scored["labels"], f"{bucket}/run/labels.csv")
    remote = evaluate.evaluate_output(f"s3://{bucket}/run/out", f"s3://{bucket}/run/labels.csv", options)
    local = evaluate.evaluate_output(scored["out"], scored["labels"])
    assert remote["regularity"]["auc"] == local["regularity"]["auc"]
    assert remote["coverage"] == local["coverage"] and remote["events"] == local["events"]
    sql = "SELECT camera, date, video_id, count(*) AS n FROM frames GROUP BY ALL ORDER BY video_id"
    assert query.query(f"s3://{bucket}/run/out", sql, options).equals(query.query(scored["out"], sql))
    for elsewhere in ("SELECT * FROM read_text('/proc/self/environ')",   # an s3 OUTPUT is as locked as a local one
                      f"SELECT * FROM read_csv('s3://{bucket}/run/labels.csv')", "SET enable_external_access = true"):
        with pytest.raises(UsageError):
            query.query(f"s3://{bucket}/run/out", elsewhere, options)


def test_decode_thumbnail_video_and_frame_folder(scored, tmp_path):
    import av

    bright = report.decode_thumbnail(scored["source_a"], 22)
    dark = report.decode_thumbnail(scored["source_a"], 5)
    assert bright.shape == (48, 64) and dark.shape == (48, 64)
    assert bright[20:30, 25:40].mean() > 180 and dark[20:30, 25:40].mean() < 100
    assert report.decode_thumbnail(str(tmp_path / "absent.mp4"), 0) is None
    assert report.decode_thumbnail(scored["source_a"], 400) is None
    folder = tmp_path / "frames_clip"
    folder.mkdir()
    for i in range(12):   # 2.png sorts before 10.png: natural order, as ingest numbers frames
        image = np.full((16, 16, 3), 20 * i, np.uint8)
        av.VideoFrame.from_ndarray(image, format="rgb24").save(str(folder / f"{i}.png"))
    assert report.decode_thumbnail(str(folder), 10).mean() == pytest.approx(200, abs=2)
    joined = str(tmp_path / "joined.ts")   # timestamps that reset: frame 95 is the third recording's 15th
    videos.joined_ts(joined, [10.0, 0.0, 2.0], b_frames=2, n=40)
    with av.open(joined) as container:
        plain = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    np.testing.assert_array_equal(report.decode_thumbnail(joined, 95), plain[95])
    np.testing.assert_array_equal(report.decode_thumbnail(joined, 15), plain[15])


def test_report_writes_plots_and_index(scored, tmp_path):
    calls = []

    def error_map(source_uri, frame_index):
        calls.append((source_uri, frame_index))
        return np.outer(np.hanning(27), np.hanning(27))

    rows = report.build_report(scored["out"], str(tmp_path / "rep"), scored["labels"], error_map_fn=error_map)
    by_video = {r["video_id"]: r for r in rows}
    assert set(by_video) == {"cam1/2024-05-01/0900", "clipB", "clipC"}
    assert by_video["cam1/2024-05-01/0900"]["events"] == 2
    assert by_video["cam1/2024-05-01/0900"]["auc"] == pytest.approx(6 * 33 / (6 * 34))
    assert math.isnan(by_video["clipC"]["auc"])
    assert (scored["source_a"], 22) in calls and (scored["source_a"], 31) in calls
    for r in rows:
        png = tmp_path / "rep" / r["png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count("<tr>") == 4 + 2 and f"href='{by_video['clipB']['png']}'" in page
    assert "scored by model <code>m1</code>" in page
    assert "0.971" in page   # A's AUC, 198/204
    for r in rows:           # the last frame's own period counts: n frames at FPS last n / FPS s
        assert r["duration_s"] == pytest.approx(r["frames"] / FPS)
    error_map.model_id = "convlstm_ae-000000000000"   # as ErrorMaps of another checkpoint says
    with pytest.raises(UsageError, match="scored by"):
        report.build_report(scored["out"], str(tmp_path / "rep2"), error_map_fn=error_map)


def test_a_video_whose_files_are_there_twice_counts_once_and_a_nan_is_no_rank(scored, tmp_path, capsys):
    """A copy of a video's frames and events under a second date= folder: evaluate counted its
    events twice (a second false alarm) and report drew 80 frames; one NaN regularity made the
    report's per-video AUC NaN while evaluate left the frame out (review findings)."""
    out = tmp_path / "out"
    shutil.copytree(scored["out"], out)
    for table in ("frames", "events"):
        shutil.copytree(out / table / "camera=cam1" / "date=2024-05-01", out / table / "camera=cam1" / "date=unknown")
    e = evaluate.evaluate_output(str(out), scored["labels"])["events"]
    assert (e["gt_detected"], e["false_alarms"], e["detected_events"]) == (1, 1, 2)
    (path,) = (out / "frames" / "camera=cam1" / "date=unknown").glob("*.parquet")
    table = pq.read_table(path)
    regularity = table.column("regularity").to_numpy().copy()
    regularity[3] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index("regularity"), "regularity",
                                    pa.array(regularity, pa.float32())), path)
    shutil.rmtree(out / "frames" / "camera=cam1" / "date=2024-05-01")   # the NaN copy is the only one
    rows = {r["video_id"]: r for r in report.build_report(str(out), str(tmp_path / "rep"), scored["labels"],
                                                           max_thumbnails=0)}
    video = rows["cam1/2024-05-01/0900"]
    assert (video["frames"], video["not_scored"], video["events"]) == (40, 0, 2)
    assert video["auc"] == pytest.approx(6 * 32 / (6 * 33))   # frame 3 (normal) left out
    assert cli.main(["evaluate", str(out), "--labels", scored["labels"]]) == 0
    assert "regularity: 1 evaluated frames without a finite score" in capsys.readouterr().out


def test_report_cli_filters_and_no_thumbnails(scored, tmp_path, caplog):
    assert cli.main(["report", scored["out"], str(tmp_path / "r"), "--camera", "3", "--max-thumbnails", "0"]) == 0
    written = sorted(os.listdir(tmp_path / "r"))
    # the camera is in every name, one camera selected or not: two reports into one DIR never collide
    assert written == sorted(["index.html", f"{safe_key('3/clipB')}.png", f"{safe_key('3/clipC')}.png"])
    page = (tmp_path / "r" / "index.html").read_text()
    assert "1 video with errors" in page and "<td>broken</td>" in page and "bad header" in page   # failed: no plot
    assert cli.main(["report", scored["out"], str(tmp_path / "r3"), "--camera", "cam1", "--max-thumbnails", "0"]) == 0
    assert "broken" not in (tmp_path / "r3" / "index.html").read_text()       # another camera's failure
    assert cli.main(["report", scored["out"], str(tmp_path / "r2"), "--video", "nope"]) == 2
    # one video into the same DIR: the other's plot stays, unlisted, and a warning says so (analyst review)
    with caplog.at_level("WARNING", logger="vadray.report"):
        assert cli.main(["report", scored["out"], str(tmp_path / "r"), "--camera", "3", "--video", "clipB",
                         "--max-thumbnails", "0"]) == 0
    assert f"1 plot(s) of an earlier report that this one did not draw (e.g. {safe_key('3/clipC')}.png)" in caplog.text


def test_plot_draws_motion_regularity_only_where_the_table_has_it():
    frames = pd.DataFrame({"camera": "c", "date": "unknown", "video_id": "v", "model_id": "m",
                           "frame_index": np.arange(20), "time_s": np.arange(20) / FPS,
                           "regularity": np.linspace(1, 0.5, 20)})
    events = pd.DataFrame(columns=["event_id", "start_frame", "end_frame", "peak_frame", "min_regularity"])
    older = report.plot_video(frames, events).axes[0]
    assert [line.get_label() for line in older.get_lines()] == ["regularity $s_r$"]
    frames["motion_regularity"] = np.linspace(0.9, 0.2, 20)
    lines = report.plot_video(frames, events).axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["regularity $s_r$", "motion regularity"]
    np.testing.assert_allclose(lines[1].get_ydata(), frames["motion_regularity"])
    assert len(report.plot_video(frames, events).axes) == 1          # no gain column: no gain axis
    frames["brightness_gain"] = 1.0 + np.linspace(0, 0.02, 20)        # lit as in training: not drawn
    assert len(report.plot_video(frames, events).axes) == 1
    frames["brightness_gain"] = np.where(np.arange(20) < 10, 1.0, 1.3)  # a light comes on
    axes = report.plot_video(frames, events).axes
    assert len(axes) == 2 and [line.get_label() for line in axes[1].get_lines()] == ["brightness gain"]


def test_a_decode_gap_is_a_break_in_every_curve_not_a_line_across_it():
    index = np.r_[2:10, 15:22]   # frames 0-1 and 10-14 have no score: no rows
    frames = pd.DataFrame({"camera": "c", "date": "unknown", "video_id": "v", "model_id": "m",
                           "frame_index": index, "time_s": index / FPS, "regularity": np.linspace(1, 0.5, 15),
                           "motion_regularity": np.linspace(0.9, 0.4, 15)})
    events = pd.DataFrame(columns=["event_id", "start_frame", "end_frame", "peak_frame", "min_regularity"])
    ax = report.plot_video(frames, events).axes[0]
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), float)
        assert np.isnan(y).sum() == 1 and np.isnan(y[8]) and np.isfinite(np.delete(y, 8)).all()
    assert "not scored" in [t.get_text() for t in ax.get_legend().get_texts()]
    hatched = sorted((round(float(p.get_x()), 3), round(float(p.get_x() + p.get_width()), 3))
                     for p in ax.patches if p.get_hatch())
    assert hatched == [(0.0, 0.2), (1.0, 1.5)] and ax.get_xlim()[0] == 0
    page = report.index_html([{"video_id": "v", "camera": "c", "date": "unknown", "frames": 15, "not_scored": 5,
                               "duration_s": 2.0, "min_regularity": 0.5, "events": 0, "png": "c_v.png"}], False)
    assert "<th>not scored</th>" in page and "<td>5</td>" in page


def test_plot_says_which_score_the_events_follow():
    frames = pd.DataFrame({"camera": "c", "date": "unknown", "video_id": "v", "model_id": "m",
                           "frame_index": np.arange(20), "time_s": np.arange(20) / FPS,
                           "regularity": np.linspace(1, 0.5, 20)})
    event = {"event_id": 0, "start_frame": 5, "end_frame": 9, "peak_frame": 7, "min_regularity": 0.3}

    def legend(score):
        events = pd.DataFrame([event | ({"score": score} if score else {})])
        return [t.get_text() for t in report.plot_video(frames, events).axes[0].get_legend().get_texts()]

    assert "detected event" in legend(None) and "detected event" in legend("regularity")  # older tables, default
    assert "detected event (combined_regularity)" in legend("combined_regularity")
    # the events' own column is drawn, so each marker sits on the curve it is a dip of; the
    # report reads every column that events can follow
    from vadray.events import EVENT_SCORES
    assert set(EVENT_SCORES) <= set(report.FRAME_COLUMNS)
    frames["combined_regularity"] = np.linspace(0.9, 0.1, 20)
    events = pd.DataFrame([event | {"score": "combined_regularity", "min_regularity": 0.45}])
    lines = {line.get_label(): line for line in report.plot_video(frames, events).axes[0].get_lines()}
    np.testing.assert_allclose(lines["combined regularity"].get_ydata(), frames["combined_regularity"])
    (marker,) = [line for line in lines.values() if line.get_marker() == "v"]
    assert marker.get_ydata()[0] == 0.45


def test_ctrl_c_is_a_short_message_and_exit_130(scored, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(query, "query_table", interrupted)
    assert cli.main(["query", scored["out"], "SELECT 1"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("vadray query: interrupted.") and "Traceback" not in err


def test_user_mistakes_get_a_reason_and_exit_2(scored, tmp_path, capsys):
    """What a newcomer got wrong in review, each once: a one-line reason, exit 2, no traceback."""
    out, labels = scored["out"], scored["labels"]
    afile = tmp_path / "afile"
    afile.write_text("")

    def says(argv, text):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert text in err and "Traceback" not in err, err

    says(["evaluate", out, "--labels", labels, "--camera", "Cam1"], "--camera Cam1 is not there (it holds 3, cam1)")
    says(["evaluate", out, "--labels", labels, "--model-id", "typo"], "--model-id typo is not there")
    says(["report", out, str(tmp_path / "r"), "--video", "nope"], "--video nope is not there")
    says(["evaluate", out, "--labels", labels, "--json", str(afile / "m.json")], f"{str(afile)!r} is a file")
    says(["evaluate", out, "--labels", labels, "--json", str(tmp_path)], "is a folder; give a file name")
    says(["query", out, "SELECT 1", "--out", str(afile / "x.csv")], f"{str(afile)!r} is a file")
    says(["report", out, str(afile)], "is a file; give a folder")
    says(["report", out, str(tmp_path / "r"), "--checkpoint", str(tmp_path)], "cannot read checkpoint")
    says(["query", str(tmp_path), "SELECT 1"], "holds no frames/, events/ or errors/")
    says(["synth", str(afile)], "is a file; give a folder")
    says(["ingest", str(tmp_path), str(afile / "sub")], f"{str(afile)!r} is a file")
    says(["ingest", str(tmp_path), str(tmp_path / "o"), "--size", "30"], "--size 30 fits none of the models")
    says(["train", str(tmp_path), str(afile)], "is a file; give a folder")
    says(["score", str(tmp_path), str(afile), "--checkpoint", str(tmp_path)], "is a file; give a folder")
    says(["score", str(tmp_path), str(tmp_path / "o"), "--checkpoint", str(tmp_path / "nowhere")], "does not exist")
    # analyst review: a folder as --labels was a traceback; report drew labels that match nothing as none
    says(["evaluate", out, "--labels", str(tmp_path)], "is a folder: give the CSV file")
    (tmp_path / "ext.csv").write_text("video,frame_index,label\nclipB.mp4,3,1\n")
    says(["report", out, str(tmp_path / "r"), "--labels", str(tmp_path / "ext.csv")], "no label matches a scored frame")
    # an OUTPUT where every input failed was told to run `vadray score` first
    from vadray.errors import error_row, write_errors
    write_errors([error_row("bad", "/x/bad.mp4", "probe", "corrupt", "not a video")], str(tmp_path / "failed" / "errors"),
                 "default", "bad-probe")
    says(["report", str(tmp_path / "failed"), str(tmp_path / "r")],
         "was scored: its errors table holds 1 row(s), e.g. /x/bad.mp4: not a video")


def test_a_reader_that_leaves_early_is_no_traceback(scored, tmp_path):
    """`vadray query … | head -2` printed a BrokenPipeError traceback and exited 1 (analyst review)."""
    import subprocess
    import sys

    script = f"import sys; from vadray import cli; sys.exit(cli.main(['query', {scored['out']!r}, " \
             "'SELECT * FROM range(200000)', '--max-rows', '0']))"
    pipeline = subprocess.run(f"{sys.executable!r} -c {script!r} | head -c 10", shell=True, capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              executable="/bin/bash")
    assert len(pipeline.stdout) == 10 and "Traceback" not in pipeline.stderr, pipeline.stderr


def test_each_commands_help_names_only_its_own_exit_statuses(capsys):
    for command, partial in (("query", False), ("evaluate", False), ("score", True), ("train", False)):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert text.split("exit status: ")[1].startswith("0 done, 3 ingest or score" if partial else "0 done, 2 bad")
        assert ("143 stopped by SIGTERM" in text) == (command in ("score", "train"))


def test_evaluate_says_why_auc_is_undefined_and_query_prints_every_row_with_0(scored, tmp_path, capsys):
    normal_only = tmp_path / "normal.csv"
    normal_only.write_text("video,frame_index,label\n" + "".join(f"clipB,{i},0\n" for i in range(30)))
    assert cli.main(["evaluate", scored["out"], "--labels", str(normal_only), "--camera", "3"]) == 0
    assert "AUC and EER need normal and anomalous frames: the evaluated frames hold 0 anomalous of 30" \
        in capsys.readouterr().out
    assert cli.main(["query", scored["out"], "SELECT frame_index FROM frames ORDER BY 1", "--max-rows", "0"]) == 0
    printed = capsys.readouterr().out
    assert "(80 rows)" in printed and "..." not in printed


def test_outputs_whose_names_are_patterns_are_refused(scored, tmp_path, capsys, monkeypatch):
    """`out[12]` is out1 and out2 to fsspec's deletes and globs and to DuckDB (deletion review:
    a rerun into s3://b/out[12] deleted out1's rows)."""
    from vadray import storage

    twin = tmp_path / "out[12]"
    shutil.copytree(scored["out"], twin)
    for argv in (["query", str(twin), "SELECT 1"], ["report", str(twin), str(tmp_path / "r")],
                 ["report", scored["out"], str(tmp_path / "r?")], ["evaluate", str(twin), "--labels", scored["labels"]]):
        assert cli.main(argv) == 2, argv
        assert "read them as patterns" in capsys.readouterr().err
    with pytest.raises(UsageError, match="patterns"):   # before any request to the store
        storage.require_folder_to_write({"endpoint_url": "http://127.0.0.1:9"}, OUTPUT="s3://bucket/out*")
    inside = tmp_path / "w[12]"
    inside.mkdir()
    monkeypatch.chdir(inside)                            # a relative OUTPUT is its absolute path
    with pytest.raises(UsageError, match="patterns"):
        storage.require_folder_to_write(OUTPUT="out")
    assert cli.main(["demo", "d"]) == 2 and not os.path.exists(inside / "d")   # before the archive is made
    storage.require_folder_to_write(OUTPUT=str(tmp_path / "out]"))   # `]` alone is no pattern
    monkeypatch.setenv("HOME", str(inside))                           # fsspec expands `~`: so does the check
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="patterns"):
        storage.require_folder_to_write(OUTPUT="~/out")


def test_a_querys_connection_cannot_be_unlocked(scored):
    con = query.connect(scored["out"])
    for statement in ("SET enable_external_access = true", "SET allowed_directories = ['/']"):
        with pytest.raises(Exception, match="locked"):
            con.execute(statement)
    con.close()


def test_query_reads_the_output_and_nothing_else(scored, tmp_path):
    """`vadray query` runs with the caller's files and credentials: its SQL reaches the OUTPUT's
    tables only, not other files, URLs or settings (security review)."""
    secret = tmp_path / "secret.csv"
    secret.write_text("key,value\nAWS_SECRET_ACCESS_KEY,hunter2\n")
    beside = os.path.join(os.path.dirname(scored["out"]), "beside.csv")   # next to OUTPUT, as labels are
    with open(beside, "w") as f:
        f.write("video,frame_index,label\nx,0,1\n")
    assert len(query.query(scored["out"], "SELECT * FROM frames")) == 80
    for sql in (f"SELECT * FROM read_csv('{secret}')", f"SELECT * FROM read_text('{secret}')",
                f"SELECT * FROM read_csv('{beside}')", f"SELECT * FROM read_csv('{scored['out']}/../beside.csv')",
                f"SELECT * FROM glob('{tmp_path}/*')", "SELECT * FROM read_text('/proc/self/environ')",
                "SELECT * FROM read_parquet('https://example.com/x.parquet')"):
        with pytest.raises(UsageError, match="SQL failed"):
            query.query(scored["out"], sql)


def test_a_long_videos_plot_is_wider_and_names_only_its_deepest_events():
    """12,000 frames (20 min at 10 fps) with 60 events: at the short videos' 11 inches the E-labels
    lay over each other and a 20-frame labelled run was under a pixel wide (long-footage review)."""
    n = 12_000
    frames = pd.DataFrame({"camera": "c", "date": "unknown", "video_id": "v", "model_id": "m",
                           "frame_index": np.arange(n), "time_s": np.arange(n) / FPS,
                           "regularity": np.full(n, 0.9)})
    starts = np.arange(60) * 200 + 50
    events = pd.DataFrame({"event_id": np.arange(60), "start_frame": starts, "end_frame": starts + 9,
                           "peak_frame": starts + 4, "min_regularity": np.linspace(0.1, 0.7, 60)})
    fig = report.plot_video(frames, events, truth=np.array([[5000, 5019]]))
    assert fig.get_size_inches()[0] == 24
    ax = fig.axes[0]
    named = sorted(int(t.get_text()[1:]) for t in ax.texts if t.get_text().startswith("E"))
    assert named == list(range(report.LABELLED_EVENTS))           # the lowest min_regularity ones
    assert f"the {report.LABELLED_EVENTS} deepest of 60 events named" in ax.get_title()
    (truth,) = [p for p in ax.patches if p.get_label() == "ground-truth anomaly"]
    assert truth.get_linewidth() > 0                               # drawn at least a pixel wide
    short = report.plot_video(frames.iloc[:300], events.iloc[:1])
    assert short.get_size_inches()[0] == 11 and "deepest" not in short.axes[0].get_title()
