"""vadray bench score: scoring frames/s end to end against bare model inference, as a RATIO,
and peak worker memory of a video against the same video 10× longer, as a RATIO.

THROUGHPUT. The job is `vadray.score.run_score` as `vadray score` runs it: listing, probe and
segment plan (Ray Data), decode + grey SIZE×SIZE + volumes (Ray Data), the model in an actor
pool, per-frame errors, per-video assembly, frames/events Parquet tables, manifest. Ray is
started before the clock runs; each run writes into a fresh OUTPUT.
The baseline is the bare model: the same checkpoint (`vadray.load_model`), in this (driver)
process, on volumes decoded and normalised beforehand (not timed), the same volumes per
frame (the same HOP, every video's `volume_starts` incl. the last one ending on the final
frame), the same batch size, `torch.inference_mode`, torch threads = the CPUs Ray has
(--threads). No decode, no errors, no tables, no scheduling.
Baseline and job runs alternate (--repeat); the line to read is the median ratio
job fps / baseline fps (target ≥ 0.8), against the faster baseline of the run when two are
measured (see below): a bare loop slowed by a thread count that does not suit the machine is
no baseline. On a busy machine 2 OpenMP threads can be several times slower than 1.
Where the job's time went is printed as three phases (start, batches, finish).

The model actor is probed: a subclass of `ScoreVolumes` that records, inside the actor,
torch.get_num_threads(), OMP_NUM_THREADS, the CPUs it may run on and the seconds spent in
`reconstruct` (the model). The actor's torch threads are score's --actor-threads (default:
the node's CPUs shared by the actors). When the actor runs torch with fewer threads than the
baseline, a second baseline with the actor's thread count is measured right after each job
run and printed as well, so the gap splits into "fewer threads" and "pipeline overhead".

MEMORY. One video of N frames and one of 10×N (--memory-frames; the same synthetic scene), each
scored by `vadray score` in a fresh process with its own fresh local Ray (so no worker of
an earlier run is measured) and a small --memory-segment-seconds so that the long one is cut
into many segments (vadray/bench/score_memory.py says what is sampled and how).

Without --checkpoint, a checkpoint is made once into WORKDIR by the real jobs (synthetic
archive → run_ingest → run_training, one epoch, tiny settings) and reused.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import time
from typing import Any

import numpy as np

from vadray import storage
from vadray.bench.score_inputs import quick_checkpoint, synthetic_archive
from vadray.bench.score_memory import memory
from vadray.errors import count
from vadray.exits import EXIT_OK, EXIT_PARTIAL, UsageError


# ---------------------------------------------------------------------------- baseline

def predecode(source: str, checkpoint: str, hop: int) -> tuple[list[np.ndarray], int]:
    """Every video of `source` decoded, normalised and gathered into scoring volumes.

    Returns ([volumes (V, T, S, S) float32 per video], frames). The same decode, statistics
    and volume starts (stride 1, HOP, a last volume ending on the final frame) as the job.
    """
    from vadray.checkpoint import read_card
    from vadray.decode import decode_segment
    from vadray.probe import probe
    from vadray.listing import list_videos
    from vadray.preprocess import NormStats
    from vadray.volumes import gather, volume_starts

    card = read_card(checkpoint)
    stats = NormStats.from_dict(card["norm_stats"])
    T, size = int(card["input"]["T"]), int(card["input"]["size"])
    per_video, frames = [], 0
    for ref in list_videos(source):
        timeline = probe(ref.uri)
        decoded = decode_segment(ref.uri, timeline, 0, timeline.num_frames, size)
        if decoded.error:
            raise RuntimeError(f"baseline decode of {ref.uri} failed: {decoded.error}")
        starts = volume_starts(decoded.frames.shape[0], T, 1, hop)
        per_video.append(np.ascontiguousarray(gather(stats.normalize(decoded.frames), starts, T)))
        frames += decoded.frames.shape[0]
    return per_video, frames


def bare_inference(model, volumes: list, batch_size: int, threads: int) -> float:
    """Seconds for the bare model over all volumes: batches of `batch_size`, inference_mode."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        with torch.inference_mode():
            for x in volumes:  # (V, T, 1, S, S) float32 tensors
                for a in range(0, x.shape[0], batch_size):
                    model(x[a:a + batch_size])
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the job, with a probe in its actor

