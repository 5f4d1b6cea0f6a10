"""SOURCE (folder, prefix, single file; local or s3://) → the videos in it, with stable ids.

`video_id` is the path relative to SOURCE without extension: it is the join key for labels
and the identity that resume and idempotent reruns are keyed by. A frame-folder clip (a
folder of .tif/.jpg/.png frames, as UCSD distributes its data) is one video whose id is
the folder's relative path. Where two inputs would get the same id (`a.mp4` beside `a.mkv`),
the files keep their extension in it (`a.mp4`, `a.mkv`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vadray import storage
from vadray.exits import UsageError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                    ".3gp", ".flv", ".wmv", ".asf")
# (not .bmp: UCSD's own layout puts .bmp masks in a TestNNN_gt folder beside each clip)
FRAME_EXTENSIONS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")

log = logging.getLogger("vadray.listing")


@dataclass
class VideoRef:
    """One input: a video file, or a folder of frames (`frame_uris` set)."""

    video_id: str
    uri: str
    size: int = 0                 # bytes (sum of frames for a frame folder)
    etag: str = ""                # object-store ETag where there is one
    mtime: str = ""               # modification time as text
    frame_uris: list[str] = field(default_factory=list)   # by frame index; "" where the numbering skips one
    stray: list[str] = field(default_factory=list)        # files in a frame folder that are not its frames
    stem_id: str = ""     # the id it would have alone, where a same-named sibling made it keep its extension
    numbering_problem: str = ""  # where a frame folder's names left a doubt: a frame_numbering row

    @property
    def is_frame_folder(self) -> bool:
        return bool(self.frame_uris)

    def identity(self) -> str:
        """What makes this input 'the same file' for resume: URI, size and ETag/mtime."""
        return f"{self.uri}|{self.size}|{self.etag or self.mtime}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _meta(info: dict[str, Any]) -> tuple[int, str, str]:
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    mtime = info.get("LastModified") or info.get("mtime") or info.get("last_modified") or ""
    return int(info.get("size") or 0), etag, str(mtime)


def _is_metadata(rel: str) -> bool:
    """What file systems write beside media, never media: macOS's AppleDouble `._name` files
    (copies to exFAT or SMB; `._001.png` beside each frame) and a Synology NAS's `@eaDir`
    thumbnail folders. Named like frames, they would be taken for a clip's frames."""
    parts = rel.split("/")
    return parts[-1].startswith("._") or "@eaDir" in parts[:-1]


def _with_linked_folders(fs, root: str, found: dict[str, dict]) -> dict[str, dict]:
    """`found` with the files of symlinked folders below a local SOURCE (an archive that links
    in a disk's day folders): fsspec's find lists such a link as one entry of type 'other' and
    does not go in, so its videos were dropped. A link back into what is listed already (a
    loop, or a second way to the same files, which would give them two ids) is left out, with
    a warning."""
    if storage.is_remote(storage.to_uri(fs, root)):
        return found

    def links(entries: dict[str, dict]) -> list[tuple[str, str]]:
        return [(os.path.realpath(p), p) for p, i in entries.items() if i.get("islink") and i.get("type") == "other"]

    def inside(path: str, folder: str) -> bool:
        return os.path.commonpath([path, folder]) == folder

    listed = [os.path.realpath(root)]
    pending = links(found)
    while pending:
        # the outermost target first, whatever the links are called: a link to a camera's
        # folder lists its days, and a second link to one of them is then a repeat
        pending.sort(key=lambda target_link: (len(target_link[0]), target_link))
        real, link = pending.pop(0)
        if not os.path.isdir(real):
            continue   # a link to a file is listed as the file; a broken one stays an errors row
        del found[link]
        if any(inside(real, seen) or inside(seen, real) for seen in listed):
            log.warning("SOURCE: %s links to %s, which is listed already or holds what is: not followed", link, real)
            continue
        listed.append(real)
        more = fs.find(link, detail=True)
        found.update(more)
        pending += links(more)
    return found


