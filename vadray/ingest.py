"""vadray ingest SOURCE OUTPUT: decode a video archive into Parquet clip shards + statistics.

SOURCE is a folder or prefix (local path, file://, s3://) of videos (`listing.VIDEO_EXTENSIONS`,
recursive), one video file, or folders of still frames (.tif .jpg .png, one folder per
clip, as UCSD distributes its data). Writes, under OUTPUT:
  clips/   Parquet shards, one row per contiguous chunk of grey SIZE×SIZE frames of a video
  stats/   normalisation statistics of the ingested footage (mean image, global std; parts/
           holds the exact integer sums of each segment they are added from)
  errors/  one row per input (or segment) that failed, with the reason
Ray Data does the work in one streaming pipeline of two stages: probe a few inputs per task
(demux only, to learn each video's frame timeline), cut them into segments and pack short
segments into work units of ~1 s of decoding; decode the units in parallel, one segment at a
time, write the shards and each segment's statistics sums.
The driver then adds the small sums: no frame is read twice. Rerunning into the same OUTPUT replaces
the previous result of each input. Exit status: 0 all inputs ok, 3 some failed, 2 bad
arguments or unreachable SOURCE.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from vadray import storage
from vadray.clip_shards import (CHUNK_FRAMES, CLIPS_SCHEMA, SMALL_COLUMNS, clip_table, compute_stats,
                                remove_stats, write_stats, write_sums)
from vadray.errors import JobSummary, clear_errors, count, failed_rows, read_errors, safe_key
from vadray.exits import UsageError
from vadray.listing import VIDEO_EXTENSIONS, VideoRef, check_camera, list_videos
from vadray.preprocess import PartialSums
from vadray.stages import FRAME_FPS_DEFAULT, ProbeAndPlan, add_decode_options, decode_planned

log = logging.getLogger("vadray.ingest")

# A decode task takes consecutive segments (short clips) up to these budgets (`pack_units`):
# ~0.8 s of H.264 decode on one core (measured 0.18-0.2 Gpx/s at 320×240), so Ray's ~0.1-s task
# turnaround stays small, and at most 256 MiB of decoded frames, so a task's memory stays
# bounded like that of one long segment.
UNIT_SOURCE_PIXELS = 150_000_000
UNIT_BYTES = 256 << 20
MAX_INPUTS_PER_PROBE = 32

@dataclass
class IngestSummary(JobSummary):
    segments: int = 0

    def line(self) -> str:
        c = count
        return (f"ingest: {c(self.videos, 'video')} ({self.videos_failed} failed), {c(self.segments, 'segment')}, "
                f"{c(self.frames, 'frame')}, {c(self.failures, 'error row')}, {c(self.notes, 'note')}, "
                + self.timing())


class DecodeUnits:
    """Ray Data stage 2: a unit of segments (`stages.UNIT_SCHEMA`) → clips rows (contiguous
    chunks of grey frames), one segment after another.

    The task also writes each segment's statistics sums beside the shards (`stats/parts/`,
    a few hundred KB, deterministic name so a retry overwrites): statistics then need no
    second pass over the frames, and a rerun that replaces one input replaces its sums too.
    """

    def __init__(self, output: str, size: int, storage_options: dict[str, Any]):
        self.errors_uri = storage.join(output, "errors")
        self.parts_uri = storage.join(output, "stats", "parts")
        self.size, self.storage_options = size, storage_options

    def __call__(self, batch: pa.Table) -> pa.Table:
        tables = [self._segment(seg) for unit in batch.to_pylist() for seg in unit["segments"]]
        return pa.concat_tables(tables) if tables else CLIPS_SCHEMA.empty_table()

    def _segment(self, seg: dict[str, Any]) -> pa.Table:
        decoded = decode_planned(seg, self.size, self.errors_uri, self.storage_options)
        if decoded.frame_index.size:
            write_sums(self.parts_uri, seg["video_key"], seg["segment"], PartialSums.of(decoded.frames),
                       self.storage_options)
        return clip_table(seg, decoded.frame_index, decoded.time_s, decoded.frames, self.size)


def _fits_a_model(size: int) -> bool:
    from vadray.models import check_size, names

    for name in names():
        try:
            check_size(name, size)
            return True
        except ValueError:
            pass
    return False


def _check_same_footage(output: str, size: int, camera: str, storage_options: dict[str, Any]) -> None:
    """One OUTPUT holds shards of one frame size (its statistics add frames pixel by pixel) and
    of one camera (a model is trained per camera, and clips are keyed by video id alone, so a
    second camera's files of the same names would replace the first one's)."""
    fs, path = storage.url_to_fs(storage.join(output, "stats", "stats.json"), storage_options)
    if not fs.exists(path):
        return
    held = json.loads(fs.cat_file(path))
    if int(held["size"]) != size:
        raise UsageError(f"{output!r} holds {held['size']}-px shards; ingest at --size {held['size']}, "
                         "or into another OUTPUT")
    held_cameras = [held["camera"]] if "camera" in held else _clip_cameras(output, storage_options)
    others = [c for c in held_cameras if c != camera]
    if others:
        raise UsageError(f"{output!r} holds the shards of camera {others[0]!r}; a model is trained per "
                         f"camera: ingest camera {camera!r} into another OUTPUT")


def _clip_cameras(output: str, storage_options: dict[str, Any]) -> list[str]:
    """The cameras of the clips (stats.json of versions before it recorded one does not say)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_fs(storage.join(output, "clips"), storage_options)
    try:
        column = pads.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table(columns=["camera"])
    except (FileNotFoundError, pa.ArrowInvalid):
        return []
    return sorted(pc.unique(column["camera"]).to_pylist())


