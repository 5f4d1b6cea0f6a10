"""Tiny real video files of every awkward kind, made with PyAV (no fixtures on disk)."""
from __future__ import annotations

import fractions
import os

import av
import numpy as np

from vadray.synth import render_video, write_video


def frames(n: int = 12, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    return render_video(width, height, n, seed=seed)[0]


def _encode(path: str, images, codec: str, pix_fmt: str, in_format: str, rate=10,
            options=None, pts=None, time_base=None, container_options=None) -> None:
    with av.open(path, "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = images[0].shape[0], images[0].shape[1]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=in_format)
            frame = frame.reformat(format=pix_fmt)
            if pts is not None:
                frame.pts, frame.time_base = pts[i], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def h264_10bit(path: str, n: int = 12) -> None:
    _encode(path, frames(n), "libx264", "yuv420p10le", "gray")


def alpha_png_mov(path: str, n: int = 12) -> None:
    grey = frames(n)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 200)], axis=-1)
    _encode(path, rgba, "png", "rgba", "rgba")


def rgb_ffv1_mkv(path: str, n: int = 12) -> None:
    grey = frames(n)
    _encode(path, np.stack([grey] * 3, axis=-1), "ffv1", "bgr0", "rgb24")


def h264_4k(path: str, n: int = 10) -> None:
    images = np.repeat(np.repeat(frames(n, 64, 36), 60, axis=1), 60, axis=2)  # 3840×2160
    _encode(path, images, "libx264", "yuv420p", "gray", options={"preset": "ultrafast"})


def vfr_mkv(path: str, n: int = 14) -> list[float]:
    """Variable frame rate: gaps of 50-250 ms. Returns the frame times in seconds."""
    gaps = np.array([50, 100, 250, 100, 50] * n)[:n]
    pts = np.concatenate([[0], np.cumsum(gaps)[:-1]]).astype(int)
    _encode(path, frames(n), "libx264", "yuv420p", "gray", pts=[int(p) for p in pts],
            time_base=fractions.Fraction(1, 1000), options={"bf": "0"})
    return (pts / 1000.0).tolist()


def mpeg4_avi(path: str, n: int = 12) -> None:
    _encode(path, frames(n), "mpeg4", "yuv420p", "gray")


def resolution_change_ts(path: str, n1: int = 10, n2: int = 10) -> None:
    """Two MPEG-TS pieces of different frame size, concatenated: a mid-stream size change.

    The second piece's timestamps continue the first's, as a camera's stream would. The TS
    muxer delays the first piece's timestamps by x264's 2 frames of B-frame reorder (its dts
    would be negative) but not the second's, so the second starts 2 frames later to follow on
    (at n1 it would repeat two of the first piece's timestamps, which probe reports)."""
    a, b = path + ".a.ts", path + ".b.ts"
    tb = fractions.Fraction(1, 10)
    _encode(a, frames(n1, 64, 48), "libx264", "yuv420p", "gray", pts=list(range(n1)), time_base=tb)
    _encode(b, frames(n2, 96, 64, seed=3), "libx264", "yuv420p", "gray",
            pts=list(range(n1 + 2, n1 + 2 + n2)), time_base=tb)
    with open(path, "wb") as out:
        for piece in (a, b):
            with open(piece, "rb") as f:
                out.write(f.read())
            os.remove(piece)


def audio_only_mp4(path: str, cover: bool = False) -> None:
    """An audio file; `cover`: with a cover picture, which FFmpeg lists as a video stream."""
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=8000)
        if cover:
            picture = container.add_stream("mjpeg")
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuvj420p"
            picture.disposition = av.stream.Disposition.attached_pic
            image = av.VideoFrame.from_ndarray(frames(1)[0], format="gray").reformat(format="yuvj420p")
            for packet in [*picture.encode(image), *picture.encode()]:
                container.mux(packet)
        samples = (np.sin(np.arange(8000) / 5.0) * 0.2).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for chunk in [frame]:
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def concatenated_ts(path: str, start_a: float, start_b: float, b_frames: int = 0, n: int = 20,
                    cut_b: int = 0) -> None:
    """Two MPEG-TS recordings joined byte for byte (`cat a.ts b.ts`, or a camera whose clock
    reset): the second's timestamps start at `start_b` s, below where the first's end; `cut_b`:
    the second starts that many packets late (mid-GOP, its keyframe lost)."""
    joined_ts(path, [start_a, start_b], b_frames, n, [0, cut_b])


