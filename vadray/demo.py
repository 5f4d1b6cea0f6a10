"""vadray demo [DIR]: the whole pipeline on an embedded local Ray, in a few minutes on 2 cores.

Generates a synthetic fixed-camera archive (normal training footage, and test footage with
a fast cyclist, a walker against the flow and an oversized cart), then runs the same job
functions a cluster runs: ingest → train (Ray Train) → score (Ray Data actor pool) →
evaluate → report. Prints where the tables and the report are, and the AUC it got.
"""
from __future__ import annotations

import argparse
import os
import time

from vadray import storage
from vadray.errors import count
from vadray.exits import EXIT_OK, EXIT_PARTIAL
from vadray.models import names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", default="demo-output", help="working folder (default demo-output)")
    parser.add_argument("--size", type=int, default=35, help="model input size, 11+8k (default 35: quick)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--videos", type=int, default=4, help="training clips (default 4); test clips: 3")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip (default 60)")
    parser.add_argument("--model", default="convlstm_ae", choices=names(), help="convlstm_ae (default) or conv_ae")


def run_demo(folder: str, size: int = 35, epochs: int = 8, videos: int = 4, frames: int = 60,
             model: str = "convlstm_ae") -> dict:
    from vadray.errormap import ErrorMaps
    from vadray.evaluate import evaluate_output, format_metrics
    from vadray.ingest import run_ingest
    from vadray.raylib import ensure_ray
    from vadray.report import build_report
    from vadray.score import run_score
    from vadray.storage import remove
    from vadray.synth import make_archive
    from vadray.train import run_training

    folder = os.path.abspath(folder)
    storage.require_folder_to_write(DIR=folder)   # before the archive is made: a DIR that cannot be one
    paths = {name: os.path.join(folder, name) for name in
             ("archive/train", "archive/test", "shards", "checkpoint", "tables", "report")}
    for name in ("shards", "checkpoint", "tables", "report"):
        remove(paths[name])  # a demo starts afresh; the archive is regenerated identically

    def step(name: str):
        print(f"\n=== {name} ===", flush=True)

    ensure_ray()
    step("synth")
    make_archive(paths["archive/train"], num_videos=videos, width=96, height=72, num_frames=frames, seed=7,
                 prefix="train")
    labels = make_archive(paths["archive/test"], num_videos=3, width=96, height=72, num_frames=frames, seed=8,
                          anomalies=("fast", "against", "size"), prefix="test")
    step("ingest")
    ingested = run_ingest(paths["archive/train"], paths["shards"], camera="demo", size=size, segment_seconds=3.0)
    print(ingested.line())
    step("train")
    card = run_training(paths["shards"], paths["checkpoint"], model=model, epochs=epochs, batch_size=16,
                        workers=1, cpus_per_worker=1.0, patience=3, val_fraction=0.25, lr=1e-3)
    print(f"model {card['model_id']}: best epoch {card['best_epoch']} of {card['epochs_run']}, "
          f"validation loss {card['best_val_loss']:.4f}")
    step("score")
    scored = run_score(paths["archive/test"], paths["tables"], paths["checkpoint"], camera="demo",
                       segment_seconds=3.0)
    print(scored.line())
    step("evaluate")
    metrics = evaluate_output(paths["tables"], labels)
    print(format_metrics(metrics))
    step("report")
    build_report(paths["tables"], paths["report"], labels, error_map_fn=ErrorMaps(paths["checkpoint"]))
    print(f"\ntables:  {paths['tables']}/frames, {paths['tables']}/events")
    print(f"report:  {paths['report']}/index.html")
    print(f"query:   vadray query {paths['tables']} \"SELECT video_id, min(regularity) FROM frames GROUP BY 1\"")
    auc = metrics["regularity"]["auc"]
    print(f"frame-level AUC (regularity, the paper's score): {auc:.3f}; "
          f"anomaly_score: {metrics['anomaly_score']['auc']:.3f}; cell_error_max: {metrics['cell_error_max']['auc']:.3f}; "
          f"motion_regularity: {metrics['motion_regularity']['auc']:.3f}; "
          f"combined_regularity: {metrics['combined_regularity']['auc']:.3f}")
    return {"metrics": metrics, "paths": paths, "failures": ingested.failures + scored.failures}


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    result = run_demo(args.dir, size=args.size, epochs=args.epochs, videos=args.videos, frames=args.frames,
                      model=args.model)
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    if result["failures"]:
        paths = result["paths"]
        print(f"{count(result['failures'], 'input')} failed: see {paths['shards']}/errors and {paths['tables']}/errors")
        return EXIT_PARTIAL
    return EXIT_OK
