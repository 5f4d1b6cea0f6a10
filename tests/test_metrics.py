"""Metrics against values computed by hand (pair counting for AUC, the ROC step curve for EER)."""
import math

import numpy as np
import pytest

from vadray import metrics


def test_auc_and_eer_on_a_small_series():
    # negatives 0.1 0.4 0.8, positives 0.35 0.7 0.9: positive-above-negative pairs 1+2+3 = 6 of 9
    labels = np.array([0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    assert metrics.frame_auc(labels, scores) == pytest.approx(6 / 9)
    # ROC points (FPR, TPR): … (1/3, 2/3) at threshold 0.7, where FPR = FNR = 1/3
    rate, threshold = metrics.equal_error_rate(labels, scores)
    assert rate == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.7)


def test_eer_interpolates_on_a_diagonal_segment():
    # positives 0.9, 0.5; negatives 0.5, 0.1. The tie at 0.5 draws the segment
    # (0, 0.5) → (0.5, 1): FNR = 0.5 − FPR there, so FPR = FNR = 0.25.
    labels = np.array([1, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert metrics.frame_auc(labels, scores) == pytest.approx(3.5 / 4)   # the tie counts one half
    rate, threshold = metrics.equal_error_rate(labels, scores)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.7)   # midway along the segment, midway from 0.9 to 0.5


def test_perfect_and_single_class():
    assert metrics.frame_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert metrics.equal_error_rate([0, 0, 1], [0.1, 0.2, 0.9])[0] == 0.0
    assert math.isnan(metrics.frame_auc([0, 0], [0.1, 0.2]))
    assert all(math.isnan(x) for x in metrics.equal_error_rate([1, 1], [0.1, 0.2]))


def test_micro_and_macro_auc():
    # video a: perfect (AUC 1); video b: reversed (AUC 0); video c: normal only
    videos = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2)
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.6, 0.7, 0.3, 0.4, 0.5, 0.5])
    out = metrics.frame_metrics(videos, labels, scores)
    assert out["auc_macro"] == pytest.approx(0.5)
    assert out["videos"] == 3 and out["videos_in_macro"] == 2
    assert math.isnan(out["auc_per_video"]["c"])
    # micro, by pairs: positives 0.8 0.9 0.3 0.4 against negatives 0.1 0.2 0.6 0.7 0.5 0.5
    # 0.8, 0.9 beat all 6; 0.3, 0.4 beat 0.1 and 0.2 only: (12 + 4) / 24
    assert out["auc"] == pytest.approx(16 / 24)
    assert out["frames"] == 10 and out["anomalous_frames"] == 4


def test_label_runs():
    frames = np.array([10, 11, 12, 13, 14, 15, 20, 21, 22])
    labels = np.array([0, 1, 1, 0, 1, 1, 1, 1, 0])
    # 14, 15 then a gap in frame indices (16-19 missing): 20, 21 is a new run
    np.testing.assert_array_equal(metrics.label_runs(frames, labels), [[11, 12], [14, 15], [20, 21]])
    np.testing.assert_array_equal(metrics.label_runs(frames[::-1], labels[::-1]), [[11, 12], [14, 15], [20, 21]])
    assert metrics.label_runs(frames, np.zeros(9)).shape == (0, 2)
    np.testing.assert_array_equal(metrics.label_runs([0, 1, 2], [1, 1, 1]), [[0, 2]])


def test_event_counts():
    truth = {"a": np.array([[10, 20], [50, 60]]), "b": np.array([[5, 5]]), "c": np.zeros((0, 2))}
    found = {"a": np.array([[18, 25], [30, 40], [61, 70]]),   # hits [10,20]; 2 false alarms
             "b": np.array([[0, 5]]),                          # touches frame 5: a hit
             "c": np.array([[1, 2]]),                          # no GT there: a false alarm
             "unlabelled": np.array([[0, 9]])}                 # not counted
    out = metrics.event_counts(truth, found)
    assert out["gt_events"] == 3 and out["gt_detected"] == 2 and out["gt_missed"] == 1
    assert out["detected_events"] == 5 and out["false_alarms"] == 3
    assert out["detection_rate"] == pytest.approx(2 / 3)
    # labels only for frames 0-49 of "a" (and all of b, c): [61, 70] lies in unlabelled frames,
    # so it is not judged a false alarm; [30, 40] holds labelled frames and stays one
    labelled = {"a": np.arange(50), "b": np.arange(10), "c": np.arange(10)}
    out = metrics.event_counts(truth, found, labelled)
    assert out["detections_outside_labels"] == 1 and out["detected_events"] == 4 and out["false_alarms"] == 2
    assert out["gt_detected"] == 2


def test_frame_auc_equals_sklearns_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for n in (2, 7, 50, 1000):
        labels = rng.integers(0, 2, n)
        labels[0], labels[-1] = 0, 1
        scores = np.round(rng.normal(size=n), 1)          # many ties
        assert metrics.frame_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_macro_auc_is_the_mean_over_videos_with_both_classes():
    """Two videos of AUC 1 and 0 made mean, median and 0.5 coincide (mutation review)."""
    ids = np.repeat(["a", "b", "c", "d"], 4)
    labels = np.array([0, 0, 1, 1] * 3 + [0, 0, 0, 0])
    scores = np.array([0, 1, 2, 3, 0, 1, 2, 3, 3, 2, 1, 0, 5, 6, 7, 8], float)   # a, b: AUC 1; c: 0; d: normal only
    result = metrics.frame_metrics(ids, labels, scores)
    assert result["auc_macro"] == pytest.approx(2 / 3) and result["videos_in_macro"] == 3
    assert np.isnan(result["auc_per_video"]["d"])


def test_a_detection_touching_the_first_labelled_frame_is_judged():
    counts = metrics.event_counts({"a": np.array([[40, 50]])}, {"a": np.array([[45, 50], [55, 56], [60, 70]])},
                                  {"a": np.arange(50, 60)})
    # [45, 50] holds labelled frame 50 and overlaps the event; [55, 56] is labelled, a false alarm;
    # [60, 70] holds no labelled frame
    assert (counts["gt_detected"], counts["false_alarms"], counts["detections_outside_labels"]) == (1, 1, 1)
