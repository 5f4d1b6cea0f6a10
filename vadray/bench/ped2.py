"""vadray bench ped2: UCSD Ped2 end to end with the real jobs, and its frame-level AUC/EER.

Stages, each the job the CLI runs, each skipped when its output in WORKDIR is complete:
  ingest    DATA/train → WORKDIR/ingest (clips + global normalisation statistics);
            complete when ingest/stats/stats.json exists
  train     the ConvLSTM-AE (Chong & Tay) on the ingested TRAINING footage: Adam, mini-batch
            --batch-size, up to --epochs, early stop after --patience epochs without a better
            validation loss; the training job holds out a fraction of the training VIDEOS for
            validation and keeps the epoch with the lowest validation loss in final/.
            Complete when WORKDIR/checkpoint/final/card.json exists; a run that was
            interrupted (run.json there, final/ missing) is continued with --resume semantics
            (run_training(resume=True): the saved settings, from its last checkpoint)
  score     DATA/test → WORKDIR/score-<model_id> (frames/events tables); the score job's
            manifest skips the videos already done
  evaluate  frame-level ROC AUC (micro and per-video macro) and EER of every score column
            against DATA/test/frame_labels.csv; event counts
Nothing is selected on the test labels: they are read only by the last stage.

Prints how long each stage ran (summed over resumed sessions) and on what (CPU/GPU, the torch
device name, torch threads in a Ray worker), and writes WORKDIR/ped2-results.json.
A fresh WORKDIR is required unless --resume is given; --resume refuses settings that differ
from the ones the run was started with (WORKDIR/ped2-settings.json).

The paper's settings are the defaults (227 px, 50 epochs, patience 10, mini-batch 64,
training volumes at strides 1,2,3 and hop 1). On a small CPU machine use reduced ones, e.g.
--size 115 --epochs 3 --batch-size 16 (or --size 59, --train-hop 2).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from vadray import storage
from vadray.exits import EXIT_OK, EXIT_PARTIAL, UsageError

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "ucsd-ped2"
SETTINGS_FILE = "ped2-settings.json"
STATE_FILE = "ped2-state.json"
RESULTS_FILE = "ped2-results.json"
# Settings that define the result: a resumed run must use the same ones.
DEFINING = ("data", "size", "epochs", "patience", "batch_size", "lr", "train_hop", "val_fraction",
            "seed", "hop", "segment_seconds")


# ---------------------------------------------------------------------------- state

def _write_json(path: str, doc: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _settings(args: argparse.Namespace) -> dict:
    return {"data": os.path.abspath(args.data), "size": args.size, "epochs": args.epochs,
            "patience": args.patience, "batch_size": args.batch_size, "lr": args.lr,
            "train_hop": args.train_hop, "val_fraction": args.val_fraction, "seed": args.seed,
            "hop": args.hop, "segment_seconds": args.segment_seconds, "workers": args.workers,
            "gpus_per_worker": args.gpus_per_worker, "cpus_per_worker": args.cpus_per_worker,
            "score_batch_size": args.score_batch_size}


def _start_or_resume(workdir: str, settings: dict, resume: bool) -> dict:
    """The run's state (stage seconds and summaries), new or read back for --resume."""
    settings_path = os.path.join(workdir, SETTINGS_FILE)
    saved = _read_json(settings_path)
    if saved is None:
        busy = [n for n in ("ingest", "checkpoint") if os.path.exists(os.path.join(workdir, n))]
        if busy:
            raise UsageError(f"{workdir} holds {', '.join(busy)} but no {SETTINGS_FILE}: "
                             f"choose an empty --workdir")
        os.makedirs(workdir, exist_ok=True)
        _write_json(settings_path, settings)
        return {"stages": {}, "sessions": 0}
    if not resume:
        raise UsageError(f"{workdir} holds a ped2 run already: pass --resume to continue it, "
                         f"or choose another --workdir")
    changed = {k: (saved.get(k), settings[k]) for k in DEFINING if saved.get(k) != settings[k]}
    if changed:
        text = ", ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
        raise UsageError(f"--resume with settings that differ from the run's ({text}); "
                         f"use the run's settings or another --workdir")
    return _read_json(os.path.join(workdir, STATE_FILE)) or {"stages": {}, "sessions": 0}


