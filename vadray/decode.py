"""PyAV decoding: probe a video's frame timeline, decode one segment to grey S×S uint8.

Scaling and grey conversion run in FFmpeg (swscale through a reused `VideoReformatter`),
never in Python loops. A segment task holds only its own frames, so
memory is bounded by the segment, not by the video.

Frame indices are positions in presentation order, taken from the packet timestamps that
`probe` collects by demuxing (no decoding). That makes indices and `time_s` exact for
variable frame rate video and lets a segment start anywhere by seeking.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import av
import numpy as np
import pyarrow as pa
from av.video.reformatter import Interpolation, VideoReformatter

from vadray import storage


class InputError(Exception):
    """An input that cannot be (fully) processed: becomes an `errors` row, never a crash."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


@dataclass
class Timeline:
    """Presentation timestamps of every frame of a video, in stream ticks."""

    pts: np.ndarray              # (N,) int64, sorted
    time_base: float             # seconds per tick
    start_pts: int               # time 0
    fps: float
    width: int
    height: int
    codec: str
    # (error_type, message) of what the probe found wrong but survivable: a truncated file,
    # repeated timestamps. Each becomes an errors row; the frames found are still processed.
    warnings: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.pts.shape[0])

    def time_s(self, first: int = 0, last: int | None = None) -> np.ndarray:
        return (self.pts[first:last] - self.start_pts).astype(np.float64) * self.time_base


@dataclass
class DecodedFrames:
    frame_index: np.ndarray      # (n,) int64 source frame indices, increasing
    time_s: np.ndarray           # (n,) float64
    frames: np.ndarray           # (n, S, S) uint8 grey
    missing: list[tuple[int, int]] = field(default_factory=list)  # [first, last) runs not decoded
    error: str = ""


def _open(uri: str, storage_options: dict[str, Any] | None):
    fs, path = storage.url_to_fs(uri, storage_options)
    return fs.open(path, "rb")


@contextlib.contextmanager
def _av_open(uri: str, storage_options: dict[str, Any] | None) -> Iterator[Any]:
    """A container for decoding: a local file through FFmpeg's own I/O (reads through a Python
    file object cost ~0.1 ms a frame), object storage through an fsspec handle."""
    if storage.is_remote(uri):
        with _open(uri, storage_options) as handle, av.open(handle, mode="r") as container:
            yield container
    else:
        _, path = storage.url_to_fs(uri, storage_options)
        with av.open(path, mode="r") as container:
            yield container


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def _video_stream(container) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no"]
        raise InputError("no_video_stream", f"the file has {'/'.join(kinds)} streams but no video stream")
    return container.streams.video[0]


def _open_container(handle, uri: str):
    head = handle.read(512)
    handle.seek(0)
    if not head:
        raise InputError("empty", "the file is empty (0 bytes)")
    try:
        return av.open(handle, mode="r")
    except av.error.FFmpegError as exc:
        if _looks_like_text(head):
            raise InputError("not_video", "the file is text, not a video container") from None
        raise InputError("corrupt", f"not a readable video container (corrupt, truncated or not a "
                                    f"video): {exc}") from None