def _clear_previous(output: str, camera: str, refs: list[VideoRef], storage_options: dict[str, Any]) -> None:
    """Idempotent reruns: an input's old shards and error rows go before its new ones arrive.
    So do the shards of this run's very files under another id: a file's id changes when a
    same-named sibling comes or goes (`a` becomes `a.mp4` beside `a.mkv`, and back) or when it
    is ingested from another SOURCE, and the same footage must not be in the shards twice."""
    fs, root = storage.url_to_fs(output, storage_options)
    keys = {safe_key(r.video_id) for r in refs}
    moved = _keys_of_these_files_elsewhere(output, refs, storage_options)
    storage.delete(fs, [f"{root}/{folder}/video_key={key}" for key in keys | set(moved)
                        for folder in ("clips", "stats/parts")], recursive=True)
    if moved:
        log.warning("the shards of %d earlier id(s) were removed (e.g. %s, now %r): their files are ingested "
                    "under new ids (a same-named sibling came or went, or another SOURCE)", len(moved),
                    *next(iter(moved.items())))
    clear_errors(storage.join(output, "errors"), camera, [r.video_id for r in refs], storage_options,
                 keys=list(moved))


def _keys_of_these_files_elsewhere(output: str, refs: list[VideoRef],
                                   storage_options: dict[str, Any]) -> dict[str, str]:
    """video_key → the id its file has now, for shards decoded from one of `refs`' files under
    another key (a shard row holds its source URI; a clip row is a chunk, so this is small)."""
    import pyarrow.dataset as pads

    id_of = {r.uri: r.video_id for r in refs}
    pa_fs, path = storage.pyarrow_fs(storage.join(output, "clips"), storage_options)
    try:
        found = pads.dataset(path, filesystem=pa_fs, format="parquet", partitioning="hive").to_table(
            columns=["video_key", "source_uri"])
    except (FileNotFoundError, pa.ArrowInvalid):
        return {}
    pairs = set(zip(found["video_key"].to_pylist(), found["source_uri"].to_pylist()))
    return {str(key): id_of[uri] for key, uri in sorted(pairs)
            if uri in id_of and str(key) != safe_key(id_of[uri])}