class Stages:
    """Per-stage wall time, summed over the sessions of a resumed run, saved after each stage."""

    def __init__(self, workdir: str, state: dict):
        self.path = os.path.join(workdir, STATE_FILE)
        self.state = state
        self.state["sessions"] = int(self.state.get("sessions", 0)) + 1
        self.save()

    def save(self) -> None:
        _write_json(self.path, self.state)

    def stage(self, name: str) -> dict:
        return self.state["stages"].setdefault(name, {"seconds": 0.0, "complete": False, "sessions": []})

    @contextlib.contextmanager
    def timed(self, name: str, what: str):
        entry = self.stage(name)
        started = time.perf_counter()
        print(f"[ped2] {name}: {what}", flush=True)
        try:
            yield entry
        finally:
            spent = time.perf_counter() - started
            entry["seconds"] += spent
            entry["sessions"].append({"seconds": round(spent, 2), "what": what})
            self.save()

    def skip(self, name: str, why: str) -> dict:
        entry = self.stage(name)
        entry["sessions"].append({"seconds": 0.0, "what": f"skipped: {why}"})
        print(f"[ped2] {name}: skipped ({why})", flush=True)
        self.save()
        return entry


# ---------------------------------------------------------------------------- what runs where

def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_device(num_gpus: float) -> dict:
    """What a Ray worker with `num_gpus` GPUs (else 1 CPU) runs torch on, asked inside one."""
    import ray

    def probe() -> dict:
        import os as _os

        import torch

        info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "OMP_NUM_THREADS": _os.environ.get("OMP_NUM_THREADS"), "cpu": _cpu_name(),
                "cpus_visible": len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity")
                else _os.cpu_count()}
        if torch.cuda.is_available():
            info.update(kind="GPU", device="cuda", device_name=torch.cuda.get_device_name(0))
        else:
            info.update(kind="CPU", device="cpu", device_name=info["cpu"])
        return info

    options = {"num_gpus": num_gpus, "num_cpus": 0} if num_gpus > 0 else {"num_cpus": 1}
    return ray.get(ray.remote(probe).options(**options).remote())


def _device_text(d: dict) -> str:
    text = f"{d['kind']} ({d['device_name']}), torch {d['torch']}"
    if d["kind"] == "CPU":
        text += f", {d['torch_threads']} torch thread(s) per worker of {d['cpus_visible']} CPUs"
    return text


# ---------------------------------------------------------------------------- stages

def stage_ingest(stages: Stages, data: str, workdir: str, args: argparse.Namespace, device: dict) -> str:
    from vadray.ingest import run_ingest

    out = os.path.join(workdir, "ingest")
    if os.path.exists(os.path.join(out, "stats", "stats.json")):
        stages.skip("ingest", "stats/stats.json exists")
        return out
    with stages.timed("ingest", f"{data}/train → {out} at {args.size} px") as entry:
        summary = run_ingest(os.path.join(data, "train"), out, size=args.size,
                             segment_seconds=args.segment_seconds)
        print(f"[ped2] {summary.line()}", flush=True)
        if summary.failures:
            raise RuntimeError(f"ingest of Ped2 train/ failed for {summary.videos_failed} video(s): "
                               f"{summary.errors[:3]}")
        entry.update(complete=True, videos=summary.videos, frames=summary.frames,
                     segments=summary.segments, device=f"CPU ({device['cpu']}): PyAV decode in Ray Data tasks")
    return out


