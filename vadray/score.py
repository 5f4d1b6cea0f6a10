"""vadray score SOURCE OUTPUT --checkpoint CKPT: score whole archives into frames/events tables.

Reads videos straight from the archive (local or s3://; the same listing and video_id rule as
ingest), decodes and preprocesses them exactly as the checkpoint's input spec says (the same
code ingest and training used), runs the model in a Ray Data actor pool, and writes per
video, under OUTPUT (hive-partitioned by camera= and date=):
  frames/   one row per frame: recon_error, regularity, anomaly_score, cell_error_max,
            motion_error, motion_regularity, combined_regularity, brightness_gain
  events/   one row per dip of regularity, or of --events-from's column (Persistence1D minima
            grouped in a window)
  errors/   one row per input (or segment) that failed
  manifest/ one marker per finished (video identity, model, frames-table version)
An archive that moved keeps its scores with --moved-from OLD_SOURCE (vadray/moved.py).
A backfill is resumable: a rerun skips finished videos (those with corrupt frames too: their
errors rows keep exit status 3), rescoring partial ones (reading failed); file names
are deterministic per video and model, so retries overwrite instead of appending. --force
rescores everything. Exit status: 0 all ok, 3 some inputs failed, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vadray import storage
from vadray.errors import JobSummary, clear_errors, count, error_row, failed_rows, read_errors, safe_key, write_errors
from vadray.events import EVENT_SCORES, PERSISTENCE_DEFAULT, WINDOW_DEFAULT, EventSettings
from vadray.exits import UsageError
from vadray.listing import check_camera, list_videos
from vadray.manifest import (check_same_files, drop_other_ids, drop_other_models_gone, drop_previous, drop_renamed,
                             previous_scoring, scored_under_other_cameras, settings_of_done, video_date)
from vadray.score_stages import AssembleVideo, ScoreVolumes, VideoRows, VolumeRows, score_segment_plan
from vadray.scoring import GRID_DEFAULT, SCORE_HOP, calibrate
from vadray.stages import FRAME_FPS_DEFAULT, add_decode_options

log = logging.getLogger("vadray.score")


@dataclass
class ScoreSummary(JobSummary):
    skipped: int = 0
    events: int = 0

    def line(self) -> str:
        c = count
        return (f"score: {c(self.videos, 'video')} ({self.skipped} already done, {self.videos_failed} failed), "
                f"{c(self.frames, 'frame')}, {c(self.events, 'event')}, {c(self.failures, 'error row')}, "
                f"{c(self.notes, 'note')}, " + self.timing())


def scoring_run_id(model_id: str, hop: int, grid: int, events: EventSettings, gain_correction: bool = False,
                   frame_fps: float = FRAME_FPS_DEFAULT) -> str:
    """Deterministic: the same model and settings give the same id, so reruns are identical.
    A frame folder's --frame-fps sets its times and events' durations; the default adds nothing
    (ids from before it counted stay the same)."""
    text = (f"{model_id}|hop={hop}|grid={grid}|{events.key()}" + ("|gain" if gain_correction else "")
            + (f"|frame_fps={frame_fps:g}" if frame_fps != FRAME_FPS_DEFAULT else ""))
    return "score-" + hashlib.sha1(text.encode()).hexdigest()[:10]


class _WriteOrRecord:
    """One video's tables failing to write (a storage error, a bad value) is that video's
    failure, an errors row with stage `write`, not the end of the backfill."""

    def __init__(self, assemble: AssembleVideo, errors_uri: str, storage_options: dict[str, Any], model_id: str):
        self.assemble, self.errors_uri, self.storage_options = assemble, errors_uri, storage_options
        self.model_id = model_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        head = rows[0]
        try:
            return self.assemble(rows)
        except Exception as exc:  # noqa: BLE001 — recorded per video, the others go on
            # A storage error and a bug look alike from here: keep the traceback in the log.
            log.warning("video %s: writing its tables failed: %s: %s", head["video_id"], type(exc).__name__, exc,
                        exc_info=not isinstance(exc, OSError))
            row = error_row(head["video_id"], head["uri"], "write", type(exc).__name__, str(exc))
            try:
                write_errors([row], self.errors_uri, head["camera"], f"{safe_key(head['video_id'])}-write",
                             self.storage_options, self.model_id)
                row = None
            except Exception as again:  # noqa: BLE001 — the store is failing: the summary still counts it
                log.error("video %s: its errors row could not be written either: %s: %s", head["video_id"],
                          type(again).__name__, again)
            return {"video_id": head["video_id"], "frames": 0, "events": 0, "complete": False,
                    "unrecorded_error": row}


class _VideoProgress:
    """'N of M videos written' every PROGRESS_SECONDS, with the segments scored of the videos
    under way: Ray Data's own progress counts volume rows, whose total it keeps re-estimating,
    not the videos a backfill is made of, and an hour-long video is one video for minutes."""

    PROGRESS_SECONDS = 10.0
    SHOWN = 3   # videos under way named in a line

    def __init__(self, total: int, videos: VideoRows):
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.last, self.videos = self.started, videos
        self.lock = threading.Lock()

    def one_done(self, _future) -> None:
        with self.lock:
            self.done += 1
            if self.done == self.total:
                self._line(time.monotonic(), under_way=False)
            else:
                self.tick()

    def tick(self) -> None:
        """A line when PROGRESS_SECONDS have passed since the last (called as rows arrive)."""
        now = time.monotonic()
        if now - self.last >= self.PROGRESS_SECONDS:
            self._line(now)

    def _line(self, now: float, under_way: bool = True) -> None:
        self.last = now
        busy = self.videos.in_progress() if under_way else []
        shown = ", ".join(f"{vid} {done} of {segments} segments" for vid, done, segments in busy[:self.SHOWN])
        more = f" and {len(busy) - self.SHOWN} more" if len(busy) > self.SHOWN else ""
        log.info("%d of %d videos written (%.0f s)%s", self.done, self.total, now - self.started,
                 f"; scoring {shown}{more}" if busy else "")


def _usable_card(checkpoint: str, storage_options: dict[str, Any], hop: int, grid: int) -> dict:
    """The checkpoint's model card, refused (UsageError, before any work) where these settings
    cannot use it: everything a video's scores need must hold here, not fail per video."""
    from vadray.checkpoint import load_for_job

    _, card = load_for_job(checkpoint, storage_options)   # fails here, once, not in every model actor
    T, size = int(card["input"]["T"]), int(card["input"]["size"])
    if hop > T:
        raise UsageError(f"--hop {hop} > T={T} would leave frames without a score")
    if not 1 <= grid <= size:
        raise UsageError(f"--grid must be between 1 and the model's frame size {size}, got {grid}")
    try:   # every video's anomaly_score divides by it
        calibrate(np.zeros(1), card.get("validation"))
    except ValueError as exc:
        raise UsageError(f"checkpoint {checkpoint!r}: {exc}; it is not a finished training run's "
                         "checkpoint (`vadray train` writes the calibration into final/card.json)") from None
    calibrated_at = card["validation"].get("volume_hop")
    if calibrated_at and calibrated_at != hop:
        log.warning("anomaly_score's scale was measured at hop %d (the model card); at --hop %d a frame's "
                    "error averages a different number of volumes, so its thresholds shift a little",
                    calibrated_at, hop)
    return card


