"""vadray ingest SOURCE OUTPUT: decode a video archive into Parquet clip shards + statistics.

SOURCE is a folder or prefix (local path, file://, s3://) of videos (.mp4 .avi .mkv .mov .webm
.m4v .ts, recursive), one video file, or folders of still frames (.tif .jpg .png, one folder
per clip, as UCSD distributes its data). Writes, under OUTPUT:
  clips/   Parquet shards, one row per contiguous chunk of grey SIZE×SIZE frames of a video
  stats/   normalisation statistics of the ingested footage (mean image, global std)
  errors/  one row per input (or segment) that failed, with the reason
Ray Data does the work in two stages: probe every input in parallel (demux only, to learn
each video's frame timeline) and cut it into segments; then decode the segments in parallel,
each task holding one segment, and write the shards. Rerunning into the same OUTPUT replaces
the previous result of each input. Exit status: 0 all inputs ok, 3 some failed, 2 bad
arguments or unreachable SOURCE.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from vadray import storage
from vadray.decode import contiguous_runs
from vadray.errors import JobSummary, clear_errors, read_errors, safe_key
from vadray.exits import UsageError
from vadray.listing import VideoRef, list_videos
from vadray.preprocess import NormStats, PartialSums
from vadray.stages import ProbeAndPlan, decode_planned

log = logging.getLogger("vadray.ingest")

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


@dataclass
class IngestSummary(JobSummary):
    segments: int = 0

    def line(self) -> str:
        return (f"ingest: {self.videos} videos ({self.videos_failed} failed), {self.segments} segments, "
                f"{self.frames} frames, {self.failures} error rows, {self.seconds:.1f} s, "
                f"{self.fps:.1f} frames/s")


class DecodeSegment:
    """Ray Data stage 2: one segment → clips rows (contiguous chunks of grey frames)."""

    def __init__(self, output: str, size: int, storage_options: dict[str, Any]):
        self.errors_uri = storage.join(output, "errors")
        self.size, self.storage_options = size, storage_options

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self._segment(row) for row in batch.to_pylist()]
        return pa.concat_tables(tables) if tables else CLIPS_SCHEMA.empty_table()

    def _segment(self, seg: dict[str, Any]) -> pa.Table:
        decoded = decode_planned(seg, self.size, self.errors_uri, self.storage_options)
        rows = []
        for a, b in contiguous_runs(decoded.frame_index):
            for c in range(a, b, CHUNK_FRAMES):
                d = min(c + CHUNK_FRAMES, b)
                rows.append({
                    "video_id": seg["video_id"], "camera": seg["camera"], "source_uri": seg["uri"],
                    "start_frame": int(decoded.frame_index[c]), "num_frames": d - c,
                    "time_s": decoded.time_s[c:d].tolist(), "fps": seg["fps"],
                    "width": seg["width"], "height": seg["height"], "size": self.size,
                    "frames": decoded.frames[c:d].tobytes(), "video_key": seg["video_key"],
                })
        return pa.Table.from_pylist(rows, schema=CLIPS_SCHEMA)


def _partial_sums(batch: pa.Table) -> dict[str, np.ndarray]:
    """Stats stage: a block of clips rows → one row of additive sums (no frames leave the task)."""
    size = int(batch.column("size")[0].as_py())
    total = PartialSums(0, np.zeros((size, size)), np.zeros((size, size)))
    counts: dict[str, int] = {}
    for blob, n, key in zip(batch.column("frames").to_pylist(), batch.column("num_frames").to_pylist(),
                            batch.column("video_key").to_pylist()):
        total = total + PartialSums.of(np.frombuffer(blob, np.uint8).reshape(n, size, size))
        counts[key] = counts.get(key, 0) + n
    return {"count": np.array([total.count]), "size": np.array([size]),
            "sum_image": np.array([total.sum_image.tobytes()], dtype=object),
            "sumsq_image": np.array([total.sumsq_image.tobytes()], dtype=object),
            "frames_per_video": np.array([json.dumps(counts)], dtype=object)}


def compute_stats(clips_uri: str, storage_options: dict[str, Any]) -> tuple[NormStats, dict[str, int]]:
    """Distributed reduction over all clips in clips_uri: tasks sum, the driver adds the sums."""
    import ray

    fs, path = storage.pyarrow_fs(clips_uri, storage_options)
    ds = ray.data.read_parquet(path, filesystem=fs, columns=["frames", "num_frames", "size", "video_key"])
    total: PartialSums | None = None
    frames_per_video: dict[str, int] = {}
    for row in ds.map_batches(_partial_sums, batch_size=None, batch_format="pyarrow").iter_rows():
        size = int(row["size"])
        part = PartialSums(int(row["count"]), np.frombuffer(row["sum_image"]).reshape(size, size),
                           np.frombuffer(row["sumsq_image"]).reshape(size, size))
        total = part if total is None else total + part
        for key, n in json.loads(row["frames_per_video"]).items():
            frames_per_video[key] = frames_per_video.get(key, 0) + n
    if total is None:
        raise ValueError(f"no frames under {clips_uri}")
    return NormStats.from_sums(total), frames_per_video


def write_stats(output: str, stats: NormStats, extra: dict[str, Any], storage_options: dict[str, Any]) -> None:
    fs, path = storage.url_to_fs(storage.join(output, "stats"), storage_options)
    fs.makedirs(path, exist_ok=True)
    with fs.open(f"{path}/stats.json", "w") as f:
        json.dump({**stats.to_dict(), **extra}, f)
    with fs.open(f"{path}/mean_image.npy", "wb") as f:
        np.save(f, stats.mean_image, allow_pickle=False)


def read_stats(output: str, storage_options: dict[str, Any] | None = None) -> NormStats:
    fs, path = storage.url_to_fs(storage.join(output, "stats", "stats.json"), storage_options)
    with fs.open(path, "r") as f:
        return NormStats.from_dict(json.load(f))


def _clear_previous(output: str, refs: list[VideoRef], storage_options: dict[str, Any]) -> None:
    """Idempotent reruns: an input's old shards and error rows go before its new ones arrive."""
    fs, root = storage.url_to_fs(output, storage_options)
    for ref in refs:
        shards = f"{root}/clips/video_key={safe_key(ref.video_id)}"
        if fs.exists(shards):
            fs.rm(shards, recursive=True)
    clear_errors(storage.join(output, "errors"), [r.video_id for r in refs], storage_options)