def joined_ts(path: str, starts: list[float], b_frames: int = 0, n: int = 20, cuts: list[int] | None = None) -> None:
    """MPEG-TS recordings of `n` frames starting at `starts` s, joined byte for byte; recording
    k loses its first `cuts[k]` packets."""
    tb = fractions.Fraction(1, 90000)
    pieces = []
    for k, start in enumerate(starts):
        with av.open(f"{path}.{k}.ts", "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            stream.options = {"bf": str(b_frames), "g": "10"}
            stream.time_base = stream.codec_context.time_base = tb
            packets = []
            for i, image in enumerate(frames(n, seed=k)):
                frame = av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuv420p")
                frame.pts, frame.time_base = round(start * 90000) + 9000 * i, tb
                packets += stream.encode(frame)
            for packet in (packets + list(stream.encode()))[(cuts or [0] * len(starts))[k]:]:
                container.mux(packet)
        pieces.append(open(f"{path}.{k}.ts", "rb").read())
        os.remove(f"{path}.{k}.ts")
    open(path, "wb").write(b"".join(pieces))


def mid_gop_ts(path: str, n: int = 30, cut: int = 4) -> int:
    """An MPEG-TS recording cut mid-GOP: its first `cut` packets (the keyframe among them) are
    gone. Returns how many frames precede the first keyframe it holds."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"bf": "0", "g": "10"}
        packets = [p for image in frames(n) for p in stream.encode(
            av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuv420p"))]
        for packet in (packets + list(stream.encode()))[cut:]:
            container.mux(packet)
    return 10 - cut


def bad_inputs(folder: str) -> dict[str, str]:
    """Every kind of bad input → the error_type ingest must report for it."""
    os.makedirs(folder, exist_ok=True)
    good = os.path.join(folder, "_good.mp4")
    write_video(good, frames(30))
    data = open(good, "rb").read()
    os.remove(good)
    with open(os.path.join(folder, "zero.mp4"), "wb"):
        pass
    with open(os.path.join(folder, "notes.mp4"), "w") as f:
        f.write("this is not a video, just some text someone renamed\n" * 20)
    with open(os.path.join(folder, "garbage.mkv"), "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with open(os.path.join(folder, "truncated.mp4"), "wb") as f:
        f.write(data[: len(data) // 2])
    audio_only_mp4(os.path.join(folder, "audio.mp4"))
    write_video(os.path.join(folder, "short.mp4"), frames(5))
    return {"zero": "empty", "notes": "not_video", "garbage": "corrupt", "truncated": "corrupt",
            "audio": "no_video_stream", "short": "too_short"}


# ------------------------------------------------------------------ damage the container reveals

def truncated(path: str, n: int = 40) -> None:
    """H.264 with a keyframe every 10 frames, cut at half its bytes: an .mkv (declares its
    duration) or an .mp4 with its index first (declares its frame count)."""
    options = {"movflags": "faststart"} if path.endswith(".mp4") else None
    _encode(path, frames(n), "libx264", "yuv420p", "gray", options={"g": "10", "bf": "0"},
            container_options=options)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def corrupt_packet_mp4(path: str, n: int = 40, bad: int = 15) -> None:
    """H.264 in MP4 (the index in moov, the samples in mdat), a keyframe every 10 frames,
    sample `bad` overwritten with noise in place: the demuxer still finds every frame."""
    _encode(path, frames(n), "libx264", "yuv420p", "gray", options={"g": "10", "bf": "0"})
    with av.open(path) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    pos, size = packets[bad]
    data = bytearray(open(path, "rb").read())
    data[pos: pos + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))


def repeated_pts_mkv(path: str, n: int = 20) -> None:
    """Packets 5 and 6 carry one timestamp (a muxer bug of cheap recorders)."""
    plain = path + ".plain.mkv"
    _encode(plain, frames(n), "libx264", "yuv420p", "gray", options={"g": "5", "bf": "0"})
    with av.open(plain) as source, av.open(path, "w") as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for i, packet in enumerate(p for p in source.demux(video=0) if p.size):
            packet.pts = packet.dts = (i if i < 6 else i - 1) * 100
            packet.stream = stream
            out.mux(packet)
    os.remove(plain)


# ------------------------------------------------------------------ valid files that only look short

def late_start_mkv(path: str, n: int = 20) -> list[float]:
    """Matroska cut from a running recording: timestamps start at 60 s, and its DURATION tag
    states the END time (62 s), not the 2 s it holds."""
    tb = fractions.Fraction(1, 10)
    _encode(path, frames(n), "libx264", "yuv420p", "gray", pts=list(range(600, 600 + n)), time_base=tb)
    return [i / 10 for i in range(n)]


def long_last_frame(path: str, n: int = 20) -> None:
    """A motion-triggered camera holds its last frame for 2 s: the container's duration
    counts that, far beyond the frames' own span."""
    tb = fractions.Fraction(1, 1000)
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = stream.time_base = tb
        stream.options = {"bf": "0"}
        packets = []
        for i, image in enumerate(frames(n)):
            frame = av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuv420p")
            frame.pts, frame.time_base = 40 * i, tb
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            packet.duration = 40
        packets[-1].duration = 2000
        for packet in packets:
            container.mux(packet)


def dropped_frames_avi(path: str, n: int = 30) -> None:
    """An AVI capture that dropped 3 frames: its header counts them, the demuxer never returns
    them (empty index entries)."""
    tb = fractions.Fraction(1, 25)
    with av.open(path, "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        for i, image in enumerate(frames(n)):
            frame = av.VideoFrame.from_ndarray(image, format="gray").reformat(format="yuvj420p")
            frame.pts, frame.time_base = i + (3 if i >= n // 2 else 0), tb
            for packet in stream.encode(frame):
                container.mux(packet)


def copy_cut_mp4(path: str, n: int = 30) -> None:
    """What `ffmpeg -ss 0.2 -i in.mp4 -c copy out.mp4` writes: the packets before the cut stay
    (they are references), and an edit list makes the decoder discard their frames."""
    source = path + ".src.mp4"
    _encode(source, frames(n), "libx264", "yuv420p", "gray", options={"bf": "2", "g": "10"})
    with av.open(source) as src, av.open(path, "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        shift = int(0.2 / src.streams.video[0].time_base)
        for packet in src.demux(video=0):
            if packet.size:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream
                out.mux(packet)
    os.remove(source)


def h264_bframes_avi(path: str, n: int = 30, gop: int = 12) -> None:
    """H.264 with B-frames in AVI, which stores no presentation times: FFmpeg labels packets in
    decode order, so the frames come out of the decoder with their labels out of order."""
    _encode(path, frames(n), "libx264", "yuv420p", "gray", options={"bf": "2", "g": str(gop)})