def probe(uri: str, min_frames: int = 10, storage_options: dict[str, Any] | None = None) -> Timeline:
    """Collect every frame's pts by demuxing (no decode). Raises InputError for bad input.

    A demuxer stops quietly at the end of a truncated file, so what was found is compared with
    what the container declares (its frame count or duration): a shortfall is a `truncated`
    warning, never a silent loss. Repeated timestamps (a timestamp reset, duplicated pts)
    would put two frames at one index: a `timestamps` warning says how many are dropped.
    """
    with _open(uri, storage_options) as handle:
        with _open_container(handle, uri) as container:
            stream = _video_stream(container)
            ticks: list[int] = []
            last_ts, last_duration = None, 0  # the latest frame's timestamp and stated duration
            discarded = 0                     # decoded for reference only: an MP4 edit list cuts them
            ended = ""
            try:
                for packet in container.demux(stream):
                    ts = packet.pts if packet.pts is not None else packet.dts
                    if ts is None or packet.size == 0:
                        continue
                    if packet.is_discard:     # before an edit list's start (a `-ss … -c copy` cut)
                        discarded += 1
                        continue
                    ticks.append(int(ts))
                    if last_ts is None or ts > last_ts:
                        last_ts, last_duration = int(ts), int(packet.duration or 0)
            except av.error.FFmpegError as exc:
                ended = f"the stream ended early after {len(ticks)} frames: {exc}"
            ctx = stream.codec_context
            time_base = float(stream.time_base) if stream.time_base else 1.0 / 25
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            width, height, codec = int(ctx.width or 0), int(ctx.height or 0), ctx.name
            declared = _Declared(max(0, int(stream.frames or 0) - discarded),
                                 _declared_seconds(container, stream, time_base), container.format.name)
    ticks_all = np.asarray(ticks, dtype=np.int64)
    pts = np.unique(ticks_all)  # presentation order
    warnings = [("truncated", ended)] if ended else []
    if pts.shape[0] < min_frames:
        raise InputError("too_short", f"only {pts.shape[0]} frames; a volume needs {min_frames}"
                         + (f" ({ended})" if ended else ""))
    if fps <= 0 and pts.shape[0] > 1:
        fps = (pts.shape[0] - 1) / max((pts[-1] - pts[0]) * time_base, 1e-9)
    if not ended:
        last_seconds = last_duration * time_base if last_duration > 0 else (1.0 / fps if fps > 0 else 0.0)
        short = _shortfall(declared, pts, ticks_all.shape[0], time_base, last_seconds)
        if short:
            warnings.append(("truncated", short))
    if pts.shape[0] < ticks_all.shape[0]:
        repeated = ticks_all.shape[0] - pts.shape[0]
        warnings.append(("timestamps", f"{repeated} of {ticks_all.shape[0]} frames repeat another "
                                       f"frame's timestamp (a timestamp reset, or duplicated pts); "
                                       f"one frame per timestamp is kept ({repeated} dropped)"))
    return Timeline(pts, time_base, int(pts[0]), fps, width, height, codec, warnings)


@dataclass
class _Declared:
    """What a container states about its video stream, to tell a truncated file by."""

    frames: int                  # its frame count (0: none stated)
    seconds: float | None        # its duration or end time (None: none stated)
    format: str                  # FFmpeg's demuxer name(s), e.g. "avi", "mov,mp4,m4a,3gp,3g2,mj2"


def _declared_seconds(container, stream, time_base: float) -> float | None:
    """The video stream's duration as the container states it, where it states one: the
    stream's own, Matroska's per-stream DURATION tag, or the file's when it has one stream
    (with several, the file's is the longest, e.g. an audio track's). Matroska's figures are
    the stream's END time, counted from 0, not its length."""
    if stream.duration:
        return float(stream.duration) * time_base
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            pass
    if container.duration and len(container.streams) == 1:
        return float(container.duration) / av.time_base
    return None


# AVI's header counts dropped frames (empty index entries), which FFmpeg's demuxer never
# returns: a capture with a few drops must not read as truncated, a half-copied file must.
AVI_COUNT_SLACK = 0.25


def _shortfall(declared: _Declared, pts: np.ndarray, packets: int, time_base: float, last_seconds: float) -> str:
    """Why the frames found fall short of what the container declares, or "".

    A frame count is compared where the container states one; a duration only where it does
    not (an MP4's frame count is exact, its duration is not needed). The frames' reach is read
    leniently: their span or their end time, whichever is longer (a Matroska file cut from a
    running recording starts at 60 s and states its end), plus the last frame's own stated
    duration (a variable-rate camera may hold its last frame for seconds)."""
    found = pts.shape[0]
    if declared.frames:
        slack = int(AVI_COUNT_SLACK * declared.frames) if "avi" in declared.format.split(",") else 0
        if declared.frames - packets > slack:
            return (f"the container lists {declared.frames} frames but the file holds {packets} "
                    f"(truncated, or an edit list that trims the video); the {found} found are kept")
        return ""
    if declared.seconds and last_seconds > 0:
        span = float(pts[-1] - pts[0]) * time_base + last_seconds
        reach = max(span, float(pts[-1]) * time_base + last_seconds)
        if declared.seconds - reach > max(2 * last_seconds, 0.02 * declared.seconds):
            return (f"the container declares {declared.seconds:.2f} s of video but its frames cover "
                    f"{span:.2f} s (truncated?); the {found} found are kept")
    return ""


