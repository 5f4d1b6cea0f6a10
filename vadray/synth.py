"""A synthetic fixed-camera archive: real H.264 files with known anomalies, deterministic by seed.

The scene is what a surveillance camera sees: a static textured background and figures that
walk along a few lanes at normal speeds, all in the same direction. Anomalies, each a figure
that breaks the scene's habits:
- `fast`: a figure several times faster than the rest (a cyclist among walkers);
- `against`: a figure walking against the flow;
- `size`: an object of unseen size and shape (a cart).
A label CSV (`video,frame_index,label`) marks the frames where an anomalous object is visible.
Tests use tiny archives (64×48, 30 frames); the demo and benchmarks larger ones.
"""
from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from typing import Sequence

import av
import numpy as np

from vadray import storage

ANOMALY_KINDS = ("fast", "against", "size")


@dataclass
class Walker:
    """A figure: a dark ellipse moving along a lane. Speeds in pixels per frame."""

    x: float
    y: float
    vx: float
    vy: float
    rx: float
    ry: float
    shade: float
    anomalous: bool = False
    box: bool = False  # a rectangle instead of an ellipse (unseen shape)


def background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A static textured ground: smooth gradient, tiled paving, a little fixed noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ground = 150 + 40 * (yy / max(height - 1, 1))
    tile = max(4, width // 12)
    paving = 10 * (((xx // tile) + (yy // tile)) % 2)
    noise = rng.normal(0, 6, size=(height, width)).astype(np.float32)
    return np.clip(ground + paving + noise, 0, 255).astype(np.float32)


def _lanes(height: int) -> np.ndarray:
    return np.linspace(0.3, 0.85, 4) * height


def _new_walker(width: int, height: int, rng: np.random.Generator, enter_left: bool = True) -> Walker:
    scale = height / 48.0
    lane = rng.choice(_lanes(height)) + rng.normal(0, 1.0 * scale)
    speed = rng.uniform(0.5, 1.0) * scale  # normal walking speed
    x = -4.0 * scale if enter_left else rng.uniform(0, width)
    return Walker(x=x, y=float(lane), vx=speed, vy=rng.normal(0, 0.05 * scale),
                  rx=1.6 * scale, ry=3.5 * scale, shade=rng.uniform(40, 90))


def _anomalous_walker(kind: str, width: int, height: int, rng: np.random.Generator) -> Walker:
    scale = height / 48.0
    w = _new_walker(width, height, rng)
    w.anomalous = True
    if kind == "fast":
        w.vx = rng.uniform(3.5, 4.5) * scale
    elif kind == "against":
        w.x, w.vx = width + 4.0 * scale, -rng.uniform(0.7, 1.0) * scale
    elif kind == "size":
        w.rx, w.ry, w.box, w.shade = 6.0 * scale, 5.0 * scale, True, 230.0
        w.vx = rng.uniform(0.6, 0.9) * scale
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; choose from {ANOMALY_KINDS}")
    return w


def _draw(canvas: np.ndarray, w: Walker, yy: np.ndarray, xx: np.ndarray) -> bool:
    """Draw a figure in place; True when any of it is inside the frame."""
    if w.box:
        mask = (np.abs(xx - w.x) <= w.rx) & (np.abs(yy - w.y) <= w.ry)
    else:
        mask = ((xx - w.x) / w.rx) ** 2 + ((yy - w.y) / w.ry) ** 2 <= 1.0
    canvas[mask] = w.shade
    return bool(mask.any())


def render_video(width: int, height: int, num_frames: int, seed: int,
                 anomaly: str | None = None, anomaly_start: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames (N, H, W) uint8 and labels (N,) int8 of one clip."""
    rng = np.random.default_rng(seed)
    bg = background(height, width, rng)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    walkers = [_new_walker(width, height, rng, enter_left=False) for _ in range(3)]
    start = num_frames // 3 if anomaly_start is None else anomaly_start
    frames = np.empty((num_frames, height, width), dtype=np.uint8)
    labels = np.zeros(num_frames, dtype=np.int8)
    for t in range(num_frames):
        if anomaly and t == start:
            walkers.append(_anomalous_walker(anomaly, width, height, rng))
        if rng.random() < 0.08:  # new arrivals keep the scene populated
            walkers.append(_new_walker(width, height, rng))
        canvas = bg.copy()
        for w in walkers:
            if _draw(canvas, w, yy, xx) and w.anomalous:
                labels[t] = 1
            w.x += w.vx
            w.y += w.vy
        walkers = [w for w in walkers if -10 * w.rx < w.x < width + 10 * w.rx]
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames, labels


def write_video(path: str, frames: np.ndarray, fps: int = 10, codec: str = "libx264",
                pix_fmt: str = "yuv420p", crf: int = 18) -> None:
    """Encode grey frames (N, H, W) uint8 into a real video file with PyAV."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "g": "20"}
        for grey in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(grey), format="gray")
            for packet in stream.encode(frame.reformat(format=pix_fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_archive(folder: str, num_videos: int = 2, width: int = 64, height: int = 48,
                 num_frames: int = 30, fps: int = 10, seed: int = 0,
                 anomalies: Sequence[str] = (), prefix: str = "video") -> str:
    """Write `num_videos` clips `<prefix>NNN.mp4` into folder and `frame_labels.csv`.

    With `anomalies`, video i gets anomaly kind `anomalies[i % len(anomalies)]` from a third of
    the way in; without, all footage is normal (training footage). Returns the labels path.
    """
    folder = os.fspath(folder)
    anomalies = [anomalies] if isinstance(anomalies, str) else list(anomalies)
    bad = [k for k in anomalies if k not in ANOMALY_KINDS]
    if bad:
        raise ValueError(f"unknown anomaly kind(s) {bad}; choose from {','.join(ANOMALY_KINDS)}")
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError("width and height must be even (yuv420p H.264) and at least 16")
    if num_videos < 1 or num_frames < 1 or fps < 1:
        raise ValueError("the numbers of videos and frames, and the fps, must be at least 1")
    os.makedirs(folder, exist_ok=True)
    rows = []
    for i in range(num_videos):
        video_id = f"{prefix}{i + 1:03d}"
        kind = anomalies[i % len(anomalies)] if anomalies else None
        frames, labels = render_video(width, height, num_frames, seed=seed * 1000 + i, anomaly=kind)
        write_video(os.path.join(folder, f"{video_id}.mp4"), frames, fps=fps)
        rows += [(video_id, t, int(lab)) for t, lab in enumerate(labels)]
    labels_path = os.path.join(folder, "frame_labels.csv")
    with open(labels_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "frame_index", "label"])
        writer.writerows(rows)
    return labels_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", help="folder to write the videos and frame_labels.csv into")
    parser.add_argument("--videos", type=int, default=4, help="number of clips (default 4)")
    parser.add_argument("--width", type=int, default=64, help="frame width in pixels, even (default 64)")
    parser.add_argument("--height", type=int, default=48, help="frame height in pixels, even (default 48)")
    parser.add_argument("--frames", type=int, default=30, help="frames per clip (default 30)")
    parser.add_argument("--fps", type=int, default=10, help="frame rate (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same archive")
    parser.add_argument("--anomalies", default="",
                        help=f"comma-separated anomaly kinds to cycle through the clips, from "
                             f"{','.join(ANOMALY_KINDS)}; empty (default) makes normal footage only")
    parser.add_argument("--prefix", default="video", help="file name prefix (default 'video')")


def run(args: argparse.Namespace) -> int:
    from vadray.exits import UsageError

    kinds = [k for k in args.anomalies.split(",") if k]
    if "://" in args.output and not args.output.startswith("file://"):
        raise UsageError("synth writes to a local folder; copy it to object storage afterwards "
                         "(e.g. aws s3 sync OUT s3://bucket/prefix)")
    args.output = args.output.removeprefix("file://")
    storage.require_folder_to_write(OUT=args.output)
    try:
        labels = make_archive(args.output, args.videos, args.width, args.height, args.frames, args.fps,
                              args.seed, kinds, args.prefix)
    except ValueError as exc:   # what the arguments asked for cannot be made
        raise UsageError(str(exc)) from None
    print(f"wrote {args.videos} videos and {labels}")
    return 0
