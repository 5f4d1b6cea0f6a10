"""Evaluation metrics: frame-level ROC AUC (micro, macro) and EER; event-level counts.

Scores are "higher = more anomalous" (pass 1 − regularity for the regularity column).
A metric that is undefined (one class only, no frames) is NaN, never an exception, so a
report over many videos still comes out.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve


def _both_classes(labels: np.ndarray) -> bool:
    return labels.size > 0 and labels.min() != labels.max()


def frame_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of scores (N,) against 0/1 labels (N,); NaN when only one class is present.

    The Mann-Whitney form (ties count one half, as in sklearn's `roc_auc_score`, which the
    tests hold it to): sklearn's own checks cost ~4 ms a call, which an evaluation of
    thousands of short videos (one macro AUC each) paid per video."""
    labels = np.asarray(labels).astype(np.int8)
    if not _both_classes(labels):
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))          # average ranks of tied scores
    positives = labels == 1
    n_pos = int(positives.sum())
    n_neg = labels.size - n_pos
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the rate where FPR = FNR, linearly interpolated on the ROC curve.

    FPR − FNR rises along the ROC curve; the EER lies on the segment where it changes sign.
    The threshold is interpolated the same way (the end point's threshold when the
    neighbouring one is sklearn's +inf). NaN, NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(np.int8)
    if not _both_classes(labels):
        return float("nan"), float("nan")
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores, np.float64))
    fnr = 1.0 - tpr
    gap = fpr - fnr                                  # (P,) non-decreasing, −1 … +1
    i = int(np.argmax(gap >= 0))                     # first point at or past the crossing
    if gap[i] == 0 or i == 0:
        return float(fpr[i]), float(thresholds[i])
    w = gap[i - 1] / (gap[i - 1] - gap[i])           # fraction of the segment (i−1 → i)
    rate = fpr[i - 1] + w * (fpr[i] - fpr[i - 1])
    lo, hi = thresholds[i - 1], thresholds[i]
    threshold = hi if not np.isfinite(lo) else lo + w * (hi - lo)
    return float(rate), float(threshold)


def frame_metrics(video_ids: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict:
    """AUC over all frames pooled (micro), mean of per-video AUCs (macro), EER.

    Macro averages only the videos that have both normal and anomalous frames.
    """
    video_ids = np.asarray(video_ids)
    labels = np.asarray(labels).astype(np.int8)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(video_ids, kind="stable")
    names, firsts = np.unique(video_ids[order], return_index=True)
    per_video = {str(name): frame_auc(lab, sc) for name, lab, sc in
                 zip(names, np.split(labels[order], firsts[1:]), np.split(scores[order], firsts[1:]))}
    defined = [v for v in per_video.values() if np.isfinite(v)]
    rate, threshold = equal_error_rate(labels, scores)
    return {
        "auc": frame_auc(labels, scores),
        "auc_macro": float(np.mean(defined)) if defined else float("nan"),
        "eer": rate,
        "eer_threshold": threshold,
        "frames": int(labels.size),
        "anomalous_frames": int(labels.sum()),
        "videos": len(per_video),
        "videos_in_macro": len(defined),
        "auc_per_video": per_video,
    }


def label_runs(frame_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Ground-truth events of one video: runs of label 1 over consecutive frames → (K, 2).

    Rows are [first, last] frame indices, inclusive; a gap in frame indices ends a run.
    """
    frame_index = np.asarray(frame_index, np.int64)
    order = np.argsort(frame_index, kind="stable")
    frames = frame_index[order]
    positive = np.asarray(labels)[order].astype(bool)
    if not positive.any():
        return np.zeros((0, 2), np.int64)
    # a run starts at a positive frame whose predecessor is not a positive, consecutive frame
    continues = np.zeros(frames.size, bool)
    continues[1:] = positive[:-1] & (np.diff(frames) == 1)
    starts = np.flatnonzero(positive & ~continues)
    ends_mask = np.zeros(frames.size, bool)
    ends_mask[:-1] = ~(positive[1:] & (np.diff(frames) == 1))
    ends_mask[-1] = True
    ends = np.flatnonzero(positive & ends_mask)
    return np.stack([frames[starts], frames[ends]], axis=1)


def overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K, M) bool: inclusive intervals a (K, 2) and b (M, 2) share at least one frame."""
    a = np.asarray(a, np.int64).reshape(-1, 2)
    b = np.asarray(b, np.int64).reshape(-1, 2)
    return (a[:, None, 0] <= b[None, :, 1]) & (b[None, :, 0] <= a[:, None, 1])


def event_counts(ground_truth: dict[str, np.ndarray], detected: dict[str, np.ndarray],
                 labelled: dict[str, np.ndarray] | None = None) -> dict:
    """Event-level counts over videos (keys = video ids; values = (K, 2) frame intervals).

    A ground-truth event is detected if some detected event overlaps it; a detected event
    that overlaps no ground-truth event is a false alarm. Videos missing from `detected`
    have no detections; detections in videos absent from `ground_truth` are not counted
    (those videos have no labels). With `labelled` (video → its labelled frame indices), a
    detection that holds no labelled frame is not judged either way: it is counted in
    `detections_outside_labels`, not as a false alarm.
    """
    totals = {"gt_events": 0, "gt_detected": 0, "detected_events": 0, "false_alarms": 0,
              "detections_outside_labels": 0}
    for video, truth in ground_truth.items():
        found = np.asarray(detected.get(video, np.zeros((0, 2))), np.int64).reshape(-1, 2)
        if labelled is not None:
            frames = np.sort(np.asarray(labelled[video], np.int64))
            judged = np.searchsorted(frames, found[:, 1], "right") > np.searchsorted(frames, found[:, 0], "left")
            totals["detections_outside_labels"] += int((~judged).sum())
            found = found[judged]
        hit = overlaps(truth, found)                       # (K, M)
        totals["gt_events"] += len(truth)
        totals["gt_detected"] += int(hit.any(axis=1).sum())
        totals["detected_events"] += len(found)
        totals["false_alarms"] += int((~hit.any(axis=0)).sum())
    totals["gt_missed"] = totals["gt_events"] - totals["gt_detected"]
    totals["detection_rate"] = (totals["gt_detected"] / totals["gt_events"]
                                if totals["gt_events"] else float("nan"))
    return totals


def finite_or_none(value):
    """`value` with every NaN or infinite float replaced by None: strict JSON has no NaN."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value
