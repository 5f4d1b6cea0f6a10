"""Filesystems for every stage: local paths, file:// and s3:// (s3fs) behind one helper.

Credentials and the endpoint come from the standard AWS environment variables or from
`storage_options` (--storage-options: a JSON dict, or @FILE for one that holds credentials).
They travel to Ray tasks inside `storage_options` and are never printed or logged (tests/test_ingest.py checks the error paths).
"""
from __future__ import annotations

import json
import os
from typing import Any

import fsspec
import pyarrow.fs as pafs


# Option names that carry credentials (s3fs's own and botocore's, at any depth).
SECRET_OPTIONS = {"key", "secret", "token", "password", "session_token", "aws_access_key_id",
                  "aws_secret_access_key", "aws_session_token",
                  "ssecustomerkey"}   # (SSECustomerKey in s3_additional_kwargs: an encryption key)


def _secret_names(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {k for k in value if str(k).lower() in SECRET_OPTIONS} | set().union(*map(_secret_names, value.values()))
    return set()


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """`--storage-options` JSON, or @FILE holding it → dict; a UsageError (exit status 2) for
    bad JSON, and for credentials written on the command line: a command line is visible in
    `ps` and stored in Ray's job records (`ray job list`, the job's log), which vadray cannot
    keep secret. A file, or the AWS_* environment variables, keep them off it."""
    from vadray.exits import UsageError

    if not text:
        return {}
    where = "--storage-options"
    if text.startswith("@"):
        where = f"--storage-options file {text[1:]!r}"
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise UsageError(f"cannot read {where}: {exc.strerror}") from None
        except UnicodeDecodeError:   # PowerShell's `>` writes UTF-16
            raise UsageError(f"{where} is not UTF-8 text: save the JSON as UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a JSON object, e.g. '{{\"anon\": false}}'")
    secrets = _secret_names(value)
    if secrets and where == "--storage-options":
        raise UsageError(f"--storage-options holds credentials ({', '.join(sorted(secrets))}) on the command line, "
                         "where `ps` and Ray's job records show them: put the JSON in a file and pass "
                         "--storage-options @FILE, or use the AWS_* environment variables")
    return value


def add_storage_options(parser, applies_to: str) -> None:
    """The one `--storage-options` of every command."""
    parser.add_argument("--storage-options", default=None,
                        help=f"JSON object of fsspec/s3fs options for {applies_to}, e.g. "
                             "'{\"endpoint_url\": \"http://minio:9000\"}', or @FILE holding it. Credentials "
                             "(key, secret, token) only from a file or the standard AWS_* environment variables: "
                             "a command line is visible in ps and in Ray's job records. Secrets are never printed")


def _s3_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """Honour AWS_ENDPOINT_URL(_S3) for S3-compatible stores, whatever the botocore version."""
    options = dict(options)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in options and "endpoint_url" not in options.get("client_kwargs", {}):
        options["endpoint_url"] = endpoint
    return options


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def absolute(uri: str) -> str:
    """A local path or file:// URI as an absolute path, a remote URI as it is: what run.json,
    stats.json and model cards record must not depend on the folder a command ran in."""
    return uri if is_remote(uri) else os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def text(path: str | os.PathLike | None) -> str | None:
    """A location as the text every stage works with: Python callers pass `pathlib.Path`s."""
    return os.fspath(path) if isinstance(path, os.PathLike) else path


def url_to_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a local path, file:// or s3:// URI."""
    options = dict(storage_options or {})
    if uri.startswith(("s3://", "s3a://")):
        options = _s3_defaults(options)
    fs, path = fsspec.core.url_to_fs(uri, **options)   # s3fs strips the scheme: bucket/key
    return fs, path.rstrip("/") if path not in ("/", "") else path


# Roles whose paths vadray lists, globs and deletes under: fsspec (s3fs's bulk rm, glob) and
# DuckDB read `*`, `?` and `[` as patterns, so `out[12]` would reach `out1` and `out2`. (`]`
# alone is no pattern.)
PATTERN_ROLES = ("OUTPUT", "DIR", "CHECKPOINT", "CHECKPOINT_DIR", "SHARDS")


def _refuse_patterns(role: str, uri: str) -> None:
    from vadray.exits import UsageError

    # The absolute path: a relative `out` inside a folder `w[12]` is `/…/w[12]/out` to fsspec.
    seen = uri if is_remote(uri) else absolute(os.path.expanduser(uri))   # fsspec expands `~` too
    if role in PATTERN_ROLES and any(c in seen for c in "*?["):
        raise UsageError(f"{role} {uri!r} is or lies in a path holding * ? or [: file systems and object stores "
                         "read them as patterns (out[12] would be out1 and out2), so vadray refuses them; rename "
                         "the folder")


def _given(storage_options: Any, locations: dict[str, str | None]) -> list[tuple[str, str]]:
    """The (role, uri) pairs given, once the options are a dict and no uri is a glob pattern."""
    from vadray.exits import UsageError

    if storage_options is not None and not isinstance(storage_options, dict):
        raise UsageError(f"storage_options must be a dict, got {type(storage_options).__name__} (the "
                         "command line's @FILE form is read by the CLI: json.load the file)")
    given = [(role, uri) for role, uri in locations.items() if uri]
    for role, uri in given:
        _refuse_patterns(role, uri)
    return given


def require_reachable(storage_options: dict[str, Any] | None, **locations: str | None) -> None:
    """Exit status 2 before any work when a location cannot be reached at all (endpoint down,
    no credentials, access denied); `require_reachable(opts, OUTPUT=out, CHECKPOINT=ckpt)`.
    Whether it exists is each job's own question."""
    from vadray.exits import UsageError

    for role, uri in _given(storage_options, locations):
        try:
            fs, path = url_to_fs(uri, storage_options)
            fs.info(path)     # not exists(): s3fs's answers False for a bare bucket it cannot reach
        except (FileNotFoundError, NotADirectoryError):   # absent: each job's own question
            pass
        except Exception as exc:  # noqa: BLE001 — botocore, aiohttp, OS errors alike; no secret is in them
            hint = ("" if not isinstance(exc, PermissionError) else
                    " (the credentials were refused, or may not read there: check AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY, or the key and secret given in --storage-options)")
            raise UsageError(f"cannot reach {role} {uri!r}: {type(exc).__name__}: {exc}{hint}") from None


def _require_local_folder(role: str, uri: str, path: str) -> None:
    """UsageError unless a folder at `path` exists or could be made: the nearest existing path
    at or above it must be a writable folder."""
    from vadray.exits import UsageError

    above = path
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UsageError(f"{role} {uri!r} cannot be written: {above!r} is a file")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UsageError(f"{role} {uri!r} cannot be written: no permission to write in {above!r}")


def _require_remote_write(role: str, uri: str, storage_options: dict[str, Any] | None,
                          folder: str | None = None, must_delete: bool = False) -> None:
    """Write and delete a small object under `uri` (or `folder`, where `uri` is a file): credentials
    that may read but not write (a read-only role) are found before any work, not as a
    traceback half-way; with `must_delete`, so are those that may write but not delete."""
    import uuid

    from vadray.exits import JobFailed, UsageError

    fs, path = url_to_fs(folder or uri, storage_options)
    probe = f"{path.rstrip('/')}/.vadray-write-check-{uuid.uuid4().hex[:12]}"
    try:
        fs.pipe_file(probe, b"")
    except Exception as exc:  # noqa: BLE001 — botocore, aiohttp, OS errors alike; no secret is in them
        raise UsageError(f"cannot write to {role} {uri!r}: {type(exc).__name__}: {exc}") from None
    try:
        delete(fs, probe)
        return
    except JobFailed:   # the probe stayed
        stayed = True
    except Exception:  # noqa: BLE001 — refused outright (another store's rm, S3's whole request): still there?
        try:
            stayed = fs.exists(probe)
        except Exception:  # noqa: BLE001 — may not look (no s3:GetObject): the job's own deletes check
            stayed = False
    if stayed and must_delete:
        left = probe.rsplit("/", 1)[-1]
        raise UsageError(f"cannot delete in {role} {uri!r}: the credentials may write but not delete "
                         "objects (a policy denies s3:DeleteObject), and this job replaces its results by "
                         "deleting the old ones (reruns; training keeps one checkpoint). "
                         f"The check left {left!r} there") from None


def require_folder_to_write(storage_options: dict[str, Any] | None = None, must_delete: bool = False,
                            **locations: str | None) -> None:
    """Exit status 2 before any work when an output cannot be written: a local one that is a
    file, or whose nearest existing folder is a file or not writable; an object store prefix
    where a test object cannot be written, or, for a job that replaces its results there
    (`must_delete`: ingest, train, score), deleted."""
    from vadray.exits import UsageError

    for role, uri in _given(storage_options, locations):
        if is_remote(uri):
            _require_remote_write(role, uri, storage_options, must_delete=must_delete)
            continue
        path = absolute(uri)
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"{role} {uri!r} is a file; give a folder (it is created if missing)")
        _require_local_folder(role, uri, path)


