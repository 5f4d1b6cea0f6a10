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
import numpy as np

from ped2_experiment import Ped2Experiment
from vadray import scoring


def main() -> None:
    exp = Ped2Experiment(__doc__.splitlines()[0], default_hop=5)
    stats = exp.stats

    def score(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(e, n, frame index) of the frames the volumes cover."""
        means = exp.score(frames)
        x = (frames[means.frame_index].astype(np.float64) / 255 - stats.mean_image) / stats.std
        return means.recon_error, np.sqrt(np.square(x).sum(axis=(1, 2))), means.frame_index

    train = {v: score(f) for v, f in exp.videos("train").items()}
    test = {v: score(f) for v, f in exp.videos("test").items()}
    index = {v: i for v, (_, _, i) in test.items()}

    exp.report("paper's regularity (1 - s_r)", {v: 1 - scoring.regularity(e) for v, (e, _, _) in test.items()}, index)
    exp.report("raw frame error e", {v: e for v, (e, _, _) in test.items()}, index)
    for name, videos in (("validation videos", [v for v in train if v in exp.val_ids]),
                         ("all training videos", list(train))):
        e = np.concatenate([train[v][0] for v in videos])
        n = np.concatenate([train[v][1] for v in videos])
        b, a = np.polyfit(n, e, 1)
        sigma = float(np.std(e - (a + b * n)))
        print(f"fit on {name}: e = {a:.3f} + {b:.4f} n, sigma {sigma:.3f}, corr {np.corrcoef(n, e)[0, 1]:.3f}")
        exp.report(f"foreground-adjusted z, fitted on {name}",
                   {v: (e - a - b * n) / sigma for v, (e, n, _) in test.items()}, index)


if __name__ == "__main__":
    main()
