"""OUTPUT's tables (frames, events, errors) as evaluate, report and query read them: Arrow
datasets over the hive-partitioned Parquet (local or s3://), with the documented schemas, and
the checks that keep one model's and one camera's scores apart."""
from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from vadray import storage
from vadray.errors import ERRORS_SCHEMA, PARTITIONING as ERRORS_PARTITIONING, read_errors
from vadray.events import EVENTS_SCHEMA
from vadray.exits import UsageError
from vadray.scoring import FRAMES_SCHEMA

PARTITIONING = ds.partitioning(pa.schema([("camera", pa.string()), ("date", pa.string())]), flavor="hive")
PARTITIONING_OF = {"errors": ERRORS_PARTITIONING}  # camera= and, for score, model_id=; no date=
DOCUMENTED = {"frames": FRAMES_SCHEMA, "events": EVENTS_SCHEMA, "errors": ERRORS_SCHEMA}


def open_dataset(output: str, name: str, storage_options: dict | None = None) -> ds.Dataset | None:
    """OUTPUT/<name> (frames, events, errors) as a lazy Arrow dataset; None when absent.

    Partition folders (camera=, date=) are read as strings. The schema is the documented one
    widened by whatever extra columns the files carry, so an old file lacking a column reads
    it as nulls instead of hiding the column for every file.
    """
    fs, path = storage.pyarrow_fs(storage.join(output, name), storage_options)
    try:
        if fs.get_file_info(path).type != pa.fs.FileType.Directory:
            return None
        partitioning = PARTITIONING_OF.get(name, PARTITIONING)
        found = ds.dataset(path, filesystem=fs, format="parquet", partitioning=partitioning)
        if name in DOCUMENTED:
            schema = pa.unify_schemas([DOCUMENTED[name], found.schema], promote_options="permissive")
            found = ds.dataset(path, filesystem=fs, format="parquet", partitioning=partitioning, schema=schema)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UsageError(f"cannot read {storage.join(output, name)}: {exc}") from None
    return found


def read_table(output: str, name: str, storage_options: dict | None = None,
               columns: list[str] | None = None, filter: Any = None) -> pa.Table | None:
    """OUTPUT/<name> as one Arrow table (only `columns` that exist, rows matching `filter`)."""
    output = storage.text(output)
    found = open_dataset(output, name, storage_options)
    if found is None:
        return None
    if columns is not None:
        columns = [c for c in columns if c in found.schema.names]
    return found.to_table(columns=columns, filter=filter)


def selection(**values: list[str] | None) -> ds.Expression | None:
    """Rows whose column is in each given list (selection(camera=[…], model_id=[…])); None: all.
    A single string is a list of one (Python callers write camera="lobby")."""
    parts = [ds.field(name).isin([allowed] if isinstance(allowed, str) else allowed)
             for name, allowed in values.items() if allowed]
    combined = parts[0] if parts else None
    for part in parts[1:]:
        combined = combined & part
    return combined


def check_one_model(frames: pd.DataFrame) -> None:
    """Rescoring with another checkpoint adds that model's rows beside the first one's (one
    file per video and model): metrics and plots need one model's scores."""
    models = sorted(map(str, frames["model_id"].dropna().unique()))
    if len(models) > 1:
        raise UsageError(f"the selected frames hold scores of {len(models)} models ({', '.join(models)}): "
                         "pass --model-id with one of them")


def check_one_camera_per_video(frames: pd.DataFrame) -> None:
    """Labels name a video, not a camera: an OUTPUT where one video_id is scored under several
    cameras cannot be joined to them without choosing the camera."""
    cameras = frames.groupby("video_id")["camera"].nunique()
    shared = sorted(map(str, cameras.index[cameras > 1]))
    if shared:
        raise UsageError(f"video ids {', '.join(shared[:3])}{' …' if len(shared) > 3 else ''} are scored under "
                         f"several cameras ({', '.join(sorted(map(str, frames['camera'].unique())))}); "
                         "labels name videos only: pass --camera")


def no_rows_selected(output: str, storage_options: dict | None, **selected: list[str] | None) -> UsageError:
    """The error for a selection (camera=[…], model_id=[…], …) that matches no frames: what
    OUTPUT holds instead, so a typo reads as one rather than as 'run vadray score first'."""
    chosen = {name: values for name, values in selected.items() if values}
    table = read_table(output, "frames", storage_options, columns=list(chosen))
    if table is None or table.num_rows == 0:
        failed = read_errors(storage.join(output, "errors"), storage_options)
        if failed.num_rows:   # scored, and every input failed: say so, not "run score first"
            first = failed.slice(0, 1).to_pylist()[0]
            return UsageError(f"no video under {output!r} was scored: its errors table holds {failed.num_rows} "
                              f"row(s), e.g. {first['source_uri']}: {first['message']}; "
                              f"`vadray query {output} \"SELECT * FROM errors\"` lists them")
        return UsageError(f"no frames table under {output!r}: run `vadray score` first")
    held = []
    for name, values in chosen.items():
        present = sorted(map(str, pd.unique(table.column(name).to_pandas().dropna())))
        missing = [v for v in values if v not in present]
        if missing:
            shown = ", ".join(present[:8]) + (" …" if len(present) > 8 else "")
            flag = {"video_id": "--video", "model_id": "--model-id"}.get(name, f"--{name}")
            held.append(f"{flag} {', '.join(missing)} is not there (it holds {shown})")
    what = "; ".join(held) or "no frame matches all of " + ", ".join(f"{k} {v}" for k, v in chosen.items())
    return UsageError(f"no scored frames under {output!r} for that selection: {what}")
