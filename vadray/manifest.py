"""What a rerun of `vadray score` skips, replaces or refuses.

A scored video leaves a marker under OUTPUT/manifest/camera=<camera>/, named by its video
key, the model, and a digest of its content identity (URI, size, ETag or mtime) and of the
frames table's version, ending `.done` when every frame got a score (or every frame that
decodes did, and a rerun would meet the same gaps) and `.partial` when some did not for a
reason that may pass (reading failed); the marker holds the source URI. One listing of a camera's markers
then tells, for every video of a run, whether it is done, whether its file changed, or
whether another file claims its id (refused). Before a video is scored its old rows go, so a
failure never leaves rows of footage that is gone.
"""
from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from vadray import storage
from vadray.errors import clear_errors, safe_key
from vadray.exits import UsageError
from vadray.listing import VideoRef, former_ids

# 2024-05-01, 20240501, 2024/05/01 (a folder per year, month and day), 2024_05_01: one separator;
# 20240501 may run on into HHMM or HHMMSS (recorders' ch01_20240501120000.mp4).
_DATE = re.compile(r"(?<!\d)(20\d{2}|19\d{2})([-/_]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])"
                   r"(?:(?<=\d{8})(?:[01]\d|2[0-3])[0-5]\d(?:[0-5]\d)?)?(?!\d)")


# vadray before 2026-12-01 read dates with this narrower pattern: where its rows may still sit.
_DATE_BEFORE_2026_12 = re.compile(r"(?<!\d)(20\d{2}|19\d{2})-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])(?!\d)")


def dates_filed_under(ref: VideoRef) -> list[str]:
    """Every date= partition a video's rows may sit in, today's first: the older pattern's
    date, and 'unknown'. A rescore removes all of them, so no row stays under an old date."""
    older = _DATE_BEFORE_2026_12.search(ref.video_id)
    return list(dict.fromkeys([video_date(ref), "-".join(older.groups()) if older else "unknown", "unknown"]))


def video_date(ref: VideoRef) -> str:
    """YYYY-MM-DD from the video's path (cam3/2024-05-01/0900, 20240501_0900.mp4,
    cam3/2024/05/01/0900), else 'unknown'."""
    match = _DATE.search(ref.video_id)
    return f"{match.group(1)}-{match.group(3)}-{match.group(4)}" if match else "unknown"


# Bumped when the frames table gains columns: a resumed backfill then rescores the videos an
# older vadray scored, so one output never mixes two schemas (2: motion_error, motion_regularity;
# 3: brightness_gain; 4: combined_regularity and the events' score column).
FRAMES_VERSION = 4


def manifest_marker(camera: str, video_id: str, identity: str, model_id: str, complete: bool = True) -> str:
    """A scored video's marker path under manifest/: keyed by the camera (two cameras' archives
    may hold the same file names), the video's content identity, the model and the frames-table
    version, not by task rank. Only a `.done` marker makes a rerun skip the video; a `.partial`
    one keeps its URI known (a file that changed, or another file with its id)."""
    return f"camera={camera}/{marker_name(video_id, identity, model_id, complete)}"


def marker_name(video_id: str, identity: str, model_id: str, complete: bool = True) -> str:
    """`manifest_marker`'s file name, without the camera= folder."""
    digest = hashlib.sha1(f"{identity}|frames={FRAMES_VERSION}".encode()).hexdigest()[:12]
    return f"{safe_key(video_id)}.{model_id}.{digest}.{'done' if complete else 'partial'}"


def marker_parts(name: str) -> tuple[str, str, str] | None:
    """(key, model_id, digest) of a marker `<key>.<model_id>.<digest>.done|partial` (a path's
    folders stay in its key); None for any other name."""
    parts = name.rsplit(".", 3)
    return (parts[0], parts[1], parts[2]) if len(parts) == 4 else None


