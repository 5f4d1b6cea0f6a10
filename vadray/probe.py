"""What a video file holds, before any decoding: its frame timeline, and what is wrong with it.

`probe` demuxes (no decode) and collects every frame's pts: frame indices are positions in
presentation order, so indices and `time_s` are exact for variable frame rate video and a
segment can start anywhere by seeking. A file that cannot be used raises `InputError` (one
errors row); one that can, but holds less than its container declares or repeats timestamps,
carries `Timeline.warnings` (rows too; its frames are still processed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

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
    # Where the stream's timestamps go back (concatenated recordings, a camera's clock reset):
    # the ticks added to each piece's own, in file order, so that `pts` runs on. Empty: the file
    # is sought by time; [0]: one piece, sought by bytes (MPEG-PS and -TS, `SOUGHT_BY_BYTES`).
    piece_offsets: list[int] = field(default_factory=list)
    # Such a file's keyframes, in file order: (shifted pts, piece, byte position). Its timestamps
    # may repeat, so a segment seeks to a keyframe's bytes instead of a time (`keyframe_before`).
    keyframes: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))

    @property
    def num_frames(self) -> int:
        return int(self.pts.shape[0])

    def time_s(self, index: np.ndarray) -> np.ndarray:
        """Seconds from the stream's start of the frames at positions `index`."""
        return (self.pts[index] - self.start_pts).astype(np.float64) * self.time_base

    def seek_keyframes(self, pts: int) -> np.ndarray:
        """The keyframes a decode from the frame at `pts` chooses among (`keyframe_before`): the
        last two at or before it. A segment carries these rows, not the whole file's."""
        return self.keyframes[np.flatnonzero(self.keyframes[:, 0] <= pts)[-2:]]

    def keyframe_before(self, pts: int) -> list[int]:
        """[shifted pts, piece, byte position] of the keyframe BEFORE the last one at or before
        the (shifted) `pts` in a file whose timestamps reset; []: none (decode from the start).
        One keyframe further back: where keyframes are recovery points (x264's intra refresh),
        the decoder outputs nothing for a few frames after one."""
        rows = self.seek_keyframes(pts)
        return [int(v) for v in rows[0]] if len(rows) == 2 else []


def open_input(uri: str, storage_options: dict[str, Any] | None):
    """A binary file object for a local path, file:// or s3:// URI."""
    fs, path = storage.url_to_fs(uri, storage_options)
    return fs.open(path, "rb")



def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return printable / len(head) > 0.95


def video_stream(container) -> Any:
    """The first video stream that is not a cover picture (an audio file's `attached_pic`):
    probe, decode and thumbnails must all read the same one."""
    pictures = av.stream.Disposition.attached_pic
    videos = [s for s in container.streams.video if not (s.disposition & pictures)]
    if not videos:
        kinds = sorted({s.type for s in container.streams}) or ["no"]
        what = ("only a cover picture as video" if container.streams.video
                else f"{'/'.join(kinds)} streams but no video stream")
        raise InputError("no_video_stream", f"the file has {what}")
    return videos[0]


def ffmpeg_reason(exc: av.error.FFmpegError) -> str:
    """FFmpeg's reason without its errno and file name: a file object's name is '<none>', and
    the errors row names the input anyway."""
    return exc.strerror or str(exc)


def _open_container(handle):
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
                                    f"video): {ffmpeg_reason(exc)}") from None


@dataclass
class _Demuxed:
    """What one demux pass over a video stream found (no decode)."""

    ticks: list[int] = field(default_factory=list)       # per packet: its pts (or dts), file order
    pieces: list[int] = field(default_factory=list)      # per packet: how many times the dts went back before it
    keyframes: list[tuple[int, int]] = field(default_factory=list)   # (packet number, byte position)
    last_duration: int = 0                               # the last packet's stated duration
    discarded: int = 0                                   # decoded for reference only: an MP4 edit list cuts them
    untimed: int = 0                                     # packets with neither pts nor dts
    ended: str = ""                                      # why the demuxer stopped early, if it did


def _demux(container, stream) -> _Demuxed:
    found, counter = _Demuxed(), Pieces(container)
    try:
        for packet in container.demux(stream):
            ts = packet.pts if packet.pts is not None else packet.dts
            if packet.size == 0:
                continue
            if ts is None:            # no place on the timeline (H.264 in MPEG-PS): not lost silently
                found.untimed += 1
                continue
            if packet.is_discard:     # before an edit list's start (a `-ss … -c copy` cut)
                found.discarded += 1
                continue
            if packet.is_keyframe and packet.pos is not None and packet.pos >= 0:
                found.keyframes.append((len(found.ticks), int(packet.pos)))
            found.ticks.append(int(ts))
            found.pieces.append(counter.add(packet))
            found.last_duration = int(packet.duration or 0)
    except av.error.FFmpegError as exc:
        found.ended = f"the stream ended early after {len(found.ticks)} frames: {ffmpeg_reason(exc)}"
    return found


