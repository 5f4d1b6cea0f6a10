"""The scoring job's stages: segment → volume rows → model actor → per-video tables.

Data between stages is Arrow columns (bytes and lists), never pickled objects. Every stage
is deterministic and retry-safe: an actor killed mid-run is restarted by Ray, its rows are
recomputed identically, and the per-video tables are only written once all of a video's
rows have arrived (`VideoRows` counts them), to names that depend only on (video, model).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vadray import storage
from vadray.decode import contiguous_runs, index_runs
from vadray.errors import error_row, write_errors
from vadray.events import EVENTS_SCHEMA, EventSettings, detect_events
from vadray.manifest import mark_scored, scores_file
from vadray.stages import decode_planned
from vadray.volumes import frame_offsets, gather, volume_starts

ROW_VOLUMES = 64  # volumes per row sent to a model actor: bounds a row's memory

# A row of `VolumeRows`: ≤ ROW_VOLUMES volume starts of one segment and the frames they need.
VOLUME_ROWS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("video_key", pa.string()), ("camera", pa.string()), ("uri", pa.string()),
    ("identity", pa.string()), ("num_frames", pa.int64()), ("hop", pa.int64()), ("starts", pa.list_(pa.int64())),
    ("extra_starts", pa.list_(pa.int64())), ("frame_index", pa.list_(pa.int64())),
    ("time_s", pa.list_(pa.float64())), ("frames", pa.binary()), ("segment", pa.int64()),
    ("segments", pa.int64()), ("first", pa.int64()), ("part", pa.int64()), ("parts", pa.int64()),
    ("retry", pa.bool_()),   # the segment's decode raised: its gap may not repeat (`AssembleVideo`)
])


def score_segment_plan(T: int, hop: int) -> dict[str, int]:
    """How score cuts videos into segments (`plan_segments` / `ProbeAndPlan` keywords): each a
    multiple of the hop long, so that it starts on the hop grid, and decoding T frames past its
    end: T−1 for its volumes, one to see whether a run of decoded frames ends there.
    `gap_edge_starts` and `ScoreVolumes`' hold rule rely on both."""
    return {"overlap": T, "multiple_of": hop}


def gap_edge_starts(decoded_index: np.ndarray, owned: np.ndarray, first: int, last: int,
                    decode_last: int, T: int) -> np.ndarray:
    """Extra volume starts beside the decode gaps a segment saw: one volume starting right
    after a gap, one ending right before it, so that decoded frames there get a score although
    the hop grid's volumes that would cover them touch the gap (and are dropped).

    Only starts in [first, last) are the segment's. Score decodes T frames past `last`, so
    a segment sees whether the frame after a run that ends within its reach decoded. The
    frames such volumes cover past `last` are the next segment's first T−1, which no segment
    finishes on its own (`ScoreVolumes`), so two segments never both finish a frame. A
    segment's first frame is on the hop grid (score plans segments in multiples of the hop),
    whose volume covers a run that starts there.
    """
    extra = []
    for a, b in contiguous_runs(decoded_index):
        lo, hi = int(decoded_index[a]), int(decoded_index[b - 1]) + 1   # a decoded run [lo, hi)
        if hi - lo < T:
            continue
        if lo > first:                       # frame lo − 1 is in this segment and did not decode
            extra.append(lo)
        if hi < decode_last:                 # frame hi is in this segment and did not decode
            extra.append(hi - T)
    extra = np.asarray(extra, np.int64)
    return np.setdiff1d(extra[(extra >= first) & (extra < last)], owned)


