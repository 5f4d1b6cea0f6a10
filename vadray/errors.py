"""The `errors` table: one row per input (or segment) that could not be processed."""
from __future__ import annotations

import functools
import hashlib
import operator
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from vadray import storage

ERRORS_SCHEMA = pa.schema([
    ("camera", pa.string()),        # --camera of the run (the camera= folder; null in files of older versions)
    ("video_id", pa.string()),      # the input's id (its path relative to SOURCE, no extension unless a
                                    # same-named file beside it needs one to tell them apart)
    ("source_uri", pa.string()),    # the input as given
    ("stage", pa.string()),         # probe | decode | write | score
    ("error_type", pa.string()),    # a short class: corrupt, empty, not_video, too_short, ...
    ("message", pa.string()),       # what went wrong, for a human
    ("model_id", pa.string()),      # score: the model of the run (the model_id= folder); ingest: null
])
# Files live under errors/camera=<camera>/ (ingest) or errors/camera=<camera>/model_id=<id>/ (score),
# hive as the other tables, without those columns: two models scoring one OUTPUT keep their own rows.
PARTITIONING = ds.partitioning(pa.schema([("camera", pa.string()), ("model_id", pa.string())]), flavor="hive")
FILE_SCHEMA = pa.schema([f for f in ERRORS_SCHEMA if f.name not in ("camera", "model_id")])


def errors_folder(errors_uri: str, camera: str, model_id: str | None = None) -> str:
    """Where one camera's (and, for score, one model's) error files go."""
    folder = storage.join(errors_uri, f"camera={camera}")
    return storage.join(folder, f"model_id={model_id}") if model_id else folder


def error_row(video_id: str, source_uri: str, stage: str, error_type: str, message: str) -> dict[str, Any]:
    return {"video_id": video_id, "source_uri": source_uri, "stage": stage,
            "error_type": error_type, "message": message[:2000]}


def safe_key(video_id: str) -> str:
    """A file/partition-safe, readable, collision-free key for a video id. It never starts with
    "." or "_": Arrow's dataset discovery skips such files, so evaluate and report would not
    see the video (`.cam1.mp4`, or `../x.mp4` from an S3 key)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id).strip("._")[:80] or "video"
    return f"{slug}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def write_errors(rows: list[dict[str, Any]], errors_uri: str, camera: str, name: str,
                 storage_options: dict[str, Any] | None = None, model_id: str | None = None) -> str:
    """Write rows to `errors_folder(…)`/name.parquet (deterministic name: a rerun overwrites).
    Two cameras whose archives share file names keep their own rows, and so do two models."""
    fs, path = storage.pyarrow_fs(storage.join(errors_folder(errors_uri, camera, model_id), f"{name}.parquet"),
                                  storage_options)
    storage.make_parent(fs, path, errors_uri)
    pq.write_table(pa.Table.from_pylist(rows, schema=FILE_SCHEMA), path, filesystem=fs)
    return path


def clear_errors(errors_uri: str, camera: str, video_ids: list[str],
                 storage_options: dict[str, Any] | None = None, keys: list[str] = (),
                 model_id: str | None = None, model_only: bool = False) -> None:
    """Remove these videos' error files of this camera, and of this model when given (named
    `<safe_key>-<stage/segment>`; also those an older version wrote with no model_id= or
    camera= folder, unless `model_only`): a rerun's errors table then describes the latest
    attempt only, and another model's rows stay. One listing per folder, one bulk delete."""
    fs, root = storage.url_to_fs(errors_uri, storage_options)
    keys = {safe_key(v) for v in video_ids} | set(keys)   # `keys`: ids known only by their key
    doomed = []
    folders = [] if model_only else [f"{root}/camera={camera}", root]
    if model_id:
        folders.insert(0, f"{root}/camera={camera}/model_id={model_id}")
    for folder in folders:
        doomed += [p for key, paths in files_by_key(fs, folder).items() if key in keys for p in paths]
    if doomed:
        storage.delete(fs, doomed)


