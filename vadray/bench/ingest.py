"""vadray bench ingest: ingest frames/s end to end against a bare PyAV baseline, as a RATIO.

Ingest is `vadray.ingest.run_ingest` as the `vadray ingest` command runs it: listing, probe
(Ray Data), decode + grey SIZE×SIZE + Parquet shards (Ray Data), errors table, statistics
(Ray Data reduction) and stats.json; everything it does is timed. Ray is started before
the clock runs, so Ray start-up is not counted.

The baseline is the bare work: PyAV decodes the same files with the same reformat
(`vadray.decode.GreyScaler`: FFmpeg swscale to SIZE×SIZE grey) in a multiprocessing pool of
N processes (N = the CPUs Ray uses), one file per task, frames dropped after the reformat.
No listing, probe, Parquet, statistics or scheduling. The pool is started before timing.

Baseline and ingest runs alternate (--repeat); the line to read is the median ratio
ingest fps / baseline fps (target ≥ 0.8). Where ingest's time went is printed per phase:
  list+probe    listing, removing a previous output, the probe stage (until segments are known)
  decode+write  the decode stage and write_parquet
  stats         reading the errors table and the statistics reduction over the written shards
  rest          stats.json and the summary
By default the source is a synthetic archive (vadray.synth) generated once into the workdir
and reused; `--source ../shared/datasets/ucsd-ped2/train` measures the real Ped2 clips.
Use a local workdir: the baseline runs on this machine only.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Iterator

import av

from vadray import storage
from vadray.decode import GreyScaler
from vadray.exits import EXIT_OK, EXIT_PARTIAL, UsageError

PHASES = ("list+probe", "decode+write", "stats", "rest")


# ---------------------------------------------------------------------------- baseline

def _open_input(uri: str):
    """A local path goes to FFmpeg's own file I/O; anything else through fsspec."""
    fs, path = storage.url_to_fs(uri)
    if not storage.is_remote(uri):
        return av.open(path, mode="r")
    return av.open(fs.open(path, "rb"), mode="r")


def bare_decode(task: tuple[str, list[str], int]) -> int:
    """Decode one video (or frame folder) to grey SIZE×SIZE uint8 arrays; the frame count."""
    uri, frame_uris, size = task
    scaler = GreyScaler(size)
    count = 0
    if frame_uris:
        for frame_uri in frame_uris:
            with _open_input(frame_uri) as container:
                scaler(next(container.decode(video=0)))
                count += 1
        return count
    with _open_input(uri) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as vadray.decode.decode_segment
        for frame in container.decode(stream):
            scaler(frame)
            count += 1
    return count


def _warm(_: int) -> int:
    return os.getpid()


def run_baseline(pool, tasks: list[tuple[str, list[str], int]]) -> tuple[int, float]:
    """(frames, seconds) of decoding every task in the pool, largest first."""
    started = time.perf_counter()
    frames = sum(pool.imap_unordered(bare_decode, tasks, chunksize=1))
    return frames, time.perf_counter() - started


# ---------------------------------------------------------------------------- ingest, timed by phase

class _Marks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.times: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        for word in ("ingesting", "decoding"):
            if text.startswith(word):
                self.times.setdefault(word, time.perf_counter())


@contextlib.contextmanager
def _phase_clock() -> Iterator[dict[str, float]]:
    """Time stamps of run_ingest's phases, from its log lines and two of its calls.

    Wraps `read_errors` and `compute_stats` in the vadray.ingest namespace for the duration
    (restored after); vadray/ingest.py itself is not changed.
    """
    import vadray.ingest as ingest_module

    marks = _Marks()
    logger = logging.getLogger("vadray.ingest")
    old_level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(marks)
    times = marks.times
    read_errors, compute_stats = ingest_module.read_errors, ingest_module.compute_stats

    def timed_read_errors(*a: Any, **k: Any):
        times.setdefault("read_errors", time.perf_counter())
        return read_errors(*a, **k)

    def timed_compute_stats(*a: Any, **k: Any):
        try:
            return compute_stats(*a, **k)
        finally:
            times["stats_done"] = time.perf_counter()

    ingest_module.read_errors, ingest_module.compute_stats = timed_read_errors, timed_compute_stats
    try:
        yield times
    finally:
        ingest_module.read_errors, ingest_module.compute_stats = read_errors, compute_stats
        logger.removeHandler(marks)
        logger.setLevel(old_level)


def run_ingest_timed(source: str, output: str, size: int, segment_seconds: float):
    """(IngestSummary, seconds, {phase: seconds}) of one run_ingest into a fresh output."""
    from vadray.ingest import run_ingest

    shutil.rmtree(output, ignore_errors=True)
    with _phase_clock() as marks:
        started = time.perf_counter()
        summary = run_ingest(source, output, size=size, segment_seconds=segment_seconds)
        ended = time.perf_counter()
    points = [started, marks.get("decoding"), marks.get("read_errors"), marks.get("stats_done"), ended]
    phases: dict[str, float] = {}
    if None not in points:
        phases = {name: b - a for name, a, b in zip(PHASES, points[:-1], points[1:])}
    return summary, ended - started, phases


# ---------------------------------------------------------------------------- the source

def synthetic_archive(workdir: str, videos: int, width: int, height: int, frames: int) -> str:
    """The default source: generated once (seconds to a minute), then reused."""
    from vadray.synth import make_archive

    folder = os.path.join(workdir, f"synth-{videos}x{frames}-{width}x{height}")
    done = os.path.join(folder, ".complete")
    if os.path.exists(done):
        print(f"source: {folder} (synthetic, reused)")
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    make_archive(folder, num_videos=videos, width=width, height=height, num_frames=frames, seed=7)
    os.remove(os.path.join(folder, "frame_labels.csv"))  # only the videos are the archive here
    with open(done, "w") as f:
        f.write("ok\n")
    print(f"source: {folder} (synthetic, generated in {time.perf_counter() - started:.1f} s, "
          f"not counted)")
    return folder


