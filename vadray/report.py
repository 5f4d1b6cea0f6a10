"""Plots of regularity over time (Chong & Tay, Figure 4), one PNG per video, and an index.html.

Each PNG shows s_r(t) on 0..1 against seconds (frame index when times are unknown), the
ground-truth anomalous frames shaded when --labels are given, and the detected events with
their lowest frame marked. Below the curve: for the deepest events, the source frame at the
event's peak (read again from the source video) and, with --checkpoint (the model that
scored OUTPUT), where in that frame the model failed: its reconstruction-error map.
"""
from __future__ import annotations

import argparse
import html
import io
import logging
import math
import re
import time
from typing import Any, Callable

import av
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from vadray import decode, listing, metrics, probe, storage
from vadray.errors import count, failed_rows, safe_key
from vadray.evaluate import read_labels, require_matching_labels
from vadray.exits import UsageError
from vadray.listing import VideoRef
from vadray.manifest import video_date
from vadray.tables import check_one_camera_per_video, check_one_model, no_rows_selected, read_table, selection

log = logging.getLogger(__name__)

ImageFn = Callable[[str, int], "np.ndarray | None"]
FRAME_COLUMNS = ["camera", "date", "video_id", "source_uri", "frame_index", "time_s", "regularity",
                 "motion_regularity", "combined_regularity", "brightness_gain", "model_id"]
PROGRESS_SECONDS = 10.0   # a report of thousands of videos says how far it is this often
GAIN_SHOWN = 0.05   # draw the brightness gain when it moves by more than 5 % within the video
WIDE_FRAMES = 3000   # a longer video's figure grows wider (up to 24 in.) so that its dips stay apart
LABELLED_EVENTS = 20   # more events than this: only the deepest are named (E7), the rest only marked


def decode_thumbnail(source_uri: str, frame_index: int, storage_options: dict | None = None,
                     max_side: int = 240) -> np.ndarray | None:
    """Frame `frame_index` of a video file or frame folder as grey (h, w) uint8, or None.

    Indices follow `vadray.probe` (presentation order; a frame folder's numbering), so
    the thumbnail shows the frame the score belongs to. Unreachable sources give None.
    """
    try:
        fs, path = storage.url_to_fs(source_uri, storage_options)
        clip = listing.frame_folder(source_uri, storage_options)
        if clip is not None:
            uri = clip.frame_uris[frame_index]
            if not uri:
                return None   # the folder's numbering skips this frame
            with fs.open(storage.url_to_fs(uri, storage_options)[1], "rb") as f, av.open(f) as container:
                return _grey(next(container.decode(video=0)), max_side)
        timeline = probe.probe(source_uri, min_frames=1, storage_options=storage_options)
        target = int(timeline.pts[frame_index])
        try:
            return _thumbnail_at(fs, path, timeline, target, max_side, seek=True)
        except decode.SeekMissed:   # a file whose timestamps reset that cannot be sought: from its start
            return _thumbnail_at(fs, path, timeline, target, max_side, seek=False)
    except (probe.InputError, av.error.FFmpegError, OSError, IndexError, StopIteration, UsageError) as exc:
        log.warning("no thumbnail for %s frame %d: %s", source_uri, frame_index, exc)
    return None


def _thumbnail_at(fs, path: str, timeline: probe.Timeline, target: int, max_side: int,
                  seek: bool) -> np.ndarray | None:
    past = 0
    with fs.open(path, "rb") as f, av.open(f) as container:
        for frame in decode.frames_from(container, probe.video_stream(container), timeline, target, seek):
            if frame.pts == target:
                return _grey(frame, max_side)
            past += frame.pts is not None and frame.pts > target   # where timestamps reset, the
            if past > decode.REORDER_FRAMES:                          # decoder's order may go back
                return None
    return None


def _grey(frame: av.VideoFrame, max_side: int) -> np.ndarray:
    scale = min(1.0, max_side / max(frame.width, frame.height))
    width, height = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
    return frame.reformat(width=width, height=height, format="gray").to_ndarray()