def marker_names(fs, folder: str, keys: list[str] | None = None, remote: bool = False) -> list[str]:
    """The names of a camera's markers, from one fresh listing; with `keys`, on an object store
    only those under the keys' common prefix (a month's day folders share '2024-05-')."""
    prefix = os.path.commonprefix(keys) if keys else ""
    fs.invalidate_cache(folder)
    try:
        found = fs.find(folder, prefix=prefix) if prefix and remote else fs.find(folder)
    except FileNotFoundError:
        return []
    return [path[len(folder) + 1:] for path in found]


def digests_of(identity: str) -> set[str]:
    """The marker digests this content has had under every frames-table version (version 1
    hashed the identity alone): another model's marker with none of them scored other footage."""
    return ({hashlib.sha1(identity.encode()).hexdigest()[:12]}
            | {hashlib.sha1(f"{identity}|frames={v}".encode()).hexdigest()[:12] for v in range(2, FRAMES_VERSION + 1)})


def scores_file(camera: str, date: str, video_key: str, model_id: str) -> str:
    """A video's file in frames/ and events/ (one per video and model: reruns overwrite it)."""
    return f"camera={camera}/date={date}/{video_key}.{model_id}.parquet"


def mark_scored(output: str, camera: str, video_id: str, identity: str, model_id: str, uri: str,
                complete: bool, storage_options: dict[str, Any]) -> None:
    """The marker holds the source URI: a later run can tell a changed file from another
    file that maps to the same video id. The video's older markers were removed when the run
    began (`drop_previous`), so nothing is listed here: one write per video at any scale."""
    fs, root = storage.url_to_fs(storage.join(output, "manifest"), storage_options)
    marker = manifest_marker(camera, video_id, identity, model_id, complete)
    storage.make_parent(fs, f"{root}/{marker}", output)
    fs.pipe_file(f"{root}/{marker}", uri.encode())


@dataclass
class Previous:
    """What this camera's markers say about a run's videos, for one model."""

    done_markers: dict[str, str] = field(default_factory=dict)   # finished with this content: the marker
    uris: dict[str, str] = field(default_factory=dict)           # scored before, not done now: its URI
    markers: dict[str, list[str]] = field(default_factory=dict)  # … and those markers' paths
    stale: list[str] = field(default_factory=list)               # older markers beside a current one
    renamed: dict[str, list[str]] = field(default_factory=dict)  # markers of ids a file had before a sibling came
    other_ids: dict[str, list[str]] = field(default_factory=dict)  # this very file scored under other keys
    other_markers: dict[str, list[str]] = field(default_factory=dict)  # … and those keys' markers
    other_models_gone: dict[str, list[str]] = field(default_factory=dict)  # other models' markers of content
    #                                                                        this file no longer has

    @property
    def done(self) -> set[str]:
        return set(self.done_markers)


