"""Experiment (not part of the product): a per-cell z-score calibrated on normal footage.

    python docs/experiments/cell_calibration.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--hop 1]

Scores every Ped2 training video (the calibration footage) and every test video with the
checkpoint, using scoring's own math through `ped2_direct.Trainer.score_video` (stride-1
volumes, 8×8 cell errors, the mean over the volumes containing a frame), then prints the
frame AUC (pooled and per-video mean) of max_c (cell_c − μ_c) / σ_c, with μ, σ per cell from
(a) the card's validation videos and (b) all training videos, beside the paper's regularity.
The test labels only measure; nothing here is chosen with them. ~25 min on 2 CPU cores.
"""
import numpy as np

from ped2_experiment import Ped2Experiment
from vadray import scoring


def main() -> None:
    exp = Ped2Experiment(__doc__.splitlines()[0], default_hop=1)
    train = {v: exp.score(f) for v, f in exp.videos("train").items()}
    test = {v: exp.score(f) for v, f in exp.videos("test").items()}
    index = {v: m.frame_index for v, m in test.items()}
    footage = {"validation videos": [m for v, m in train.items() if v in exp.val_ids],
               "all training videos": list(train.values())}

    exp.report("paper's regularity (1 - s_r)", {v: 1 - scoring.regularity(m.recon_error) for v, m in test.items()}, index)
    exp.report("cell_error_max (raw)", {v: m.cell_error_max for v, m in test.items()}, index)
    for name, means in footage.items():
        cells = np.concatenate([m.cell_error for m in means])
        mu, sd = cells.mean(axis=0), cells.std(axis=0)
        exp.report(f"per-cell z max, calibrated on {name} ({len(cells)} frames)",
                   {v: ((m.cell_error - mu) / sd).max(axis=1) for v, m in test.items()}, index)


if __name__ == "__main__":
    main()
