"""Experiment (not part of the product): frame error adjusted for how much foreground a frame has.

    python docs/experiments/foreground_calibration.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--hop 5]

DESIGN.md: "whole-frame error grows with the number and size of foreground objects, so crowded
or near-camera frames look abnormal". The normalised input x(t) = (frame/255 − mean image)/std
measures that foreground: n(t) = ‖x(t)‖₂ is large when many people are in view. On normal
footage, fit e(t) ≈ a + b·n(t) by least squares, σ = std of the residuals; the score is
(e − a − b·n) / σ, one threshold for every video, computed from the frame alone. Fitted
(a) on the card's validation videos, (b) on all training videos (in-sample for the model).
Scoring's own math (`ped2_direct.Trainer.score_video`), and the test labels only measure;
the design above was written down before any test frame was scored.
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
    parser.add_argument("--hop", type=int, default=5)
    args = parser.parse_args()
    model, card = load_model(args.checkpoint)
    stats = NormStats.from_dict(card["norm_stats"])
    trainer = Trainer(model, stats, torch.device("cpu"), 1e-4, 16, 0)
    T, size = card["input"]["T"], card["input"]["size"]

    def score(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(e, n, frame index) of the frames the volumes cover."""
        means = trainer.score_video(frames, T, args.hop)
        x = (frames[means.frame_index].astype(np.float64) / 255 - stats.mean_image) / stats.std
        return means.recon_error, np.sqrt(np.square(x).sum(axis=(1, 2))), means.frame_index

    train_ids, train_frames = decode_videos(f"{args.ped2}/train", size)
    train = {v: score(f) for v, f in zip(train_ids, train_frames)}
    test_ids, test_frames = decode_videos(f"{args.ped2}/test", size)
    test = {v: score(f) for v, f in zip(test_ids, test_frames)}
    labels = read_labels(f"{args.ped2}/test/frame_labels.csv")
    val_ids = set(card["training_data"]["val_video_ids"])

    def report(name: str, per_video: dict) -> None:
        ids = np.concatenate([np.full(len(s), v) for v, s in per_video.items()])
        truth = np.concatenate([labels[v].loc[test[v][2]].to_numpy() for v in per_video])
        m = metrics.frame_metrics(ids, truth, np.concatenate(list(per_video.values())))
        print(f"{name:55s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}  EER {m['eer']:.4f}")

    report("paper's regularity (1 - s_r)", {v: 1 - scoring.regularity(e) for v, (e, _, _) in test.items()})
    report("raw frame error e", {v: e for v, (e, _, _) in test.items()})
    for name, videos in (("validation videos", [v for v in train if v in val_ids]),
                         ("all training videos", list(train))):
        e = np.concatenate([train[v][0] for v in videos])
        n = np.concatenate([train[v][1] for v in videos])
        b, a = np.polyfit(n, e, 1)
        sigma = float(np.std(e - (a + b * n)))
        print(f"fit on {name}: e = {a:.3f} + {b:.4f} n, sigma {sigma:.3f}, corr {np.corrcoef(n, e)[0, 1]:.3f}")
        report(f"foreground-adjusted z, fitted on {name}",
               {v: (e - a - b * n) / sigma for v, (e, n, _) in test.items()})


if __name__ == "__main__":
    main()
