"""Experiment (not part of the product): one score from the paper's error and the motion error.

    python docs/experiments/fused_score.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--test]

The failure modes (failure_modes.py) split the work between the two per-video scores: a sudden
motion of normal objects is seen only by `motion_regularity`, a small still object mostly by
`regularity`. A user who wants one column should not have to know which kind of anomaly to
expect. Three fusions of the two per-video normalised scores, defined before any run (s_r the
paper's regularity of e, s_m the same of m, both 1 − (x − min x) / max x per video):
- mean: anomaly = 1 − (s_r + s_m) / 2
- max:  anomaly = max(1 − s_r, 1 − s_m)     (whichever score moved most)
- geo:  anomaly = 1 − regularity(√(e·m))    (the paper's normalisation of the geometric mean)

Choice, fixed before the first run: the fusion with the highest mean pooled AUC over the four
label-free staged changes (3× speed and the small still object, each in all sixteen training
videos and in every other one), averaged over the 59-px and 227-px checkpoints. Expected: max
keeps each mode's better score (≈ motion on speed, ≈ regularity on the object) and wins; mean
and geo halve the silent score's signal. `--test` then measures the fusions on Ped2 test, the
labels only measuring, after the choice has been committed.
"""
import numpy as np

from failure_modes import pooled, small_object, staged, sudden_motion
from ped2_experiment import Ped2Experiment
from vadray import scoring

MODES = (("3× speed", sudden_motion, 1), ("small still object", small_object, 1),
         ("3× speed, every other video", sudden_motion, 2),
         ("small still object, every other video", small_object, 2))


def fusions(means: scoring.FrameMeans) -> dict[str, np.ndarray]:
    """Anomaly scores (higher: more anomalous) of one video: the two inputs and the three fusions."""
    e, m = means.recon_error, means.motion_error
    a_r, a_m = 1 - scoring.regularity(e), 1 - scoring.regularity(m)
    return {"regularity": a_r, "motion_regularity": a_m, "mean": (a_r + a_m) / 2,
            "max": np.maximum(a_r, a_m), "geo": 1 - scoring.regularity(np.sqrt(e * m))}


def print_test(exp: Ped2Experiment, scores_of, width: int) -> None:
    ids, truth, scores = [], [], []
    for video_id, frames in exp.videos("test").items():
        frame_index, by_name = scores_of(frames)
        ids.append(np.full(len(frame_index), video_id))
        truth.append(exp.labels[video_id].loc[frame_index].to_numpy())
        scores.append(by_name)
    for name, m in pooled(ids, truth, scores).items():
        print(f"  test {name:{width}s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}  EER {m['eer']:.4f}")


def print_staged(exp: Ped2Experiment, scores_of, width: int, modes=MODES) -> None:
    """Every staged change on the 16 training videos, then each score's mean pooled AUC."""
    train = exp.videos("train")
    totals: dict[str, list[float]] = {}
    for mode, alter, every in modes:
        print(f"\n{mode}:")
        for name, m in staged(train, alter, every, scores_of).items():
            totals.setdefault(name, []).append(m["auc"])
            print(f"  {name:{width}s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}")
    print(f"\nmean pooled AUC over the {len(modes)} changes:")
    for name, values in totals.items():
        print(f"  {name:{width}s} {np.mean(values):.4f}")


def run(description: str, variants, width: int, suites=(("", MODES),), note: str = "") -> None:
    """An experiment's main: `variants(FrameMeans)` → {name: anomaly score}, measured on the
    staged changes (each suite of modes in turn) or, with --test, once on Ped2 test."""
    exp = Ped2Experiment(description, default_hop=5,
                         flags=(("--test", "measure on Ped2 test (after the choice is committed)"),))
    print(f"checkpoint: size {exp.card['input']['size']}, hop {exp.hop}{note}")

    def scores_of(frames: np.ndarray):
        means = exp.score(frames)
        return means.frame_index, variants(means)

    if exp.args.test:
        print_test(exp, scores_of, width)
        return
    for title, modes in suites:
        if title:
            print(f"\n== {title} ==")
        print_staged(exp, scores_of, width, modes)


if __name__ == "__main__":
    run(__doc__.splitlines()[0], fusions, 18)
