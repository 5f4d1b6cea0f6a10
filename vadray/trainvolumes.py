"""Clip shards → training volumes, through Ray Data, one video per task.

Ingest writes `clips/video_key=<key>/*.parquet`: rows are contiguous chunks (≤ 32 frames)
of one video. Volumes must cross the seams between chunks of a video and never span two
videos, nor a gap where the decoder lost frames. The driver reads only small columns
(video_id, camera, start_frame, num_frames, size, file name) to list the videos and the files of each; a Ray Data task per video then streams that
video's chunks in frame order through `volumes.stream_volumes`. No shuffle, no groupby.

Memory per task: one group of files whose frame ranges overlap ("run"; normally one file,
i.e. one ingest write block), plus ~30 frames of tail carried across file boundaries — never
a whole video, never the whole dataset. Volumes travel as uint8 (V, T, S, S) and are
normalised on the training device (`steps.normalize`), 4× smaller than float32 through
Ray Data. This module does not import torch: the Ray Data tasks that run it stay light.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from vadray import storage
from vadray.exits import UsageError
from vadray.preprocess import NormStats
from vadray.volumes import stream_volumes, volume_starts

CHUNK_COLUMNS = ["video_id", "start_frame", "num_frames", "size", "frames"]


@dataclass
class VideoShards:
    """One video of the clip shards: its frame count and its files, grouped where their frames overlap."""

    video_id: str
    num_frames: int
    file_groups: list[list[str]]   # paths inside the filesystem; a group's files share frame ranges (read together)
    spans: list[int] | None = None  # lengths of its contiguous frame runs (a gap: frames lost at ingest); None: one


@dataclass
class Shards:
    clips_uri: str
    stats: NormStats
    stats_doc: dict                # stats.json as written by ingest (source, videos, ...)
    size: int
    videos: list[VideoShards] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)   # --camera of the ingest runs: a model is per camera


def resolve(shards_uri: str, storage_options: dict | None = None) -> tuple[str, str]:
    """(clips URI, stats.json URI) for an ingest OUTPUT folder or its clips/ folder."""
    fs, path = storage.url_to_fs(shards_uri, storage_options)
    if not fs.exists(path):
        raise UsageError(f"SHARDS {shards_uri} does not exist")
    if fs.exists(path + "/clips"):
        return storage.join(shards_uri, "clips"), storage.join(shards_uri, "stats", "stats.json")
    parent, name = shards_uri.rstrip("/").rsplit("/", 1) if "/" in shards_uri.rstrip("/") else (".", shards_uri)
    if name == "clips" and fs.exists(path.rstrip("/").rsplit("/", 1)[0] + "/stats/stats.json"):
        return shards_uri.rstrip("/"), storage.join(parent, "stats", "stats.json")
    if fs.exists(path + "/frames"):
        raise UsageError(f"SHARDS {shards_uri} is a score OUTPUT (frames/, events/): train reads the OUTPUT of "
                         "`vadray ingest` (clips/ and stats/)")
    if fs.exists(path + "/errors"):
        raise UsageError(f"SHARDS {shards_uri} holds no clips/, only errors/: no input of its ingest decoded "
                         f"(see why with: vadray query {shards_uri} \"SELECT * FROM errors\")")
    raise UsageError(f"SHARDS {shards_uri} is neither an ingest output (with clips/ and stats/) "
                     f"nor a clips/ folder with stats/ beside it: run `vadray ingest` first")


def _file_groups(files: list[tuple[str, int, int]]) -> list[list[str]]:
    """Group a video's (file, first frame, end frame) whose frame ranges overlap, in frame order."""
    groups, group_end = [], None
    for name, first, end in sorted(files, key=lambda f: f[1]):
        if groups and first < group_end:
            groups[-1].append(name)
            group_end = max(group_end, end)
        else:
            groups.append([name])
            group_end = end
    return groups