def frame_folder_timeline(num_frames: int, fps: float, min_frames: int = 10) -> Timeline:
    """A folder of still frames has no timestamps: frame i is at i / fps."""
    if num_frames < min_frames:
        raise InputError("too_short", f"only {num_frames} frames; a volume needs {min_frames}")
    return Timeline(np.arange(num_frames, dtype=np.int64), 1.0 / fps, 0, fps, 0, 0, "frames")


# FFmpeg decoder threads per decode. Ray gives a decode task one CPU and runs one task per
# CPU, so the decoder's own threads only compete with the other tasks: measured in a pool of
# 2 processes on 2 cores, single-threaded decoding was 8-15 % faster than thread_type AUTO
# (Ped2, 320×240 and 1280×720 H.264). Parallelism comes from segments, not from threads.
DECODER_THREADS = 1


class GreyScaler:
    """uint8 grey S×S from any pixel format or size (10-bit, alpha, RGB, mid-stream changes)."""

    def __init__(self, size: int):
        self.size = size
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        grey = self._reformatter.reformat(frame, width=self.size, height=self.size, format="gray",
                                          interpolation=Interpolation.AREA)
        return grey.to_ndarray()


def _decode_frames(container, stream, first_pts: int | None, failures: list[str]) -> Iterator[av.VideoFrame]:
    """Frames of `stream` from the keyframe before `first_pts`. A packet the decoder refuses
    (corrupt data) is noted in `failures` and decoding resumes at the next keyframe: the frames
    between would be built on a broken reference, so they are reported missing, not kept."""
    if first_pts is not None:
        container.seek(int(first_pts), stream=stream, backward=True, any_frame=False)
    skipping = False
    for packet in container.demux(stream):
        if skipping and packet.size > 0 and not packet.is_keyframe:
            continue                      # (an empty packet flushes the decoder: never skipped)
        skipping = False
        try:
            yield from packet.decode()
        except av.error.FFmpegError as exc:
            failures.append(f"a corrupt packet at pts {packet.pts}: {exc}")
            skipping = True


def decode_segment(uri: str, timeline: Timeline, first: int, last: int, size: int,
                   storage_options: dict[str, Any] | None = None) -> DecodedFrames:
    """Decode frames [first, last) of a video file to (n, S, S) uint8 grey.

    Seeks to the keyframe before `first`; if the container seeks past it (some AVI/WebM
    indexes are coarse) it decodes from the start instead. Frames that fail to decode are
    reported in `missing`/`error`, the rest are returned: nothing decodable is lost.

    Frames are placed by their timestamps. Where those come out of the decoder going
    backwards, they are decode-order labels, not presentation times (AVI stores none: H.264
    with B-frames in AVI), and the segment is decoded again placing frames in output order.
    """
    want = timeline.pts[first:last]
    seek = int(want[0]) > timeline.start_pts   # positions are relative to `timeline`, which may
    out = _FrameBuffer(last - first, size)      # hold only this segment's frames
    error, backwards = _decode_pass(uri, want, out, size, storage_options, seek, by_order=False)
    by_order = backwards
    if by_order:
        error, _ = _decode_pass(uri, want, out, size, storage_options, seek, by_order=True)
    if seek and not out.filled[0] and not error:   # the seek landed after `first`: from the start
        error, _ = _decode_pass(uri, want, out, size, storage_options, False, by_order)
    return _collect(out, timeline, first, last, size, error)


