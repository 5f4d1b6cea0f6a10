"""vadray bench train: Ray Train volumes/s against a bare PyTorch loop, as a RATIO.

The job is `vadray.train.run_training` as `vadray train` runs it: volumes streamed from the
clip shards by Ray Data tasks into the worker(s) (`iter_torch_batches`, local shuffle),
normalised on the device, DDP when there are 2 workers, a checkpoint reported every epoch.
The baseline is the same model, optimiser, batch size and loss in this (driver) process on
the SAME volumes (all videos, strides and hop as the job) gathered into memory beforehand
(not timed), shuffled by a permutation, with torch threads = --threads. No Ray, no Parquet,
no checkpoints.

Both sides are timed per epoch from the first batch request to the last step (the job's
epoch time is measured inside the worker and comes back in the model card's history); the
first epoch warms up (Ray Data starts its tasks, PyTorch allocates) and is left out: the
figure is the median volumes/s of epochs 2..E. Printed:
  1 worker  (--threads CPUs)            volumes/s and job/baseline (target ≥ 0.9)
  2 workers (--threads/2 CPUs each)     volumes/s and job/baseline: DDP on the same CPUs
A worker runs max(1, floor(its CPUs)) torch threads (`vadray train --torch-threads`), so the
1-worker job runs --threads, as the baseline does; with --threads 1 the two workers run one
thread each, two threads against the baseline's one, and the line says so. (Left to itself,
`vadray train` gives a worker the node's CPUs / workers, --data-cpus included: more threads
than the baseline, which would flatter the ratio.)
Ray is started with --threads + --data-cpus CPUs, so the Ray Data tasks that make the volumes
have their own CPUs (on a machine with fewer cores they compete with training: that shows).

Inputs are made once into WORKDIR by the real jobs (synthetic archive → run_ingest) and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

import numpy as np

from vadray.exits import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="bench-output/train", help="inputs, checkpoints and the JSON result go here")
    parser.add_argument("--videos", type=int, default=4, help="synthetic videos to ingest")
    parser.add_argument("--frames", type=int, default=150, help="frames per synthetic video")
    parser.add_argument("--size", type=int, default=59, help="frame size S (11 + 8k); 227 is the paper's (use a GPU)")
    from vadray.models import names

    parser.add_argument("--model", default="convlstm_ae", choices=names(), help="architecture, as for vadray train")
    parser.add_argument("--model-params", default=None, help="JSON hyper-parameters, as for vadray train")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side; the first is warm-up")
    parser.add_argument("--batch-size", type=int, default=16, help="global mini-batch")
    parser.add_argument("--hop", type=int, default=2, help="frames between training volume starts")
    parser.add_argument("--threads", type=int, default=max(1, min(4, (os.cpu_count() or 2) - 1)),
                        help="torch threads of the baseline = CPUs of the 1-worker job (split over 2 workers)")
    parser.add_argument("--data-cpus", type=float, default=1.0, help="extra Ray CPUs for the Ray Data tasks")
    parser.add_argument("--gpu", action="store_true", help="train on one GPU (both sides; 2 workers then need 2 GPUs)")
    parser.add_argument("--skip-two-workers", action="store_true", help="measure only the 1-worker job")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive and of the weights")


def make_shards(workdir: str, videos: int, frames: int, size: int, seed: int) -> str:
    """Synthetic archive → `run_ingest` at S×S, once (a marker file says it is complete)."""
    from vadray.ingest import run_ingest
    from vadray.synth import make_archive

    folder = os.path.join(workdir, f"shards-{videos}x{frames}-{size}-s{seed}")
    marker = os.path.join(folder, ".complete")
    if not os.path.exists(marker):
        shutil.rmtree(folder, ignore_errors=True)
        make_archive(os.path.join(folder, "archive"), num_videos=videos, width=160, height=120,
                     num_frames=frames, seed=seed)
        summary = run_ingest(os.path.join(folder, "archive"), os.path.join(folder, "out"), size=size)
        if summary.failures:
            raise RuntimeError(f"ingest of the synthetic archive failed: {summary.errors}")
        open(marker, "w").close()
    return os.path.join(folder, "out")


def all_volumes(shards: str, strides, hop: int, T: int = 10) -> tuple[np.ndarray, object]:
    """Every training volume of every video, uint8 (V, T, S, S), the way the job makes them."""
    from vadray import storage
    from vadray.trainvolumes import discover, read_chunks
    from vadray.volumes import stream_volumes

    info = discover(shards)
    fs, _ = storage.pyarrow_fs(info.clips_uri)
    parts = [volumes for v in info.videos
             for _, _, volumes in stream_volumes(read_chunks(fs, v.file_groups, v.video_id), T, strides, hop)]
    return np.concatenate(parts), info.stats


def baseline_epochs(volumes: np.ndarray, stats, model_name: str, model_params: dict, epochs: int,
                    batch_size: int, threads: int, use_gpu: bool, seed: int) -> list[float]:
    """Seconds per epoch of a bare single-process loop (the job's step, nothing else)."""
    import torch

    from vadray.models import build
    from vadray.steps import normalize

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device("cuda" if use_gpu else "cpu")
    model = build(model_name, **model_params).to(device)
    if use_gpu:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    mean_image = torch.from_numpy(stats.mean_image).to(device)
    rng = np.random.default_rng(seed)
    seconds = []
    for _ in range(epochs):
        order = rng.permutation(len(volumes))
        started = time.perf_counter()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(order), batch_size):
            batch = torch.from_numpy(volumes[np.sort(order[i:i + batch_size])]).to(device)
            x = normalize(batch, mean_image, stats.std)                     # (B, T, 1, S, S)
            with torch.autocast(device.type, torch.bfloat16, enabled=use_gpu):
                y = model(x)
            loss = torch.nn.functional.mse_loss(y.float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * len(batch)
        total.item()  # wait for the device
        seconds.append(time.perf_counter() - started)
    return seconds


def _median_rate(volumes_per_epoch: list[int], seconds: list[float]) -> float:
    rates = [v / s for v, s in zip(volumes_per_epoch, seconds)]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def job_epochs(shards: str, checkpoint_dir: str, workers: int, cpus_per_worker: float, args,
               model_params: dict, torch_threads: int) -> dict:
    from vadray.train import run_training

    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    started = time.perf_counter()
    card = run_training(shards, checkpoint_dir, model=args.model, model_params=model_params, workers=workers,
                        gpus_per_worker=1 if args.gpu else 0, cpus_per_worker=cpus_per_worker,
                        epochs=args.epochs, batch_size=args.batch_size, hop=args.hop, val_fraction=0.0,
                        patience=args.epochs + 1, seed=args.seed, torch_threads=torch_threads)
    history = card["history"]
    return {"workers": workers, "cpus_per_worker": cpus_per_worker,
            "torch_threads_per_worker": card["training"]["torch_threads_per_worker"],
            "epoch_seconds": [h["train_seconds"] for h in history],
            "volumes_per_epoch": [h["train_volumes"] for h in history],
            "volumes_per_s": _median_rate([h["train_volumes"] for h in history],
                                          [h["train_seconds"] for h in history]),
            "wall_seconds_incl_startup_and_calibration": time.perf_counter() - started}


def run(args: argparse.Namespace) -> int:
    import ray

    from vadray.models import check_size

    try:
        model_params = json.loads(args.model_params) if args.model_params else {}
        check_size(args.model, args.size)
    except (ValueError, json.JSONDecodeError) as exc:
        raise UsageError(str(exc)) from None
    if args.epochs < 2:
        raise UsageError("--epochs must be at least 2 (the first one is warm-up)")
    os.makedirs(args.workdir, exist_ok=True)
    if not ray.is_initialized():
        ray.init(num_cpus=args.threads + args.data_cpus, include_dashboard=False, log_to_driver=False)
    shards = make_shards(args.workdir, args.videos, args.frames, args.size, args.seed)
    volumes, stats = all_volumes(shards, [1, 2, 3], args.hop)
    print(f"{len(volumes)} volumes of 10×{args.size}×{args.size} per epoch, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} threads, {'GPU' if args.gpu else 'CPU'}", flush=True)

    base_seconds = baseline_epochs(volumes, stats, args.model, model_params, args.epochs, args.batch_size,
                                   args.threads, args.gpu, args.seed)
    baseline = {"epoch_seconds": base_seconds,
                "volumes_per_s": _median_rate([len(volumes)] * len(base_seconds), base_seconds)}
    results = {"settings": {k: v for k, v in vars(args).items() if not k.startswith("_")},
               "volumes_per_epoch": int(len(volumes)), "baseline": baseline, "jobs": []}
    print(f"baseline (bare PyTorch, {args.threads} threads): {baseline['volumes_per_s']:.1f} volumes/s", flush=True)
    layouts = [(1, float(args.threads))] + ([] if args.skip_two_workers else [(2, args.threads / 2)])
    for workers, cpus in layouts:
        job = job_epochs(shards, os.path.join(args.workdir, f"ckpt-{workers}w"), workers, cpus, args, model_params,
                         torch_threads=max(1, int(cpus)))
        job["ratio_to_baseline"] = job["volumes_per_s"] / baseline["volumes_per_s"]
        results["jobs"].append(job)
        print(f"Ray Train, {workers} worker(s) × {cpus:g} CPUs × {job['torch_threads_per_worker']} torch "
              f"thread(s): {job['volumes_per_s']:.1f} volumes/s, "
              f"ratio {job['ratio_to_baseline']:.2f} (target ≥ 0.9 for 1 worker); "
              f"wall {job['wall_seconds_incl_startup_and_calibration']:.0f} s with start-up", flush=True)
    with open(os.path.join(args.workdir, "bench_train.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0
