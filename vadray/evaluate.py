"""Frame-level ROC AUC (micro and macro) and EER of every score column, and event counts.

Reads OUTPUT/frames and OUTPUT/events (hive-partitioned Parquet, local or s3://) and a label
CSV `video,frame_index,label` (`video` joins `video_id`; label 1 = anomalous). Scored
frames without a label and labels without a scored frame are counted in "coverage", never
dropped silently. The `…regularity` columns are evaluated as 1 − s so that every score
reads "higher = more anomalous"; `eer_threshold` in --json is in those units too (0.18 for a
regularity column means s = 0.82). EER interpolates linearly on the ROC segment where FPR − FNR
changes sign. Events: a labelled run of anomalous frames is detected when an event overlaps
it; an event overlapping none is a false alarm, unless it holds no labelled frame at all
(then it is counted in `detections_outside_labels`, not judged).
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from vadray import metrics, storage
from vadray.exits import UsageError
from vadray.tables import check_one_camera_per_video, check_one_model, no_rows_selected, read_table, selection

SCORE_COLUMNS = ("regularity", "anomaly_score", "cell_error_max", "motion_regularity", "motion_error",
                 "combined_regularity")
def read_labels(labels_csv: str, storage_options: dict | None = None) -> pd.DataFrame:
    """Label CSV → DataFrame(video_id, frame_index, label), validated. Repeated rows of a frame
    are dropped and counted in `.attrs["duplicate_rows"]`; a frame labelled both 0 and 1 is refused."""
    fs, path = storage.url_to_fs(labels_csv, storage_options)
    if not fs.exists(path):
        raise UsageError(f"labels file {labels_csv!r} does not exist")
    if fs.isdir(path):
        raise UsageError(f"labels file {labels_csv!r} is a folder: give the CSV file (video,frame_index,label)")
    with fs.open(path, "rb") as f:
        try:
            labels = pd.read_csv(f, dtype={"video": str})
        except pd.errors.EmptyDataError:
            raise UsageError(f"labels file {labels_csv!r} is empty: it needs a header video,frame_index,label") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise UsageError(f"labels file {labels_csv!r} is not a CSV: {exc}") from None
    missing = {"video", "frame_index", "label"} - set(labels.columns)
    if missing:
        raise UsageError(f"labels file needs columns video,frame_index,label; missing {sorted(missing)}")
    bad = labels[~labels["label"].isin([0, 1])]
    if len(bad):
        first = bad.iloc[0]
        raise UsageError(f"labels must be 0 (normal) or 1 (anomalous); {len(bad)} row(s) are not, the first on "
                         f"line {bad.index[0] + 2}: video {first['video']!r}, frame_index {first['frame_index']}, "
                         f"label {'(blank)' if pd.isna(first['label']) else first['label']}")
    frame_index = pd.to_numeric(labels["frame_index"], errors="coerce")
    if not (frame_index.notna() & (frame_index == frame_index.round())).all():
        raise UsageError("labels file: frame_index must be whole numbers")
    labels = pd.DataFrame({"video_id": labels["video"].str.strip(), "frame_index": frame_index.astype("int64"),
                           "label": labels["label"].astype("int8")})
    key = ["video_id", "frame_index"]
    conflicts = labels[labels.groupby(key)["label"].transform("nunique") > 1].drop_duplicates(key)
    if len(conflicts):
        shown = ", ".join(f"{v} frame {i}" for v, i in conflicts[key].head(3).itertuples(index=False))
        raise UsageError(f"labels file: {len(conflicts)} frames are labelled both 0 and 1 ({shown}"
                         f"{' …' if len(conflicts) > 3 else ''})")
    deduplicated = labels.drop_duplicates(key).reset_index(drop=True)
    deduplicated.attrs["duplicate_rows"] = len(labels) - len(deduplicated)
    return deduplicated


def require_matching_labels(frames: pd.DataFrame, labels: pd.DataFrame) -> None:
    """Labels that name no scored frame (ids of another SOURCE, with extensions, …) are a
    mistake to say, not an evaluation or a plot without ground truth."""
    key = ["video_id", "frame_index"]
    if not frames[key].merge(labels[key], on=key).empty:
        return

    def some(ids) -> str:
        ids = sorted(map(str, set(ids)))
        return ", ".join(ids[:3]) + (" …" if len(ids) > 3 else "")
    raise UsageError(f"no label matches a scored frame: the labels name videos {some(labels['video_id']) or '(none)'}; "
                     f"the frames table holds {some(frames['video_id'])} (video is the video_id: the path "
                     "relative to SOURCE, without extension unless a same-named file sits beside it)")


def _per_video_intervals(table: pd.DataFrame) -> dict[str, np.ndarray]:
    return {str(v): g[["start_frame", "end_frame"]].to_numpy(np.int64)
            for v, g in table.groupby("video_id", sort=True)}


def column_metrics(column: str, video_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """Frame metrics of one score column; a `…regularity` column is read as 1 − s, so that every
    score reads "higher = more anomalous". Frames without a finite score are counted, not used."""
    scores = np.asarray(scores, np.float64)
    if column.endswith("regularity"):
        scores = 1.0 - scores
    finite = np.isfinite(scores)
    if not finite.any():
        return {"available": False, "missing_scores": int(scores.size)}
    return {"available": True, "missing_scores": int((~finite).sum()),
            **metrics.frame_metrics(video_ids[finite], labels[finite], scores[finite])}


def evaluate_output(output: str, labels_csv: str, storage_options: dict | None = None,
                    cameras: list[str] | None = None, model_ids: list[str] | None = None) -> dict:
    """Metrics of one scoring OUTPUT (or of its `cameras`, scored by `model_ids`) against labels.
    Undefined metrics are NaN."""
    output, labels_csv = storage.text(output), storage.text(labels_csv)
    storage.require_reachable(storage_options, OUTPUT=output, LABELS=labels_csv)
    where = selection(camera=cameras, model_id=model_ids)
    table = read_table(output, "frames", storage_options,
                       columns=["camera", "model_id", "video_id", "frame_index", *SCORE_COLUMNS], filter=where)
    if table is None or ((cameras or model_ids) and table.num_rows == 0):
        raise no_rows_selected(output, storage_options, camera=cameras, model_id=model_ids)
    frames = table.to_pandas()
    check_one_model(frames)
    check_one_camera_per_video(frames)
    labels = read_labels(labels_csv, storage_options)
    key = ["video_id", "frame_index"]
    duplicate_labels = labels.attrs["duplicate_rows"]
    duplicate_frames = int(frames.duplicated(key).sum())
    frames = frames.drop_duplicates(key, keep="first")
    require_matching_labels(frames, labels)
    joined = frames.merge(labels, on=key, how="outer", indicator=True)
    matched = joined[joined["_merge"] == "both"]
    frame_videos, label_videos = set(frames["video_id"]), set(labels["video_id"])
    # What was evaluated: a metrics file must say which model and camera it is of.
    result: dict[str, Any] = {"selection": {
        "output": output,
        "model_id": str(frames["model_id"].iloc[0]),
        "cameras": sorted(map(str, frames["camera"].dropna().unique())),
    }, "coverage": {
        "frames": len(frames),
        "labels": len(labels),
        "evaluated_frames": len(matched),
        "frames_without_labels": int((joined["_merge"] == "left_only").sum()),
        "labels_without_frames": int((joined["_merge"] == "right_only").sum()),
        "videos": len(frame_videos),
        "videos_without_labels": sorted(frame_videos - label_videos),
        "labelled_videos_without_frames": sorted(label_videos - frame_videos),
        "duplicate_label_rows": duplicate_labels,
        "duplicate_frame_rows": duplicate_frames,
    }}
    for column in SCORE_COLUMNS:
        result[column] = (column_metrics(column, matched["video_id"].to_numpy(), matched["label"].to_numpy(),
                                         matched[column].to_numpy(np.float64))
                          if column in matched else {"available": False})
    evaluated_videos = sorted(frame_videos & label_videos)
    labelled_videos = dict(tuple(labels[labels["video_id"].isin(evaluated_videos)].groupby("video_id")))
    truth = {v: metrics.label_runs(g["frame_index"].to_numpy(), g["label"].to_numpy())
             for v, g in labelled_videos.items()}
    events = read_table(output, "events", storage_options, columns=["video_id", "start_frame", "end_frame"],
                        filter=where)
    # an event repeated where its frames were (two copies of a video's files) is one event
    detected = (_per_video_intervals(events.to_pandas().drop_duplicates())
                if events is not None else {})
    labelled = {v: g["frame_index"].to_numpy() for v, g in labelled_videos.items()}
    result["events"] = {"videos": len(truth), **metrics.event_counts(truth, detected, labelled)}
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_metrics(result: dict) -> str:
    """A readable table of the metrics, for the terminal."""
    chosen = result.get("selection", {})
    cameras = chosen.get("cameras", [])
    lines = [f"model {chosen.get('model_id')}" + (f", camera{'s' * (len(cameras) > 1)} {', '.join(cameras)}"
                                                  if cameras else ""),
             f"{'score':<21}{'AUC':>9}{'AUC macro':>11}{'EER':>9}{'frames':>9}{'videos':>8}"]
    for column in SCORE_COLUMNS:
        m = result.get(column, {})
        if not m.get("available"):
            why = "no scores in the evaluated frames" if "missing_scores" in m else "not in the frames table"
            lines.append(f"{column:<21}{why:>46}")
            continue
        lines.append(f"{column:<21}{_fmt(m['auc']):>9}{_fmt(m['auc_macro']):>11}{_fmt(m['eer']):>9}"
                     f"{m['frames']:>9}{m['videos']:>8}")
    shown = [result[c] for c in SCORE_COLUMNS if result.get(c, {}).get("available")]
    if shown and shown[0]["anomalous_frames"] in (0, shown[0]["frames"]):
        lines.append(f"(AUC and EER need normal and anomalous frames: the evaluated frames hold "
                     f"{shown[0]['anomalous_frames']} anomalous of {shown[0]['frames']})")
    e = result["events"]
    lines += ["", f"events: {e['gt_detected']} of {e['gt_events']} ground-truth events detected, "
                  f"{e['false_alarms']} false alarms among {e['detected_events']} detected events "
                  f"({e['videos']} labelled videos"
                  + (f"; {e['detections_outside_labels']} more lie in unlabelled frames, not judged"
                     if e["detections_outside_labels"] else "") + ")"]
    c = result["coverage"]
    lines += [f"coverage: {c['evaluated_frames']} frames evaluated; {c['frames_without_labels']} scored "
              f"frames without labels; {c['labels_without_frames']} labels without scored frames"]
    for what in ("videos_without_labels", "labelled_videos_without_frames"):
        if c[what]:
            shown = ", ".join(c[what][:5]) + (" …" if len(c[what]) > 5 else "")
            lines.append(f"  {what.replace('_', ' ')}: {len(c[what])} ({shown})")
    for column in SCORE_COLUMNS:   # frames whose score is NaN (an error map that could not be measured)
        missing = result.get(column, {}).get("missing_scores", 0)
        if missing and result[column].get("available"):
            lines.append(f"  {column}: {missing} evaluated frames without a finite score, left out of its AUC and EER")
    for what in ("duplicate_label_rows", "duplicate_frame_rows"):
        if c[what]:
            lines.append(f"  {what.replace('_', ' ')}: {c[what]} (repeats; one kept)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="scoring OUTPUT (folder or s3:// prefix holding frames/ and events/)")
    parser.add_argument("--labels", required=True,
                        help="CSV with columns video,frame_index,label (1 = anomalous frame)")
    parser.add_argument("--camera", action="append", default=None,
                        help="only this camera (repeatable); needed where two cameras hold the same video ids")
    parser.add_argument("--model-id", action="append", default=None,
                        help="only the scores of this model (the card's model_id); needed where OUTPUT was scored "
                             "by several checkpoints")
    parser.add_argument("--json", dest="json_path", default=None, metavar="METRICS.json",
                        help="also write the metrics as JSON to this path (local or s3://); NaN → null")
    storage.add_storage_options(parser, "OUTPUT, the labels and --json")


def run(args: argparse.Namespace) -> int:
    options = storage.parse_storage_options(args.storage_options)
    storage.require_file_to_write(options, **{"--json": args.json_path})
    result = evaluate_output(args.output, args.labels, options, cameras=args.camera, model_ids=args.model_id)
    print(format_metrics(result))
    if args.json_path:
        with storage.open_for_writing(args.json_path, options, "w") as f:
            json.dump(metrics.finite_or_none(result), f, indent=2)
    return 0
