"""Clip rules (HKO-7 sequential iterator / random population) on hand-built gap patterns."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from pipeline import catalog as cat

T0 = np.datetime64("2015-06-01T00:00", "m")
IV = np.timedelta64(6, "m")


def at(slots) -> np.ndarray:
    """Slot indices -> datetime64[m] times on the 6-minute grid from T0."""
    return T0 + np.asarray(list(slots), dtype=np.int64) * IV


def slots_of(times) -> list[int]:
    return [int(x) for x in (np.asarray(times) - T0) // IV]


# (present slots, seq_len, stride, max_missing, expected sequent starts, expected valid starts); worked by hand
HAND_CASES = [
    # all present 0..9: 6-10 has one trailing missing slot (ok), 8 has three (not); 9 -> nothing after, stop
    (range(10), 5, 2, 1, [0, 2, 4, 6], [0, 1, 2, 3, 4, 5, 6]),
    # slot 3 missing (a single gap is allowed); 9-13 has one trailing gap (valid); 10-14 has 13,14
    # missing -> jump to 11, then 12 -> stop
    ([0, 1, 2] + list(range(4, 13)), 5, 2, 1, [0, 2, 4, 6, 8], [0, 1, 2, 4, 5, 6, 7, 8, 9]),
    # slots 3,4 missing (run of 2 > 1): 0,1,2 invalid (jump to next existing each time), then 5, 7
    ([0, 1, 2] + list(range(5, 12)), 5, 2, 1, [5, 7], [5, 6, 7, 8]),
    # the start after a stride need not exist: 5 is missing but clip 5,6,7 is valid
    ([0, 1, 2, 3, 4, 6, 7, 8, 9, 10], 3, 5, 1, [0, 5], [0, 1, 2, 3, 4, 6, 7, 8, 9]),
    # with no missing allowed the missing start 5 is invalid -> jump to 6; 11 > last -> stop
    ([0, 1, 2, 3, 4, 6, 7, 8, 9, 10], 3, 5, 0, [0, 6], [0, 1, 2, 6, 7, 8]),
    # "or all are": a clip with every slot absent is invalid even if max_missing >= seq_len
    ([0, 10], 2, 1, 5, [0, 10], [0, 10]),
    # a single timestamp, seq_len 1
    ([7], 1, 1, 0, [7], [7]),
]


@pytest.mark.parametrize("present, seq_len, stride, max_missing, want_seq, want_valid", HAND_CASES)
def test_hand_patterns(present, seq_len, stride, max_missing, want_seq, want_valid):
    times = at(present)
    got_seq = cat.sequent_clips(
        times, seq_len=seq_len, stride=stride, max_consecutive_missing=max_missing, interval=IV
    )
    got_valid = cat.valid_clip_starts(
        times, seq_len=seq_len, max_consecutive_missing=max_missing, interval=IV
    )
    assert slots_of(got_seq) == want_seq
    assert slots_of(got_valid) == want_valid


def test_one_full_day_defaults():
    """240 frames (00:00..23:54), seq 25 / stride 5 / max 2: a clip at slot k is valid iff its
    trailing absent run k+24-239 <= 2, i.e. k <= 217 -> 218 valid starts, sequent starts 0,5,..,215 (44)."""
    times = at(range(240))
    assert slots_of(cat.valid_clip_starts(times)) == list(range(218))
    assert slots_of(cat.sequent_clips(times)) == list(range(0, 216, 5))


def test_any_unit_any_order_duplicates():
    present = [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]
    ref = cat.sequent_clips(at(present), 5, 2, 1, IV)
    shuffled = np.random.default_rng(0).permutation(np.concatenate([at(present), at(present[:3])]))
    for unit in ("s", "ms", "ns"):
        got = cat.sequent_clips(shuffled.astype(f"datetime64[{unit}]"), 5, 2, 1, IV)
        assert got.dtype.kind == "M"
        np.testing.assert_array_equal(got.astype("datetime64[s]"), ref.astype("datetime64[s]"))
        got_v = cat.valid_clip_starts(shuffled.astype(f"datetime64[{unit}]"), 5, 1, IV)
        assert slots_of(got_v.astype("datetime64[m]")) == [5, 6, 7, 8]


def test_empty_and_bad_input():
    empty = np.array([], dtype="datetime64[s]")
    assert cat.sequent_clips(empty).size == 0 and cat.valid_clip_starts(empty).size == 0
    with pytest.raises(TypeError, match="times must be a numpy datetime64 array"):
        cat.sequent_clips(np.arange(3))
    with pytest.raises(ValueError, match="times contains NaT"):
        cat.sequent_clips(np.array(["NaT"], dtype="datetime64[s]"))


# ---------------------------------------------------------------- independent naive reference
def naive_is_valid(existing: set, clip: list, max_missing: int) -> bool:
    """HKOIterator._is_valid_clip, transcribed with Python datetimes."""
    missing = 0
    for t in clip:
        if t not in existing:
            missing += 1
            if missing > max_missing or missing >= len(clip):
                return False
        else:
            missing = 0
    return True


def naive_sequent(times: list, seq_len, stride, max_missing, interval: dt.timedelta) -> list:
    """HKOIterator 'sequent' mode with Python datetimes and a linear scan for the next timestamp."""
    index = sorted(set(times))
    existing = set(index)
    cur, out = index[0], []
    while cur <= index[-1]:
        clip = [cur + k * interval for k in range(seq_len)]
        if naive_is_valid(existing, clip, max_missing):
            out.append(cur)
            cur = cur + stride * interval
        else:
            later = [t for t in index if t > cur]
            if not later:
                break
            cur = later[0]
    return out


def naive_valid(times: list, seq_len, max_missing, interval: dt.timedelta) -> list:
    existing = set(times)
    return [
        t
        for t in sorted(existing)
        if naive_is_valid(existing, [t + k * interval for k in range(seq_len)], max_missing)
    ]


@pytest.mark.parametrize("seed", range(12))
def test_random_patterns_against_naive(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 160))
    p_missing = rng.choice([0.02, 0.1, 0.3, 0.6])
    slots = np.flatnonzero(rng.random(n) > p_missing)
    if slots.size == 0:
        slots = np.array([0])
    seq_len, stride, max_missing = int(rng.integers(1, 26)), int(rng.integers(1, 7)), int(rng.integers(0, 4))
    base = dt.datetime(2015, 6, 1)
    py_times = [base + int(s) * dt.timedelta(minutes=6) for s in slots]
    want_seq = naive_sequent(py_times, seq_len, stride, max_missing, dt.timedelta(minutes=6))
    want_valid = naive_valid(py_times, seq_len, max_missing, dt.timedelta(minutes=6))
    times = np.array(py_times, dtype="datetime64[s]")[rng.permutation(slots.size)]
    got_seq = cat.sequent_clips(times, seq_len, stride, max_missing, IV)
    got_valid = cat.valid_clip_starts(times, seq_len, max_missing, IV)
    assert [t.astype("datetime64[s]").astype(dt.datetime) for t in got_seq] == want_seq
    assert [t.astype("datetime64[s]").astype(dt.datetime) for t in got_valid] == want_valid


# ---------------------------------------------------------------- splits
def test_select_days_and_range():
    times = np.array(
        ["2015-06-01T23:54", "2015-06-02T00:00", "2015-06-03T12:00", "2015-06-04T00:00"],
        dtype="datetime64[m]",
    )
    assert cat.select_days(times, ["2015-06-02", np.datetime64("2015-06-04")]).tolist() == [
        False,
        True,
        False,
        True,
    ]
    assert cat.select_range(times, "2015-06-02", "2015-06-04").tolist() == [False, True, True, False]
    assert cat.select_range(times, None, "2015-06-02").tolist() == [True, False, False, False]
    assert cat.select_split(times, ("2015-06-03", None)).tolist() == [False, False, True, True]
    assert cat.select_split(times, {"start": "2015-06-02", "end": "2015-06-03"}).tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert cat.select_split(times, ["2015-06-01"]).tolist() == [True, False, False, False]


def test_split_days_by_fraction():
    days = np.datetime64("2015-06-01") + np.arange(10)
    parts = cat.split_days_by_fraction(days[::-1], valid_fraction=0.2, test_fraction=0.1)
    assert parts["train"].tolist() == days[:7].tolist()
    assert parts["valid"].tolist() == days[7:9].tolist()
    assert parts["test"].tolist() == days[9:].tolist()
    few = cat.split_days_by_fraction(days[:2])
    assert few["train"].size == 1 and few["test"].size == 1 and few["valid"].size == 0
    assert cat.split_days_by_fraction(days[:1])["train"].size == 1
