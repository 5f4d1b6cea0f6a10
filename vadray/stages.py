"""Ray Data stages that ingest and score share: probe + plan, and segment decode.

Both jobs must see exactly the same frames (same decoder, same resize, same indices), or
scores drift from training; so there is one implementation. The stages are plain callables
over rows; bad input becomes an `errors` file written by the task (deterministic name, so a
retry overwrites) and the stage goes on.
"""
from __future__ import annotations

import logging
from typing import Any

import av
import numpy as np
import pyarrow as pa

from vadray import storage
from vadray.decode import NOT_DECODED, DecodedFrames, decode_frame_files, decode_segment
from vadray.probe import InputError, Timeline, ffmpeg_reason, frame_folder_timeline, probe
from vadray.errors import error_row, safe_key, write_errors
from vadray.listing import VideoRef, name_shape
from vadray.segments import pack_units, plan_segments
from vadray.volumes import T_DEFAULT

FRAME_FPS_DEFAULT = 10.0   # a frame folder's frames per second: they carry no timestamps

NOTED_STRAYS = 2   # files beside a folder's frames that are a note (a thumbnail), not a failure

T_MIN_FRAMES = T_DEFAULT  # a video shorter than one volume cannot be used

log = logging.getLogger("vadray.stages")


def _log_if_unexpected(exc: Exception, what: str) -> None:
    """Bad input (InputError, FFmpeg's errors) is the errors row's business; anything else may
    be a bug, so its traceback goes to the task's log, where a bad video would not put it."""
    if not isinstance(exc, (InputError, av.FFmpegError, OSError)):
        log.error("%s: unexpected %s (recorded as an errors row; traceback follows)", what,
                  type(exc).__name__, exc_info=exc)

# One planned segment (a row of `ProbeAndPlan`): what a decode task needs, with no re-probe.
SEGMENT_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("video_key", pa.string()), ("camera", pa.string()), ("uri", pa.string()),
    ("identity", pa.string()), ("num_frames", pa.int64()), ("segment", pa.int64()), ("segments", pa.int64()),
    ("first", pa.int64()), ("last", pa.int64()), ("decode_last", pa.int64()), ("pts", pa.list_(pa.int64())),
    ("time_base", pa.float64()), ("start_pts", pa.int64()), ("fps", pa.float64()), ("width", pa.int64()),
    ("height", pa.int64()), ("codec", pa.string()), ("frame_uris", pa.list_(pa.string())),
    ("piece_offsets", pa.list_(pa.int64())),
    ("keyframes", pa.list_(pa.int64())),   # Timeline.seek_keyframes of the segment's first frame
])

# A work unit: consecutive planned segments that one decode task takes in turn.
UNIT_SCHEMA = pa.schema([("segments", pa.list_(pa.struct(list(SEGMENT_SCHEMA))))])


def add_decode_options(parser) -> None:
    """The decoding options ingest and score share: both must cut and time frames alike."""
    parser.add_argument("--segment-seconds", type=float, default=60.0,
                        help="a long video is decoded by many tasks, one per segment of this many seconds; "
                             "short clips share a task")
    parser.add_argument("--frame-fps", type=float, default=FRAME_FPS_DEFAULT,
                        help="frame rate assumed for folders of still frames (UCSD's is 10)")