def previous_scoring(output: str, camera: str, refs: list[VideoRef], model_id: str,
                     storage_options: dict[str, Any]) -> Previous:
    """One listing of the camera's markers, and one concurrent read of the markers of videos
    whose content changed (their URI: '' for markers of versions that left them empty).
    All of them, on an object store too (one request per 1,000): a marker of this very file
    under an old id can have any name (`0900` before `2024-05-01/0900`)."""
    fs, root = storage.url_to_fs(storage.join(output, "manifest", f"camera={camera}"), storage_options)
    root = root.rstrip("/")
    stems = former_ids(refs)
    present = {name: parts for name in marker_names(fs, root) if (parts := marker_parts(name))}
    if not present:
        return Previous()
    # A marker's digest is of the file's identity, its key of the id: this model's markers of
    # this very file under other keys.
    keys_of_file: dict[str, dict[str, list[str]]] = {}   # digest → key → marker names
    for name, (key, model, digest) in present.items():
        if model == model_id:
            keys_of_file.setdefault(digest, {}).setdefault(key, []).append(name)
    by_video: dict[tuple[str, str], list[str]] = {}   # (key, model) → marker names
    other_models: dict[str, list[str]] = {}   # key → other models' markers
    for name, (key, model, _) in present.items():
        by_video.setdefault((key, model), []).append(name)
        if model != model_id:
            other_models.setdefault(key, []).append(name)
    found = Previous()
    for ref in refs:
        marker = marker_name(ref.video_id, ref.identity(), model_id)
        key, _, digest = marker_parts(marker)
        older = by_video.get((key, model_id), [])
        if marker in older:
            found.done_markers[ref.video_id] = f"{root}/{marker}"
            found.stale += [f"{root}/{name}" for name in older if name != marker]
        elif older:
            found.markers[ref.video_id] = [f"{root}/{name}" for name in older]
        own = {safe_key(ref.video_id), ref.stem_id and safe_key(ref.stem_id)}   # a stem: drop_renamed's case
        same = digests_of(ref.identity())   # this content under every frames-table version (an upgrade)
        others: dict[str, list[str]] = {}
        for each in sorted(same):
            for k, names in keys_of_file.get(each, {}).items():
                if k not in own:
                    others.setdefault(k, []).extend(names)
        if others:
            found.other_ids[ref.video_id] = sorted(others)
            found.other_markers.update({k: [f"{root}/{n}" for n in names] for k, names in others.items()})
        theirs = other_models.get(key, [])
        current = {present[name][1] for name in theirs if present[name][2] in same}
        gone = [name for name in theirs if present[name][1] not in current]   # their rows are of this content
        if gone:
            found.other_models_gone[ref.video_id] = [f"{root}/{name}" for name in gone]
    for stem in stems:
        older = by_video.get((safe_key(stem), model_id), [])
        if older:
            found.renamed[stem] = [f"{root}/{name}" for name in older]
    if not found.markers and not found.other_models_gone:
        return found

    def uri_in(path: str) -> str:
        try:
            return fs.cat_file(path).decode()
        except (FileNotFoundError, UnicodeDecodeError):
            return ""

    with ThreadPoolExecutor(max_workers=16) as pool:   # cat_file: paths are not glob patterns here
        found.uris = dict(zip(found.markers, pool.map(uri_in, [paths[0] for paths in found.markers.values()])))
        # Another model's rows are of footage that is gone only where its marker names this very
        # file; one naming another file is that file's rows under a shared id (`check_same_files`).
        uri_of = {ref.video_id: ref.uri for ref in refs}
        gone = [(video_id, path) for video_id, paths in found.other_models_gone.items() for path in paths]
        found.other_models_gone = {}
        for (video_id, path), uri in zip(gone, pool.map(uri_in, [path for _, path in gone])):
            if uri in ("", uri_of[video_id]):   # '': a marker of a version that left it empty, as above
                found.other_models_gone.setdefault(video_id, []).append(path)
    return found


def scored_under_other_cameras(output: str, camera: str, refs: list[VideoRef], model_id: str,
                               storage_options: dict[str, Any]) -> dict[str, int]:
    """{camera: how many of these files this model scored there}: a run whose camera has no
    markers yet may be one whose --camera changed (a rename, a typo fixed), which scores the
    whole archive again beside its old rows."""
    fs, root = storage.url_to_fs(storage.join(output, "manifest"), storage_options)
    root = root.rstrip("/")
    try:
        folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return {}
    ours = set().union(*(digests_of(r.identity()) for r in refs))   # every frames-table version's
    found: dict[str, int] = {}
    for folder in folders:
        if not folder.startswith("camera=") or folder == f"camera={camera}":
            continue
        parts = [marker_parts(name) for name in marker_names(fs, f"{root}/{folder}")]
        hits = sum(1 for p in parts if p and p[1] == model_id and p[2] in ours)
        if hits:
            found[folder[len("camera="):]] = hits
    return found


