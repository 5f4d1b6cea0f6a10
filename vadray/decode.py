"""PyAV decoding: one segment of a video (or of a frame folder) to grey S×S uint8 frames.

Scaling and grey conversion run in FFmpeg (swscale through a reused `VideoReformatter`),
never in Python loops. A segment task holds only its own frames, so memory is bounded by
the segment, not by the video. Which frames there are comes from `vadray.probe`.
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
from vadray.probe import Pieces, Timeline, ffmpeg_reason, open_input, video_stream


@dataclass
class DecodedFrames:
    frame_index: np.ndarray      # (n,) int64 source frame indices, increasing
    time_s: np.ndarray           # (n,) float64
    frames: np.ndarray           # (n, S, S) uint8 grey
    missing: list[tuple[int, int]] = field(default_factory=list)  # [first, last) runs not decoded
    error: str = ""
    retry: bool = False          # reading failed or the decode raised: a rerun may not fail the same way


@contextlib.contextmanager
def _av_open(uri: str, storage_options: dict[str, Any] | None) -> Iterator[Any]:
    """A container for decoding: a local file through FFmpeg's own I/O (reads through a Python
    file object cost ~0.1 ms a frame), object storage through an fsspec handle."""
    if storage.is_remote(uri):
        with open_input(uri, storage_options) as handle, av.open(handle, mode="r") as container:
            yield container
    else:
        _, path = storage.url_to_fs(uri, storage_options)
        with av.open(path, mode="r") as container:
            yield container


# Frames a decoder may hold back before output (H.264's largest picture buffer): past the
# segment's end, a file whose timestamps reset is decoded this far more, since the last frame of
# one piece may come out after the first frames of the next.
REORDER_FRAMES = 16

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


class SeekMissed(Exception):
    """A byte seek that did not land on the keyframe probe recorded there."""


def _decode_frames(container, stream, first_pts: int | None, failures: list[str],
                   piece_offsets: list[int] | None = None,
                   at_byte: list[int] | None = None) -> Iterator[av.VideoFrame]:
    """Frames of `stream` from the keyframe before `first_pts`. A packet the decoder refuses
    (corrupt data) is noted in `failures` and decoding resumes at the next keyframe: the frames
    between would be built on a broken reference, so they are reported missing, not kept.

    `piece_offsets` (`Timeline.piece_offsets`): each packet's timestamps are shifted as probe
    shifted its piece's before it reaches the decoder, so frames come out with timestamps
    unique in the file. A piece that starts without a keyframe (a recording cut mid-GOP) is
    skipped to its first keyframe: decoded on the previous piece's pictures, it would be noise.
    Such a file's timestamps repeat, so it is sought by bytes: `at_byte` is a keyframe's
    (shifted pts, piece, byte position), `Timeline.keyframe_before`; landing anywhere but on
    that keyframe raises SeekMissed."""
    if at_byte is not None:
        try:
            container.seek(at_byte[2], unsupported_byte_offset=True)   # FFmpeg's AVSEEK_FLAG_BYTE
        except av.error.FFmpegError as exc:   # a demuxer that cannot seek by bytes
            raise SeekMissed(str(exc)) from None
    elif first_pts is not None:
        container.seek(int(first_pts), stream=stream, backward=True, any_frame=False)
    pieces = Pieces(container, at_byte[1] if at_byte else 0) if piece_offsets else None
    landing = at_byte
    skipping = False
    for packet in container.demux(stream):
        if landing is not None and packet.size > 0:
            # The very keyframe: MPEG-PS hands out the tail of the picture before it at its
            # position first, with a timestamp that belongs to neither.
            ts = packet.pts if packet.pts is not None else packet.dts
            if (packet.pos != landing[2] or not packet.is_keyframe or ts is None
                    or ts + piece_offsets[landing[1]] != landing[0]):
                raise SeekMissed(f"a byte seek to {landing[2]} landed at {packet.pos} (pts {ts})")
            landing = None
        if pieces is not None and packet.size > 0 and not packet.is_discard \
                and (packet.pts is not None or packet.dts is not None):
            before = pieces.current
            piece = min(pieces.add(packet), len(piece_offsets) - 1)
            if piece != before and not packet.is_keyframe and not skipping:
                failures.append(f"a timestamp reset at pts {packet.pts} into a recording that starts without a keyframe")
                skipping = True
            if piece_offsets[piece]:
                packet.pts = None if packet.pts is None else packet.pts + piece_offsets[piece]
                packet.dts = None if packet.dts is None else packet.dts + piece_offsets[piece]
        if skipping and packet.size > 0 and not packet.is_keyframe:
            continue                      # (an empty packet flushes the decoder: never skipped)
        skipping = False
        try:
            yield from packet.decode()
        except av.error.FFmpegError as exc:
            failures.append(f"a corrupt packet at pts {packet.pts}: {ffmpeg_reason(exc)}")
            skipping = True


def frames_from(container, stream, timeline: Timeline, pts: int, seek: bool = True) -> Iterator[av.VideoFrame]:
    """Decoded frames from a keyframe before the frame at `pts` (one of `timeline.pts`), their
    timestamps shifted as the timeline's are: a one-off read, such as a report's thumbnail.
    Raises SeekMissed where a file whose timestamps reset cannot be sought: read it again
    with `seek=False`, from its start."""
    if timeline.piece_offsets:
        at_byte = (timeline.keyframe_before(pts) or None) if seek else None
        return _decode_frames(container, stream, None, [], timeline.piece_offsets, at_byte)
    return _decode_frames(container, stream, pts if seek else None, [])


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
    # Positions are relative to `timeline`, which may hold only this segment's frames. A file
    # whose timestamps reset has the same timestamps in several places: it is sought by bytes.
    pieces = timeline.piece_offsets
    at_byte = (timeline.keyframe_before(int(want[0])) or None) if pieces else None
    seek = at_byte is not None if pieces else int(want[0]) > timeline.start_pts
    out = _FrameBuffer(last - first, size)
    try:
        error, backwards = _decode_pass(uri, want, out, size, storage_options, seek, by_order=False,
                                        piece_offsets=pieces, at_byte=at_byte)
    except SeekMissed:
        seek = False
        error, backwards = _decode_pass(uri, want, out, size, storage_options, False, False, pieces)
    by_order = backwards
    if by_order:
        error, _ = _decode_pass(uri, want, out, size, storage_options, seek, by_order=True)
    if seek and not out.filled[0] and not error:   # the seek landed after `first`: from the start
        error, backwards = _decode_pass(uri, want, out, size, storage_options, False, by_order, pieces)
        if backwards and not by_order:   # the bad seek hid the decode-order labels (an AVI without index)
            error, _ = _decode_pass(uri, want, out, size, storage_options, False, True)
    return _collect(out, timeline, first, last, size, error)


def _decode_pass(uri: str, want: np.ndarray, out: "_FrameBuffer", size: int,
                 storage_options: dict[str, Any] | None, seek: bool, by_order: bool,
                 piece_offsets: list[int] | None = None,
                 at_byte: list[int] | None = None) -> tuple[str, bool]:
    """One decode of the frames `want` (timestamps) into `out`: (error, whether the decoder's
    timestamps went backwards). `by_order`: the first frame out is placed by its timestamp,
    each later one at the next position (timestamps on a uniform grid, as AVI's are).
    `piece_offsets` (`Timeline.piece_offsets`): a file whose timestamps reset; its frames come
    out already shifted (`_decode_frames`) and are placed by timestamp, reordering included.
    Such a file seeks to `at_byte` (`Timeline.keyframe_before`) where `seek` is set."""
    scaler = GreyScaler(size)
    out.clear()
    failures: list[str] = []
    error, backwards = "", False
    step = int(want[1] - want[0]) if len(want) > 1 else 1
    try:
        with _av_open(uri, storage_options) as container:
            stream = video_stream(container)
            stream.thread_count = DECODER_THREADS
            previous, pos, anchored_after = None, None, 0
            started = False      # the first frame out anchors the placement, whatever it is
            past_end = 0
            damaged = False      # since a concealed error: frames up to the next keyframe are left out
            keyed = False        # a keyframe came out: pictures before it (an open GOP's leading ones) may be flagged
            said = False         # this stretch of damage is in `failures`
            for frame in _decode_frames(container, stream, want[0] if seek else None, failures, piece_offsets,
                                        at_byte if seek else None):
                ts = frame.pts if frame.pts is not None else frame.dts
                if ts is None:
                    continue
                # FFmpeg's H.264 decoder mostly hides a corrupt packet instead of refusing it: it
                # flags the picture and patches it from the one before, and the frames after it
                # build on the patch, wherever the segment starts. Kept, they would be stored as
                # footage, silently.
                if frame.key_frame and not frame.is_corrupt:
                    damaged, keyed = False, True
                elif frame.is_corrupt and keyed and not damaged:
                    damaged, said = True, False
                if damaged:
                    if ts > want[-1] and not piece_offsets:
                        break
                    if want[0] <= ts <= want[-1] and not said:
                        failures.append(f"a damaged picture before pts {ts} (FFmpeg concealed a decoding error)")
                        said = True
                    continue
                if piece_offsets:   # already shifted; at a reset the output order may go back
                    past_end = past_end + 1 if ts > want[-1] else 0
                    if past_end > REORDER_FRAMES:
                        break
                    pos = int(np.searchsorted(want, ts))
                    if pos < len(want) and want[pos] == ts:
                        out.put(pos, scaler(frame))
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
        error = f"decoding stopped: {ffmpeg_reason(exc)}"
        # EIO, a timeout, the file gone, out of memory (PyAV's MemoryError): not corrupt data
        out.io_error = isinstance(exc, (OSError, MemoryError))
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
        if not uris[index]:
            errors.append("no file for this frame (the folder's numbering skips it)")
            continue
        try:   # through a file object: FFmpeg's own I/O would read `img%03d.png` as a pattern
            with open_input(uris[index], storage_options) as handle, av.open(handle, mode="r") as container:
                frame = next(container.decode(video=0))
                out.put(index - first, scaler(frame))
        except (av.error.FFmpegError, StopIteration, OSError) as exc:
            out.io_error |= isinstance(exc, (OSError, MemoryError))
            errors.append(f"{uris[index]}: {str(exc) or ('no image' if isinstance(exc, StopIteration) else type(exc).__name__)}")
    errors = list(dict.fromkeys(errors))   # holes repeat one message: once is enough
    error = "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
    return _collect(out, timeline, first, last, size, error)


NOT_DECODED = "frames could not be decoded"   # frames the decoder never output, with no error


class _FrameBuffer:
    """Frames [first, last) written in place as they decode: one (n, S, S) array, so a
    segment's frames are never stacked from per-frame arrays (a copy of the whole segment)."""

    def __init__(self, n: int, size: int):
        # From Arrow's memory pool, which keeps freed pages for the next segment: a fresh
        # np.empty of tens of MB is new zeroed pages from the kernel each time (in an ingest
        # task 1.3 page faults per frame, ~10 % of its CPU). The frames go on to Arrow anyway.
        self.frames = np.frombuffer(pa.allocate_buffer(n * size * size), np.uint8).reshape(n, size, size)
        self.filled = np.zeros(n, bool)
        self.io_error = False   # reading failed (an OSError: storage, network): a retry may succeed

    def put(self, pos: int, grey: np.ndarray) -> None:
        self.frames[pos] = grey
        self.filled[pos] = True

    def clear(self) -> None:
        self.filled[:] = False
        self.io_error = False


def _collect(out: _FrameBuffer, timeline: Timeline, first: int, last: int, size: int,
             error: str) -> DecodedFrames:
    positions = np.flatnonzero(out.filled)
    index = first + positions.astype(np.int64)
    frames = out.frames if positions.size == out.filled.size else out.frames[positions]
    expected = np.arange(first, last, dtype=np.int64)
    missing = index_runs(expected[~out.filled])
    if missing and not error:
        error = NOT_DECODED
    return DecodedFrames(index, timeline.time_s(index), frames, missing, error, retry=out.io_error)


def index_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive values, as value ranges: [3,4,5,9] → [(3,6), (9,10)]."""
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in contiguous_runs(indices)]


def contiguous_runs(frame_index: np.ndarray) -> list[tuple[int, int]]:
    """Positions [a, b) in `frame_index` where indices are consecutive."""
    if frame_index.size == 0:
        return []
    breaks = np.nonzero(np.diff(frame_index) != 1)[0] + 1
    bounds = np.concatenate([[0], breaks, [frame_index.size]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
