"""Experiment (not part of the product): a per-cell z-score calibrated on normal footage.

    python docs/experiments/cell_calibration.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--hop 1]

Scores every Ped2 training video (the calibration footage) and every test video with the
checkpoint, using scoring's own math through `ped2_direct.Trainer.score_video` (stride-1
volumes, 8×8 cell errors, the mean over the volumes containing a frame), then prints the
frame AUC (pooled and per-video mean) of max_c (cell_c − μ_c) / σ_c, with μ, σ per cell from
(a) the card's validation videos and (b) all training videos, beside the paper's regularity.
The test labels only measure; nothing here is chosen with them. ~25 min on 2 CPU cores.
"""
import argparse

import numpy as np
import torch

from vadray import metrics, scoring
from vadray.bench.ped2_direct import Trainer, decode_videos, read_labels
from vadray.checkpoint import load_model
from vadray.preprocess import NormStats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("ped2", help="folder with train/, test/ and test/frame_labels.csv")
    parser.add_argument("--hop", type=int, default=1)
    args = parser.parse_args()
    model, card = load_model(args.checkpoint)
    trainer = Trainer(model, NormStats.from_dict(card["norm_stats"]), torch.device("cpu"), 1e-4, 16, 0)
    T = card["input"]["T"]
    score = lambda frames: trainer.score_video(frames, T, args.hop)  # noqa: E731
    train_ids, train_frames = decode_videos(f"{args.ped2}/train", card["input"]["size"])
    train = {v: score(f) for v, f in zip(train_ids, train_frames)}
    test_ids, test_frames = decode_videos(f"{args.ped2}/test", card["input"]["size"])
    test = {v: score(f) for v, f in zip(test_ids, test_frames)}
    labels = read_labels(f"{args.ped2}/test/frame_labels.csv")
    val_ids = set(card["training_data"]["val_video_ids"])
    footage = {"validation videos": [m for v, m in train.items() if v in val_ids],
               "all training videos": list(train.values())}

    def report(name: str, per_video: dict) -> None:
        ids = np.concatenate([np.full(len(s), v) for v, s in per_video.items()])
        truth = np.concatenate([labels[v].loc[test[v].frame_index].to_numpy() for v in per_video])
        m = metrics.frame_metrics(ids, truth, np.concatenate(list(per_video.values())))
        print(f"{name:45s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}")

    report("paper's regularity (1 - s_r)", {v: 1 - scoring.regularity(m.recon_error) for v, m in test.items()})
    report("cell_error_max (raw)", {v: m.cell_error_max for v, m in test.items()})
    for name, means in footage.items():
        cells = np.concatenate([m.cell_error for m in means])
        mu, sd = cells.mean(axis=0), cells.std(axis=0)
        report(f"per-cell z max, calibrated on {name} ({len(cells)} frames)",
               {v: ((m.cell_error - mu) / sd).max(axis=1) for v, m in test.items()})


if __name__ == "__main__":
    main()