def files_by_key(fs, folder: str) -> dict[str, list[str]]:
    """A folder's error files by the video key in their name (`<safe_key>-<stage or segment>`),
    from one fresh listing (not s3fs's cached one); {} where the folder is missing."""
    try:
        names = fs.ls(folder, detail=False, refresh=True)
    except FileNotFoundError:
        return {}
    found: dict[str, list[str]] = {}
    for path in names:
        if path.endswith(".parquet"):
            found.setdefault(path.rsplit("/", 1)[-1].rsplit("-", 1)[0], []).append(path)
    return found


def read_errors(errors_uri: str, storage_options: dict[str, Any] | None = None,
                camera: str | None = None, model_id: str | None = None) -> pa.Table:
    """The errors table (of one camera, and one model's scoring, when given: rows with no
    model_id count for every model, as ingest's and those of older versions have none; rows
    of older versions have camera null too)."""
    fs, path = storage.pyarrow_fs(errors_uri, storage_options)
    try:
        info = fs.get_file_info(path)
        if info.type == pa.fs.FileType.NotFound:
            return ERRORS_SCHEMA.empty_table()
    except FileNotFoundError:
        return ERRORS_SCHEMA.empty_table()
    wanted = [] if camera is None else [ds.field("camera") == camera]
    if model_id is not None:
        wanted.append((ds.field("model_id") == model_id) | ds.field("model_id").is_null())
    # on the partition fields: Arrow skips other cameras' and models' folders instead of reading them
    return ds.dataset(path, filesystem=fs, format="parquet", schema=ERRORS_SCHEMA,
                      partitioning=PARTITIONING).to_table(filter=functools.reduce(operator.and_, wanted, ds.scalar(True)))


# Rows that say how an input was read, with nothing of it in doubt: one or two files beside a
# frame folder's frames whose names are not frame names (a `thumbnail.png`; more, or ones named
# like frames, are `stray_files`, a failure). A row, never silent, but no failure: a clean archive
# with a thumbnail in each clip must not exit 3 on every run. Every `frame_numbering` row is a
# failure: where the numbering starts, or how it was read, may not line up with the labels.
NOTE_TYPES = frozenset({"ignored_files"})


def failed_rows(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in errors if e["error_type"] not in NOTE_TYPES]


def count(n: int, noun: str) -> str:
    """'1 video', '2 videos': summaries are read by people."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass
class JobSummary:
    """What a job did over its inputs: the end-of-run line, the failed inputs, the exit status."""

    videos: int = 0
    videos_failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    ray_start_seconds: float = 0.0   # of `seconds`: starting a local Ray, or joining a cluster
    errors: list[dict[str, Any]] = field(default_factory=list)  # this run's errors rows

    @property
    def failures(self) -> int:
        """Error rows that are failures (not notes)."""
        return len(failed_rows(self.errors))

    @property
    def notes(self) -> int:
        return len(self.errors) - self.failures

    @property
    def fps(self) -> float:
        """Frames over the whole job's time less Ray's start (checks, listing, model load included)."""
        seconds = self.seconds - self.ray_start_seconds
        return self.frames / seconds if seconds > 0 else 0.0

    def timing(self) -> str:
        ray_start = (f" ({self.ray_start_seconds:.1f} s of it starting or joining Ray)"
                     if self.ray_start_seconds >= 0.05 else "")
        return f"{self.seconds:.1f} s{ray_start}, {self.fps:.1f} frames/s"

    def line(self) -> str:
        raise NotImplementedError

    def print_and_exit_status(self) -> int:
        """Print each failed input (and each note) and the summary; 3 when some inputs failed."""
        from vadray.exits import EXIT_OK, EXIT_PARTIAL

        for e in self.errors:
            what = "note" if e["error_type"] in NOTE_TYPES else "failed"
            print(f"  {what}: {e['source_uri']} [{e['stage']}/{e['error_type']}] {e['message']}")
        print(self.line())
        return EXIT_PARTIAL if self.failures else EXIT_OK