def run_ingest(source: str, output: str, *, camera: str = "default", size: int = 227,
               segment_seconds: float = 60.0, frame_fps: float = FRAME_FPS_DEFAULT,
               storage_options: dict[str, Any] | None = None,
               on_phase: Callable[[str], Any] | None = None) -> IngestSummary:
    """The ingest job as a function (the CLI, jobs/ingest.py and the tests call this).

    `on_phase(name)` is called as each phase ends ("listed", "decoded", "stats_done"): the
    benchmark times them."""
    import ray

    from vadray.raylib import ensure_ray

    started = time.perf_counter()   # the summary's seconds: the whole job, its checks too
    source, output = storage.text(source), storage.text(output)
    check_camera(camera)
    storage_options = storage_options or {}
    storage.require_reachable(storage_options, OUTPUT=output)
    storage.require_folder_to_write(storage_options, must_delete=True, OUTPUT=output)
    if not _fits_a_model(size):   # else the whole archive is ingested before train refuses it
        raise UsageError(f"--size {size} fits none of the models: they need S = 11 + 8k, k >= 2 "
                         "(27, 35, 59, 115, 227, ...)")
    if segment_seconds <= 0 or not frame_fps > 0:
        raise UsageError("--segment-seconds and --frame-fps must be positive")
    _check_same_footage(output, size, camera, storage_options)
    refs = list_videos(source, storage_options)
    if not refs:
        raise UsageError(f"no videos ({' '.join(VIDEO_EXTENSIONS)}) "
                         f"or frame folders found under {source!r}")
    ray_start_seconds = ensure_ray()
    log.info("ingesting %d videos from %s into %s", len(refs), source, output)
    phase = on_phase or (lambda name: None)
    phase("listed")
    _clear_previous(output, camera, refs, storage_options)

    # One streaming pipeline: probing the next videos overlaps decoding the first ones. A probe
    # task takes a few inputs and packs their segments into work units (short clips together,
    # a long video's segments apart); the streaming repartition puts each unit in its own block,
    # so a long video's segments go to as many decode tasks (a block is a task's unit of work).
    # Chunks tile each video and training joins a video's chunks, so no volume is lost at a
    # seam without decoding any overlap here (scoring, which never joins, decodes T more).
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    inputs_per_probe = max(1, min(MAX_INPUTS_PER_PROBE, len(refs) // (2 * cpus)))  # ≥ 2 probe tasks per CPU
    probe_stage = ProbeAndPlan(output, camera, segment_seconds, frame_fps, storage_options, overlap=0,
                               unit_pixels=UNIT_SOURCE_PIXELS, unit_frames=max(1, UNIT_BYTES // (size * size)))
    fs, clips_path = storage.pyarrow_fs(storage.join(output, "clips"), storage_options)
    listing = ray.data.from_items([r.to_dict() for r in refs],
                                  override_num_blocks=min(-(-len(refs) // inputs_per_probe), 512))
    # Ray Data reserves a share of the CPUs for each operator. Here that kept the second core
    # on 30-ms probe tasks, one every 0.1-0.2 s, while a single decode ran: on 2 cores a
    # lone decode at the start and another at the end (measured with 8×600 frames at 720p:
    # 9.9 s, or 8.5 s without the reservation). The probes are tiny, and decode+write is the
    # last operator, so no operator downstream can starve. This setting is on this dataset's
    # own copy of the DataContext, not the global one.
    listing.context.op_resource_reservation_enabled = False
    (listing
     .map_batches(probe_stage.unit_rows, batch_size=inputs_per_probe, batch_format="pyarrow")
     .repartition(target_num_rows_per_block=1)
     .map_batches(DecodeUnits(output, size, storage_options), batch_size=1, batch_format="pyarrow")
     .write_parquet(clips_path, filesystem=fs, partition_cols=["video_key"], compression="zstd",
                    row_group_size=CHUNK_FRAMES // 4, use_dictionary=SMALL_COLUMNS,
                    write_statistics=SMALL_COLUMNS))

    phase("decoded")
    run_ids = {r.video_id for r in refs}
    errors = [e for e in read_errors(storage.join(output, "errors"), storage_options, camera).to_pylist()
              if e["video_id"] in run_ids]
    summary = IngestSummary(videos=len(refs), errors=errors, ray_start_seconds=ray_start_seconds)
    try:
        stats, frames_per_video, segments_per_video = compute_stats(output, storage_options)
    except FileNotFoundError:     # nothing decoded, in this run or before it (or left after it)
        frames_per_video, segments_per_video = {}, {}
        remove_stats(output, storage_options)
    else:
        write_stats(output, stats, {"videos": len(frames_per_video), "source": storage.absolute(source),
                                    "camera": camera},
                    storage_options)
    phase("stats_done")
    run_keys = {safe_key(v) for v in run_ids}
    summary.frames = sum(n for k, n in frames_per_video.items() if k in run_keys)
    summary.segments = sum(n for k, n in segments_per_video.items() if k in run_keys)
    summary.videos_failed = len({e["video_id"] for e in failed_rows(errors)})
    summary.seconds = time.perf_counter() - started
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder, prefix or file: /data/cam3, file:///data, s3://bucket/prefix")
    parser.add_argument("output", help="where clips/, stats/ and errors/ go (local path or s3://)")
    parser.add_argument("--camera", default="default",
                        help="camera name stored with every clip (letters, digits, . _ -)")
    parser.add_argument("--size", type=int, default=227,
                        help="frames are resized to SIZE×SIZE grey (default 227, the paper's; the "
                             "models need 11+8k, k≥2: 27, 35, 59, 115, 227)")
    add_decode_options(parser)
    storage.add_storage_options(parser, "SOURCE and OUTPUT")


def run(args: argparse.Namespace) -> int:
    storage_options = storage.parse_storage_options(args.storage_options)
    summary = run_ingest(args.source, args.output, camera=args.camera, size=args.size,
                         segment_seconds=args.segment_seconds, frame_fps=args.frame_fps,
                         storage_options=storage_options)
    return summary.print_and_exit_status()