def discover(shards_uri: str, storage_options: dict | None = None) -> Shards:
    """List the videos of clip shards (small columns only) with the ingest statistics."""
    clips_uri, stats_uri = resolve(shards_uri, storage_options)
    fs, stats_path = storage.url_to_fs(stats_uri, storage_options)
    if not fs.exists(stats_path):
        raise UsageError(f"no normalisation statistics at {stats_uri}: run `vadray ingest` first")
    stats_doc = json.loads(fs.cat_file(stats_path))
    try:
        stats = NormStats.from_dict(stats_doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{stats_uri} cannot be used: {type(exc).__name__}: {exc} (ingest again)") from None
    pa_fs, clips_path = storage.pyarrow_fs(clips_uri, storage_options)
    try:
        dataset = pads.dataset(clips_path, filesystem=pa_fs, format="parquet", partitioning="hive")
        meta = dataset.to_table(columns=["video_id", "camera", "start_frame", "num_frames", "size", "__filename"])
    except (FileNotFoundError, pa.ArrowInvalid) as exc:
        raise UsageError(f"cannot read clip shards at {clips_uri}: {exc}") from None
    if meta.num_rows == 0:
        raise UsageError(f"no clip shards under {clips_uri}: the ingest found no usable video")
    sizes = set(meta["size"].to_pylist())
    if sizes != {stats.size}:
        raise UsageError(f"clip shards have frame sizes {sorted(sizes)} but the statistics are "
                         f"for {stats.size}: ingest again into an empty folder")
    meta = meta.append_column("end", pc.add(meta["start_frame"], meta["num_frames"].cast(pa.int64())))
    per_file = meta.group_by(["video_id", "__filename"]).aggregate(
        [("start_frame", "min"), ("end", "max"), ("num_frames", "sum")])
    files_of, frames_of = defaultdict(list), defaultdict(int)
    for row in per_file.to_pylist():
        files_of[row["video_id"]].append((row["__filename"], row["start_frame_min"], row["end_max"]))
        frames_of[row["video_id"]] += row["num_frames_sum"]
    spans_of = _contiguous_spans(meta)
    videos = [VideoShards(v, frames_of[v], _file_groups(files_of[v]), spans_of[v]) for v in sorted(files_of)]
    cameras = sorted(pc.unique(meta["camera"]).to_pylist())
    return Shards(clips_uri, stats, stats_doc, stats.size, videos, cameras)


def split_by_video(videos: list[VideoShards], val_fraction: float) -> tuple[list[VideoShards], list[VideoShards]]:
    """(train, validation) videos: a deterministic, content-keyed choice of whole videos."""
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return list(videos), []
    if len(videos) < 2:
        raise UsageError(f"validation is split by video and the shards hold {len(videos)} "
                         f"video(s): ingest at least 2, or pass --val-fraction 0")
    by_hash = sorted(videos, key=lambda v: hashlib.sha1(v.video_id.encode()).hexdigest())
    n_val = min(max(1, round(val_fraction * len(videos))), len(videos) - 1)
    val_ids = {v.video_id for v in by_hash[:n_val]}
    return [v for v in videos if v.video_id not in val_ids], [v for v in videos if v.video_id in val_ids]


def _contiguous_spans(meta: pa.Table) -> dict[str, list[int]]:
    """video_id → lengths of its runs of consecutive frames, from the chunks' start and end."""
    meta = meta.sort_by([("video_id", "ascending"), ("start_frame", "ascending")])
    ids = meta["video_id"].to_numpy(zero_copy_only=False)
    start, end = meta["start_frame"].to_numpy(), meta["end"].to_numpy()
    new_run = np.ones(len(ids), bool)
    new_run[1:] = (ids[1:] != ids[:-1]) | (start[1:] != end[:-1])
    firsts = np.flatnonzero(new_run)
    lasts = np.append(firsts[1:], len(ids)) - 1
    spans: dict[str, list[int]] = defaultdict(list)
    for a, b in zip(firsts, lasts):
        spans[str(ids[a])].append(int(end[b] - start[a]))
    return spans


def count_volumes(videos: list[VideoShards], T: int, strides, hop: int) -> int:
    """Volumes an epoch of these videos yields: `stream_volumes` makes none across a gap."""
    return sum(len(volume_starts(n, T, s, hop, cover_end=False))
               for v in videos for n in (v.spans or [v.num_frames]) for s in strides)


def read_chunks(pa_fs, file_groups: list[list[str]], video_id: str):
    """Yield (start_frame, frames uint8 (n, S, S)) of one video in frame order, group by group."""
    for group in file_groups:
        table = pa.concat_tables([pq.read_table(f, filesystem=pa_fs, columns=CHUNK_COLUMNS) for f in group])
        table = table.filter(pc.equal(table["video_id"], video_id))
        table = table.sort_by("start_frame")
        for row in table.select(["start_frame", "num_frames", "size", "frames"]).to_pylist():
            n, s = row["num_frames"], row["size"]
            yield row["start_frame"], np.frombuffer(row["frames"], np.uint8).reshape(n, s, s)


def video_items(videos: list[VideoShards]) -> list[dict]:
    """One Ray Data row per video; `video_index` keeps the rows of volumes numeric."""
    return [{"video_index": i, "video_id": v.video_id, "file_groups": json.dumps(v.file_groups)}
            for i, v in enumerate(videos)]


def expand_to_volumes(batch: dict, clips_uri: str, storage_options: dict | None, T: int,
                      strides: list[int], hop: int):
    """Ray Data UDF: video rows → batches of {"volume" (V, T, S, S) uint8, "video_index",
    "start", "stride"}, one batch per chunk and stride (a generator: bounded memory)."""
    pa_fs, _ = storage.pyarrow_fs(clips_uri, storage_options)
    for video_index, video_id, groups in zip(batch["video_index"], batch["video_id"], batch["file_groups"]):
        chunks = read_chunks(pa_fs, json.loads(groups), str(video_id))
        for stride, starts, volumes in stream_volumes(chunks, T, strides, hop):
            yield {"volume": volumes, "video_index": np.full(len(starts), video_index, np.int64),
                   "start": starts, "stride": np.full(len(starts), stride, np.int64)}


def volume_dataset(shards: Shards, videos: list[VideoShards], T: int, strides, hop: int,
                   storage_options: dict | None = None, num_cpus: float = 1.0, seed: int | None = None):
    """A Ray Dataset of the videos' volumes; re-executed (streamed) at every epoch.

    With a seed, the order of the videos changes at every epoch (reproducibly); the workers'
    local shuffle buffers then mix volumes of the videos whose tasks run at the same time.
    """
    import ray

    items = video_items(videos)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    if seed is not None:  # cheap: only the small video rows are materialised to reorder them
        ds = ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed, reseed_after_execution=True))
    return ds.map_batches(
        expand_to_volumes, batch_size=1, num_cpus=num_cpus,
        fn_kwargs={"clips_uri": shards.clips_uri, "storage_options": storage_options,
                   "T": T, "strides": list(strides), "hop": hop})