def run_ingest(source: str, output: str, *, camera: str = "default", size: int = 227,
               segment_seconds: float = 60.0, frame_fps: float = 10.0,
               storage_options: dict[str, Any] | None = None) -> IngestSummary:
    """The ingest job as a function (the CLI, jobs/ingest.py and the tests call this)."""
    import ray

    from vadray.raylib import ensure_ray

    storage_options = storage_options or {}
    if size < 8:
        raise UsageError("--size must be at least 8 pixels")
    if segment_seconds <= 0:
        raise UsageError("--segment-seconds must be positive")
    started = time.perf_counter()
    refs = list_videos(source, storage_options)
    if not refs:
        raise UsageError(f"no videos ({', '.join(('mp4', 'avi', 'mkv', 'mov', 'webm', 'm4v', 'ts'))}) "
                         f"or frame folders found under {source!r}")
    ensure_ray()
    log.info("ingesting %d videos from %s into %s", len(refs), source, output)
    _clear_previous(output, refs, storage_options)

    # Chunks tile each video and training joins a video's chunks, so no volume is lost at a
    # seam without decoding any overlap here (scoring, which never joins, decodes T-1 more).
    probe_stage = ProbeAndPlan(output, camera, segment_seconds, frame_fps, storage_options, overlap=0)
    segments = (ray.data.from_items([r.to_dict() for r in refs], override_num_blocks=min(len(refs), 512))
                .flat_map(probe_stage).take_all())
    log.info("decoding %d segments", len(segments))
    clips_uri = storage.join(output, "clips")
    if segments:
        fs, clips_path = storage.pyarrow_fs(clips_uri, storage_options)
        (ray.data.from_items(segments, override_num_blocks=len(segments))
         .map_batches(DecodeSegment(output, size, storage_options), batch_size=1, batch_format="pyarrow")
         .write_parquet(clips_path, filesystem=fs, partition_cols=["video_key"], compression="zstd",
                        row_group_size=CHUNK_FRAMES // 4))

    run_ids = {r.video_id for r in refs}
    errors = [e for e in read_errors(storage.join(output, "errors"), storage_options).to_pylist()
              if e["video_id"] in run_ids]
    summary = IngestSummary(videos=len(refs), segments=len(segments), errors=errors)
    try:
        stats, frames_per_video = compute_stats(clips_uri, storage_options)
    except (ValueError, FileNotFoundError):
        frames_per_video = {}
    else:
        write_stats(output, stats, {"videos": len(frames_per_video), "source": source}, storage_options)
    summary.frames = sum(frames_per_video.get(safe_key(v), 0) for v in run_ids)
    summary.videos_failed = len({e["video_id"] for e in errors})
    summary.seconds = time.perf_counter() - started
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder, prefix or file: /data/cam3, file:///data, s3://bucket/prefix")
    parser.add_argument("output", help="where clips/, stats/ and errors/ go (local path or s3://)")
    parser.add_argument("--camera", default="default", help="camera name stored with every clip")
    parser.add_argument("--size", type=int, default=227,
                        help="frames are resized to SIZE×SIZE grey (default 227, the paper's; the "
                             "models need 11+8k, k≥2: 27, 35, 59, 115, 227)")
    parser.add_argument("--segment-seconds", type=float, default=60.0,
                        help="a long video is decoded by many tasks, one per segment of this many "
                             "seconds (default 60); a task holds at most one segment in memory")
    parser.add_argument("--frame-fps", type=float, default=10.0,
                        help="frame rate assumed for folders of still frames (default 10, UCSD's)")
    parser.add_argument("--storage-options", default=None,
                        help="JSON dict for fsspec/s3fs, e.g. '{\"endpoint_url\": \"http://minio:9000\"}'; "
                             "credentials also come from the standard AWS_* environment variables")


def run(args: argparse.Namespace) -> int:
    storage_options = storage.parse_storage_options(args.storage_options)
    summary = run_ingest(args.source, args.output, camera=args.camera, size=args.size,
                         segment_seconds=args.segment_seconds, frame_fps=args.frame_fps,
                         storage_options=storage_options)
    return summary.print_and_exit_status()