def stage_train(stages: Stages, shards: str, workdir: str, args: argparse.Namespace, device: dict) -> dict:
    from vadray.checkpoint import read_card
    from vadray.train import RUN_FILE, run_training

    ckpt = os.path.join(workdir, "checkpoint")
    if os.path.exists(os.path.join(ckpt, "final", "card.json")):
        stages.skip("train", "checkpoint/final/card.json exists")
        return read_card(ckpt)
    resume = os.path.exists(os.path.join(ckpt, RUN_FILE))
    what = ("continuing the interrupted training run (run_training(resume=True))" if resume else
            f"{args.epochs} epochs max, patience {args.patience}, batch {args.batch_size}, "
            f"train hop {args.train_hop}, {args.workers} worker(s)")
    with stages.timed("train", what) as entry:
        card = run_training(shards, ckpt, epochs=args.epochs, patience=args.patience,
                            batch_size=args.batch_size, lr=args.lr, hop=args.train_hop,
                            val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                            gpus_per_worker=args.gpus_per_worker, cpus_per_worker=args.cpus_per_worker,
                            resume=resume)
        train_device = dict(device)
        if device["kind"] == "CPU" and card["training"].get("torch_threads_per_worker"):   # --torch-threads
            train_device["torch_threads"] = card["training"]["torch_threads_per_worker"]
        entry.update(complete=True, device=_device_text(train_device), model_id=card["model_id"])
    return card


def stage_score(stages: Stages, data: str, workdir: str, card: dict, args: argparse.Namespace,
                device: dict) -> tuple[str, int]:
    from vadray.raylib import threads_per_worker
    from vadray.score import run_score

    out = os.path.join(workdir, f"score-{card['model_id']}")
    score_device = dict(device)
    if device["kind"] == "CPU":  # the model actor sets its own thread count (--actor-threads)
        score_device["torch_threads"] = threads_per_worker(1)
    ckpt = os.path.join(workdir, "checkpoint")
    with stages.timed("score", f"{data}/test → {out}, hop {args.hop}") as entry:
        summary = run_score(os.path.join(data, "test"), out, ckpt, hop=args.hop,
                            batch_size=args.score_batch_size, segment_seconds=args.segment_seconds,
                            gpus_per_actor=args.gpus_per_worker)
        print(f"[ped2] {summary.line()}", flush=True)
        entry.update(complete=summary.failures == 0, videos=summary.videos, skipped=summary.skipped,
                     frames_this_session=summary.frames, failures=summary.failures,
                     device=_device_text(score_device), output=out)
    return out, summary.failures


def stage_evaluate(stages: Stages, data: str, score_out: str) -> dict:
    from vadray.evaluate import evaluate_output, format_metrics

    with stages.timed("evaluate", f"against {data}/test/frame_labels.csv") as entry:
        result = evaluate_output(score_out, os.path.join(data, "test", "frame_labels.csv"))
        entry["complete"] = True
    print(format_metrics(result), flush=True)
    return result