class ProbeAndPlan:
    """One input → its segments (rows), or an errors file. `overlap` extra frames are decoded
    after each segment's owned range (score: `score_stages.score_segment_plan`).
    `unit_rows` packs segments up to `unit_pixels` source pixels and `unit_frames` frames per unit
    (the defaults, 1, leave every segment alone). Segments are `multiple_of` frames long
    (but the last)."""

    def __init__(self, output: str, camera: str, segment_seconds: float, frame_fps: float,
                 storage_options: dict[str, Any], overlap: int = 0, unit_pixels: int = 1,
                 unit_frames: int = 1, multiple_of: int = 1, model_id: str | None = None):
        self.errors_uri, self.model_id = storage.join(output, "errors"), model_id   # model_id: score's
        self.camera, self.segment_seconds, self.frame_fps = camera, segment_seconds, frame_fps
        self.storage_options, self.overlap, self.multiple_of = storage_options, overlap, multiple_of
        self.unit_pixels, self.unit_frames = unit_pixels, unit_frames

    def __call__(self, ref_row: dict[str, Any]) -> list[dict[str, Any]]:
        ref = VideoRef(**{k: ref_row[k] for k in VideoRef.__dataclass_fields__})
        key = safe_key(ref.video_id)
        try:
            if ref.is_frame_folder:
                timeline = frame_folder_timeline(ref.frame_uris, self.frame_fps, T_MIN_FRAMES)
            else:
                timeline = probe(ref.uri, T_MIN_FRAMES, self.storage_options)
        except Exception as exc:  # an unexpected failure is still one input's failure
            _log_if_unexpected(exc, f"probing {ref.uri}")
            kind = exc.error_type if isinstance(exc, InputError) else type(exc).__name__
            self._error(ref, key, [(kind, str(exc))])
            return []
        if ref.stray:   # a thumbnail or two is a note; more, or frame-like names, may be lost frames
            names = ", ".join(u.rsplit("/", 1)[-1] for u in ref.stray[:5]) + (" …" if len(ref.stray) > 5 else "")
            frame_shape = name_shape(next((f for f in ref.frame_uris if f), ""), extension=False)
            noted = len(ref.stray) <= NOTED_STRAYS and all(name_shape(u, extension=False) != frame_shape
                                                          for u in ref.stray)
            timeline.warnings.append(("ignored_files" if noted else "stray_files",
                                      f"{len(ref.stray)} files do not follow the numbering of the folder's "
                                      f"frames and are not used as frames: {names}"))
        if ref.numbering_problem:
            timeline.warnings.append(("frame_numbering", ref.numbering_problem))
        if timeline.warnings:
            self._error(ref, key, timeline.warnings)
        segments = plan_segments(timeline.num_frames, timeline.fps, self.segment_seconds, self.overlap,
                                 multiple_of=self.multiple_of)
        return [{
            "video_id": ref.video_id, "video_key": key, "camera": self.camera, "uri": ref.uri,
            "identity": ref.identity(), "num_frames": timeline.num_frames,
            "segment": seg.index, "segments": len(segments),
            "first": seg.first, "last": seg.last, "decode_last": seg.decode_last,
            "pts": timeline.pts[seg.first:seg.decode_last].tolist(), "time_base": timeline.time_base,
            "start_pts": timeline.start_pts, "fps": timeline.fps,
            "width": timeline.width, "height": timeline.height, "codec": timeline.codec,
            "frame_uris": ref.frame_uris[seg.first:seg.decode_last], "piece_offsets": timeline.piece_offsets,
            "keyframes": timeline.seek_keyframes(int(timeline.pts[seg.first])).ravel().tolist(),
        } for seg in segments]

    def segment_rows(self, batch: pa.Table) -> pa.Table:
        """`map_batches` form: listing rows → segment rows. Ray Data fuses a map_batches with
        the streaming repartition after it (a flat_map it does not), so probing and cutting
        into one-segment blocks is one task per input instead of two."""
        return pa.Table.from_pylist(self._plan(batch), schema=SEGMENT_SCHEMA)

    def unit_rows(self, batch: pa.Table) -> pa.Table:
        """Like `segment_rows`, but the batch's segments packed into work units (`pack_units`, with
        the constructor's `unit_pixels` and `unit_frames`): short clips share a decode task
        instead of each paying a task's turnaround. A segment stays the most of a video that
        one decode holds: a unit decodes its segments one after another."""
        segments = self._plan(batch)
        # Frame folders are not opened at probe time: their frame size counts as UCSD's 238×158.
        units = pack_units([(s["decode_last"] - s["first"]) * (s["width"] * s["height"] or 238 * 158)
                            for s in segments],
                           [s["decode_last"] - s["first"] for s in segments], self.unit_pixels, self.unit_frames)
        return pa.Table.from_pylist([{"segments": [segments[i] for i in unit]} for unit in units],
                                    schema=UNIT_SCHEMA)

    def _plan(self, batch: pa.Table) -> list[dict[str, Any]]:
        return [seg for ref_row in batch.to_pylist() for seg in self(ref_row)]

    def _error(self, ref: VideoRef, key: str, problems: list[tuple[str, str]]) -> None:
        """(error_type, message) pairs of one input's probe → its rows, in one file."""
        write_errors([error_row(ref.video_id, ref.uri, "probe", kind, message) for kind, message in problems],
                     self.errors_uri, self.camera, f"{key}-probe", self.storage_options, self.model_id)


