"""What ingest writes and training reads: clip shards rows (`CLIPS_SCHEMA`, `clip_table`) and
the normalisation statistics (per-segment exact sums in stats/parts/, added into
stats/stats.json + mean_image.npy). No Ray here: the decode tasks call `clip_table` and
`write_sums`, the driver `compute_stats` and `write_stats`."""
from __future__ import annotations

import functools
import io
import json
import operator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from vadray import storage
from vadray.decode import contiguous_runs
from vadray.preprocess import NormStats, PartialSums

CHUNK_FRAMES = 32  # frames per clips row: ~1.6 MB at 227×227, a good unit for streaming reads

CLIPS_SCHEMA = pa.schema([
    ("video_id", pa.string()),
    ("camera", pa.string()),
    ("source_uri", pa.string()),
    ("start_frame", pa.int64()),
    ("num_frames", pa.int32()),
    ("time_s", pa.list_(pa.float64())),
    ("fps", pa.float64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("size", pa.int32()),
    ("frames", pa.binary()),
    ("video_key", pa.string()),
])


# Dictionary pages and min/max statistics only for the small columns: for 51-kB frame blobs
# they cost a hash and a compare per frame and serve no reader (-30 % write time, measured).
SMALL_COLUMNS = [name for name in CLIPS_SCHEMA.names if name != "frames"]


def clip_table(seg: dict[str, Any], frame_index: np.ndarray, time_s: np.ndarray, frames: np.ndarray,
               size: int) -> pa.Table:
    """Clips rows: contiguous runs of frames cut into chunks of ≤ CHUNK_FRAMES.

    The `frames` column is a view of the decoded array's own buffer (offsets at chunk
    bounds), so frames are not copied on their way to Parquet.
    """
    bounds = [(c, min(c + CHUNK_FRAMES, b)) for a, b in contiguous_runs(frame_index)
              for c in range(a, b, CHUNK_FRAMES)]
    n = len(bounds)
    frame_bytes = size * size
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    offsets = np.array([0] + [d * frame_bytes for _, d in bounds], np.int64)  # runs tile 0..N
    if offsets[-1] < 2**31:  # binary's int32 offsets: a view, no copy of the frames
        blob = pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.astype(np.int32)),
                                                            pa.py_buffer(frames)])
    else:                    # a segment of over 2 GB of frames: large_binary, then the cast copies
        blob = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets),
                                                                       pa.py_buffer(frames)]).cast(pa.binary())
    starts = np.array([c for c, _ in bounds], np.int64)
    counts = np.array([d - c for c, d in bounds], np.int32)
    times = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)),
                                     pa.array(np.asarray(time_s, np.float64)))
    constant = {"video_id": seg["video_id"], "camera": seg["camera"], "source_uri": seg["uri"],
                "fps": seg["fps"], "width": seg["width"], "height": seg["height"], "size": size,
                "video_key": seg["video_key"]}
    columns = {name: pa.array([constant[name]] * n, type=CLIPS_SCHEMA.field(name).type) for name in constant}
    columns |= {"start_frame": pa.array(np.asarray(frame_index, np.int64)[starts]),
                "num_frames": pa.array(counts), "time_s": times,
                "frames": blob}
    return pa.table({name: columns[name] for name in CLIPS_SCHEMA.names}, schema=CLIPS_SCHEMA)


def write_sums(parts_uri: str, video_key: str, segment: int, sums: PartialSums,
               storage_options: dict[str, Any]) -> None:
    fs, root = storage.url_to_fs(parts_uri, storage_options)
    folder = f"{root}/video_key={video_key}"
    fs.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, count=np.int64(sums.count), sumsq=np.array(str(sums.sumsq)),
             sum_image=sums.sum_image.astype(np.uint32 if sums.count < 2**24 else np.int64))
    fs.pipe_file(f"{folder}/seg-{segment:05d}.npz", buffer.getvalue())


def _parse_sums(blob: bytes) -> PartialSums:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return PartialSums(int(z["count"]), z["sum_image"].astype(np.int64), int(str(z["sumsq"])))


def compute_stats(output: str, storage_options: dict[str, Any]
                  ) -> tuple[NormStats, dict[str, int], dict[str, int]]:
    """Statistics of every video in OUTPUT, and frames and segments per video key: add the
    per-segment sums the decode tasks wrote.

    A distributed reduction whose map side ran inside the decode tasks; the driver reads
    one small file per segment (in threads) and adds them. No frame is read twice.
    """
    fs, root = storage.url_to_fs(storage.join(output, "stats", "parts"), storage_options)
    try:
        paths = sorted(p for p in fs.find(root) if p.endswith(".npz"))
    except FileNotFoundError:
        paths = []
    if not paths:
        raise FileNotFoundError(f"no frames under {output}")
    # Threads fetch (object storage is slow per file); parsing stays on this thread: np.load
    # reads .npy headers with `ast`, which in threads can fail on Python 3.11 (CPython
    # gh-106905, "SystemError: AST constructor recursion depth mismatch", seen here once).
    with ThreadPoolExecutor(max_workers=16) as pool:
        parts = [_parse_sums(blob) for blob in pool.map(fs.cat_file, paths)]
    frames_per_video: dict[str, int] = {}
    segments_per_video: dict[str, int] = {}
    for path, part in zip(paths, parts):
        key = path.rsplit("/", 2)[-2].split("=", 1)[1]
        frames_per_video[key] = frames_per_video.get(key, 0) + part.count
        segments_per_video[key] = segments_per_video.get(key, 0) + 1
    total = functools.reduce(operator.add, parts)
    return NormStats.from_sums(total), frames_per_video, segments_per_video


def write_stats(output: str, stats: NormStats, extra: dict[str, Any], storage_options: dict[str, Any]) -> None:
    fs, path = storage.url_to_fs(storage.join(output, "stats"), storage_options)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/stats.json", "w") as f:
        json.dump({**stats.to_dict(), **extra}, f)
    with fs.open(f"{path}/mean_image.npy", "wb") as f:
        np.save(f, stats.mean_image, allow_pickle=False)


def remove_stats(output: str, storage_options: dict[str, Any]) -> None:
    """No shard is left (a rerun removed them, and their files now fail): statistics of footage
    that is gone must not stand for training to read."""
    fs, path = storage.url_to_fs(storage.join(output, "stats"), storage_options)
    storage.delete(fs, [f"{path}/{name}" for name in ("stats.json", "mean_image.npy")])


def read_stats(output: str, storage_options: dict[str, Any] | None = None) -> NormStats:
    fs, path = storage.url_to_fs(storage.join(output, "stats", "stats.json"), storage_options)
    with fs.open(path, "r") as f:
        return NormStats.from_dict(json.load(f))