def _write_videos_as_they_complete(scored, assemble: _WriteOrRecord, total: int) -> list[dict[str, Any]]:
    """Stream the model actors' rows; as soon as all rows of a video are in (`VideoRows`),
    hand them to a writer thread (table writes overlap the stream). One result per video."""
    videos = VideoRows()
    progress, pending = _VideoProgress(total, videos), []
    with ThreadPoolExecutor(max_workers=4) as writers:

        def write(rows: list[dict[str, Any]]) -> None:
            pending.append(writers.submit(assemble, rows))
            pending[-1].add_done_callback(progress.one_done)

        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                with progress.lock:   # (in_progress reads what add changes)
                    complete = videos.add(row)
                if complete is not None:
                    write(complete)
            with progress.lock:
                progress.tick()
        with progress.lock:   # (a writer's progress line reads what leftovers() clears)
            rest = videos.leftovers()
        for rows in rest:
            write(rows)
        return [f.result() for f in pending]


def _drop_superseded(output: str, camera: str, refs: list, todo: list, model_id: str, previous,
                     storage_options: dict[str, Any]) -> None:
    """Remove what this run replaces: the rows of videos it rescores, those of files that this
    model scored before under another id (a sibling came or went, another SOURCE), and other
    models' rows of content a file no longer has."""
    drop_previous(output, camera, todo, model_id, previous, storage_options)
    renamed = drop_renamed(output, camera, refs, model_id, previous, storage_options)
    moved = drop_other_ids(output, camera, model_id, previous, storage_options)
    models, files = drop_other_models_gone(output, camera, refs, previous, storage_options)
    if models:
        log.warning("%d file(s) changed since model(s) %s scored them: those models' rows of the former content "
                    "were removed (score the files with those models again to compare them)",
                    files, ", ".join(models))
    if moved:
        video_id, keys = next(iter(previous.other_ids.items()))
        log.warning("%d file(s) were scored before under another video id (e.g. %r, whose rows were filed under "
                    "the key %r: the old id made file-safe, and a hash): an id is the path below SOURCE, and these "
                    "files' ids changed (another SOURCE, or a same-named sibling went); their rows under the old "
                    "ids were removed and they are scored under the new ones, so labels must use the new ids",
                    len(previous.other_ids), video_id, keys[0])
    if renamed:
        clear_errors(storage.join(output, "errors"), camera, renamed, storage_options, model_id=model_id)
        log.warning("%d video id(s) now keep their extension, because a file of the same name with another "
                    "extension sits beside them (e.g. %r is now %r): their rows under the old id were removed, "
                    "and labels must use the new id", len(renamed), renamed[0],
                    next(r.video_id for r in refs if r.stem_id == renamed[0]))