def check_same_files(camera: str, refs: list[VideoRef], previous: dict[str, str]) -> None:
    """Two different files that map to one video id (day folders scored one SOURCE at a time:
    2024-05-01/0900.mp4 and 2024-05-02/0900.mp4 are both '0900') would replace each other's rows."""
    listed = {r.uri for r in refs}   # a file that held the id and is in this run under its own new id: no clash
    clashes = [(r, previous[r.video_id]) for r in refs if previous.get(r.video_id) not in (None, "", r.uri)
               and previous[r.video_id] not in listed]
    if clashes:
        ref, uri = clashes[0]
        raise UsageError(
            f"{len(clashes)} video id(s) of camera {camera!r} were scored from other files: {ref.video_id!r} "
            f"from {uri}, now {ref.uri}. A video is (camera, path relative to SOURCE): score from a SOURCE "
            "above the folders that tell such files apart (e.g. the one holding the date folders), or into "
            "another OUTPUT or --camera; --force replaces the old rows. Where the archive itself moved (a new "
            "mount point or bucket makes every file another one), pass --moved-from OLD_SOURCE: unchanged "
            "files keep their scores")


def drop_previous(output: str, camera: str, refs: list[VideoRef], model_id: str, previous: Previous,
                  storage_options: dict[str, Any]) -> None:
    """Rows and markers of the videos about to be scored go first: if the new content fails
    (a file that changed, or a partial one that now fails earlier), the tables must not keep
    scores of footage that is gone. One bulk delete (an object store ignores keys that are not
    there)."""
    fs, root = storage.url_to_fs(output, storage_options)
    paths = list(previous.stale)
    for ref in refs:
        for date in dates_filed_under(ref):
            name = scores_file(camera, date, safe_key(ref.video_id), model_id)
            paths += [f"{root}/frames/{name}", f"{root}/events/{name}"]
        paths += previous.markers.get(ref.video_id, [])
        if ref.video_id in previous.done_markers:   # --force: a rescore that fails must not stay "done"
            paths.append(previous.done_markers[ref.video_id])
    storage.delete(fs, paths)


def drop_renamed(output: str, camera: str, refs: list[VideoRef], model_id: str, previous: Previous,
                 storage_options: dict[str, Any]) -> list[str]:
    """Ids this model scored that are now another id of the same file: a new `a.mkv` beside
    `a.mp4` makes both keep their extension (`listing._unique_ids`), so the rows of `a` (from
    a.mp4) would stay beside `a.mp4`'s, the same footage twice. Their rows and markers go, but
    only where the marker names one of those files (an `a` scored from another folder stays);
    the ids are returned for the log."""
    if not previous.renamed:
        return []
    fs, _ = storage.url_to_fs(output, storage_options)
    siblings_of, dropped = former_ids(refs), {}
    for stem, paths in previous.renamed.items():
        siblings = siblings_of[stem]
        for path in paths:   # (an older marker may hold no URI)
            try:
                if fs.cat_file(path).decode() in siblings:
                    dropped[stem] = paths
                    break
            except (FileNotFoundError, UnicodeDecodeError):
                continue
    drop_previous(output, camera, [VideoRef(stem, "") for stem in dropped], model_id, Previous(markers=dropped),
                  storage_options)
    return sorted(dropped)


