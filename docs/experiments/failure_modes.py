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

Added afterwards, with its own expectations written before its first run (`--more`):
- small object: in the second half, a still square of side S/10 at a random place shows the
  scene's negative (255 − x), an object of unseen appearance that does not move. The survey
  says a small anomaly is averaged away in the whole-frame error. Expected: `cell_error_max`
  separates it best; `regularity` and `anomaly_score` less; the motion scores stay near 0.5
  (a residual that stays put cancels in m, the motion score's blind spot).
- half the videos: the 3× speed change (and, separately, the small object) in every other
  video only, the rest left normal, AUC pooled over all of them. The survey says per-video
  min-max makes videos incomparable: each normal video's worst frame gets the top score.
  Expected: `motion_regularity` falls below raw `motion_error` here, and `regularity` below
  `anomaly_score` (calibrated on validation footage, comparable across videos).
"""
import numpy as np

from ped2_experiment import Ped2Experiment
from vadray import metrics, scoring
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


def small_object(frames: np.ndarray, start: int | None = None, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The object in frames [start, stop): by default from the middle of the video to its end."""
    altered = frames.copy()
    n, size = len(frames), frames.shape[-1]
    shown = slice(n // 2 if start is None else start, n if stop is None else stop)
    side = max(2, size // 10)
    rng = np.random.default_rng(n)
    top, left = rng.integers(0, size - side, size=2)
    box = altered[shown, top:top + side, left:left + side]
    altered[shown, top:top + side, left:left + side] = 255 - box
    labels = np.zeros(n, np.int8)
    labels[shown] = 1
    return altered, labels


def unaltered(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return frames, np.zeros(len(frames), np.int8)


def anomaly_metrics(name: str, ids: np.ndarray, truth: np.ndarray, scores: np.ndarray) -> dict:
    """Metrics of a score that is already "higher = more anomalous", whatever its name."""
    return metrics.frame_metrics(ids, truth, scores)


def pooled(ids: list, truth: list, scores: list[dict], metric=anomaly_metrics) -> dict[str, dict]:
    ids, truth = np.concatenate(ids), np.concatenate(truth)
    return {name: metric(name, ids, truth, np.concatenate([s[name] for s in scores])) for name in scores[0]}


def staged(videos: dict[str, np.ndarray], alter, every: int, scores_of, metric=anomaly_metrics) -> dict[str, dict]:
    """Pooled metrics of each score on `videos` with `alter` applied to every `every`-th one.
    `scores_of(frames)` → (frame_index, {name: score per frame}), read by `metric`."""
    ids, truth, scores = [], [], []
    for i, (video_id, frames) in enumerate(videos.items()):
        altered, labels = (alter if i % every == 0 else unaltered)(frames)
        frame_index, by_name = scores_of(altered)
        ids.append(np.full(len(frame_index), video_id))
        truth.append(labels[frame_index])
        scores.append(by_name)
    return pooled(ids, truth, scores, metric)


def measure(exp: Ped2Experiment, videos: dict[str, np.ndarray], alter, every: int = 1) -> dict[str, dict]:
    """AUCs of every score; with `every`=2 only every other video is altered, the rest stay normal."""
    def scores_of(frames: np.ndarray):
        means = exp.score(frames)
        columns = scoring.score_columns(means, exp.card["validation"])
        return means.frame_index, {name: columns[name] for name in SCORE_COLUMNS}

    return staged(videos, alter, every, scores_of, metric=column_metrics)   # reads regularity as 1 − s


def main() -> None:
    exp = Ped2Experiment(__doc__.splitlines()[0], default_hop=5,
                         flags=(("--more", "the small still object and the every-other-video runs"),))
    train = exp.videos("train")
    if exp.args.more:
        print(f"checkpoint: size {exp.card['input']['size']}; all 16 training videos")
        for change, alter, every in (("small still object (higher is better)", small_object, 1),
                                     ("3× speed in every other video", sudden_motion, 2),
                                     ("small still object in every other video", small_object, 2)):
            print(f"\n{change}:")
            for name, m in measure(exp, train, alter, every).items():
                print(f"  {name:20s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}")
        return
    sets = {"validation videos": {v: f for v, f in train.items() if v in exp.val_ids}, "all training videos": train}
    print(f"checkpoint: size {exp.card['input']['size']}, validation videos {sorted(exp.val_ids)}")
    for change, alter in (("brightness ×1.3 (ideal 0.5)", brightness_step), ("3× speed (higher is better)", sudden_motion)):
        for set_name, videos in sets.items():
            print(f"\n{change}, {set_name} ({len(videos)}):")
            for name, m in measure(exp, videos, alter).items():
                print(f"  {name:20s} AUC {m['auc']:.4f}  macro {m['auc_macro']:.4f}")


if __name__ == "__main__":
    main()
