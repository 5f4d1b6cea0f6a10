"""Inputs of `vadray bench score`: synthetic footage and a quick real checkpoint, made once."""
from __future__ import annotations

import os
import shutil
import time

FPS = 10  # frame rate of the synthetic videos


def _done_marker(folder: str) -> str:
    return os.path.join(folder, ".complete")


def synthetic_archive(folder: str, videos: int, frames: int, width: int, height: int, seed: int) -> str:
    """Normal synthetic footage (make_archive), generated once and reused."""
    from vadray.synth import make_archive

    if os.path.exists(_done_marker(folder)):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    make_archive(folder, num_videos=videos, width=width, height=height, num_frames=frames, seed=seed)
    os.remove(os.path.join(folder, "frame_labels.csv"))  # only videos: the archive to score
    with open(_done_marker(folder), "w") as f:
        f.write("ok\n")
    return folder


def single_video(folder: str, frames: int, width: int, height: int, seed: int) -> str:
    """A folder holding one synthetic video of `frames` frames (render_video/write_video)."""
    from vadray.synth import render_video, write_video

    if os.path.exists(_done_marker(folder)):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    pixels, _ = render_video(width, height, frames, seed=seed)
    write_video(os.path.join(folder, f"long{frames:06d}.mp4"), pixels, fps=FPS)
    with open(_done_marker(folder), "w") as f:
        f.write("ok\n")
    return folder


def quick_checkpoint(workdir: str, size: int, width: int, height: int) -> str:
    """A real checkpoint, quickly: 3 short synthetic clips → run_ingest → run_training (1 epoch).

    Made once per size into WORKDIR/checkpoint-<size> and reused. Its weights barely matter
    here: the benchmark measures speed and memory, not detection quality.
    """
    from vadray.ingest import run_ingest
    from vadray.train import run_training

    ckpt = os.path.join(workdir, f"checkpoint-{size}")
    if os.path.exists(os.path.join(ckpt, "final", "card.json")):
        print(f"checkpoint: {ckpt} (reused)")
        return ckpt
    started = time.perf_counter()
    archive = synthetic_archive(os.path.join(workdir, f"train-archive-{width}x{height}"), videos=3,
                                frames=40, width=width, height=height, seed=11)
    shards = os.path.join(workdir, f"train-shards-{size}")
    shutil.rmtree(shards, ignore_errors=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    summary = run_ingest(archive, shards, size=size, segment_seconds=60.0)
    if summary.failures:
        raise RuntimeError(f"ingest of the checkpoint's training archive failed: {summary.errors}")
    # Fractional CPUs for the worker leave room for the Ray Data tasks that make its volumes.
    run_training(shards, ckpt, epochs=1, batch_size=8, workers=1, cpus_per_worker=0.5,
                 val_fraction=0.34, hop=3, patience=1)
    print(f"checkpoint: {ckpt} (1 epoch on 3 synthetic clips at {size} px, made in "
          f"{time.perf_counter() - started:.0f} s, not counted)")
    return ckpt
