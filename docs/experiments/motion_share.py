"""Experiment (not part of the product): the share of a frame's error that moves.

    python docs/experiments/motion_share.py FRAMES_TABLE LABELS_CSV

Reads a `frames` table written by `vadray score` (needs `recon_error` and `motion_error`), so
it runs in seconds, without the model.

Defined before it was run. Both e(t) = ‖r_t‖ and m(t) = ‖r_t − r_{t−1}‖ grow with the number
and size of the objects in view and with the image's contrast. That is the survey's first and
third complaint, and the reason the paper normalises per video (its fifth). Their ratio,
share(t) = m(t) / e(t), is the fraction of the residual that changed since the previous frame.
It is dimensionless, so a crowd or a brighter day scales both and cancels, and it might rank
frames of different videos against each other without any per-video min-max. A static residual
(texture, a steady blur, a brightness offset) lowers it; a residual that moves (an object too
fast for the model) raises it. By the triangle inequality it lies in [0, 2].

Prediction: pooled AUC of the raw share above raw `motion_error`'s (0.7906 with the H200 227-px
checkpoint, 0.7156 with the CPU 59-px one), since the cross-video scale is what pooling
punishes. Also printed: its per-video min-max (as the paper's regularity) for comparison.
One run per table; the test labels only measure, whatever the result.
"""
import argparse

import numpy as np
import pandas as pd

from vadray import metrics, scoring
from vadray.evaluate import read_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frames_table")
    parser.add_argument("labels_csv")
    args = parser.parse_args()
    frames = pd.read_parquet(args.frames_table, columns=["video_id", "frame_index", "recon_error", "motion_error"])
    labels = read_labels(args.labels_csv)
    table = frames.merge(labels, on=["video_id", "frame_index"], how="inner").sort_values(["video_id", "frame_index"])
    print(f"{len(table)} labelled frames of {table.video_id.nunique()} videos")
    share = (table.motion_error / table.recon_error).to_numpy(np.float64)
    per_video = np.concatenate([1 - scoring.regularity(share[table.video_id.to_numpy() == v])
                                for v in table.video_id.unique()])
    for name, score in [("recon_error, raw", table.recon_error.to_numpy()),
                        ("motion_error, raw", table.motion_error.to_numpy()),
                        ("share = motion_error / recon_error, raw", share),
                        ("share, per-video min-max", per_video)]:
        m = metrics.frame_metrics(table.video_id.to_numpy(), table.label.to_numpy(), score)
        print(f"{name:45s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}  EER {m['eer']:.4f}")


if __name__ == "__main__":
    main()
