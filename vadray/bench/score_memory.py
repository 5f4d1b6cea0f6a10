"""The memory part of `vadray bench score`: peak RSS of Ray's workers scoring one video
against the same scene 10× longer, each in a fresh process with its own local Ray.

psutil samples the RSS of that Ray's worker processes (titles `ray::…`, Ray's agents
excluded); printed: the peak of their sum, of the largest single worker, and long/short
ratios (target ≤ 1.2). RSS counts shared pages (torch, Ray's object store) in every process
that maps them, so the sum overstates the total; the ratio is what to read.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from vadray.bench.score_inputs import FPS, single_video


_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::JobSupervisor")


def _title(proc) -> str:
    return " ".join(proc.cmdline()).strip()


class WorkerMemory:
    """Samples the RSS of the Ray worker processes under one process tree (a thread)."""

    def __init__(self, root_pid: int, interval: float):
        import psutil

        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.peak_sum = 0          # bytes: largest Σ RSS of the workers at one sample
        self.peak_one = 0          # bytes: largest RSS of one worker
        self.peak_driver = 0       # bytes: the root process (the `vadray score` driver)
        self.by_title: dict[str, int] = {}
        self.workers_seen: set[int] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "WorkerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        import psutil

        try:
            self.peak_driver = max(self.peak_driver, self.root.memory_info().rss)
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for proc in children:
            try:
                title = _title(proc)
                if not title.startswith("ray::") or title.startswith(_AGENTS):
                    continue
                rss = proc.memory_info().rss
            except psutil.Error:
                continue  # exited between the listing and the read
            total += rss
            self.workers_seen.add(proc.pid)
            self.peak_one = max(self.peak_one, rss)
            key = title.split(" ")[0][:60]
            self.by_title[key] = max(self.by_title.get(key, 0), rss)
        self.peak_sum = max(self.peak_sum, total)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def score_in_fresh_ray(source: str, output: str, checkpoint: str, hop: int, batch_size: int, actors: int,
                       segment_seconds: float, interval: float, log_path: str):
    """`vadray score` in a new process with its own local Ray; (WorkerMemory, seconds, rc, last line)."""
    shutil.rmtree(output, ignore_errors=True)
    env = dict(os.environ, RAY_ADDRESS="local", RAY_USAGE_STATS_ENABLED="0",
               RAY_DATA_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "vadray.cli", "score", source, output, "--checkpoint", checkpoint,
               "--hop", str(hop), "--batch-size", str(batch_size), "--actors", str(actors),
               "--segment-seconds", f"{segment_seconds:g}"]
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        with WorkerMemory(proc.pid, interval) as memory:
            rc = proc.wait()
    seconds = time.perf_counter() - started
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.startswith("score:")]
    return memory, seconds, rc, (lines[-1] if lines else "")


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"



def memory(args: argparse.Namespace, checkpoint: str) -> int:
    n = args.memory_frames or args.frames
    short = single_video(os.path.join(args.workdir, f"memory-{n}-{args.width}x{args.height}"),
                         n, args.width, args.height, seed=21)
    long = single_video(os.path.join(args.workdir, f"memory-{10 * n}-{args.width}x{args.height}"),
                        10 * n, args.width, args.height, seed=21)
    seg = args.memory_segment_seconds
    per_segment = max(1.0, seg * FPS)
    print(f"memory bench: one video of {n} frames vs one of {10 * n} ({args.width}×{args.height}, "
          f"{FPS} fps), segments of {seg:g} s (about {math.ceil(n / per_segment)} vs "
          f"{math.ceil(10 * n / per_segment)}), each scored by `vadray score` with a fresh local Ray; "
          f"RSS of its ray:: workers sampled every {args.sample_interval:g} s")
    results, failures = {}, 0
    for label, source, frames in (("short", short, n), ("long", long, 10 * n)):
        out = os.path.join(args.workdir, f"memory-output-{label}")
        mem, seconds, rc, line = score_in_fresh_ray(source, out, checkpoint, args.hop, args.batch_size,
                                                    args.actors, seg,
                                                    args.sample_interval,
                                                    os.path.join(args.workdir, f"memory-{label}.log"))
        shutil.rmtree(out, ignore_errors=True)
        if rc != 0:
            failures += 1
            print(f"  {label}: `vadray score` exited {rc}; see {os.path.join(args.workdir, f'memory-{label}.log')}")
        results[label] = mem
        top = ", ".join(f"{k} {_mb(v)}" for k, v in sorted(mem.by_title.items(), key=lambda kv: -kv[1])[:4])
        print(f"  {label}: {frames} frames in {seconds:.1f} s (incl. Ray start) | workers Σ peak "
              f"{_mb(mem.peak_sum)}, largest worker {_mb(mem.peak_one)}, driver {_mb(mem.peak_driver)} | "
              f"{len(mem.workers_seen)} workers, {mem.samples} samples | {line}")
        print(f"         peak by worker title: {top}")
    s, l_ = results["short"], results["long"]
    ratio_sum = l_.peak_sum / s.peak_sum if s.peak_sum else float("nan")
    ratio_one = l_.peak_one / s.peak_one if s.peak_one else float("nan")
    print(f"memory short      workers Σ {_mb(s.peak_sum)}, largest worker {_mb(s.peak_one)}  ({n} frames)")
    print(f"memory long       workers Σ {_mb(l_.peak_sum)}, largest worker {_mb(l_.peak_one)}  ({10 * n} frames)")
    ratio_driver = l_.peak_driver / s.peak_driver if s.peak_driver else float("nan")
    # the driver assembles each video's per-frame errors: it has to stay flat as well
    verdict = "ok" if ratio_sum <= 1.2 and ratio_driver <= 1.2 else "ABOVE TARGET"
    print(f"memory ratio      {ratio_sum:.2f}  (peak Σ RSS of Ray workers, long/short) and the driver, which "
          f"assembles each video's per-frame errors, {ratio_driver:.2f}; target <= 1.20 for both: {verdict}; "
          f"largest single worker {ratio_one:.2f} (the object store in the raylet is not counted)")
    return failures