def _decode_pass(uri: str, want: np.ndarray, out: "_FrameBuffer", size: int,
                 storage_options: dict[str, Any] | None, seek: bool, by_order: bool) -> tuple[str, bool]:
    """One decode of the frames `want` (timestamps) into `out`: (error, whether the decoder's
    timestamps went backwards). `by_order`: the first frame out is placed by its timestamp,
    each later one at the next position (timestamps on a uniform grid, as AVI's are)."""
    scaler = GreyScaler(size)
    out.clear()
    failures: list[str] = []
    error, backwards = "", False
    step = int(want[1] - want[0]) if len(want) > 1 else 1
    try:
        with _av_open(uri, storage_options) as container:
            stream = container.streams.video[0]
            stream.thread_count = DECODER_THREADS
            previous, pos, anchored_after = None, None, 0
            started = False      # the first frame out anchors the placement, whatever it is
            for frame in _decode_frames(container, stream, want[0] if seek else None, failures):
                ts = frame.pts if frame.pts is not None else frame.dts
                if ts is None:
                    continue
                if by_order:
                    if len(failures) != anchored_after:   # a corrupt packet: what the decoder still
                        pos, anchored_after = None, len(failures)  # holds may be damaged; go on
                    if pos is None and started and not frame.key_frame:  # from a keyframe, placed
                        continue                                   # by its own label
                    started = True
                    pos = (ts - int(want[0])) // step if pos is None else pos + 1
                    if pos >= len(want):
                        break
                    if pos >= 0:
                        out.put(int(pos), scaler(frame))
                    continue
                if previous is not None and ts < previous:
                    backwards = True
                    break
                previous = ts
                if ts > want[-1]:
                    break
                pos = int(np.searchsorted(want, ts))
                if pos < len(want) and want[pos] == ts:
                    out.put(pos, scaler(frame))
    except av.error.FFmpegError as exc:
        error = f"decoding stopped: {exc}"
    if failures:
        more = f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""
        error = "; ".join(filter(None, [f"decoding skipped to the next keyframe after {failures[0]}{more}", error]))
    return error, backwards


def decode_frame_files(uris: list[str], timeline: Timeline, first: int, last: int, size: int,
                       storage_options: dict[str, Any] | None = None) -> DecodedFrames:
    """Decode still frames [first, last) of a frame-folder clip (UCSD-style .tif/.png/.jpg)."""
    scaler = GreyScaler(size)
    out = _FrameBuffer(last - first, size)
    errors = []
    for index in range(first, last):
        try:
            with _av_open(uris[index], storage_options) as container:
                frame = next(container.decode(video=0))
                out.put(index - first, scaler(frame))
        except (av.error.FFmpegError, StopIteration, OSError) as exc:
            errors.append(f"{uris[index]}: {str(exc) or ('no image' if isinstance(exc, StopIteration) else type(exc).__name__)}")
    error = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
    return _collect(out, timeline, first, last, size, error)


class _FrameBuffer:
    """Frames [first, last) written in place as they decode: one (n, S, S) array, so a
    segment's frames are never stacked from per-frame arrays (a copy of the whole segment)."""

    def __init__(self, n: int, size: int):
        # From Arrow's memory pool, which keeps freed pages for the next segment: a fresh
        # np.empty of tens of MB is new zeroed pages from the kernel each time (in an ingest
        # task 1.3 page faults per frame, ~10 % of its CPU). The frames go on to Arrow anyway.
        self.frames = np.frombuffer(pa.allocate_buffer(n * size * size), np.uint8).reshape(n, size, size)
        self.filled = np.zeros(n, bool)

    def put(self, pos: int, grey: np.ndarray) -> None:
        self.frames[pos] = grey
        self.filled[pos] = True

    def clear(self) -> None:
        self.filled[:] = False


def _collect(out: _FrameBuffer, timeline: Timeline, first: int, last: int, size: int,
             error: str) -> DecodedFrames:
    positions = np.flatnonzero(out.filled)
    index = first + positions.astype(np.int64)
    frames = out.frames if positions.size == out.filled.size else out.frames[positions]
    expected = np.arange(first, last, dtype=np.int64)
    missing = index_runs(expected[~out.filled])
    if missing and not error:
        error = "frames could not be decoded"
    times = (timeline.pts[index] - timeline.start_pts).astype(np.float64) * timeline.time_base
    return DecodedFrames(index, times, frames, missing, error)


def index_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """[3,4,5,9] → [(3,6), (9,10)]."""
    if indices.size == 0:
        return []
    breaks = np.nonzero(np.diff(indices) != 1)[0]
    starts = np.concatenate([[indices[0]], indices[breaks + 1]])
    ends = np.concatenate([indices[breaks], [indices[-1]]]) + 1
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def contiguous_runs(frame_index: np.ndarray) -> list[tuple[int, int]]:
    """Positions [a, b) in `frame_index` where indices are consecutive."""
    if frame_index.size == 0:
        return []
    breaks = np.nonzero(np.diff(frame_index) != 1)[0] + 1
    bounds = np.concatenate([[0], breaks, [frame_index.size]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
