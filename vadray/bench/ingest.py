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
  list                listing the source (until run_ingest logs "ingesting")
  probe+decode+write  removing a previous output, then the one streaming Ray Data pipeline:
                      probe, decode, write_parquet and each segment's statistics sums
  stats               reading the errors table and adding the per-segment sums
  rest                stats.json and the summary
(a phase whose end cannot be seen in this version of run_ingest merges into the next one),
with the CPU seconds that this process and all of its descendants (a local Ray's GCS,
raylet, workers and actors) spent meanwhile, against the baseline's CPU seconds.
By default the source is a synthetic archive (vadray.synth) generated once into the workdir
and reused; `--source ../shared/datasets/ucsd-ped2/train` measures the real Ped2 clips.
Use a local workdir: the baseline runs on this machine only.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import av

from vadray import storage
from vadray.decode import DECODER_THREADS, GreyScaler
from vadray.probe import video_stream
from vadray.exits import EXIT_OK, EXIT_PARTIAL, UsageError

PHASES = ("list", "probe+decode+write", "stats", "rest")


# ---------------------------------------------------------------------------- baseline

@contextlib.contextmanager
def _open_input(uri: str, still: bool = False) -> Iterator[Any]:
    """A local video goes to FFmpeg's own file I/O; anything else through fsspec (as
    `vadray.decode` opens them)."""
    fs, path = storage.url_to_fs(uri)
    if not storage.is_remote(uri) and not still:
        with av.open(path, mode="r") as container:
            yield container
    else:
        with fs.open(path, "rb") as handle, av.open(handle, mode="r") as container:
            yield container


def bare_decode(task: tuple[str, list[str], int]) -> int:
    """Decode one video (or frame folder) to grey SIZE×SIZE uint8 arrays; the frame count."""
    uri, frame_uris, size = task
    scaler = GreyScaler(size)
    count = 0
    if frame_uris:
        for frame_uri in filter(None, frame_uris):
            with _open_input(frame_uri, still=True) as container:
                scaler(next(container.decode(video=0)))
                count += 1
        return count
    with _open_input(uri) as container:
        stream = video_stream(container)
        stream.thread_count = DECODER_THREADS  # as vadray.decode.decode_segment
        for frame in container.decode(stream):
            scaler(frame)
            count += 1
    return count


def _warm(_: int) -> int:
    return os.getpid()


def run_baseline(pool, tasks: list[tuple[str, list[str], int]]) -> tuple[int, float]:
    """(frames, seconds) of decoding every task in the pool, in the order given."""
    started = time.perf_counter()
    frames = sum(pool.imap_unordered(bare_decode, tasks, chunksize=1))
    return frames, time.perf_counter() - started


# ---------------------------------------------------------------------------- CPU time

def _proc_table() -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds of it and its reaped children) of every process (Linux
    /proc; {} elsewhere)."""
    table: dict[int, tuple[int, float]] = {}
    try:
        tick = os.sysconf("SC_CLK_TCK")
        names = os.listdir("/proc")
    except (OSError, ValueError, AttributeError):
        return table
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # utime + stime, plus cutime + cstime: the CPU of children it has reaped (Ray's raylet
        # reaps the workers and actors it kills), so a process that ended is not lost.
        table[int(name)] = (int(fields[1]), sum(int(v) for v in fields[11:15]) / tick)
    return table


def cpu_seconds() -> dict[int, float]:
    """CPU seconds of this process and of its descendants: a local Ray's GCS, raylet and
    workers, and the baseline pool's processes. {} where there is no /proc."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in out:
            out[pid] = table[pid][1]
            todo.extend(children.get(pid, ()))
    return out