# ---------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None,
                        help="archive to ingest (folder of videos or frame folders); default: a "
                             "synthetic archive generated once into WORKDIR (see --videos …)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vadray-bench-ingest"),
                        help="local folder for the synthetic archive and the ingest output "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=227, help="frames become SIZE×SIZE grey (default 227)")
    parser.add_argument("--processes", type=int, default=None,
                        help="baseline pool size and Ray's CPUs when this starts Ray (default: "
                             "os.cpu_count(); with Ray already running, the CPUs Ray has)")
    parser.add_argument("--segment-seconds", type=float, default=60.0,
                        help="ingest's --segment-seconds (default 60)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="baseline/ingest pairs, alternating; the median ratio is reported (default 3)")
    synth = parser.add_argument_group("synthetic source (when --source is not given)")
    synth.add_argument("--videos", type=int, default=8, help="clips (default 8)")
    synth.add_argument("--frames", type=int, default=600, help="frames per clip (default 600, 60 s at 10 fps)")
    synth.add_argument("--width", type=int, default=320, help="frame width (default 320)")
    synth.add_argument("--height", type=int, default=240, help="frame height (default 240)")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> int:
    import ray

    from vadray.listing import list_videos
    from vadray.raylib import ensure_ray

    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if args.processes is not None and args.processes < 1:
        raise UsageError("--processes must be at least 1")
    if args.size < 8:
        raise UsageError("--size must be at least 8 pixels")
    if storage.is_remote(args.workdir):
        raise UsageError("--workdir must be a local folder (the baseline runs on this machine)")
    os.makedirs(args.workdir, exist_ok=True)
    source = args.source or synthetic_archive(args.workdir, args.videos, args.width, args.height,
                                              args.frames)
    refs = list_videos(source)
    if not refs:
        raise UsageError(f"no videos or frame folders under {source!r}")
    # The baseline's tasks: largest first so that one long file does not finish last alone.
    tasks = [(r.uri, r.frame_uris, args.size) for r in sorted(refs, key=lambda r: -r.size)]

    ensure_ray(num_cpus=args.processes or os.cpu_count())
    ray_cpus = int(ray.cluster_resources().get("CPU", 0))
    processes = args.processes or ray_cpus or os.cpu_count() or 1
    if processes != ray_cpus:
        print(f"note: baseline uses {processes} processes, Ray has {ray_cpus} CPUs")
    with contextlib.suppress(Exception):  # progress bars are noise in a benchmark's output
        ray.data.DataContext.get_current().enable_progress_bars = False

    output = os.path.join(args.workdir, "ingest-output")
    print(f"ingest bench: {len(refs)} videos from {source}, size {args.size}, {processes} processes, "
          f"Ray CPUs {ray_cpus}, segment {args.segment_seconds:g} s, {args.repeat} repeat(s)")
    rows = []
    failures = 0
    # spawn, not fork: this process runs Ray's threads. Started and warmed before timing.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm, range(4 * processes), chunksize=1)
        for i in range(args.repeat):
            base_frames, base_s = run_baseline(pool, tasks)
            summary, ingest_s, phases = run_ingest_timed(source, output, args.size, args.segment_seconds)
            failures = summary.failures
            base_fps, ingest_fps = base_frames / base_s, summary.frames / ingest_s
            ratio = ingest_fps / base_fps if base_fps else float("nan")
            rows.append((base_frames, base_s, base_fps, summary.frames, ingest_s, ingest_fps, ratio, phases))
            where = "  ".join(f"{k} {v:.2f}s" for k, v in phases.items())
            print(f"  run {i + 1}: baseline {base_frames} frames {base_s:.2f} s {base_fps:.0f} fps | "
                  f"ingest {summary.frames} frames {ingest_s:.2f} s {ingest_fps:.0f} fps | "
                  f"ratio {ratio:.2f} | {where}")
            if summary.frames != base_frames:
                print(f"  warning: ingest stored {summary.frames} frames, the baseline decoded {base_frames}")
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(output, "clips"))
                  for f in files)
    shutil.rmtree(output, ignore_errors=True)

    base_fps = _median([r[2] for r in rows])
    ingest_fps = _median([r[5] for r in rows])
    ratio = _median([r[6] for r in rows])
    phase_medians = {name: _median([r[7][name] for r in rows if name in r[7]]) for name in PHASES}
    phase_shares = {name: _median([r[7][name] / r[4] for r in rows if name in r[7]]) for name in PHASES}
    print(f"videos            {len(refs)}")
    print(f"frames            {rows[-1][3]} (baseline decoded {rows[-1][0]})")
    print(f"clips written     {written / 1e6:.1f} MB of Parquet ({written / max(rows[-1][3], 1) / 1e3:.1f} kB/frame)")
    print(f"baseline fps      {base_fps:.1f}  (bare PyAV decode + GreyScaler, {processes} processes)")
    print(f"ingest fps        {ingest_fps:.1f}  (vadray.ingest.run_ingest end to end)")
    if all(v == v for v in phase_medians.values()):
        print("ingest time       " + ", ".join(
            f"{k} {v:.2f} s ({100 * phase_shares[k]:.0f}%)" for k, v in phase_medians.items())
            + "  (medians)")
    verdict = "ok" if ratio >= 0.8 else "BELOW TARGET"
    print(f"ratio             {ratio:.2f}  (median of {len(rows)}; ingest/baseline, target >= 0.80: {verdict})")
    if failures:
        print(f"note: {failures} error row(s) in the last ingest run")
    return EXIT_PARTIAL if failures else EXIT_OK