def decode_planned(seg: dict[str, Any], size: int, errors_uri: str,
                   storage_options: dict[str, Any], model_id: str | None = None) -> DecodedFrames:
    """Decode a planned segment's frames [first, decode_last); frame_index is source-absolute.

    A failure (or frames that would not decode) is written to errors_uri; what did decode is
    returned, so nothing decodable is lost.
    """
    first, last = seg["first"], seg["decode_last"]
    # A timeline holding only this segment's frames; positions shift back by `first`.
    timeline = Timeline(np.asarray(seg["pts"], np.int64), seg["time_base"], seg["start_pts"],
                        seg["fps"], seg["width"], seg["height"], seg["codec"],
                        piece_offsets=list(seg["piece_offsets"] or []),
                        keyframes=np.asarray(seg["keyframes"] or [], np.int64).reshape(-1, 3))
    try:
        if seg["frame_uris"]:
            decoded = decode_frame_files(seg["frame_uris"], timeline, 0, last - first, size, storage_options)
        else:
            decoded = decode_segment(seg["uri"], timeline, 0, last - first, size, storage_options)
    except Exception as exc:
        _log_if_unexpected(exc, f"decoding frames {first}-{last - 1} of {seg['uri']}")
        reason = ffmpeg_reason(exc) if isinstance(exc, av.error.FFmpegError) else exc
        _segment_error(seg, errors_uri, type(exc).__name__, f"frames {first}-{last - 1}: {reason}",
                       storage_options, model_id)
        return DecodedFrames(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, size, size), np.uint8), retry=True)
    if decoded.error:
        lost = ", ".join(f"{a + first}-{b + first - 1}" for a, b in decoded.missing) or "none"
        kind, why = "decode_failed", decoded.error
        if (first == 0 and len(decoded.missing) == 1 and decoded.missing[0][0] == 0 and why == NOT_DECODED
                and not seg["frame_uris"]):
            # A recording cut mid-GOP: its first frames refer to a keyframe the file does not hold.
            kind, why = "starts_mid_gop", (f"the video starts {decoded.missing[0][1]} frames before its "
                                           "first keyframe (cut mid-GOP); those frames cannot be decoded")
        elif why == NOT_DECODED:
            # Frames the decoder never gave, with no error: on a local file, FFmpeg's reader may
            # end a stream at a failed read (a network mount) as at its end. Not known to come
            # back the same on a rerun, so score tries again.
            decoded.retry = True
        _segment_error(seg, errors_uri, kind, f"{why}; frames not decoded: {lost}", storage_options, model_id)
    decoded.frame_index = decoded.frame_index + first
    decoded.missing = [(a + first, b + first) for a, b in decoded.missing]
    return decoded


def _segment_error(seg: dict[str, Any], errors_uri: str, kind: str, message: str,
                   storage_options: dict[str, Any], model_id: str | None) -> None:
    write_errors([error_row(seg["video_id"], seg["uri"], "decode", kind, message)], errors_uri,
                 seg["camera"], f"{seg['video_key']}-seg{seg['segment']:05d}", storage_options, model_id)