def cpu_used(before: dict[int, float], after: dict[int, float], pids=None, exclude=frozenset()) -> float:
    """CPU seconds spent between two snapshots by `pids` (default all) but `exclude`; a process
    that started meanwhile counts whole, one that ended counts through its parent's reaped-children
    time (under `pids`, only where the parent is one of them)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items()
               if (pids is None or pid in pids) and pid not in exclude)


# ---------------------------------------------------------------------------- ingest, timed by phase

def _stamp() -> tuple[float, dict[int, float]]:
    return time.perf_counter(), cpu_seconds()


def run_ingest_timed(source: str, output: str, size: int, segment_seconds: float):
    """(IngestSummary, seconds, {phase: seconds}, {phase: CPU seconds}) of one run_ingest into
    a fresh output. CPU seconds are those of this process and its descendants (all of a local
    Ray), whatever they did meanwhile."""
    from vadray.ingest import run_ingest

    shutil.rmtree(output, ignore_errors=True)
    marks: dict[str, tuple[float, dict[int, float]]] = {}
    started = _stamp()
    summary = run_ingest(source, output, size=size, segment_seconds=segment_seconds,
                         on_phase=lambda name: marks.setdefault(name, _stamp()))
    ended = _stamp()
    # Each phase ends at a mark; a missing mark (run_ingest changed: no stats pass, say) merges
    # its phase into the next one ("stats+rest").
    ends = [marks.get("listed"), marks.get("decoded"), marks.get("stats_done"), ended]
    phases: dict[str, float] = {}
    phases_cpu: dict[str, float] = {}
    start, names = started, []
    for name, end in zip(PHASES, ends):
        names.append(name)
        if end is not None:
            key = "+".join(names)
            phases[key], phases_cpu[key] = end[0] - start[0], cpu_used(start[1], end[1])
            start, names = end, []
    return summary, ended[0] - started[0], phases, phases_cpu


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
    # 14,400 frames: the bare baseline needs ~5 s on 2 cores, enough for fixed costs (Ray Data
    # start of each stage) to show at their real weight without dominating; 90 s clips make
    # two segments each at the default --segment-seconds. Generating it takes ~1 min, once.
    synth.add_argument("--videos", type=int, default=16, help="clips (default 16)")
    synth.add_argument("--frames", type=int, default=900, help="frames per clip (default 900, 90 s at 10 fps)")
    synth.add_argument("--width", type=int, default=320, help="frame width (default 320)")
    synth.add_argument("--height", type=int, default=240, help="frame height (default 240)")


@dataclass
class Run:
    """One baseline/ingest pair."""

    base_frames: int = 0
    base_s: float = 0.0
    base_cpu: float = 0.0
    ingest_frames: int = 0
    ingest_s: float = 0.0
    ingest_cpu: float = 0.0
    failures: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    phases_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def base_fps(self) -> float:
        return self.base_frames / self.base_s if self.base_s else 0.0

    @property
    def ingest_fps(self) -> float:
        return self.ingest_frames / self.ingest_s if self.ingest_s else 0.0

    @property
    def ratio(self) -> float:
        return self.ingest_fps / self.base_fps if self.base_fps else float("nan")


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
    rows: list[Run] = []
    # spawn, not fork: this process runs Ray's threads. Started and warmed before timing.
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pool.map(_warm, range(4 * processes), chunksize=1)
        pool_pids = {p.pid for p in multiprocessing.active_children()}
        for i in range(args.repeat):
            run_ = Run()
            cpu0 = cpu_seconds()
            run_.base_frames, run_.base_s = run_baseline(pool, tasks)
            cpu1 = cpu_seconds()
            summary, run_.ingest_s, run_.phases, run_.phases_cpu = run_ingest_timed(
                source, output, args.size, args.segment_seconds)
            cpu2 = cpu_seconds()
            run_.ingest_frames, run_.failures = summary.frames, summary.failures
            # The driver (this process) counts on both sides: it feeds the pool, it runs the job.
            run_.base_cpu = cpu_used(cpu0, cpu1, pids=pool_pids | {os.getpid()})
            run_.ingest_cpu = cpu_used(cpu1, cpu2, exclude=pool_pids)
            rows.append(run_)
            where = "  ".join(f"{k} {v:.2f}s/{run_.phases_cpu.get(k, 0):.1f}cpu-s"
                              for k, v in run_.phases.items())
            print(f"  run {i + 1}: baseline {run_.base_frames} frames {run_.base_s:.2f} s "
                  f"{run_.base_fps:.0f} fps {run_.base_cpu:.1f} cpu-s | ingest {run_.ingest_frames} frames "
                  f"{run_.ingest_s:.2f} s {run_.ingest_fps:.0f} fps {run_.ingest_cpu:.1f} cpu-s | "
                  f"ratio {run_.ratio:.2f} | {where}", flush=True)
            if run_.ingest_frames != run_.base_frames:
                print(f"  warning: ingest stored {run_.ingest_frames} frames, the baseline decoded "
                      f"{run_.base_frames}")
    written = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(os.path.join(output, "clips"))
                  for f in files)
    shutil.rmtree(output, ignore_errors=True)

    last = rows[-1]
    failures = last.failures
    ratio = _median([r.ratio for r in rows])
    names = list(last.phases)
    phase_medians = {name: _median([r.phases[name] for r in rows if name in r.phases]) for name in names}
    phase_shares = {name: _median([r.phases[name] / r.ingest_s for r in rows if name in r.phases])
                    for name in names}
    print(f"videos            {len(refs)}")
    print(f"frames            {last.ingest_frames} (baseline decoded {last.base_frames})")
    print(f"clips written     {written / 1e6:.1f} MB of Parquet ({written / max(last.ingest_frames, 1) / 1e3:.1f} "
          f"kB/frame)")
    print(f"baseline fps      {_median([r.base_fps for r in rows]):.1f}  (bare PyAV decode + GreyScaler, "
          f"{processes} processes)")
    print(f"ingest fps        {_median([r.ingest_fps for r in rows]):.1f}  (vadray.ingest.run_ingest end to end)")
    if phase_medians:
        print("ingest time       " + ", ".join(
            f"{k} {v:.2f} s ({100 * phase_shares[k]:.0f}%)" for k, v in phase_medians.items())
            + "  (medians)")
    if last.ingest_cpu > 0 and last.phases_cpu:
        print("ingest CPU        " + ", ".join(
            f"{k} {_median([r.phases_cpu[k] for r in rows if k in r.phases_cpu]):.1f} s" for k in names)
            + "  (CPU seconds of all Ray processes and this one, medians)")
    if last.ingest_cpu > 0:
        base_ms = _median([1e3 * r.base_cpu / max(r.base_frames, 1) for r in rows])
        ingest_ms = _median([1e3 * r.ingest_cpu / max(r.ingest_frames, 1) for r in rows])
        busy = _median([r.ingest_cpu / (r.ingest_s * processes) for r in rows])
        print(f"CPU per frame     baseline {base_ms:.2f} ms, ingest {ingest_ms:.2f} ms (all Ray processes); "
              f"ingest kept {100 * busy:.0f}% of {processes} CPUs busy")
    verdict = "ok" if ratio >= 0.8 else "BELOW TARGET"
    print(f"ratio             {ratio:.2f}  (median of {len(rows)}; ingest fps / baseline fps, "
          f"target >= 0.80: {verdict})")
    if failures:
        print(f"note: {failures} error row(s) in the last ingest run")
    return EXIT_PARTIAL if failures else EXIT_OK