def probe(uri: str, min_frames: int = 10, storage_options: dict[str, Any] | None = None) -> Timeline:
    """Collect every frame's pts by demuxing (no decode). Raises InputError for bad input.

    A demuxer stops quietly at the end of a truncated file, so what was found is compared with
    what the container declares (its frame count or duration): a shortfall is a `truncated`
    warning, never a silent loss. Timestamps that go back (a reset) start a new piece that
    continues after the one before it; duplicated pts within a piece would put two frames at
    one index: a `timestamps` warning says how many are dropped.
    """
    with open_input(uri, storage_options) as handle:
        file_bytes = handle.seek(0, 2)
        handle.seek(0)
        with _open_container(handle) as container:
            stream = video_stream(container)
            found = _demux(container, stream)
            ctx = stream.codec_context
            if ctx is None:   # a codec this FFmpeg has no decoder for
                tag = getattr(stream, "codec_tag", "") or "unknown"
                raise InputError("unsupported_codec", f"no decoder for the video codec ({tag}) in this build of FFmpeg")
            time_base = float(stream.time_base) if stream.time_base else 1.0 / 25
            rate = stream.average_rate
            if not rate and stream.guessed_rate and (float(stream.guessed_rate) * time_base < 0.5
                                                     or _median_step(found.ticks) <= 2):
                # (not where the guess is a frame every tick or two while the frames are further
                # apart: FFmpeg's guess for variable-rate MPEG-TS is its 90 kHz clock, and 90000
                # fps made an hour one segment; the timestamps below give the rate instead)
                rate = stream.guessed_rate
            fps = float(rate) if rate else 0.0
            width, height, codec = int(ctx.width or 0), int(ctx.height or 0), ctx.name
            declared = _Declared(max(0, int(stream.frames or 0) - found.discarded),
                                 _declared_seconds(container, stream, time_base), container.format.name)
    ticks, pieces, keyframes, untimed, ended = (found.ticks, found.pieces, found.keyframes, found.untimed,
                                                found.ended)
    ticks_all, piece_of = np.asarray(ticks, dtype=np.int64), np.asarray(pieces, dtype=np.int64)
    offsets = _piece_offsets(ticks_all, piece_of, fps, time_base)
    reset = len(offsets) > 1
    if not offsets and set(declared.format.split(",")) & SOUGHT_BY_BYTES:
        offsets = [0]   # one piece, sought by its keyframes' bytes
    warnings = [("truncated", ended)] if ended else []
    seek_points = np.zeros((0, 3), np.int64)
    if offsets:
        ticks_all = ticks_all + np.asarray(offsets, np.int64)[piece_of]
        numbers = np.asarray([k for k, _ in keyframes], np.int64)
        seek_points = np.stack([ticks_all[numbers], piece_of[numbers],
                                np.asarray([pos for _, pos in keyframes], np.int64)], axis=1).reshape(-1, 3)
    pts = np.unique(ticks_all)  # presentation order
    if reset:
        first_reset = int(np.searchsorted(pts, ticks_all[piece_of == 1].min()))
        warnings.append(("timestamps", f"the timestamps go back {len(offsets) - 1} time(s), first at frame "
                                       f"{first_reset} (concatenated recordings, or a camera clock reset): "
                                       "the frames are kept in file order, each reset's times continuing from "
                                       "the frame before it"))
    if untimed:
        warnings.append(("timestamps", f"{untimed} of {untimed + ticks_all.shape[0]} frames carry no timestamp "
                                       "in the container and are left out (remux the file, e.g. to .mp4)"))
    if pts.shape[0] < min_frames:
        raise InputError("too_short", f"only {pts.shape[0]} frames; a volume needs {min_frames}"
                         + (f" ({ended})" if ended else "")
                         + (f" ({untimed} more carry no timestamp in the container: remux the file, e.g. "
                            "to .mp4)" if untimed else ""))
    if fps <= 0 and pts.shape[0] > 1:   # from the timestamps: the median step ignores pauses
        fps = 1.0 / max(_median_step(pts) * time_base, 1e-9)
    if not ended:
        last_seconds = found.last_duration * time_base if found.last_duration > 0 else (1.0 / fps if fps > 0 else 0.0)
        if reset:   # a duration the container derives from timestamps that reset means nothing
            declared.seconds = None
        short = _shortfall(declared, pts, ticks_all.shape[0], time_base, last_seconds, fps)
        if not short and "mpegts" in declared.format.split(",") and all(file_bytes % n for n in (188, 192, 204)):
            # MPEG-TS states neither a frame count nor a duration; its packets are 188 bytes
            # (192 in .m2ts, 204 with DVB's parity), so a file cut mid-packet is how a truncated one shows
            short = (f"the file ends inside a transport-stream packet ({file_bytes} bytes, not a whole number "
                     f"of 188-, 192- or 204-byte packets): cut off; the {pts.shape[0]} frames found are kept")
        if short:
            warnings.append(("truncated", short))
    if pts.shape[0] < ticks_all.shape[0]:
        repeated = ticks_all.shape[0] - pts.shape[0]
        warnings.append(("timestamps", f"{repeated} of {ticks_all.shape[0]} frames repeat another "
                                       f"frame's timestamp (duplicated pts); "
                                       f"one frame per timestamp is kept ({repeated} dropped)"))
    return Timeline(pts, time_base, int(pts[0]), fps, width, height, codec, warnings, offsets, seek_points)