def _scored_rows(todo: list, plan, volume_rows, model: tuple[type, tuple], actors: int, gpus_per_actor: float):
    """One streaming pipeline, as ingest's: probe → one block per segment → decode into volume
    rows (CPU tasks) → model actors. The driver assembles each video as soon as all of its
    rows are in (`VideoRows`): per-frame errors are small, so no shuffle barrier.

    Ray Data restarts a dead model actor and retries its tasks (max_restarts=-1 and
    max_task_retries=-1 are its defaults for actor pools); rows are recomputed identically and
    each task's output reaches the driver once."""
    import ray
    from ray.data import ActorPoolStrategy

    actor_class, actor_args = model
    return (ray.data.from_items([r.to_dict() for r in todo], override_num_blocks=min(len(todo), 512))
            .map_batches(plan.segment_rows, batch_size=1, batch_format="pyarrow")
            .repartition(target_num_rows_per_block=1)
            # A decode task per segment, apart from the model actors: Ray Data fuses a task stage into
            # the actor stage after it when their remote arguments are the same (the actors would
            # then decode their segments too), and a flat_map into the task before it (one task
            # decoded a whole video). max_calls=0 is a task's default (no limit); said here, it
            # makes the arguments differ.
            .map_batches(volume_rows.table, batch_size=1, batch_format="pyarrow", max_calls=0)
            .map_batches(actor_class, fn_constructor_args=actor_args, batch_size=1, batch_format="pyarrow",
                         compute=ActorPoolStrategy(size=actors), num_gpus=gpus_per_actor,
                         num_cpus=0 if gpus_per_actor else 1))