class VolumeRows:
    """Decode a planned segment; emit rows of ≤ ROW_VOLUMES stride-1 volumes it owns.

    Volume starts are planned over the whole video (so the hop and the final volume do not
    depend on segmentation); a segment owns the starts inside [first, last) and decodes T
    frames beyond `last`: T−1 for them, one to see whether a run ends there. Volumes touching
    an undecodable frame are dropped (the decode error is already in errors/); beside such a
    gap, `gap_edge_starts` adds the volumes that keep the decoded frames there scored.
    """

    def __init__(self, output: str, size: int, T: int, hop: int, storage_options: dict[str, Any],
                 model_id: str | None = None):
        self.errors_uri, self.model_id = storage.join(output, "errors"), model_id   # whose errors rows
        self.size, self.T, self.hop, self.storage_options = size, T, hop, storage_options

    def __call__(self, seg: dict[str, Any]) -> list[dict[str, Any]]:
        decoded = decode_planned(seg, self.size, self.errors_uri, self.storage_options, self.model_id)
        starts = volume_starts(seg["num_frames"], self.T, 1, self.hop)
        owned = starts[(starts >= seg["first"]) & (starts < seg["last"])]
        extra = (gap_edge_starts(decoded.frame_index, owned, seg["first"], seg["last"], seg["decode_last"],
                                 self.T) if decoded.missing else np.zeros(0, np.int64))
        starts = np.union1d(owned, extra)
        whole = np.isin(frame_offsets(starts, self.T), decoded.frame_index).all(axis=1)
        starts = starts[whole]
        rows = []
        for chunk in np.array_split(starts, max(1, -(-starts.size // ROW_VOLUMES))):
            # A segment with no volume (nothing decoded) still sends one empty row, so the
            # driver can count every segment of a video in.
            keep = ((decoded.frame_index >= chunk[0]) & (decoded.frame_index < chunk[-1] + self.T)
                    if chunk.size else np.zeros(decoded.frame_index.size, bool))
            rows.append({
                "video_id": seg["video_id"], "video_key": seg["video_key"], "camera": seg["camera"],
                "uri": seg["uri"], "identity": seg["identity"], "num_frames": seg["num_frames"],
                "hop": self.hop, "starts": chunk.tolist(), "extra_starts": extra.tolist(),
                "frame_index": decoded.frame_index[keep].tolist(),
                "time_s": decoded.time_s[keep].tolist(), "frames": decoded.frames[keep].tobytes(),
                "segment": seg["segment"], "segments": seg["segments"], "first": seg["first"],
                "part": len(rows), "retry": decoded.retry,
            })
        return [row | {"parts": len(rows)} for row in rows]

    def table(self, batch: pa.Table) -> pa.Table:
        """`map_batches` form, one segment a batch: a decode task per segment (not a flat_map:
        `score._scored_rows` says why)."""
        return pa.Table.from_pylist([row for seg in batch.to_pylist() for row in self(seg)],
                                    schema=VOLUME_ROWS_SCHEMA)


class ScoreVolumes:
    """Model actor: loads the checkpoint once, scores volumes in batches, returns errors."""

    def __init__(self, checkpoint: str, storage_options: dict[str, Any], batch_size: int, grid: int,
                 threads: int = 1, gain_correction: bool = False, use_gpu: bool = False,
                 model_id: str | None = None):
        import torch

        from vadray.checkpoint import load_model
        from vadray.exits import JobFailed
        from vadray.preprocess import NormStats
        from vadray.steps import Reconstructor

        model, card = load_model(checkpoint, storage_options)
        # Each actor (and each restarted one) loads the checkpoint again: one retrained into the
        # same folder during a backfill would score under the first model's id and markers.
        if model_id is not None and card["model_id"] != model_id:
            raise JobFailed(f"{checkpoint} now holds model {card['model_id']}, not {model_id}, which this run "
                            "started with: it changed during the run. Run again to score with the new model")
        # (x, y) of uint8 volumes: the training step's own forward (bf16 autocast on GPU, as the
        # card's calibration)
        self.reconstruct = Reconstructor(model, NormStats.from_dict(card["norm_stats"]), use_gpu)
        self.device, self.stats = self.reconstruct.device, self.reconstruct.stats
        if self.device.type == "cpu":
            # Ray starts a 1-CPU actor with OMP_NUM_THREADS=1; see run_score's actor_threads.
            torch.set_num_threads(max(1, threads))
        self.T, self.batch_size, self.grid = int(card["input"]["T"]), batch_size, grid
        self.gain_correction = gain_correction

    def frame_sums(self, frames: np.ndarray, frame_index: np.ndarray, starts: np.ndarray,
                   gains: np.ndarray | None = None):
        """Per-volume errors of a row's volumes spread onto frames (`scoring.FrameSums`).

        Volumes are gathered as uint8 and normalised, reconstructed and measured one model
        batch at a time (`steps.frame_sums`), so the actor holds a batch's float32 volumes
        (~33 MB for 16 at 227 px), not a whole row's. Merging places slots without adding, so the
        sums are the same either way, up to the model's own batch-dependent rounding (~1e-8).
        """
        import torch

        from vadray.steps import frame_sums

        if self.gain_correction:                                       # per frame: seams stay exact
            frames = self.stats.gain_corrected(frames, gains)
        self.stats.check_size(frames)
        positions = np.searchsorted(frame_index, starts)
        batches = ((starts[a:a + self.batch_size],
                    torch.from_numpy(gather(frames, positions[a:a + self.batch_size], self.T)))
                   for a in range(0, len(starts), self.batch_size))
        return frame_sums(batches, self.reconstruct, self.T, self.grid)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            frame_index = np.asarray(row["frame_index"], np.int64)
            frames = np.frombuffer(row["frames"], np.uint8).reshape(frame_index.size, self.stats.size,
                                                                    self.stats.size)
            source_gains = self.stats.gains(frames)       # once: the column, and the correction's divisor
            sums = self.frame_sums(frames, frame_index, np.asarray(row["starts"], np.int64), source_gains)
            # Frames whose volumes are all in this row are final here; only seam frames travel on
            # with their per-volume slots, so a video's assembly never holds (F, T, C) for all F.
            # A frame is final here when every volume that may hold it is: the grid's and this
            # segment's gap-edge volumes. The first T−1 frames of a segment after the first are
            # never final here: the previous segment's volumes (its gap-edge ones included) reach
            # into them, so they are always finished at assembly (`gap_edge_starts`).
            planned = np.union1d(volume_starts(row["num_frames"], self.T, 1, row["hop"]),
                                 np.asarray(row["extra_starts"] or [], np.int64))
            hold = row["first"] + self.T - 1 if row["first"] > 0 else 0
            done, seam = sums.split(planned, hold_before=hold)
            out.append({k: row[k] for k in ("video_id", "video_key", "camera", "uri", "identity", "num_frames",
                                             "segment", "segments", "part", "parts", "retry")}
                       | scored_columns(done, seam, dict(zip(row["frame_index"], row["time_s"])),
                                        dict(zip(row["frame_index"], source_gains.tolist()))))
        return pa.Table.from_pylist(out)


def scored_columns(done, seam, times: dict[int, float], gains: dict[int, float]) -> dict[str, Any]:
    """A model actor's result for one row as Arrow-friendly columns: the means of the frames it
    finished (`done`, a `FrameMeans`) and the per-volume slots of its seam frames (`seam`, a
    `FrameSums`); `video_means` reads them back."""
    done_index, seam_index = done.frame_index.tolist(), seam.frame_index.tolist()
    return {"done_frame_index": done_index,
            "done_time_s": [times[i] for i in done_index],
            "done_gain": [gains[i] for i in done_index],
            "done_recon_error": done.recon_error.tolist(),
            "done_count": done.count.tolist(),
            "done_cell_error_max": done.cell_error_max.tolist(),
            "done_motion_error": done.motion_error.tolist(),
            "seam_frame_index": seam_index,
            "seam_time_s": [times[i] for i in seam_index],
            "seam_gain": [gains[i] for i in seam_index],
            "seam_err_slots": seam.err_slots.tobytes(),
            "seam_filled": seam.filled.tobytes(),
            "seam_cell_slots": seam.cell_slots.tobytes(),
            "seam_motion_slots": seam.motion_slots.tobytes()}


def video_means(rows: list[dict[str, Any]], T: int, cells: int):
    """All scored rows of one video → (`FrameMeans` of its scored frames, their time_s, their
    brightness gains), frames sorted. The seam frames' slots of all rows are merged first, so
    a frame's mean is the same however the video was cut into segments."""
    from vadray.scoring import FrameMeans, FrameSums

    dones, seams, times, gains = [], [], {}, {}
    for r in rows:
        dones.append(FrameMeans(np.asarray(r["done_frame_index"], np.int64), np.asarray(r["done_recon_error"]),
                                np.asarray(r["done_count"], np.int64), None,
                                np.asarray(r["done_cell_error_max"]), np.asarray(r["done_motion_error"])))
        n = len(r["seam_frame_index"])
        seams.append(FrameSums(np.asarray(r["seam_frame_index"], np.int64),
                               np.frombuffer(r["seam_err_slots"], np.float64).reshape(n, T),
                               np.frombuffer(r["seam_filled"], np.bool_).reshape(n, T),
                               np.frombuffer(r["seam_cell_slots"], np.float64).reshape(n, T, cells),
                               np.frombuffer(r["seam_motion_slots"], np.float64).reshape(n, T)))
        for part in ("done", "seam"):
            times.update(zip(r[f"{part}_frame_index"], r[f"{part}_time_s"]))
            gains.update(zip(r[f"{part}_frame_index"], r[f"{part}_gain"]))
    means = FrameMeans.concat(dones + [FrameSums.merge(seams).mean()])
    index = means.frame_index.tolist()
    return means, np.array([times[i] for i in index]), np.array([gains[i] for i in index])


class VideoRows:
    """Driver side: a video's scored rows, held until every row of every segment is in.

    Rows carry (segment, segments, part, parts), so completeness needs no plan on the driver
    and no shuffle: each video is assembled as soon as its last row arrives. What is held is
    small (per-frame errors and the seam slots of unfinished videos), never frames.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.parts: dict[str, dict[int, int]] = {}
        self.seen: dict[str, dict[int, int]] = {}

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Keep `row`; its video's rows when this one completes the video, else None."""
        vid, segment = row["video_id"], int(row["segment"])
        self.rows.setdefault(vid, []).append(row)
        self.parts.setdefault(vid, {})[segment] = int(row["parts"])
        seen = self.seen.setdefault(vid, {})
        seen[segment] = seen.get(segment, 0) + 1
        if len(seen) == int(row["segments"]) and seen == self.parts[vid]:
            del self.parts[vid], self.seen[vid]
            return self.rows.pop(vid)
        return None

    def in_progress(self) -> list[tuple[str, int, int]]:
        """(video_id, segments scored, segments) of the videos begun and not complete, in the
        order they began: a long video's progress between its first row and its last."""
        return [(vid, sum(self.seen[vid].get(s) == n for s, n in self.parts[vid].items()),
                 int(self.rows[vid][0]["segments"])) for vid in self.seen]

    def leftovers(self) -> list[list[dict[str, Any]]]:
        """Rows of videos that never completed (not expected; assembled as partial, with a `.partial` marker)."""
        rest = list(self.rows.values())
        self.rows.clear()
        self.parts.clear()
        self.seen.clear()
        return rest


def write_whole(table: pa.Table, uri: str, storage_options: dict[str, Any]) -> None:
    """Write a Parquet file that readers see whole or not at all. An object store's PUT is; on
    a local disk the file is written under a hidden name (Arrow and DuckDB skip '.' files) and
    renamed, so a full disk or a killed job never leaves a truncated file that breaks every
    later query, evaluate and report of the OUTPUT."""
    fs, path = storage.pyarrow_fs(uri, storage_options)
    folder, name = path.rsplit("/", 1)
    if storage.is_remote(uri):   # no folders to make in an object store (s3fs would HEAD the bucket)
        pq.write_table(table, path, filesystem=fs, compression="zstd")
        return
    fs.create_dir(folder, recursive=True)
    hidden = f"{folder}/.{name}.{os.getpid()}.tmp"
    try:
        pq.write_table(table, hidden, filesystem=fs, compression="zstd")
        fs.move(hidden, path)
    finally:
        if fs.get_file_info(hidden).type != pafs.FileType.NotFound:
            fs.delete_file(hidden)


def _ranges(indices: np.ndarray, most: int = 20) -> str:
    """'3-5, 9-9 …': the first `most` runs of frame indices, for an errors message."""
    runs = index_runs(indices)
    return ", ".join(f"{a}-{b - 1}" for a, b in runs[:most]) + (" …" if len(runs) > most else "")


def scored_as_far_as_it_decodes(rows: list[dict[str, Any]]) -> bool:
    """Every segment of the video is in, and none of their decodes raised: the frames without a
    score did not decode (corrupt packets, a cut GOP) or sit in decoded runs shorter than T, and
    a rerun of the same file would leave the same gaps. Such a video is done (a rerun skips it;
    its errors rows stay and keep the exit status 3); one with an exception (an I/O error, a
    reader killed), or with a segment missing, is partial and scored again on the next run."""
    parts: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    for r in rows:
        if r.get("retry", True):
            return False
        parts[int(r["segment"])] = int(r["parts"])
        seen.add((int(r["segment"]), int(r["part"])))
    return len(parts) == int(rows[0]["segments"]) and len(seen) == sum(parts.values())


class AssembleVideo:
    """All volume errors of one video → its frames and events files, then its manifest marker."""

    def __init__(self, output: str, card: dict, run_id: str, dates: dict[str, str], events: EventSettings,
                 grid: int, storage_options: dict[str, Any]):
        self.output, self.card, self.run_id, self.dates = output, card, run_id, dates
        self.events, self.storage_options = events, storage_options
        self.T, self.cells = int(card["input"]["T"]), grid * grid

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from vadray.scoring import FRAMES_SCHEMA, score_columns

        head = rows[0]
        means, times, gains = video_means(rows, self.T, self.cells)
        scores = score_columns(means, self.card["validation"])
        time_s = times.astype(np.float64)
        gain = gains.astype(np.float32)
        camera, date = head["camera"], self.dates.get(head["video_id"], "unknown")
        model_id, n = self.card["model_id"], means.frame_index.size
        common = {"camera": [camera] * n, "date": [date] * n, "video_id": [head["video_id"]] * n}
        frames = pa.table({**common, "source_uri": [head["uri"]] * n, "frame_index": means.frame_index,
                           "time_s": time_s, **{k: v.astype(np.float32) for k, v in scores.items()},
                           "brightness_gain": gain,
                           "model_id": [model_id] * n, "run_id": [self.run_id] * n}, schema=FRAMES_SCHEMA)
        series = scores[self.events.score]
        # a frame whose error is not finite has no score: a gap to events, and an errors row
        ok = np.isfinite(series) & np.isfinite(scores["recon_error"])
        events = detect_events(series[ok], time_s[ok], frame_index=means.frame_index[ok],
                               anomaly_score=scores["anomaly_score"][ok],
                               persistence_threshold=self.events.persistence, window=self.events.window,
                               min_duration_s=self.events.min_seconds)
        events = pa.Table.from_pylist([{"camera": camera, "date": date, "video_id": head["video_id"], **ev,
                                        "score": self.events.score, "model_id": model_id} for ev in events],
                                      schema=EVENTS_SCHEMA)
        name = scores_file(camera, date, head["video_key"], model_id)
        for table_name, table in (("frames", frames), ("events", events)):
            # partition columns live in the path; the file holds the rest
            write_whole(table.drop_columns(["camera", "date"]), storage.join(self.output, table_name, name),
                        self.storage_options)
        every_frame = n == int(head["num_frames"])
        if not every_frame or not ok.all():
            self._unscored(head, means.frame_index, means.frame_index[~ok])
        complete = every_frame or scored_as_far_as_it_decodes(rows)
        mark_scored(self.output, head["camera"], head["video_id"], head["identity"], model_id, head["uri"],
                    complete, self.storage_options)
        return {"video_id": head["video_id"], "frames": n, "events": events.num_rows, "complete": complete}

    def _unscored(self, head: dict[str, Any], scored: np.ndarray, not_finite: np.ndarray) -> None:
        """An errors row naming the frames without a score: what did not decode, decoded frames
        no volume of T decoded frames covers, and frames the model gave a NaN or infinite error
        (their scores count as missing), are not lost silently."""
        num_frames = int(head["num_frames"])
        unscored = np.setdiff1d(np.arange(num_frames), scored)
        messages = []
        if unscored.size:
            messages.append(f"{unscored.size} of {num_frames} frames have no score: {_ranges(unscored)}. "
                            f"A volume needs {self.T} "
                            "consecutive decoded frames: frames that did not decode (see the decode rows), "
                            "and decoded runs shorter than that, go unscored")
        if not_finite.size:
            messages.append(f"the model's error is NaN or infinite at {not_finite.size} frames: "
                            f"{_ranges(not_finite)} (their scores are missing to evaluate, and events skip "
                            "them); check the checkpoint, or score on CPU if a GPU overflowed")
        message = "; ".join(messages)
        write_errors([error_row(head["video_id"], head["uri"], "score", "unscored_frames", message)],
                     storage.join(self.output, "errors"), head["camera"], f"{head['video_key']}-score",
                     self.storage_options, self.card["model_id"])