# Containers whose time seeks cannot be trusted, so a segment seeks to a keyframe's bytes, as a
# file whose timestamps reset does: after a time seek FFmpeg's MPEG-PS demuxer stamped each
# frame with the next one's time (a frame doubled and one lost at a seam, silently), and in
# MPEG-TS it landed after the segment's first frame every time, so every segment decoded the
# file from its start. A byte seek that does not land on the keyframe probe saw there falls
# back to decoding from the start (`decode.SeekMissed`).
SOUGHT_BY_BYTES = {"mpeg", "mpegts"}

# FFmpeg unwraps MPEG-TS's 33-bit clock: a timestamp more than 60 s below the stream's start
# reads as wrapped and is moved by 2^33 ticks (26.5 h), so a camera clock that reset shows as a
# jump across 0 or 2^33 (a true wrap crosses it by one frame). MPEG-TS counts 90 kHz ticks.
TS_WRAP_POINTS = (0, 2**33)
TS_RESET_JUMP = 60 * 90_000


class Pieces:
    """Counts, in demux order, the pieces of a stream whose timestamps reset: decode order
    runs forward except where a new piece starts (in MPEG-TS also where FFmpeg's wrap
    correction moved a reset across its wrap point). Probe and decode count alike."""

    def __init__(self, container, current: int = 0):
        self.current, self._last_dts = current, None
        self._mpegts = "mpegts" in container.format.name.split(",")

    def add(self, packet) -> int:
        """A packet that has a timestamp → its piece."""
        dts, last = packet.dts, self._last_dts
        if dts is not None:
            if last is not None and (dts < last or (self._mpegts and dts - last > TS_RESET_JUMP
                                                    and any(last < w <= dts for w in TS_WRAP_POINTS))):
                self.current += 1
            self._last_dts = dts
        return self.current


def _median_step(ticks: list[int]) -> float:
    """The median step between consecutive distinct timestamps (inf without two)."""
    steps = np.diff(np.unique(np.asarray(ticks, np.int64)))
    return float(np.median(steps)) if steps.size else float("inf")


def _piece_offsets(ticks: np.ndarray, pieces: np.ndarray, fps: float, time_base: float) -> list[int]:
    """Ticks to add to each piece (a run of packets between two backward jumps of the decode
    timestamps) so that each starts one frame after the piece before it ends; [] for one piece."""
    if ticks.size == 0 or pieces[-1] == 0:
        return []
    offsets = [0]
    for k in range(1, int(pieces[-1]) + 1):
        before = np.unique(ticks[pieces == k - 1] + offsets[-1])
        gaps = np.diff(before)
        step = int(np.median(gaps)) if gaps.size else (max(1, round(1 / (fps * time_base))) if fps > 0 else 1)
        offsets.append(int(before[-1] + step - ticks[pieces == k].min()))   # a packet starts each piece
    return offsets


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


def _shortfall(declared: _Declared, pts: np.ndarray, packets: int, time_base: float, last_seconds: float,
               fps: float) -> str:
    """Why the frames found fall short of what the container declares, or "".

    A frame count is compared where the container states one; a duration only where it does
    not (an MP4's frame count is exact, its duration is not needed). The frames' reach is read
    leniently: their span or their end time, whichever is longer (a Matroska file cut from a
    running recording starts at 60 s and states its end), plus the last frame's own stated
    duration (a variable-rate camera may hold its last frame for seconds)."""
    found = pts.shape[0]
    if declared.frames:
        held = packets
        if "avi" in declared.format.split(",") and fps > 0:
            # AVI's header counts dropped frames (empty index entries), which the demuxer never
            # returns but which leave their place in the frame labels: a capture with drops
            # still reaches its count, a half-copied file stops short of it.
            held = max(packets, int(round(float(pts[-1]) * time_base * fps)) + 1)
        if declared.frames - held > 0:
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


def frame_folder_timeline(frame_uris: list[str], fps: float, min_frames: int = 10) -> Timeline:
    """A folder of still frames has no timestamps: frame i is at i / fps. `frame_uris` is by
    index, "" where the folder's numbering skips a frame (decode reports those)."""
    present = sum(bool(u) for u in frame_uris)
    if present < min_frames:
        raise InputError("too_short", f"only {present} frames; a volume needs {min_frames}")
    return Timeline(np.arange(len(frame_uris), dtype=np.int64), 1.0 / fps, 0, fps, 0, 0, "frames")
