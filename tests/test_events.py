"""Persistence1D and event grouping against hand-made series."""
import numpy as np
import pytest

from vadray.events import EVENTS_SCHEMA, EventSettings, detect_events, persistence_pairs


def _pairs(values):
    p = persistence_pairs(np.array(values, dtype=float))
    return list(zip(p.min_index.tolist(), p.max_index.tolist(), p.persistence.tolist()))


def test_three_minima_paired_by_elder_rule():
    # minima at 1 (1), 3 (0, global), 5 (2); maxima 4 at index 2 and 5 at index 4
    assert _pairs([3, 1, 4, 0, 5, 2, 6]) == [(1, 2, 3.0), (3, 6, 6.0), (5, 4, 3.0)]


def test_plateaus_give_one_minimum_at_their_first_sample():
    assert _pairs([2, 0, 0, 0, 2, 1, 1, 3]) == [(1, 7, 3.0), (5, 4, 1.0)]


def test_equal_minima_the_later_one_dies():
    assert _pairs([1, 0, 1, 0, 1]) == [(1, 4, 1.0), (3, 2, 1.0)]


def test_minima_at_the_ends():
    assert _pairs([0, 2, 1, 3]) == [(0, 3, 3.0), (2, 1, 1.0)]
    assert _pairs([3, 1, 2, 0]) == [(1, 2, 1.0), (3, 0, 3.0)]


def test_monotone_and_constant_series():
    assert _pairs([0, 1, 2, 5]) == [(0, 3, 5.0)]
    assert _pairs([5, 2, 1, 0]) == [(3, 0, 5.0)]
    assert _pairs([4, 4, 4]) == [(0, 2, 0.0)]   # ties: the last sample ranks highest
    assert _pairs([7]) == [(0, 0, 0.0)]
    assert _pairs([]) == []
    with pytest.raises(ValueError):
        persistence_pairs(np.array([1.0, np.nan]))


def _brute_force(values):
    """Textbook 1-D rule: a local minimum dies at the lower of the highest points on the way to
    a lower sample (by value, then index) on either side; the global minimum at the range."""
    v = np.asarray(values, float)
    n = v.size
    key = [(v[i], i) for i in range(n)]
    out = {}
    for m in range(n):
        if (m > 0 and key[m - 1] < key[m]) or (m + 1 < n and key[m + 1] < key[m]):
            continue                                    # not a local minimum
        deaths = []
        for step in (-1, 1):
            j, highest = m + step, -np.inf
            while 0 <= j < n and not key[j] < key[m]:
                highest = max(highest, v[j])
                j += step
            if 0 <= j < n:
                deaths.append(max(highest, v[j]))
        out[m] = (min(deaths) if deaths else v.max()) - v[m]
    return out


def test_matches_brute_force_on_random_series_with_ties():
    rng = np.random.default_rng(11)
    for _ in range(200):
        values = rng.integers(0, 5, size=rng.integers(1, 25))
        p = persistence_pairs(values)
        assert dict(zip(p.min_index.tolist(), p.persistence.tolist())) == _brute_force(values)


def _dip(s, centre, depth, half_width):
    """A V-shaped dip: s drops linearly to 1 - depth at `centre`."""
    for k in range(-half_width, half_width + 1):
        s[centre + k] = min(s[centre + k], 1 - depth * (1 - abs(k) / half_width))


def test_dips_within_window_are_one_event():
    s = np.ones(300)
    _dip(s, 100, 0.6, 10)
    _dip(s, 130, 0.4, 10)
    _dip(s, 250, 0.5, 10)
    events = detect_events(s, persistence_threshold=0.2, window=50)
    assert [e["peak_frame"] for e in events] == [100, 250]
    first, second = events
    assert first["min_regularity"] == pytest.approx(0.4)
    assert first["persistence"] == pytest.approx(0.6)   # the global minimum: the range
    # half depth of the dip at 100: level 0.7, s < 0.7 for |k| < 5 → frames 96..104;
    # the dip at 130 (depth 0.4, level 0.8): |k| < 5 → frames 126..134; the group spans both
    assert (first["start_frame"], first["end_frame"]) == (96, 134)
    assert (second["start_frame"], second["end_frame"]) == (246, 254)
    assert [e["event_id"] for e in events] == [0, 1]
    assert set(first) <= set(EVENTS_SCHEMA.names)