def _x_of(frames: pd.DataFrame, use_time: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Source frame index → x position (seconds, interpolated between scored frames)."""
    if not use_time:
        return lambda f: np.asarray(f, np.float64)
    index, times = frames["frame_index"].to_numpy(np.float64), frames["time_s"].to_numpy(np.float64)
    if index.size == 1:
        return lambda f: np.full(np.shape(f), times[0])
    slope = (times[-1] - times[0]) / (index[-1] - index[0])  # extrapolate with the mean rate
    return lambda f: np.where((np.asarray(f) < index[0]) | (np.asarray(f) > index[-1]),
                              times[0] + (np.asarray(f, np.float64) - index[0]) * slope,
                              np.interp(f, index, times))


def plot_video(frames: pd.DataFrame, events: pd.DataFrame, truth: np.ndarray | None = None,
               thumbnails: list[tuple[dict, np.ndarray | None, np.ndarray | None]] = ()) -> Figure:
    """One video's figure; a shaded span covers its frames [first, last + 1) on the time axis.

    frames: the video's rows sorted by frame_index; truth: (K, 2) ground-truth frame runs;
    thumbnails: (event row, peak frame image or None, error map or None) per shown event."""
    use_time = bool(np.isfinite(frames["time_s"].to_numpy(np.float64)).all())
    x_of = _x_of(frames, use_time)
    shown = [t for t in thumbnails if t[1] is not None or t[2] is not None]
    panels = sum((img is not None) + (emap is not None) for _, img, emap in shown)
    width = min(11 * max(1.0, len(frames) / WIDE_FRAMES), 24)
    fig = Figure(figsize=(width, 6.2 if panels else 3.6), layout="constrained")
    grid = fig.add_gridspec(2 if panels else 1, max(panels, 1), height_ratios=[1.3, 1] if panels else [1])
    ax = fig.add_subplot(grid[0, :])
    index = frames["frame_index"].to_numpy(np.int64)
    x, breaks = x_of(index), np.flatnonzero(np.diff(index) > 1) + 1

    def curve(column: str) -> tuple[np.ndarray, np.ndarray]:
        """x and y with a break at each run of frames that have no score (a decode gap):
        a straight line across it would look like scores."""
        return (np.insert(x.astype(np.float64), breaks, np.nan),
                np.insert(frames[column].to_numpy(np.float64), breaks, np.nan))

    ax.plot(*curve("regularity"), color="#1f4e9c", lw=1.2, label="regularity $s_r$")
    if "motion_regularity" in frames and frames["motion_regularity"].notna().any():  # absent in older tables
        ax.plot(*curve("motion_regularity"), color="#2ca02c", lw=0.9, alpha=0.85, label="motion regularity")
    dipping = {getattr(e, "score", None) for e in events.itertuples()} - {"regularity", "motion_regularity", None}
    for name in sorted(n for n in dipping if isinstance(n, str) and n in frames):   # events sit on their own curve
        ax.plot(*curve(name), color="#9467bd", lw=0.9, ls="--", label=name.replace("_", " "))
    unscored = [(0, index[0])] if index[0] > 0 else []   # frames before the first score, then the gaps
    unscored += [(index[at - 1] + 1, index[at]) for at in breaks]
    for k, (first, end) in enumerate(unscored):
        ax.axvspan(x_of(first), x_of(end), fc="0.94", hatch="//", ec="0.65", lw=0.5,
                   label="not scored" if k == 0 else None)
    gain = frames["brightness_gain"].to_numpy(np.float64) if "brightness_gain" in frames else np.array([np.nan])
    measured = gain[np.isfinite(gain)]   # NaN: a frame too dark for a gain, drawn as a gap
    if measured.size and measured.max() > (1 + GAIN_SHOWN) * measured.min():
        # A light or the weather, not an intruder, when a dip follows this line (every score does).
        gain_ax = ax.twinx()
        gain_ax.plot(*curve("brightness_gain"), color="0.35", lw=0.8, ls=":", label="brightness gain")
        gain_ax.set_ylabel("brightness gain", fontsize=8)
        gain_ax.legend(loc="lower right", fontsize=8)
    for k, (first, last) in enumerate(truth if truth is not None else []):   # the edge: ≥ 1 px when short
        ax.axvspan(x_of(first), x_of(last + 1), fc="0.45", ec="0.45", alpha=0.3, lw=0.8,
                   label="ground-truth anomaly" if k == 0 else None)
    named = set(events.nsmallest(LABELLED_EVENTS, "min_regularity")["event_id"]) if len(events) else set()
    for k, event in enumerate(events.itertuples()):
        score = getattr(event, "score", None)          # which column's dips (score --events-from)
        label = "detected event" + (f" ({score})" if isinstance(score, str) and score != "regularity" else "")
        ax.axvspan(x_of(event.start_frame), x_of(event.end_frame + 1), ymin=0.0, ymax=0.06,
                   color="#ff7f0e", alpha=0.9, lw=0, label=label if k == 0 else None)
        ax.axvspan(x_of(event.start_frame), x_of(event.end_frame + 1), color="#ff7f0e", alpha=0.12, lw=0)
        ax.plot(x_of(event.peak_frame), event.min_regularity, "v", color="#ff7f0e", ms=8, mec="k", mew=0.5)
        if event.event_id in named:
            ax.annotate(f"E{event.event_id}", (x_of(event.peak_frame), event.min_regularity),
                        textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
    ax.set_ylim(0, 1.05)
    if len(frames) > 1:
        ax.set_xlim(x_of(0), x_of(frames["frame_index"].iloc[-1]))
    ax.set_xlabel("time (s)" if use_time else "frame")
    ax.set_ylabel("regularity score")
    first = frames.iloc[0]
    unnamed = f"  ·  the {len(named)} deepest of {len(events)} events named" if len(named) < len(events) else ""
    ax.set_title(f"{first['video_id']}  ·  camera {first['camera']}  ·  {first['date']}  ·  "
                 f"model {first.get('model_id', '')}{unnamed}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    column = 0
    for event, image, emap in shown:
        label = f"E{int(event['event_id'])} · frame {int(event['peak_frame'])}"
        if image is not None:
            sub = fig.add_subplot(grid[1, column])
            sub.imshow(image, cmap="gray", vmin=0, vmax=255)
            sub.set_title(label, fontsize=8)
            sub.axis("off")
            column += 1
        if emap is not None:   # the model's square input, drawn at the frame's shape
            sub = fig.add_subplot(grid[1, column])
            shown_map = sub.imshow(emap, cmap="inferno",
                                   aspect=image.shape[0] / image.shape[1] if image is not None else "equal")
            sub.set_title(f"{label}: error map", fontsize=8)
            sub.axis("off")
            bar = fig.colorbar(shown_map, ax=sub, fraction=0.046, pad=0.02)
            bar.ax.tick_params(labelsize=6)
            bar.set_label("squared error (normalised units)", fontsize=6)
            column += 1
    return fig


def _write_bytes(uri: str, data: bytes, storage_options: dict | None) -> None:
    fs, path = storage.url_to_fs(uri, storage_options)
    with fs.open(path, "wb") as f:
        f.write(data)


def build_report(output: str, out_dir: str, labels_csv: str | None = None,
                 storage_options: dict | None = None, *, frame_fn: ImageFn | None = None,
                 error_map_fn: ImageFn | None = None, videos: list[str] | None = None,
                 cameras: list[str] | None = None, dates: list[str] | None = None,
                 model_ids: list[str] | None = None, max_thumbnails: int = 4) -> list[dict[str, Any]]:
    """Write <out_dir>/<safe_key>.png per video and index.html; return the summary rows.

    frame_fn(source_uri, frame_index) defaults to `decode_thumbnail`; max_thumbnails=0 skips
    thumbnails. The deepest events get the thumbnails. error_map_fn(source_uri, frame_index)
    -> (S, S) array or None (`errormap.ErrorMaps`, which owns the model) adds the error maps.
    """
    output, out_dir, labels_csv = storage.text(output), storage.text(out_dir), storage.text(labels_csv)
    storage.require_reachable(storage_options, OUTPUT=output, DIR=out_dir, LABELS=labels_csv)
    where = selection(video_id=videos, camera=cameras, date=dates, model_id=model_ids)
    table = read_table(output, "frames", storage_options, columns=FRAME_COLUMNS, filter=where)
    if table is None or table.num_rows == 0:
        raise no_rows_selected(output, storage_options, video_id=videos, camera=cameras, date=dates,
                               model_id=model_ids)
    frames = table.to_pandas().sort_values(["camera", "video_id", "frame_index"], kind="stable")
    check_one_model(frames)
    # Repeated rows of a frame (two copies of a video's files, as `evaluate` counts them) are drawn once.
    frames = frames.drop_duplicates(["camera", "video_id", "frame_index"])
    map_model = getattr(error_map_fn, "model_id", None)   # ErrorMaps says which checkpoint it runs
    scored_by = str(frames["model_id"].iloc[0])
    if map_model is not None and map_model != scored_by and max_thumbnails > 0:
        raise UsageError(f"--checkpoint is model {map_model}, but these frames were scored by {scored_by}: "
                         "its error maps would explain another model's scores")
    event_table = read_table(output, "events", storage_options, filter=where)
    events = event_table.to_pandas() if event_table is not None else pd.DataFrame(
        columns=["camera", "video_id", "event_id", "start_frame", "end_frame", "peak_frame", "min_regularity"])
    labels = read_labels(labels_csv, storage_options) if labels_csv else None
    if labels is not None:
        check_one_camera_per_video(frames)
        require_matching_labels(frames, labels)
    if frame_fn is None:
        frame_fn = lambda uri, index: decode_thumbnail(uri, index, storage_options)  # noqa: E731
    out_fs, out_path = storage.url_to_fs(out_dir, storage_options)
    out_fs.makedirs(out_path, exist_ok=True)
    rows = []
    # Grouped once: filtering the whole tables per video made a report of many short videos
    # quadratic in their number.
    events = events.drop_duplicates(["camera", "video_id", "start_frame", "end_frame"])
    events_of = {key: group for key, group in events.groupby(["camera", "video_id"], sort=False)}
    labels_of = ({key: group for key, group in labels.groupby("video_id", sort=False)}
                 if labels is not None else {})
    no_events, no_labels = events.iloc[:0], (labels.iloc[:0] if labels is not None else None)
    groups = frames.groupby(["camera", "video_id"], sort=True)
    progress = time.monotonic()
    for done, ((camera, video_id), video_frames) in enumerate(groups, start=1):
        if time.monotonic() - progress >= PROGRESS_SECONDS:
            progress = time.monotonic()
            log.info("report: %d of %d videos drawn", done - 1, groups.ngroups)
        video_events = events_of.get((camera, video_id), no_events).sort_values("start_frame")
        truth, auc = None, float("nan")
        if labels is not None:
            video_labels = labels_of.get(video_id, no_labels)
            if len(video_labels):
                truth = metrics.label_runs(video_labels["frame_index"].to_numpy(), video_labels["label"].to_numpy())
                scored = video_frames.merge(video_labels, on=["video_id", "frame_index"])
                scored = scored[np.isfinite(scored["regularity"])]   # as evaluate: a NaN is not a rank
                auc = metrics.frame_auc(scored["label"].to_numpy(), 1.0 - scored["regularity"].to_numpy())
        source = str(video_frames["source_uri"].iloc[0])
        thumbnails = []
        for event in video_events.nsmallest(max_thumbnails, "min_regularity").sort_values("start_frame").to_dict("records"):
            image = frame_fn(source, int(event["peak_frame"]))
            emap = error_map_fn(source, int(event["peak_frame"])) if error_map_fn else None
            thumbnails.append((event, image, emap))
        figure = plot_video(video_frames, video_events, truth, thumbnails)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        # The camera is always in the name: a report of one camera and one of another into the
        # same DIR must not overwrite each other's same-named videos.
        png = f"{safe_key(f'{camera}/{video_id}')}.png"
        _write_bytes(storage.join(out_dir, png), buffer.getvalue(), storage_options)
        times = video_frames["time_s"].to_numpy(np.float64)
        index = video_frames["frame_index"].to_numpy(np.int64)
        rows.append({"video_id": str(video_id), "camera": str(camera),
                     "date": str(video_frames["date"].iloc[0]), "frames": len(video_frames),
                     "not_scored": int(index[-1] + 1 - len(index)),   # from frame 0; after the last: unknown
                     "duration_s": _duration(times),
                     "min_regularity": float(video_frames["regularity"].min()),
                     "events": len(video_events), "auc": auc, "png": png})
    failures = _failures(output, storage_options, videos, cameras, dates, scored_by)
    page = index_html(rows, labels is not None, failures, scored_by)
    _write_bytes(storage.join(out_dir, "index.html"), page.encode(), storage_options)
    _warn_of_older_plots(out_fs, out_path, {r["png"] for r in rows})
    return rows


def _warn_of_older_plots(fs, folder: str, drawn: set[str]) -> None:
    """Plots an earlier report left in DIR stay (they are not ours to delete), but index.html
    no longer lists them: say so, so that a stale PNG is not read as this run's."""
    names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False, refresh=True)]   # not s3fs's cache
    older = sorted(n for n in names if re.fullmatch(r".+-[0-9a-f]{8}\.png", n) and n not in drawn)
    if older:
        log.warning("%s holds %d plot(s) of an earlier report that this one did not draw (e.g. %s): "
                    "index.html lists only this report's videos; use an empty DIR to keep them apart",
                    folder, len(older), older[0])