def require_file_to_write(storage_options: dict[str, Any] | None = None, **locations: str | None) -> None:
    """`require_folder_to_write` for an output file (--json, --out): its folder must be one."""
    from vadray.exits import UsageError

    for role, uri in locations.items():
        if not uri:
            continue
        if is_remote(uri):
            if "/" not in uri.partition("://")[2].strip("/"):
                raise UsageError(f"{role} {uri!r} names a bucket, not a file: give s3://bucket/name")
            _require_remote_write(role, uri, storage_options, folder=uri.rstrip("/").rsplit("/", 1)[0])
            continue
        path = absolute(uri)
        if os.path.isdir(path):
            raise UsageError(f"{role} {uri!r} is a folder; give a file name")
        _require_local_folder(role, uri, os.path.dirname(path))


def make_parent(fs: fsspec.AbstractFileSystem | pafs.FileSystem, path: str, uri: str) -> None:
    """Make the local folder the file at `path` (inside `fs`, fsspec's or pyarrow's) goes in.
    Nothing on an object store: it has no folders, and s3fs would HEAD the bucket per call."""
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if not parent or is_remote(uri):
        return
    if isinstance(fs, pafs.FileSystem):
        fs.create_dir(parent, recursive=True)
    else:
        fs.makedirs(parent, exist_ok=True)


