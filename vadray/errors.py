"""The `errors` table: one row per input (or segment) that could not be processed."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vadray import storage

ERRORS_SCHEMA = pa.schema([
    ("video_id", pa.string()),      # the input's id (its path relative to SOURCE, no extension)
    ("source_uri", pa.string()),    # the input as given
    ("stage", pa.string()),         # list | probe | decode | score | ...
    ("error_type", pa.string()),    # a short class: corrupt, empty, not_video, too_short, ...
    ("message", pa.string()),       # what went wrong, for a human
])


def error_row(video_id: str, source_uri: str, stage: str, error_type: str, message: str) -> dict[str, Any]:
    return {"video_id": video_id, "source_uri": source_uri, "stage": stage,
            "error_type": error_type, "message": message[:2000]}


def safe_key(video_id: str) -> str:
    """A file/partition-safe, readable, collision-free key for a video id."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", video_id).strip("_")[:80] or "video"
    return f"{slug}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def write_errors(rows: list[dict[str, Any]], errors_uri: str, name: str,
                 storage_options: dict[str, Any] | None = None) -> str:
    """Write rows to errors_uri/name.parquet (deterministic name: a rerun overwrites)."""
    fs, path = storage.pyarrow_fs(storage.join(errors_uri, f"{name}.parquet"), storage_options)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA), path, filesystem=fs)
    return path


def clear_errors(errors_uri: str, video_ids: list[str], storage_options: dict[str, Any] | None = None) -> None:
    """Remove these videos' error files (named `<safe_key>-<stage/segment>`): a rerun's errors
    table then describes the latest attempt only."""
    fs, root = storage.url_to_fs(errors_uri, storage_options)
    for video_id in video_ids:
        for path in fs.glob(f"{root}/{safe_key(video_id)}-*.parquet"):
            fs.rm(path)


def read_errors(errors_uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    fs, path = storage.pyarrow_fs(errors_uri, storage_options)
    try:
        info = fs.get_file_info(path)
        if info.type == pa.fs.FileType.NotFound:
            return ERRORS_SCHEMA.empty_table()
    except FileNotFoundError:
        return ERRORS_SCHEMA.empty_table()
    return pq.read_table(path, filesystem=fs, schema=ERRORS_SCHEMA)


@dataclass
class JobSummary:
    """What a job did over its inputs: the end-of-run line, the failed inputs, the exit status."""

    videos: int = 0
    videos_failed: int = 0
    frames: int = 0
    seconds: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)  # this run's errors rows

    @property
    def failures(self) -> int:
        return len(self.errors)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        raise NotImplementedError

    def print_and_exit_status(self) -> int:
        """Print each failed input and the summary; 3 when some inputs failed, else 0."""
        from vadray.exits import EXIT_OK, EXIT_PARTIAL

        for e in self.errors:
            print(f"  failed: {e['source_uri']} [{e['stage']}/{e['error_type']}] {e['message']}")
        print(self.line())
        return EXIT_PARTIAL if self.errors else EXIT_OK