def _failures(output: str, storage_options: dict | None, videos: list[str] | None, cameras: list[str] | None,
              dates: list[str] | None, model_id: str) -> list[dict[str, Any]]:
    """The errors rows of the selected videos, drawn or not: a video that failed outright has
    no frames to plot, and one that failed in part has holes; the report must not hide either.
    Rows of the plotted model's runs (or of none: older versions), not another model's."""
    table = read_table(output, "errors", storage_options,
                       columns=["camera", "video_id", "stage", "error_type", "message", "model_id"],
                       filter=selection(video_id=videos, camera=cameras))
    if table is None:
        return []
    dates = [dates] if isinstance(dates, str) else dates
    return [r for r in table.to_pylist() if r["model_id"] in (None, model_id)
            and (not dates or video_date(VideoRef(str(r["video_id"]), "")) in dates)]


def _duration(times: np.ndarray) -> float:
    """Seconds the frames span, the last frame's own period included (10 frames at 25 fps: 0.4 s)."""
    if times.size < 2 or not np.isfinite(times).all():
        return float("nan")
    return float(times[-1] - times[0] + np.median(np.diff(times)))


def index_html(rows: list[dict[str, Any]], with_auc: bool, failures: list[dict[str, Any]] = (),
               model_id: str = "") -> str:
    """A summary table linking every video's PNG, then the inputs that failed (errors rows)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.3f}"
        return html.escape(str(value))

    failed = sorted({(str(f["camera"]), str(f["video_id"])) for f in failed_rows(list(failures))})
    head = ["video", "camera", "date", "frames", "not scored", "duration (s)", "min regularity", "events"]
    head += ["AUC (1 − s_r)"] if with_auc else []
    lines = ["<!doctype html><meta charset='utf-8'><title>vadray report</title>",
             "<style>body{font-family:sans-serif} td,th{padding:3px 10px;border-bottom:1px solid #ddd}"
             " td{text-align:right} td:first-child{text-align:left} td.why{text-align:left}</style>",
             f"<h1>vadray report</h1><p>{count(len(rows), 'video')}, {count(sum(r['events'] for r in rows), 'event')}"
             + (f", scored by model <code>{html.escape(model_id)}</code>" if model_id else "")
             + (f"; {count(len(failed), 'video')} with errors (below)" if failed else "") + "</p>",
             "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        values = [r["camera"], r["date"], r["frames"], r.get("not_scored", 0), r["duration_s"], r["min_regularity"],
                  r["events"]]
        values += [r["auc"]] if with_auc else []
        link = f"<a href='{html.escape(r['png'])}'>{html.escape(r['video_id'])}</a>"
        lines.append(f"<tr><td>{link}</td>" + "".join(f"<td>{cell(v)}</td>" for v in values) + "</tr>")
    lines.append("</table>")
    if failures:
        lines.append("<h2>Errors</h2><p>Inputs that failed, in whole or in part, and notes on how an input was "
                     "read (the <code>errors</code> table); a video without a plot above has no scored frame.</p>")
        lines.append("<table><tr>" + "".join(f"<th>{h}</th>" for h in ("video", "camera", "stage", "error", "why"))
                     + "</tr>")
        for f in sorted(failures, key=lambda f: (str(f["camera"]), str(f["video_id"]), str(f["stage"]))):
            values = [f["camera"] or "", f["stage"], f["error_type"]]
            lines.append(f"<tr><td>{html.escape(str(f['video_id']))}</td>"
                         + "".join(f"<td>{cell(v)}</td>" for v in values)
                         + f"<td class='why'>{html.escape(str(f['message'])[:300])}</td></tr>")
        lines.append("</table>")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="scoring OUTPUT (folder or s3:// prefix holding frames/ and events/)")
    parser.add_argument("dir", help="folder (or s3:// prefix) to write the PNGs and index.html into")
    parser.add_argument("--labels", default=None, help="CSV video,frame_index,label: shade ground truth, per-video AUC")
    parser.add_argument("--video", action="append", default=None, help="only this video_id (repeatable)")
    parser.add_argument("--camera", action="append", default=None, help="only this camera (repeatable)")
    parser.add_argument("--date", action="append", default=None, help="only this date YYYY-MM-DD (repeatable)")
    parser.add_argument("--model-id", action="append", default=None,
                        help="only the scores of this model (the card's model_id); needed where OUTPUT was scored "
                             "by several checkpoints")
    parser.add_argument("--max-thumbnails", type=int, default=4,
                        help="event frames shown per video, deepest first (0: none, no decoding)")
    parser.add_argument("--checkpoint", default=None,
                        help="the model that scored OUTPUT: adds each event frame's reconstruction-error map")
    storage.add_storage_options(parser, "OUTPUT, DIR, the labels and the checkpoint")


def run(args: argparse.Namespace) -> int:
    options = storage.parse_storage_options(args.storage_options)
    if args.max_thumbnails < 0:
        raise UsageError("--max-thumbnails must be 0 or more")
    error_map_fn = None
    storage.require_reachable(options, CHECKPOINT=args.checkpoint)
    storage.require_folder_to_write(options, DIR=args.dir)
    if args.checkpoint:
        from vadray.errormap import ErrorMaps

        error_map_fn = ErrorMaps(args.checkpoint, options)
    rows = build_report(args.output, args.dir, args.labels, options, videos=args.video,
                        cameras=args.camera, dates=args.date, model_ids=args.model_id,
                        max_thumbnails=args.max_thumbnails,
                        error_map_fn=error_map_fn)
    print(f"wrote {len(rows)} plots and {storage.join(args.dir, 'index.html')}")
    return 0