def drop_other_models_gone(output: str, camera: str, refs: list[VideoRef], previous: Previous,
                           storage_options: dict[str, Any]) -> tuple[list[str], int]:
    """Rows, markers and errors rows that other models left of a file's former content: the file changed
    since they scored it, and those rows would stand beside this run's as scores of footage
    that is gone. The model ids and the number of files are returned for the log (those
    models can rescore them)."""
    affected = [ref for ref in refs if ref.video_id in previous.other_models_gone]
    if not affected:
        return [], 0
    fs, root = storage.url_to_fs(output, storage_options)
    # Another model may be rescoring such a file in a run of its own beside this one: listed
    # again just before deleting. Where its old marker went (its run's `drop_previous` takes it
    # before any new row is written) or a marker of this content came, the rows are its new ones.
    folder = previous.other_models_gone[affected[0].video_id][0].rsplit("/", 1)[0]
    names = set(marker_names(fs, folder, [safe_key(r.video_id) for r in affected], storage.is_remote(output)))
    now = {parts for name in names if (parts := marker_parts(name))}
    paths, models, files, errors_of = [], set(), set(), {}
    for ref in affected:
        key, same = safe_key(ref.video_id), digests_of(ref.identity())
        for marker in previous.other_models_gone[ref.video_id]:
            model = marker_parts(marker)[1]
            if marker.rsplit("/", 1)[1] not in names or any((key, model, digest) in now for digest in same):
                continue
            models.add(model)
            files.add(ref.video_id)
            errors_of.setdefault(model, []).append(ref.video_id)
            for date in dates_filed_under(ref):
                name = scores_file(camera, date, safe_key(ref.video_id), model)
                paths += [f"{root}/frames/{name}", f"{root}/events/{name}"]
            paths.append(marker)
    storage.delete(fs, paths)
    for model, video_ids in errors_of.items():   # and their errors rows of that content
        clear_errors(storage.join(output, "errors"), camera, video_ids, storage_options, model_id=model,
                     model_only=True)
    return sorted(models), len(files)


def drop_other_ids(output: str, camera: str, model_id: str, previous: Previous,
                   storage_options: dict[str, Any]) -> list[str]:
    """Rows, markers and errors of keys under which this model scored the very files of this
    run before (their ids changed: scored from another SOURCE, or a same-named sibling went;
    one that came is `drop_renamed`'s case): the same footage would otherwise stand
    twice. The keys are returned for the log.
    Their ids are unknown, so their rows are found by name in every date= folder (one listing
    per table, made only when such a file turns up: a glob per key lists the whole table on S3)."""
    keys = sorted({key for found in previous.other_ids.values() for key in found})
    if not keys:
        return []
    fs, root = storage.url_to_fs(output, storage_options)
    files = {f"{key}.{model_id}.parquet" for key in keys}
    paths = [marker for key in keys for marker in previous.other_markers.get(key, [])]
    for table in ("frames", "events"):
        fs.invalidate_cache(f"{root}/{table}/camera={camera}")   # a long-lived process: not an old listing
        paths += [path for path in fs.glob(f"{root}/{table}/camera={camera}/date=*/*.{model_id}.parquet")
                  if path.rsplit("/", 1)[1] in files]
    storage.delete(fs, paths)   # (drop_previous may have taken some already)
    clear_errors(storage.join(output, "errors"), camera, [], storage_options, keys=keys, model_id=model_id)
    return keys


def settings_of_done(output: str, camera: str, refs: list[VideoRef], model_id: str,
                     storage_options: dict[str, Any], sample: int = 16) -> set[str]:
    """The `run_id`s (model and scoring settings) of a sample of the videos a rerun skips: a
    rerun with other settings would otherwise leave one table in two settings without a word.
    At most `sample` files are read, one row each, so a year's backfill does not read a year."""
    import pyarrow.parquet as pq

    fs, root = storage.url_to_fs(output, storage_options)

    def run_id(ref: VideoRef) -> str | None:
        for date in dates_filed_under(ref):   # an older vadray's rows may sit under another date
            path = f"{root}/frames/{scores_file(camera, date, safe_key(ref.video_id), model_id)}"
            try:
                with fs.open(path, "rb") as handle:
                    ids = pq.ParquetFile(handle).read_row_group(0, columns=["run_id"]).column("run_id")
                return ids[0].as_py() if len(ids) else None
            except FileNotFoundError:
                continue
            except (OSError, ValueError, IndexError):   # unreadable: nothing to compare
                return None
        return None

    picked = refs[:: max(1, len(refs) // sample)][:sample]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return {found for found in pool.map(run_id, picked) if found}