def list_videos(source: str, storage_options: dict[str, Any] | None = None) -> list[VideoRef]:
    """All videos under SOURCE, sorted by id. Raises UsageError when SOURCE is unreachable."""
    try:
        fs, root = storage.url_to_fs(source, storage_options)
        if storage.is_remote(source):   # s3fs keeps listings per instance: a file changed since is not seen
            fs.invalidate_cache()
        if not fs.exists(root):
            raise UsageError(f"SOURCE {source!r} does not exist or is not reachable")
        if fs.isfile(root):
            size, etag, mtime = _meta(fs.info(root))
            name = posixpath.splitext(posixpath.basename(root))[0]
            return [VideoRef(name, storage.to_uri(fs, root), size, etag, mtime)]
        found = _with_linked_folders(fs, root, fs.find(root, detail=True))
    except UsageError:
        raise
    except Exception as exc:  # credentials, endpoint, permissions: say which, never the secrets
        raise UsageError(f"cannot list SOURCE {source!r}: {type(exc).__name__}: {exc}") from None

    root = root.rstrip("/")
    videos: list[VideoRef] = []
    frame_folders: dict[str, list[tuple[str, dict]]] = {}
    ignored: dict[str, int] = {}
    for path, info in found.items():
        if info.get("type") == "directory" or (path.endswith("/") and not info.get("size")):
            continue   # (an object store's folder marker: the empty `prefix/` a console makes)
        rel = path[len(root):].lstrip("/") if path.startswith(root) else posixpath.basename(path)
        ext = _ext(rel)
        if _is_metadata(rel):
            ignored["(file system metadata)"] = ignored.get("(file system metadata)", 0) + 1
        elif ext in VIDEO_EXTENSIONS:
            size, etag, mtime = _meta(info)
            videos.append(VideoRef(rel[: -len(ext)], storage.to_uri(fs, path), size, etag, mtime))
        elif ext in FRAME_EXTENSIONS:
            frame_folders.setdefault(posixpath.dirname(rel), []).append((path, info))
        else:
            ignored[ext or "(none)"] = ignored.get(ext or "(none)", 0) + 1
    if ignored:   # a camera's .dav or .h264 files must not vanish without a word
        log.info("SOURCE %s: %d files are neither videos nor frames and are not read (%s)", source,
                 sum(ignored.values()), ", ".join(f"{e} {n}" for e, n in sorted(ignored.items())))
    for folder, files in frame_folders.items():
        slots, stray, note = _numbered_frames(files)
        present = [item for item in slots if item is not None]
        metas = [_meta(info) for _, info in present]
        folder_uri = storage.to_uri(fs, posixpath.join(root, folder) if folder else root)
        videos.append(VideoRef(
            video_id=folder or posixpath.basename(root),
            uri=folder_uri,
            size=sum(m[0] for m in metas),
            etag=_folder_etag(present, metas),   # any frame re-rendered, added or removed changes it
            mtime=max((m[2] for m in metas), default=""),
            frame_uris=[storage.to_uri(fs, item[0]) if item else "" for item in slots],
            stray=[storage.to_uri(fs, p) for p, _ in stray],
            numbering_problem=note,
        ))
    return sorted(_unique_ids(videos), key=lambda v: v.video_id)


def name_shape(uri: str, extension: bool = True) -> tuple[str, ...]:
    """A file name's text between its numbers (`frame_001_cam2.png` is `frame_ _cam .png`), by
    which a frame folder's frames are told from other files. Without the extension,
    `frame_019_cam2.jpg` and `frame_001_cam2.png` share one (a frame in another format)."""
    name = posixpath.basename(uri)
    return tuple(part.lower() for part in re.split(r"\d+", name if extension else posixpath.splitext(name)[0]))