def open_for_writing(uri: str, storage_options: dict[str, Any] | None, mode: str = "wb"):
    """An output file's handle, its local folder made first."""
    fs, path = url_to_fs(uri, storage_options)
    make_parent(fs, path, uri)
    return fs.open(path, mode)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URI that `url_to_fs` turns back into the same file."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return os.path.abspath(path)
    return f"{protocol}://{path}" if protocol != "s3a" else f"s3://{path}"


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def pyarrow_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) for Ray Data's read/write_parquet and pyarrow.parquet."""
    fs, path = url_to_fs(uri, storage_options)
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def remove(uri: str, storage_options: dict[str, Any] | None = None) -> None:
    """Remove a file or folder if it exists (idempotent reruns replace, never append)."""
    fs, path = url_to_fs(uri, storage_options)
    delete(fs, path, recursive=True)


def delete(fs, paths: str | list[str], recursive: bool = False) -> None:
    """Delete those of `paths` that exist, and make sure it happened: s3fs's bulk delete drops
    the per-key errors that S3 returns inside a 200 (AccessDenied to a key that may write but
    not delete).
    A rerun that believed its old rows gone would keep them beside the new ones, or keep a
    stale marker that later skips a changed file. JobFailed names what stayed. On S3 the bulk
    delete is made here, reading its errors; only keys it names are looked at again."""
    from vadray.exits import JobFailed

    paths = [paths] if isinstance(paths, str) else sorted(set(paths))
    local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    if local:   # a path that is not there is no failure: a local rm would raise on it
        paths = [path for path in paths if fs.exists(path)]
    if not paths:
        return
    if not hasattr(fs, "call_s3"):   # a local disk raises on failure; another store is asked after
        try:
            fs.rm(paths, recursive=recursive)
        except FileNotFoundError:   # another store's rm of a path that is not there (or went meanwhile)
            fs.rm([path for path in paths if fs.exists(path)], recursive=recursive)
        if local:
            return
        for path in paths:
            fs.invalidate_cache(path)
        failed = tried = paths
    else:
        if recursive:   # the files below each path, from a fresh listing
            for path in paths:
                fs.invalidate_cache(path)
            keys = sorted({key for path in paths for key in fs.find(path)})
        else:
            keys = paths
        by_bucket: dict[str, list[str]] = {}
        for path in keys:
            bucket, key, _ = fs.split_path(path)
            if key:
                by_bucket.setdefault(bucket, []).append(key)
        failed = []
        for bucket, names in by_bucket.items():
            for at in range(0, len(names), 1000):   # S3's limit per request
                reply = fs.call_s3("delete_objects", Bucket=bucket, Delete={
                    "Objects": [{"Key": name} for name in names[at:at + 1000]], "Quiet": True})
                failed += [f"{bucket}/{error['Key']}" for error in reply.get("Errors", [])]
        for path in {*paths, *keys}:   # s3fs's listings of these and their folders
            fs.invalidate_cache(path)
        tried = keys
    left = [path for path in failed if fs.exists(path)]   # a refused key that was not there is no loss
    if left:
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        raise JobFailed(f"could not delete {len(left)} of {len(tried)} object(s) "
                        f"(e.g. {protocol}://{left[0]}): "
                        "the credentials may write but not delete (a policy denies s3:DeleteObject there). "
                        "Reruns replace results by deleting the old ones first: run it again with credentials "
                        "that may delete")