# ---------------------------------------------------------------------------- command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="the Ped2 archive: train/*.mp4, test/*.mp4, test/frame_labels.csv "
                             "(default: %(default)s)")
    parser.add_argument("--workdir", default=os.path.join("bench-output", "ped2"),
                        help="local folder for the ingest output, checkpoint, tables and results "
                             "(default: %(default)s)")
    parser.add_argument("--size", type=int, default=227, help="frame size S (11 + 8k; default 227, the paper's)")
    parser.add_argument("--epochs", type=int, default=50, help="maximum epochs (default 50)")
    parser.add_argument("--patience", type=int, default=10,
                        help="stop after this many epochs without a better validation loss (default 10)")
    parser.add_argument("--batch-size", type=int, default=64, help="training mini-batch (default 64)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--train-hop", type=int, default=1,
                        help="frames between consecutive training volumes (default 1, the paper's; "
                             "2 halves an epoch's work)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="fraction of the TRAINING videos held out for validation (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation and shuffling")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs per training worker, also per scoring actor (default 0: CPU)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0,
                        help="CPUs reserved per training worker (default 1)")
    parser.add_argument("--hop", type=int, default=5, help="scoring hop between volumes (default 5)")
    parser.add_argument("--score-batch-size", type=int, default=16, help="scoring batch (default 16)")
    parser.add_argument("--segment-seconds", type=float, default=60.0,
                        help="ingest/score segment length (default 60)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in WORKDIR: skip complete stages, continue training")


def _check(args: argparse.Namespace) -> None:
    from vadray.models import check_size

    try:
        check_size("convlstm_ae", args.size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for name in ("epochs", "patience", "batch_size", "train_hop", "workers", "hop", "score_batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.val_fraction < 1:
        raise UsageError("--val-fraction must be in [0, 1)")
    if storage.is_remote(args.workdir):
        raise UsageError("--workdir must be a local folder")
    for needed in ("train", "test", os.path.join("test", "frame_labels.csv")):
        if not os.path.exists(os.path.join(args.data, needed)):
            raise UsageError(f"{args.data!r} is not a Ped2 archive: {needed} is missing")


def run(args: argparse.Namespace) -> int:
    import ray

    from vadray.checkpoint import library_versions
    from vadray.evaluate import SCORE_COLUMNS
    from vadray.metrics import finite_or_none
    from vadray.raylib import ensure_ray

    _check(args)
    started = time.perf_counter()
    data, workdir = os.path.abspath(args.data), args.workdir
    settings = _settings(args)
    stages = Stages(workdir, _start_or_resume(workdir, settings, args.resume))
    ensure_ray()
    with contextlib.suppress(Exception):
        ray.data.DataContext.get_current().enable_progress_bars = False
    device = describe_device(args.gpus_per_worker)
    print(f"[ped2] data {data}, workdir {workdir}, session {stages.state['sessions']}; "
          f"Ray CPUs {int(ray.cluster_resources().get('CPU', 0))}, GPUs "
          f"{int(ray.cluster_resources().get('GPU', 0))}; model runs on {_device_text(device)}", flush=True)

    shards = stage_ingest(stages, data, workdir, args, device)
    card = stage_train(stages, shards, workdir, args, device)
    score_out, failures = stage_score(stages, data, workdir, card, args, device)
    result = stage_evaluate(stages, data, score_out)

    wall = time.perf_counter() - started
    stage_seconds = {k: round(v["seconds"], 1) for k, v in stages.state["stages"].items()}
    doc = {
        "benchmark": "ucsd-ped2",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "paper_settings": {"size": 227, "epochs": 50, "patience": 10, "batch_size": 64, "train_hop": 1},
        "device": device,
        "stages": stages.state["stages"],
        "stage_seconds": stage_seconds,
        "total_seconds": round(sum(stage_seconds.values()), 1),
        "this_session_wall_seconds": round(wall, 1),
        "sessions": stages.state["sessions"],
        "training": {"model_id": card["model_id"], "best_epoch": card["best_epoch"],
                     "epochs_run": card["epochs_run"], "best_val_loss": card["best_val_loss"],
                     "history": card["history"], "selection": card["training"]["selection"],
                     "stopped": card["training"]["stopped"], "train_videos": card["training_data"]["train_videos"],
                     "val_videos": card["training_data"]["val_videos"],
                     "volumes_per_epoch": card["training_data"]["volumes_per_epoch"]},
        "metrics": {c: {k: result[c].get(k) for k in ("auc", "auc_macro", "eer")}
                    for c in SCORE_COLUMNS if result.get(c, {}).get("available")},
        "evaluation": result,
        "versions": library_versions(),
    }
    _write_json(os.path.join(workdir, RESULTS_FILE), finite_or_none(doc))

    print("")
    print(f"Ped2 (frame level, {result['coverage']['evaluated_frames']} test frames, "
          f"{result['coverage']['videos']} videos); model {card['model_id']}, best epoch "
          f"{card['best_epoch']} of {card['epochs_run']} chosen by {card['training']['selection']} "
          "(training footage only)")
    for column in SCORE_COLUMNS:
        m = result.get(column, {})
        if m.get("available"):
            print(f"  {column:<16} AUC {m['auc']:.4f}  (per-video macro {m['auc_macro']:.4f})  EER {m['eer']:.4f}")
    print("stages:")
    for name, entry in stages.state["stages"].items():
        where = entry.get("device", "")
        print(f"  {name:<9} {entry['seconds']:8.1f} s  {where}")
    print(f"total     {doc['total_seconds']:8.1f} s over {stages.state['sessions']} session(s); "
          f"this session {wall:.1f} s")
    print(f"settings  size {args.size}, epochs {args.epochs}, patience {args.patience}, batch "
          f"{args.batch_size}, train hop {args.train_hop}, score hop {args.hop}")
    print(f"results   {os.path.join(workdir, RESULTS_FILE)}")
    return EXIT_PARTIAL if failures else EXIT_OK
