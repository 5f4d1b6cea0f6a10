"""`vadray score --moved-from OLD`: an archive that moved (a new mount point, another bucket)
keeps the scores of the files that are still the same.

A marker's digest covers the file's URI (vadray/manifest.py), so after a move every file looks
like another one that claims a scored id, and score refuses the run. Given where the archive
was, a file at the same path below it with the same size and ETag or mtime is the footage that
was scored: its markers (of every model) and the `source_uri` of its frames and errors rows are
re-pointed at the new place, and the run skips it. A file whose size or ETag/mtime changed on
the way (a copy that did not keep mtimes, an S3 multipart copy) cannot be told from other
footage: its markers are re-pointed but keep their digest, so the run treats it as a file that
changed in place (rescored, its old rows and other models' going first: vadray/manifest.py).
Ids must stay the same: the path below OLD is the path below SOURCE.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vadray import storage
from vadray.errors import errors_folder, files_by_key, safe_key
from vadray.exits import UsageError
from vadray.listing import VideoRef
from vadray.manifest import dates_filed_under, marker_name, marker_names, marker_parts, scores_file
from vadray.score_stages import write_whole


@dataclass
class Moved:
    """What `repoint_moved` did, for the log."""

    kept: int = 0       # files whose scores now point at their new place
    changed: int = 0    # files at their old path whose size or ETag/mtime differ: scored again


def _roots(source: str, moved_from: str, storage_options: dict[str, Any]) -> tuple[str, str]:
    """(SOURCE, OLD) as the URIs the listing gives their files under."""
    roots = []
    for uri in (source, moved_from):
        fs, path = storage.url_to_fs(uri, storage_options)
        roots.append(storage.to_uri(fs, path.rstrip("/") or "/").rstrip("/"))   # "/" → "": the paths' own
    return roots[0], roots[1]


def old_uri(ref: VideoRef, new_root: str, old_root: str) -> str:
    """Where `ref` was before the move: its path below SOURCE, below OLD."""
    if ref.uri == new_root:   # SOURCE is the file itself
        return old_root
    if not ref.uri.startswith(new_root + "/"):
        raise UsageError(f"{ref.uri} is not below SOURCE {new_root!r}")
    return old_root + ref.uri[len(new_root):]


def repoint_moved(output: str, camera: str, refs: list[VideoRef], source: str, moved_from: str,
                  model_id: str, storage_options: dict[str, Any]) -> Moved:
    """Re-point the markers and rows of the files that moved from MOVED_FROM to SOURCE unchanged;
    the markers of files that changed on the way name their new place too (a changed file, not
    another file claiming the id: `check_same_files`). `model_id` is the run's, for the count."""
    fs, root = storage.url_to_fs(output, storage_options)
    folder = f"{root.rstrip('/')}/manifest/camera={camera}"
    by_key: dict[str, list[str]] = {}
    for name in marker_names(fs, folder):
        if parts := marker_parts(name):
            by_key.setdefault(parts[0], []).append(name)
    new_root, old_root = _roots(source, moved_from, storage_options)
    done, work, unsure = Moved(), [], []
    for ref in refs:
        before = old_uri(ref, new_root, old_root)
        if before == ref.uri:
            continue
        old_identity = dataclasses.replace(ref, uri=before).identity()
        kept = False
        for name in by_key.get(safe_key(ref.video_id), []):
            _, model, _ = marker_parts(name)
            complete = name.endswith(".done")
            if name == marker_name(ref.video_id, old_identity, model, complete):
                work.append((ref, before, model, name, complete))
                kept = True
            elif name != marker_name(ref.video_id, ref.identity(), model, complete):
                unsure.append((ref, before, f"{folder}/{name}", model))   # changed on the way, or not from OLD
        done.kept += kept
    errors = _errors_files(output, camera, {model for _, _, model, _, _ in work}, storage_options)
    with ThreadPoolExecutor(max_workers=16) as pool:   # an object store: a few requests a file
        list(pool.map(lambda job: _repoint(output, folder, camera, *job, errors, storage_options), work))
        uris = list(pool.map(lambda item: _marker_uri(fs, item[2]), unsure))
        changed = [(ref, path, model) for (ref, before, path, model), uri in zip(unsure, uris) if uri == before]
        list(pool.map(lambda item: fs.pipe_file(item[1], item[0].uri.encode()), changed))
    done.changed = len({ref.video_id for ref, _, model in changed if model == model_id})
    return done


def _marker_uri(fs, path: str) -> str:
    try:
        return fs.cat_file(path).decode()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _errors_files(output: str, camera: str, models: set[str],
                  storage_options: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(model, video key) → its errors files: one listing per model, not one per file."""
    found: dict[tuple[str, str], list[str]] = {}
    for model in models:
        fs, folder = storage.url_to_fs(errors_folder(storage.join(output, "errors"), camera, model), storage_options)
        found.update({(model, key): paths for key, paths in files_by_key(fs, folder).items()})
    return found


def _repoint(output: str, folder: str, camera: str, ref: VideoRef, before: str, model: str, name: str,
             complete: bool, errors: dict[tuple[str, str], list[str]], storage_options: dict[str, Any]) -> None:
    """One model's scores of one unchanged file: rows first, then the new marker, then the old
    one goes (an interrupted run leaves the old marker, and the next run redoes this)."""
    fs, root = storage.url_to_fs(output, storage_options)
    root, key = root.rstrip("/"), safe_key(ref.video_id)
    paths = [f"{root}/frames/{scores_file(camera, date, key, model)}" for date in dates_filed_under(ref)]
    for path in paths + errors.get((model, key), []):
        try:
            _replace_uri(storage.join(output, path[len(root):]), before, ref.uri, storage_options)
        except FileNotFoundError:   # the rows sit under another of the dates it may be filed under
            continue
    new = marker_name(ref.video_id, ref.identity(), model, complete)
    fs.pipe_file(f"{folder}/{new}", ref.uri.encode())
    if new != name:
        fs.rm_file(f"{folder}/{name}")


def _replace_uri(uri: str, before: str, after: str, storage_options: dict[str, Any]) -> None:
    """A frames or errors file with `before` as its source_uri rewritten to `after`."""
    fs, path = storage.pyarrow_fs(uri, storage_options)
    with fs.open_input_file(path) as handle:   # the file alone: no camera=/date= columns from its path
        table = pq.ParquetFile(handle).read()
    column = table.column("source_uri")
    fixed = pc.if_else(pc.equal(column, before), pa.scalar(after), column)
    write_whole(table.set_column(table.schema.get_field_index("source_uri"), "source_uri", fixed), uri,
                storage_options)