def run_score(source: str, output: str, checkpoint: str, *, camera: str = "default", actors: int = 1,
              gpus_per_actor: float = 0.0, batch_size: int = 16, hop: int = SCORE_HOP, segment_seconds: float = 60.0,
              frame_fps: float = FRAME_FPS_DEFAULT, grid: int = GRID_DEFAULT, persistence: float | None = None,
              window: int = WINDOW_DEFAULT, events_from: str = "regularity", min_event_seconds: float = 0.0,
              force: bool = False, moved_from: str | None = None,
              actor_threads: int | None = None, gain_correction: bool = False, storage_options: dict[str, Any] | None = None,
              checkpoint_storage_options: dict[str, Any] | None = None,
              model_actor: type = ScoreVolumes) -> ScoreSummary:
    """The scoring job as a function (the CLI, jobs/score.py, the benchmark and tests call it).

    `model_actor` is the Ray Data actor class that runs the model: the benchmark passes a
    subclass that records timings, a test one that dies once mid-run."""
    import ray

    from vadray.moved import repoint_moved
    from vadray.raylib import ensure_ray, failed_actor_start, require_room, threads_per_worker
    from vadray.stages import ProbeAndPlan

    started = time.perf_counter()   # the summary's seconds: the whole job, checks and model load too
    source, output, checkpoint = storage.text(source), storage.text(output), storage.text(checkpoint)
    check_camera(camera)
    storage_options = storage_options or {}
    ckpt_options = checkpoint_storage_options if checkpoint_storage_options is not None else storage_options
    storage.require_reachable(storage_options, OUTPUT=output)
    storage.require_folder_to_write(storage_options, must_delete=True, OUTPUT=output)
    storage.require_reachable(ckpt_options, CHECKPOINT=checkpoint)
    try:
        events = EventSettings(events_from, PERSISTENCE_DEFAULT if persistence is None else persistence, window,
                               min_event_seconds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if force and moved_from:
        raise UsageError("--force rescores every video and --moved-from keeps their scores: pass one of them")
    if (hop < 1 or batch_size < 1 or actors < 1 or segment_seconds <= 0 or not frame_fps > 0
            or (actor_threads is not None and actor_threads < 1)):
        raise UsageError("--hop, --batch-size, --actors, --actor-threads, --segment-seconds and --frame-fps "
                         "must be positive")
    card = _usable_card(checkpoint, ckpt_options, hop, grid)
    T, size, model_id = int(card["input"]["T"]), int(card["input"]["size"]), card["model_id"]
    trained_on = [c for c in (card.get("training_data") or {}).get("cameras") or [] if c is not None]
    if trained_on and camera not in trained_on and trained_on != ["default"]:
        log.warning("model %s learnt camera(s) %s, and this run scores camera %r: a model knows one camera's "
                    "view (its mean image, what moves where), so another camera's footage scores as anomalous "
                    "throughout; pass the camera it was trained on, or train one for %r",
                    model_id, ", ".join(map(repr, trained_on)), camera, camera)
    refs = list_videos(source, storage_options)
    if not refs:
        raise UsageError(f"no videos or frame folders found under {source!r}")
    run_id = scoring_run_id(model_id, hop, grid, events, gain_correction,   # --frame-fps: frame folders' only
                            frame_fps if any(r.is_frame_folder for r in refs) else FRAME_FPS_DEFAULT)
    if moved_from:
        moved = repoint_moved(output, camera, refs, source, moved_from, model_id, storage_options)
        log.info("--moved-from %s: %d file(s) keep their scores at their new place; %d changed on the way "
                 "(size, or ETag/mtime) and are scored again", moved_from, moved.kept, moved.changed)
        if moved.changed and not moved.kept:
            log.warning("--moved-from: no file kept its scores; a copy that did not keep mtimes (cp without -p), "
                        "an S3 multipart or KMS-encrypted copy (new ETags), or a move between a disk and an "
                        "object store changes every file's identity")
    previous = previous_scoring(output, camera, refs, model_id, storage_options)
    if not (previous.done or previous.markers) and (elsewhere := scored_under_other_cameras(output, camera, refs, model_id,
                                                                       storage_options)):
        log.warning("camera %r has no scores in %s yet, but this model scored %s of these files under %s: "
                    "if --camera changed, this run scores them again beside those rows (delete that "
                    "camera's frames/, events/ and manifest/ folders, or rerun with its name)", camera, output,
                    ", ".join(f"{n} (camera={c})" for c, n in sorted(elsewhere.items())),
                    "that camera" if len(elsewhere) == 1 else "those cameras")
    if not force:
        check_same_files(camera, refs, previous.uris)
    done = set() if force else previous.done
    todo = [r for r in refs if r.video_id not in done]
    other = settings_of_done(output, camera, [r for r in refs if r.video_id in done], model_id,
                             storage_options) - {run_id}
    if other:
        log.warning("videos already scored by this model with other settings (run_id %s; this run is %s) keep "
                    "their rows: only the %d new or changed videos get this run's settings, so the tables mix "
                    "the two (--force rescores every video with this run's)", ", ".join(sorted(other)), run_id,
                    len(todo))
    ray_start_seconds = 0.0
    if todo:   # refused before anything is deleted
        ray_start_seconds = ensure_ray()
        require_room(actors, 0 if gpus_per_actor else 1, gpus_per_actor,
                     f"--actors {actors}" + (f" with --gpus-per-actor {gpus_per_actor:g}" if gpus_per_actor else
                                             " (each model actor on CPU holds 1 CPU)"))
    _drop_superseded(output, camera, refs, todo, model_id, previous, storage_options)
    summary = ScoreSummary(videos=len(refs), skipped=len(done), ray_start_seconds=ray_start_seconds)
    results: list[dict[str, Any]] = []
    log.info("scoring %d videos (%d already done) with %s", len(todo), len(done), model_id)
    if todo:
        if actor_threads is None:
            actor_threads = threads_per_worker(actors)
        clear_errors(storage.join(output, "errors"), camera, [r.video_id for r in todo], storage_options,
                     model_id=model_id)
        plan = ProbeAndPlan(output, camera, segment_seconds, frame_fps, storage_options, model_id=model_id,
                            **score_segment_plan(T, hop))
        model = model_actor, (checkpoint, ckpt_options, batch_size, grid, actor_threads, gain_correction,
                              gpus_per_actor > 0, model_id)
        scored = _scored_rows(todo, plan, VolumeRows(output, size, T, hop, storage_options, model_id), model, actors,
                              gpus_per_actor)
        dates = {r.video_id: video_date(r) for r in todo}
        undated = sum(d == "unknown" for d in dates.values())
        if undated:
            log.warning("%d of %d videos have no date (YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD…) in their path "
                        "below SOURCE: their date= partition is 'unknown' (score the camera's folder, not a day "
                        "folder, to keep the dates)", undated, len(dates))
        assemble = _WriteOrRecord(AssembleVideo(output, card, run_id, dates, events, grid, storage_options),
                                  storage.join(output, "errors"), storage_options, model_id)
        try:
            results = _write_videos_as_they_complete(scored, assemble, len(todo))
        except ray.exceptions.RayActorError as exc:   # a model actor refused to start (ScoreVolumes)
            raise failed_actor_start(exc) from None
        summary.frames = sum(r["frames"] for r in results)
        summary.events = sum(r["events"] for r in results)
    # Every listed video's rows, the skipped ones' too: a rerun of the same archive reports the
    # same failures and exit status as the first run (a truncated file stays truncated).
    listed = {r.video_id for r in refs}
    summary.errors = [e for e in read_errors(storage.join(output, "errors"), storage_options, camera,
                                             model_id).to_pylist() if e["video_id"] in listed]
    summary.errors += [r["unrecorded_error"] for r in results if r.get("unrecorded_error")]
    summary.videos_failed = len({e["video_id"] for e in failed_rows(summary.errors)})
    summary.seconds = time.perf_counter() - started
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder, prefix or file of videos: /data/cam3, s3://bucket/cam3/2024/")
    parser.add_argument("output", help="where frames/, events/, errors/ and manifest/ go (local or s3://)")
    parser.add_argument("--checkpoint", required=True,
                        help="a training run's CHECKPOINT_DIR or a checkpoint folder (model.pt + card.json)")
    parser.add_argument("--camera", default="default",
                        help="camera name (letters, digits, . _ -): the camera= partition of the tables. "
                             "A video's identity in OUTPUT is (camera, video_id), so two cameras' archives "
                             "with the same file names can share one OUTPUT")
    parser.add_argument("--actors", type=int, default=1, help="model actors (each loads the model once; default 1)")
    parser.add_argument("--gpus-per-actor", type=float, default=0.0,
                        help="GPUs per model actor (0 = CPU; fractions share a GPU)")
    parser.add_argument("--batch-size", type=int, default=16, help="volumes per forward pass (default 16)")
    parser.add_argument("--actor-threads", type=int, default=None,
                        help="torch threads per CPU model actor (default: the largest node's CPUs "
                             "divided by --actors; each actor reserves 1 CPU, decode tasks use the rest)")
    parser.add_argument("--hop", type=int, default=SCORE_HOP,
                        help="frames between the starts of consecutive 10-frame volumes (1..T; default 5: "
                             "each frame is in 2 volumes; 1 = the smoothest, 5× the model work). A last volume "
                             "ending on the final frame is always added, so every frame gets a score")
    add_decode_options(parser)
    parser.add_argument("--grid", type=int, default=GRID_DEFAULT,
                        help=f"cells per side of the error grid for cell_error_max (default {GRID_DEFAULT})")
    parser.add_argument("--persistence", type=float, default=None,
                        help="minimum persistence (depth in regularity units) of an event's minimum "
                             f"(default {PERSISTENCE_DEFAULT})")
    parser.add_argument("--window", type=int, default=WINDOW_DEFAULT,
                        help=f"minima within this many frames form one event (default {WINDOW_DEFAULT})")
    parser.add_argument("--min-event-seconds", type=float, default=0.0,
                        help="drop events shorter than this many seconds, first frame to last (default 0: "
                             "keep all; an event worth a look lasts seconds, so 1-2 drops brief blips)")
    parser.add_argument("--events-from", choices=EVENT_SCORES, default="regularity",
                        help="the frames column whose dips become events (default regularity, the "
                             "paper's; combined_regularity also catches a sudden motion of normal "
                             "objects, which regularity does not see). The events' `score` column "
                             "records it")
    parser.add_argument("--gain-correction", action="store_true",
                        help="divide each frame by its brightness gain against the training footage "
                             "(median against median) before the model, so that a light switched on "
                             "does not read as an anomaly; changes the model's input for every score "
                             "(regularity is then not the paper's input). Use --force to rescore "
                             "videos already scored without it")
    parser.add_argument("--force", action="store_true", help="rescore videos the manifest says are done")
    parser.add_argument("--moved-from", metavar="OLD_SOURCE", default=None,
                        help="the archive was scored at OLD_SOURCE and has moved to SOURCE (a new mount "
                             "point or bucket): a file at the same path below it with the same size and "
                             "ETag or mtime keeps its scores (every model's), re-pointed at its new place; "
                             "one that changed on the way is scored again. Re-pointing happens before the "
                             "run's other checks. Without it, a moved archive is refused as other files "
                             "claiming scored ids")
    storage.add_storage_options(parser, "SOURCE, OUTPUT and CHECKPOINT")


def run(args: argparse.Namespace) -> int:
    storage_options = storage.parse_storage_options(args.storage_options)
    summary = run_score(args.source, args.output, args.checkpoint, camera=args.camera, actors=args.actors,
                        gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size, hop=args.hop,
                        segment_seconds=args.segment_seconds, frame_fps=args.frame_fps, grid=args.grid,
                        persistence=args.persistence, window=args.window, events_from=args.events_from,
                        min_event_seconds=args.min_event_seconds,
                        force=args.force, actor_threads=args.actor_threads, gain_correction=args.gain_correction,
                        moved_from=args.moved_from, storage_options=storage_options)
    return summary.print_and_exit_status()