def _numbered_frames(files: list[tuple[str, Any]]) -> tuple[list[Any], list[Any], str]:
    """A frame folder's files → (its frames by index, the files that are not frames, a note on
    how the frames were ordered where the names left a doubt, else "").

    The frames are the files of the commonest name shape (the text between the numbers:
    `frame_001_cam2.png` is `frame_ _cam .png`); a `thumbnail.png` beside them is stray. The
    frame number is the number that counts up in steps of one (the one with most values, if
    several do). Where it runs on with few gaps, a frame's index is that number minus the
    first one (`001.tif` is frame 0): a missing file leaves a hole (None) that decode reports,
    instead of moving every later frame one index earlier than its labels. Names whose numbers
    do not count (timestamps) keep their name order; so do sequences that restart their
    numbering (two cameras, or a day each) and numbers with many gaps, with a `numbering_problem`
    (a frame_numbering errors row, a failure)."""
    ordered = sorted(files, key=lambda item: _natural_key(posixpath.basename(item[0])))
    shapes: dict[tuple[str, ...], list[tuple[Any, list[int]]]] = {}
    for item in ordered:
        numbers = [int(n) for n in re.findall(r"\d+", posixpath.basename(item[0]))]
        shapes.setdefault(name_shape(item[0]), []).append((item, numbers))
    frames = max(shapes.values(), key=len)   # a tie: the first in name order
    if len(frames) < 2:                      # no common shape: every file is a frame, by name
        return ordered, [], ""
    stray = [item for group in shapes.values() if group is not frames for item, _ in group]
    items = [item for item, _ in frames]
    numbers = np.array([n for _, n in frames], np.int64).reshape(len(frames), -1)
    values = {c: np.unique(numbers[:, c]) for c in range(numbers.shape[1])}
    steps = {c: float(np.median(np.diff(v))) for c, v in values.items() if v.size > 1}   # the varying ones
    counting = [c for c, step in steps.items() if step == 1]
    if not counting:   # timestamps as names; small steps may be a count with every other frame kept
        small = [step for step in steps.values() if step <= 10]
        return items, stray, (f"the frame numbers step by {small[0]:g}, not 1: the frames are taken in name "
                              "order" if small else "")
    count = max(counting, key=lambda c: values[c].size)
    column = numbers[:, count]
    others = [c for c in steps if c != count]
    if others:   # e.g. a date: one sequence if the frame numbers run on across its values
        runs = sorted((column[mask].min(), column[mask].max()) for key in np.unique(numbers[:, others], axis=0)
                      for mask in [(numbers[:, others] == key).all(axis=1)])
        if any(b[0] <= a[1] for a, b in zip(runs, runs[1:])):
            return items, stray, (f"the frame numbers start again {len(runs)} times (two cameras, or one "
                                  "sequence a day?): the frames are taken in name order, one sequence after the other")
    few = max(2, column.size // 10)   # missing files a count may have
    # Numbering starts at 0 or 1: a folder starting a few above 1 lost its first files (holes),
    # one starting far above is a clip cut from a longer sequence (said in the numbering_problem).
    first = 1 if 2 <= column.min() <= 1 + few else int(column.min())
    span = int(column.max()) - first + 1
    if values[count].size == column.size and span <= column.size + few:
        by_number = {int(n): item for n, item in zip(column, items)}
        return [by_number.get(first + k) for k in range(span)], stray, (
            f"the frame numbers start at {first}: that frame is index 0" if first > 1 else "")
    return items, stray, (f"the frame numbers run from {first} to {first + span - 1} over {column.size} files "
                          "(repeated, or too many gaps for a frame count): the frames are taken in name order")


def _folder_etag(files: list[tuple[str, dict]], metas: list[tuple[int, str, str]]) -> str:
    """A frame folder's identity for resume: its frames' names, sizes and ETags/mtimes hashed."""
    digest = hashlib.sha1()
    for (path, _), (size, etag, mtime) in zip(files, metas):
        digest.update(f"{posixpath.basename(path)}|{size}|{etag or mtime}\n".encode())
    return f"frames-{len(files)}-{digest.hexdigest()[:16]}"


CAMERA_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")   # a folder name; 255 bytes is the usual limit


def check_camera(camera: str) -> str:
    """--camera becomes the camera= partition folder and a manifest folder: refuse a name that a
    path could not carry unchanged, instead of rewriting it (filters use the name as typed)."""
    if not CAMERA_NAME.fullmatch(camera or "") or camera in (".", ".."):
        raise UsageError(f"--camera {camera[:120]!r}: use up to 100 ASCII letters, digits, '.', '_' and '-' "
                         "(e.g. lobby-2)")
    if camera == "__HIVE_DEFAULT_PARTITION__":   # hive readers (DuckDB, pyarrow, Spark) read it as NULL
        raise UsageError(f"--camera {camera}: hive readers read this folder name as a missing camera (NULL); "
                         "choose another name")
    return camera


def frame_folder(uri: str, storage_options: dict[str, Any] | None = None) -> VideoRef | None:
    """The frame-folder clip at `uri` (a scored row's source_uri), None when `uri` is not a folder."""
    fs, path = storage.url_to_fs(uri, storage_options)
    if not fs.isdir(path):
        return None
    folder_uri = storage.to_uri(fs, path)
    clips = [v for v in list_videos(uri, storage_options) if v.uri == folder_uri]
    return clips[0] if clips else None


def former_ids(refs: list[VideoRef]) -> dict[str, set[str]]:
    """Ids that files had before a same-named sibling made them keep their extension (`a`,
    now `a.mp4` beside `a.mkv`), each with the URIs of the files that share it; an id that a
    listed input still has (a frame folder `a/`) is not former."""
    ids = {r.video_id for r in refs}
    former: dict[str, set[str]] = {}
    for ref in refs:
        if ref.stem_id and ref.stem_id not in ids:
            former.setdefault(ref.stem_id, set()).add(ref.uri)
    return former


def _unique_ids(videos: list[VideoRef]) -> list[VideoRef]:
    """Inputs whose ids collide (`a.mp4` beside `a.mkv`, or a frame folder `a/` beside `a.mp4`)
    keep their file extension in the id, so that neither overwrites the other's rows."""
    while True:   # again, for an id made that way that another file has (`a.mp4` of `a.mp4.mkv`)
        counts: dict[str, int] = {}
        for v in videos:
            counts[v.video_id] = counts.get(v.video_id, 0) + 1
        clashing = [v for v in videos if counts[v.video_id] > 1 and not v.is_frame_folder and not v.stem_id]
        if not clashing:
            return videos
        for v in clashing:
            v.stem_id = v.video_id
            v.video_id += posixpath.splitext(v.uri)[1]      # the extension as the file spells it