def test_dips_outside_window_are_separate_events():
    s = np.ones(300)
    _dip(s, 100, 0.6, 10)
    _dip(s, 130, 0.4, 10)
    events = detect_events(s, persistence_threshold=0.2, window=20)
    assert [(e["start_frame"], e["peak_frame"], e["end_frame"]) for e in events] == [
        (96, 100, 104), (126, 130, 134)]


def test_small_wiggles_below_threshold_are_ignored():
    s = 1 - 0.01 * (np.arange(200) % 2)    # persistence 0.01 everywhere
    _dip(s, 150, 0.5, 8)
    events = detect_events(s, persistence_threshold=0.1)
    assert len(events) == 1 and events[0]["peak_frame"] == 150


def test_minimum_at_first_and_last_frame():
    rising = np.array([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    (event,) = detect_events(rising, persistence_threshold=0.1)
    # range 0.75 → level 0.625: frames 0 and 1 lie below it
    assert (event["start_frame"], event["peak_frame"], event["end_frame"]) == (0, 0, 1)
    (event,) = detect_events(rising[::-1].copy(), persistence_threshold=0.1)
    assert (event["start_frame"], event["peak_frame"], event["end_frame"]) == (4, 5, 5)


def test_constant_and_monotone_series():
    assert detect_events(np.ones(100)) == []
    falling = np.linspace(1.0, 0.5, 100)
    (event,) = detect_events(falling, persistence_threshold=0.1)
    assert event["peak_frame"] == 99 and event["persistence"] == pytest.approx(0.5)


def test_plateau_minimum_spans_the_plateau():
    s = np.ones(40)
    s[10:20] = 0.3
    (event,) = detect_events(s, persistence_threshold=0.1)
    assert (event["start_frame"], event["peak_frame"], event["end_frame"]) == (10, 10, 19)


def test_frame_index_times_and_anomaly_score():
    s = np.ones(100)
    _dip(s, 60, 0.5, 10)
    frames = np.arange(100) + 5000
    times = frames / 25.0
    score = (1 - s) * 10
    (event,) = detect_events(s, times, frame_index=frames, anomaly_score=score, persistence_threshold=0.1)
    assert event["peak_frame"] == 5060 and event["peak_time_s"] == pytest.approx(5060 / 25)
    assert event["start_time_s"] == pytest.approx(event["start_frame"] / 25)
    assert event["max_anomaly_score"] == pytest.approx(5.0)
    # the event lasts 9 frames = 0.32 s: a 1 s minimum duration drops it
    assert detect_events(s, times, frame_index=frames, persistence_threshold=0.1, min_duration_s=1.0) == []
    no_times = detect_events(s, persistence_threshold=0.1)[0]
    assert np.isnan(no_times["peak_time_s"]) and np.isnan(no_times["max_anomaly_score"])


def test_event_settings_check_the_score_and_keep_the_default_run_id_text():
    assert EventSettings().key() == "p=0.1|w=50"     # run ids of default runs did not change
    assert EventSettings("combined_regularity", 0.2, 30).key() == "p=0.2|w=30|ev=combined_regularity"
    assert EventSettings(min_seconds=1.5).key() == "p=0.1|w=50|min_s=1.5"
    with pytest.raises(ValueError, match="negative"):
        EventSettings(min_seconds=-1)
    with pytest.raises(ValueError, match="events can follow"):
        EventSettings("anomaly_score")
    with pytest.raises(ValueError, match="negative"):
        EventSettings(persistence=-0.1)


def test_an_event_never_spans_frames_without_a_score():
    """Frames 3-999 have no score (they did not decode): the two dips on either side are two
    events, and a dip's span stops at the gap instead of walking across it."""
    s = np.array([1, 0.0, 0.4, 0.4, 0.0, 1])
    frames = np.array([0, 1, 2, 1000, 1001, 1002])
    spans = [(e["start_frame"], e["end_frame"]) for e in detect_events(s, frame_index=frames, window=50)]
    # each dip is half its run's depth wide: frames 2 and 1000 (0.4) are within it on both sides
    assert spans == [(1, 2), (1000, 1001)]
    # dips that run into the gap from both sides: each is clipped to its run, and spans that
    # meet only across the gap (positions 3 and 4) do not touch: frames 3 and 900 are apart
    s = np.array([1, 0.5, 0.1, 0.2, 0.12, 0.1, 0.5, 1])
    frames = np.array([0, 1, 2, 3, 900, 901, 902, 903])
    spans = [(e["start_frame"], e["end_frame"]) for e in detect_events(s, frame_index=frames, window=50,
                                                                         persistence_threshold=0.05)]
    assert spans == [(1, 3), (900, 902)]   # mirror images: frames 1 and 902 (0.5) both within half depth
    # two dips 16 frames apart (inside the 50-frame window) with unscored frames 10-19 between
    # them: two events, not one spanning the frames without a score
    frames = np.r_[0:10, 20:30]
    s = np.ones(20)
    s[[4, 5, 6]] = s[[12, 13, 14]] = [0.3, 0.0, 0.3]
    spans = [(e["start_frame"], e["end_frame"]) for e in detect_events(s, frame_index=frames, window=50)]
    assert spans == [(4, 6), (22, 24)]
    # a run that opens with a dip, after a run that ended low: each run is its own series, so
    # the dip is not the slope of the run before it (which swallowed it)
    s = np.array([.9, .9, .8, .5, .2, .2, .5, .8, .9, .9])
    frames = np.r_[0:5, 100:105]
    spans = [(e["start_frame"], e["end_frame"]) for e in detect_events(s, frame_index=frames)]
    assert spans == [(3, 4), (100, 101)]
    alone = [(e["start_frame"], e["end_frame"]) for e in detect_events(s[5:], frame_index=frames[5:])]
    assert alone == [(100, 101)]


def test_regularity_keeps_a_nan_error_nan():
    from vadray.scoring import regularity

    np.testing.assert_allclose(regularity(np.array([2.0, np.nan, 4.0])), [1.0, np.nan, 0.5])
    assert np.isnan(regularity(np.full(3, np.nan))).all()
    np.testing.assert_array_equal(regularity(np.array([0.0, np.nan])), [1.0, np.nan])
    np.testing.assert_allclose(regularity(np.array([2.0, np.inf, 4.0])), [1.0, np.nan, 0.5])   # not [1, nan, 1]


def test_the_boundaries_of_window_persistence_duration_and_span():
    """Each setting's exact edge (mutation review: `>` for `>=` survived at all four): minima
    exactly `window` frames apart are one event, one frame more are two; a dip exactly as deep
    as the threshold counts; an event exactly `min_duration_s` long is kept; the event's last
    frame counts for its max_anomaly_score."""
    s = np.ones(300)
    _dip(s, 100, 0.5, 10)
    _dip(s, 150, 0.5, 10)
    assert len(detect_events(s, persistence_threshold=0.2, window=50)) == 1
    assert len(detect_events(s, persistence_threshold=0.2, window=49)) == 2
    assert len(detect_events(np.array([1.0, 0.5, 1.0]), persistence_threshold=0.5)) == 1
    s = np.ones(20)
    s[5:10] = [0.5, 0.4, 0.3, 0.4, 0.5]
    score = np.zeros(20)
    score[9] = 7.0
    [event] = detect_events(s, np.arange(20) / 10, anomaly_score=score, persistence_threshold=0.2,
                            min_duration_s=0.4)
    assert (event["start_frame"], event["end_frame"], event["max_anomaly_score"]) == (5, 9, 7.0)
    assert detect_events(s, np.arange(20) / 10, persistence_threshold=0.2, min_duration_s=0.41) == []


def test_events_never_overlap_and_are_in_time_order():
    """A deep minimum's half-depth span can reach back over an earlier, shallower group (code
    review: event 0 = [100, 100] sat inside event 1 = [61, 339]); spans are merged instead.
    Random series with gaps: every event is disjoint from the next, starts after it, and holds
    its peak."""
    x = np.arange(400)
    s = np.ones(400)
    s[60:341] = np.abs(x[60:341] - 200) / 140 * 0.5
    s[100] -= 0.2
    s[160] -= 0.12
    [event] = detect_events(s)
    assert (event["start_frame"], event["end_frame"], event["peak_frame"]) == (61, 339, 200)
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(5, 300))
        s = np.cumsum(rng.normal(0, 0.1, n))
        frames = np.cumsum(rng.choice([1, 1, 1, 1, 1, 1, 1, 1, 1, 40], n))
        events = detect_events(s, frame_index=frames, window=int(rng.integers(0, 60)),
                               persistence_threshold=float(rng.uniform(0, 0.5)))
        assert [e["event_id"] for e in events] == list(range(len(events)))
        for e, after in zip(events, events[1:]):
            assert e["end_frame"] + 1 < after["start_frame"]
        for e in events:
            assert e["start_frame"] <= e["peak_frame"] <= e["end_frame"]
