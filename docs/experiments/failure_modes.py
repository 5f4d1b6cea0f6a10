"""Experiment (not part of the product): two of the survey's failure modes, on normal footage.

    python docs/experiments/failure_modes.py CHECKPOINT ../shared/datasets/ucsd-ped2 [--hop 5]

The survey says whole-frame reconstruction error "moves a lot" with a brightness change of
×1.3 and "barely moves" with a sudden motion of normal objects. Both are made here from Ped2's
normal training videos, so no test label is read:
- brightness: the second half of each video ×1.3 (clipped to 255), as when a light comes on;
- sudden motion: after the first third, the video plays at 3× speed (every third frame), so
  the same walkers move three times as fast.
Each altered video is scored as `vadray score` scores it (`scoring.volume_sums`, stride-1
volumes every --hop frames) and every score column of the `frames` table is read as `vadray
evaluate` reads it. The figure per score is the frame AUC of "altered" against "unaltered" frames,
pooled over videos (macro in brackets). For brightness, 0.5 is the ideal (a light is not an
anomaly); for sudden motion, higher is better (a walker at cycling speed is Ped2's anomaly).

Written before the run, the expectations: brightness moves `regularity` and `anomaly_score`
well away from 0.5 and leaves the motion scores near it (a residual that stays put cancels
in m); sudden motion is separated better by `motion_regularity` than by `regularity`. Run once
per checkpoint, on the model's two held-out validation videos and on all sixteen.
"""
import numpy as np

from ped2_experiment import Ped2Experiment
from vadray import scoring
from vadray.evaluate import SCORE_COLUMNS, column_metrics


def brightness_step(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    altered = frames.copy()
    half = len(frames) // 2
    altered[half:] = np.clip(frames[half:].astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
    return altered, (np.arange(len(frames)) >= half).astype(np.int8)


def sudden_motion(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    third = len(frames) // 3
    altered = np.concatenate([frames[:third], frames[third::3]])
    return altered, (np.arange(len(altered)) >= third).astype(np.int8)


def measure(exp: Ped2Experiment, videos: dict[str, np.ndarray], alter) -> dict[str, dict]:
    ids, truth, columns = [], [], {name: [] for name in SCORE_COLUMNS}
    for video_id, frames in videos.items():
        altered, labels = alter(frames)
        means = exp.score(altered)
        scores = scoring.score_columns(means, exp.card["validation"])
        ids.append(np.full(len(means.frame_index), video_id))
        truth.append(labels[means.frame_index])
        for name in SCORE_COLUMNS:
            columns[name].append(scores[name])
    return {name: column_metrics(name, np.concatenate(ids), np.concatenate(truth), np.concatenate(parts))
            for name, parts in columns.items()}


def main() -> None:
    exp = Ped2Experiment(__doc__.splitlines()[0], default_hop=5)
    train = exp.videos("train")
    sets = {"validation videos": {v: f for v, f in train.items() if v in exp.val_ids}, "all training videos": train}
    print(f"checkpoint: size {exp.card['input']['size']}, validation videos {sorted(exp.val_ids)}")
    for change, alter in (("brightness ×1.3 (ideal 0.5)", brightness_step), ("3× speed (higher is better)", sudden_motion)):
        for set_name, videos in sets.items():
            print(f"\n{change}, {set_name} ({len(videos)}):")
            for name, m in measure(exp, videos, alter).items():
                print(f"  {name:20s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}")


if __name__ == "__main__":
    main()