def probed_score_volumes(probe_dir: str):
    """A ScoreVolumes subclass that records, inside the actor, what torch runs with.

    Defined in a function so that Ray pickles it by value together with `probe_dir`. Each
    actor writes `<pid>.json` into probe_dir after its constructor and after every batch.
    """
    from vadray.score_stages import ScoreVolumes

    class ProbedScoreVolumes(ScoreVolumes):
        def __init__(self, *args: Any, **kwargs: Any):
            init_start = time.time()  # wall clock: compared with the driver's
            super().__init__(*args, **kwargs)
            import torch

            try:
                cpus = len(os.sched_getaffinity(0))
            except AttributeError:
                cpus = os.cpu_count()
            self._probe = {"pid": os.getpid(), "torch_threads": torch.get_num_threads(),
                           "torch_interop_threads": torch.get_num_interop_threads(),
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                           "cpus_visible": cpus, "device": str(self.device),
                           "model_seconds": 0.0, "volumes": 0, "call_seconds": 0.0, "calls": 0,
                           "init_start": init_start, "init_end": time.time(),
                           "first_call_start": None, "last_call_end": None}
            self._write_probe()

        def _write_probe(self) -> None:
            path = os.path.join(probe_dir, f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as f:
                json.dump(self._probe, f)
            os.replace(path + ".tmp", path)

        def reconstruct(self, volumes: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            try:
                return super().reconstruct(volumes)
            finally:
                self._probe["model_seconds"] += time.perf_counter() - started
                self._probe["volumes"] += int(volumes.shape[0])

        def __call__(self, batch):
            import torch

            started = time.perf_counter()
            if self._probe["first_call_start"] is None:
                self._probe["first_call_start"] = time.time()
            out = super().__call__(batch)
            self._probe["last_call_end"] = time.time()
            self._probe["call_seconds"] += time.perf_counter() - started
            self._probe["calls"] += 1
            self._probe["torch_threads_in_call"] = torch.get_num_threads()
            self._write_probe()
            return out

    return ProbedScoreVolumes


def read_probes(probe_dir: str) -> list[dict[str, Any]]:
    probes = []
    for name in sorted(os.listdir(probe_dir)):
        if name.endswith(".json"):
            with open(os.path.join(probe_dir, name)) as f:
                probes.append(json.load(f))
    return probes


def run_score_timed(source: str, output: str, checkpoint: str, hop: int, batch_size: int,
                    actors: int, probe_dir: str, actor_threads: int | None = None):
    """(ScoreSummary, seconds, actor probes, {phase: seconds}) of one run_score into a fresh output.

    Phases, from the driver's clock and the actor probes' wall-clock stamps:
      start     run_score called → the first batch reaches a model actor (listing, probe and
                plan, actor start-up and model load, the first segment's decode)
      batches   first batch → last batch done in the actors (the model share of it is printed)
      finish    last batch done → run_score returns (the last videos' assembly, tables, manifest)
    """
    from vadray.score import run_score

    shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(probe_dir, ignore_errors=True)
    os.makedirs(probe_dir)
    wall_start = time.time()
    started = time.perf_counter()
    summary = run_score(source, output, checkpoint, hop=hop, batch_size=batch_size, actors=actors,
                        actor_threads=actor_threads, model_actor=probed_score_volumes(probe_dir))
    seconds = time.perf_counter() - started
    probes = read_probes(probe_dir)
    firsts = [p["first_call_start"] for p in probes if p.get("first_call_start")]
    lasts = [p["last_call_end"] for p in probes if p.get("last_call_end")]
    phases = {}
    if firsts and lasts:
        first, last = min(firsts), max(lasts)
        phases = {"start": first - wall_start, "batches": last - first,
                  "finish": wall_start + seconds - last}
    return summary, seconds, probes, phases


# ---------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default=os.path.join("bench-output", "score"),
                        help="local folder for the synthetic videos, the checkpoint and outputs "
                             "(default: %(default)s)")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint to score with (CHECKPOINT_DIR or folder with model.pt + "
                             "card.json); default: one made once into WORKDIR by the real ingest and "
                             "training jobs (1 epoch, tiny settings) at --size")
    parser.add_argument("--size", type=int, default=227,
                        help="frame size S of the checkpoint made without --checkpoint (11 + 8k; "
                             "default 227, the paper's; 59 runs ~15× faster and weighs decode more); "
                             "ignored with --checkpoint")
    parser.add_argument("--frames", type=int, default=300,
                        help="frames per synthetic video of the throughput part (default 300, 30 s at "
                             "10 fps)")
    parser.add_argument("--videos", type=int, default=4, help="videos in the throughput archive (default 4)")
    parser.add_argument("--memory-frames", type=int, default=None,
                        help="the memory part compares one video of N frames with one of 10×N "
                             "(default: --frames)")
    parser.add_argument("--width", type=int, default=320, help="source frame width (default 320)")
    parser.add_argument("--height", type=int, default=240, help="source frame height (default 240)")
    parser.add_argument("--hop", type=int, default=5, help="score's --hop, also the baseline's (default 5)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="score's --batch-size, also the baseline's (default 16)")
    parser.add_argument("--actors", type=int, default=1, help="score's --actors (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the baseline (default: the CPUs Ray has)")
    parser.add_argument("--actor-threads", type=int, default=None,
                        help="score's --actor-threads (default: score's default, the node's CPUs "
                             "divided by --actors)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="baseline/job pairs, alternating; the median ratio is reported (default 2)")
    parser.add_argument("--memory-segment-seconds", type=float, default=5.0,
                        help="score's --segment-seconds in the memory part (default 5: a 60 s video is "
                             "12 segments, its 10× longer twin 120)")
    parser.add_argument("--sample-interval", type=float, default=0.05,
                        help="seconds between memory samples (default 0.05)")
    parser.add_argument("--only", choices=("throughput", "memory"), default=None,
                        help="run one part only (default: both)")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _check(args: argparse.Namespace) -> None:
    from vadray.models import check_size

    for name in ("frames", "videos", "hop", "batch_size", "actors", "repeat"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.frames < 10:
        raise UsageError("--frames must be at least 10 (one volume)")
    if args.memory_frames is not None and args.memory_frames < 10:
        raise UsageError("--memory-frames must be at least 10 (one volume)")
    for name in ("threads", "actor_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.width % 2 or args.height % 2 or args.width < 16 or args.height < 16:
        raise UsageError("--width and --height must be even and at least 16")
    if args.memory_segment_seconds <= 0 or args.sample_interval <= 0:
        raise UsageError("--memory-segment-seconds and --sample-interval must be positive")
    if storage.is_remote(args.workdir):
        raise UsageError("--workdir must be a local folder (the baseline and the memory probe run here)")
    if args.checkpoint is None:
        try:
            check_size("convlstm_ae", args.size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def throughput(args: argparse.Namespace, checkpoint: str, card: dict, ray_cpus: int) -> int:
    import torch

    from vadray.checkpoint import load_model

    source = synthetic_archive(os.path.join(args.workdir, f"score-archive-{args.videos}x{args.frames}-"
                                                          f"{args.width}x{args.height}"),
                               args.videos, args.frames, args.width, args.height, seed=5)
    threads = args.threads or ray_cpus or torch.get_num_threads()
    model, _ = load_model(checkpoint)
    volumes, frames = predecode(source, checkpoint, args.hop)
    tensors = [torch.from_numpy(v).unsqueeze(2) for v in volumes]  # (V, T, 1, S, S)
    n_volumes = sum(v.shape[0] for v in volumes)
    print(f"score bench: {args.videos} videos × {args.frames} frames ({args.width}×{args.height}) → "
          f"{card['input']['size']} px, {n_volumes} volumes (hop {args.hop}), batch {args.batch_size}, "
          f"{args.actors} actor(s), Ray CPUs {ray_cpus}, baseline torch threads {threads}, "
          f"{args.repeat} repeat(s)")
    bare_inference(model, [t[:args.batch_size] for t in tensors[:1]], args.batch_size, threads)  # warm-up

    output = os.path.join(args.workdir, "score-output")
    probe_dir = os.path.join(args.workdir, "actor-probe")
    rows, failures, probes = [], 0, []
    for i in range(args.repeat):
        # baseline (Ray's CPUs as threads) → job → baseline with the actor's torch threads, when
        # those differ: both baselines bracket the job they are compared with.
        base_s = bare_inference(model, tensors, args.batch_size, threads)
        summary, job_s, probes, phases = run_score_timed(source, output, checkpoint, args.hop,
                                                         args.batch_size, args.actors, probe_dir,
                                                         args.actor_threads)
        actor_t = min((p["torch_threads"] for p in probes), default=threads)
        same_s = bare_inference(model, tensors, args.batch_size, actor_t) if actor_t != threads else base_s
        failures = summary.failures
        base_fps, job_fps, same_fps = frames / base_s, summary.frames / job_s, frames / same_s
        best_fps = max(base_fps, same_fps)
        model_s = sum(p["model_seconds"] for p in probes)
        rows.append({"base": base_fps, "job": job_fps, "same": same_fps, "best": best_fps,
                     "ratio": job_fps / best_fps, "ratio_base": job_fps / base_fps,
                     "ratio_same": job_fps / same_fps, "model_share": model_s / job_s, "actor_t": actor_t,
                     **{f"phase_{k}": v for k, v in phases.items()}})
        same_text = (f" | baseline at {actor_t} thread(s) {same_s:.2f} s {same_fps:.1f} fps"
                     if actor_t != threads else "")
        phase_text = ("; " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())) if phases else ""
        print(f"  run {i + 1}: baseline {frames} frames {base_s:.2f} s {base_fps:.1f} fps | "
              f"score {summary.frames} frames {job_s:.2f} s {job_fps:.1f} fps "
              f"(model in the actor {model_s:.2f} s{phase_text}){same_text} | ratio {rows[-1]['ratio']:.2f}",
              flush=True)
        if summary.frames != frames:
            print(f"  warning: score wrote {summary.frames} frames, the baseline had {frames}")
    shutil.rmtree(output, ignore_errors=True)

    for p in probes:
        forced = (f" (--actor-threads {args.actor_threads})" if args.actor_threads
                  else " (score's default --actor-threads)")
        print(f"actor (pid {p['pid']}): torch threads {p['torch_threads']}{forced} (interop "
              f"{p['torch_interop_threads']}), OMP_NUM_THREADS={p['OMP_NUM_THREADS']}, "
              f"{p['cpus_visible']} CPUs visible, device {p['device']}, {p['volumes']} volumes, "
              f"model {p['model_seconds']:.2f} s of {p['call_seconds']:.2f} s in its batches")
    med = {k: _median([r[k] for r in rows if k in r])
           for k in ("base", "job", "same", "best", "ratio", "ratio_base", "ratio_same", "model_share",
                     "phase_start", "phase_batches", "phase_finish")}
    actor_threads = sorted({r["actor_t"] for r in rows})
    differs = actor_threads != [threads]
    print(f"frames            {frames} in {count(args.videos, 'video')}, {n_volumes} volumes")
    print(f"baseline fps      {med['base']:.1f}  (bare model, pre-decoded volumes, {threads} torch threads, "
          f"driver process)")
    if differs:
        print(f"baseline fps      {med['same']:.1f}  (the same with {actor_threads[0]} torch thread(s), as "
              f"the actor runs)")
    print(f"score fps         {med['job']:.1f}  (vadray.score.run_score end to end)")
    print(f"model share       {100 * med['model_share']:.0f}% of the job's wall time is the model inside "
          f"the actor")
    if med["phase_batches"] == med["phase_batches"]:
        print(f"job time          start {med['phase_start']:.1f} s (until the first batch reaches the "
              f"actor), batches {med['phase_batches']:.1f} s, finish {med['phase_finish']:.1f} s (after "
              f"the last batch: last assembly, tables)  (medians)")
    note = (f"  FINDING: the actor runs torch with {actor_threads[0]} thread(s), the baseline with "
            f"{threads}" if differs else "")
    print(f"actor threads     {', '.join(map(str, actor_threads))}{note}")
    if differs:
        print(f"{f'ratio {threads} thr.':<18}{med['ratio_base']:.2f}  (score / baseline at {threads} torch "
              f"threads)")
        print(f"ratio same thr.   {med['ratio_same']:.2f}  (score / baseline at the actor's thread count)")
    verdict = "ok" if med["ratio"] >= 0.8 else "BELOW TARGET"
    which = "the faster of the baselines in each run" if differs else "baseline"
    print(f"ratio             {med['ratio']:.2f}  (median of {len(rows)}; score / {which}, target >= 0.80: "
          f"{verdict})")
    if failures:
        print(f"note: {failures} error row(s) in the last score run")
    return failures


def run(args: argparse.Namespace) -> int:
    import ray

    from vadray.checkpoint import read_card
    from vadray.raylib import ensure_ray

    _check(args)
    os.makedirs(args.workdir, exist_ok=True)
    ensure_ray(num_cpus=os.cpu_count())
    ray_cpus = int(ray.cluster_resources().get("CPU", 0))
    with contextlib.suppress(Exception):  # progress bars are noise in a benchmark's output
        ray.data.DataContext.get_current().enable_progress_bars = False
    checkpoint = args.checkpoint or quick_checkpoint(args.workdir, args.size, args.width, args.height)
    try:
        card = read_card(checkpoint)
    except (FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot read checkpoint {checkpoint!r}: {exc}") from None
    if args.hop > int(card["input"]["T"]):
        raise UsageError(f"--hop {args.hop} > T={card['input']['T']} would leave frames without a score")
    print(f"checkpoint: {checkpoint} ({card['model']['name']}, {card['input']['size']} px, "
          f"model {card['model_id']})")
    failures = 0
    if args.only in (None, "throughput"):
        failures += throughput(args, checkpoint, card, ray_cpus)
    if args.only in (None, "memory"):
        failures += memory(args, checkpoint)
    return EXIT_PARTIAL if failures else EXIT_OK
