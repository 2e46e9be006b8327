"""Clip rules of the HKO-7 benchmark, splits, and day lists.

A *clip* is ``seq_len`` consecutive slots at the archive cadence (``interval``) starting at a
start time. A clip is *valid* when no run of more than ``max_consecutive_missing`` consecutive
slots is absent, and not every slot is absent (the rule of ``HKOIterator._is_valid_clip``).

- :func:`valid_clip_starts`: every existing timestamp whose clip is valid (the random-sampling
  population used for training).
- :func:`sequent_clips`: the start times picked by the HKO-7 sequential iterator (evaluation).

Times are numpy ``datetime64`` arrays of the timestamps that exist, in any order and any unit;
results are sorted ``datetime64`` arrays in the finer of the input's and ``interval``'s units.

Splits: a split is a list of days or a time range (:func:`select_split`); without one, days are
split chronologically by fraction (:func:`split_days_by_fraction`, the one split rule). Day lists are
the HKO-7 benchmark's text files, one ``YYYYMMDD, <daily rain mm>`` line per day
(:func:`read_day_list`, :func:`write_day_list`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

#: The HKO-7 benchmark's cadence: the default of the clip functions below and the cadence of
#: synthetic archives. A store's own cadence is read from its data (``pipeline.store.Store.interval_s``).
DEFAULT_INTERVAL = np.timedelta64(6, "m")
INTERVAL_S = int(DEFAULT_INTERVAL / np.timedelta64(1, "s"))  # 360
SEQ_LEN = 25
STRIDE = 5
MAX_CONSECUTIVE_MISSING = 2
SPLITS = ("train", "valid", "test")
#: Fractions of the days that :func:`split_days_by_fraction` gives to valid and test by default.
VALID_FRACTION = 0.1
TEST_FRACTION = 0.1


def _normalise(times: np.ndarray, interval: np.timedelta64) -> tuple[np.ndarray, np.dtype, int]:
    """datetime64 array (any order/unit) -> (sorted unique int64 ticks, datetime dtype, interval ticks).

    The common unit is the finer of the times' unit and the interval's unit.
    """
    times = np.asarray(times)
    if times.dtype.kind != "M":
        raise TypeError(f"times must be a numpy datetime64 array, got dtype {times.dtype}")
    interval = np.timedelta64(interval)
    if np.isnat(interval) or interval <= np.timedelta64(0, "s"):
        raise ValueError(f"interval must be a positive timedelta64, got {interval!r}")
    if times.size and np.isnat(times).any():
        raise ValueError("times contains NaT")
    common = (np.datetime64(0, np.datetime_data(times.dtype)[0]) + interval).dtype
    ticks = np.unique(times.astype(common).astype(np.int64))
    unit = np.datetime_data(common)[0]
    step = int(interval.astype(f"m8[{unit}]").astype(np.int64))
    return ticks, common, step


def _check_rule(seq_len: int, max_consecutive_missing: int) -> None:
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if max_consecutive_missing < 0:
        raise ValueError(f"max_consecutive_missing must be >= 0, got {max_consecutive_missing}")


def _slot_presence(ticks: np.ndarray, starts: np.ndarray, seq_len: int, step: int) -> np.ndarray:
    """(N,) start ticks -> (N, seq_len) bool: does slot ``start + k*step`` exist in sorted ``ticks``."""
    slots = starts[:, None] + step * np.arange(seq_len, dtype=np.int64)[None, :]
    idx = np.searchsorted(ticks, slots)
    idx_clipped = np.minimum(idx, max(len(ticks) - 1, 0))
    return (idx < len(ticks)) & (ticks[idx_clipped] == slots) if len(ticks) else np.zeros(slots.shape, bool)


def _valid_rows(present: np.ndarray, max_consecutive_missing: int) -> np.ndarray:
    """(N, S) slot presence -> (N,) bool: longest absent run <= max and not all absent."""
    n, seq_len = present.shape
    run = np.zeros(n, dtype=np.int64)
    longest = np.zeros(n, dtype=np.int64)
    for k in range(seq_len):
        run = np.where(present[:, k], 0, run + 1)
        np.maximum(longest, run, out=longest)
    return (longest <= max_consecutive_missing) & (longest < seq_len)


def valid_clip_starts(
    times: np.ndarray,
    seq_len: int = SEQ_LEN,
    max_consecutive_missing: int = MAX_CONSECUTIVE_MISSING,
    interval: np.timedelta64 = DEFAULT_INTERVAL,
) -> np.ndarray:
    """Every existing timestamp whose clip of ``seq_len`` slots is valid.

    Parameters
    ----------
    times : (N,) datetime64, the timestamps that exist (any order, any unit; duplicates ignored).
    seq_len : slots per clip (25 in HKO-7: 5 in + 20 out).
    max_consecutive_missing : longest allowed run of absent slots.
    interval : the cadence (6 minutes in HKO-7).

    Returns
    -------
    (M,) sorted datetime64 starts, M <= N.
    """
    _check_rule(seq_len, max_consecutive_missing)
    ticks, dtype, step = _normalise(times, interval)
    out = np.empty(0, dtype=np.int64)
    if ticks.size:
        chunks = []
        for lo in range(0, ticks.size, 65536):  # bounded memory: (65536, seq_len) bools per pass
            starts = ticks[lo : lo + 65536]
            ok = _valid_rows(_slot_presence(ticks, starts, seq_len, step), max_consecutive_missing)
            chunks.append(starts[ok])
        out = np.concatenate(chunks)
    return out.astype(dtype)


def sequent_clips(
    times: np.ndarray,
    seq_len: int = SEQ_LEN,
    stride: int = STRIDE,
    max_consecutive_missing: int = MAX_CONSECUTIVE_MISSING,
    interval: np.timedelta64 = DEFAULT_INTERVAL,
) -> np.ndarray:
    """Start times of the evaluation clips, as the HKO-7 sequential iterator picks them.

    Start at the first timestamp. While the start is not after the last timestamp: if the clip at
    the start is valid, take it and advance the start by ``stride`` slots (the new start need not
    exist); otherwise jump to the first existing timestamp strictly after the current start.

    Parameters
    ----------
    times : (N,) datetime64 existing timestamps (any order/unit).
    seq_len, max_consecutive_missing, interval : the clip rule (see :func:`valid_clip_starts`).
    stride : slots between consecutive taken clips.

    Returns
    -------
    (M,) ascending datetime64 clip starts (in the finer of the times' and interval's units).
    """
    _check_rule(seq_len, max_consecutive_missing)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    ticks, dtype, step = _normalise(times, interval)
    if ticks.size == 0:
        return np.empty(0, dtype=dtype)
    existing = set(ticks.tolist())
    offsets = [step * k for k in range(seq_len)]
    last = int(ticks[-1])
    start = int(ticks[0])
    picked: list[int] = []
    while start <= last:
        if _clip_is_valid(existing, start, offsets, max_consecutive_missing):
            picked.append(start)
            start += stride * step
        else:
            nxt = int(np.searchsorted(ticks, start, side="right"))
            if nxt >= ticks.size:
                break
            start = int(ticks[nxt])
    return np.asarray(picked, dtype=np.int64).astype(dtype)


def _clip_is_valid(existing: set, start: int, offsets: list[int], max_consecutive_missing: int) -> bool:
    """One clip's validity (scalar version of :func:`_valid_rows`)."""
    run = 0
    for off in offsets:
        if start + off in existing:
            run = 0
        else:
            run += 1
            if run > max_consecutive_missing or run >= len(offsets):
                return False
    return True


# ----------------------------------------------------------------------------------------- splits


def select_days(times: np.ndarray, days: Iterable) -> np.ndarray:
    """(N,) datetime64 times -> (N,) bool: is the (UTC) calendar day of each time in ``days``.

    ``days``: anything ``np.datetime64(..., 'D')`` accepts (datetime64, 'YYYY-MM-DD' strings).
    """
    times = np.asarray(times)
    day_set = np.unique(np.asarray([np.datetime64(d, "D") for d in days], dtype="datetime64[D]"))
    return np.isin(times.astype("datetime64[D]"), day_set)


def select_range(times: np.ndarray, start=None, end=None) -> np.ndarray:
    """(N,) datetime64 -> (N,) bool: ``start <= t < end`` (either bound may be None = open).

    Bounds accept datetime64 or ISO strings; a date-only ``end`` such as '2015-06-30' is exclusive,
    so pass the next day to include a whole last day.
    """
    times = np.asarray(times)
    sel = np.ones(times.shape, dtype=bool)
    if start is not None:
        sel &= times >= np.datetime64(start)
    if end is not None:
        sel &= times < np.datetime64(end)
    return sel


def split_days_by_fraction(
    days: Iterable, valid_fraction: float = VALID_FRACTION, test_fraction: float = TEST_FRACTION
) -> dict[str, np.ndarray]:
    """Split sorted distinct days chronologically: the last ``test_fraction`` of days -> test, the
    ``valid_fraction`` before them -> valid, the rest -> train (each non-empty fraction gets >= 1 day
    while train keeps >= 1 day).

    Returns {"train"|"valid"|"test": datetime64[D] array}.
    """
    d = np.unique(np.asarray([np.datetime64(x, "D") for x in days], dtype="datetime64[D]"))
    n = d.size

    def take(frac: float, avail: int) -> int:
        if frac <= 0 or avail <= 1:
            return 0
        return min(max(1, int(round(frac * n))), avail - 1)

    n_test = take(test_fraction, n)
    n_valid = take(valid_fraction, n - n_test)
    n_train = n - n_test - n_valid
    return {"train": d[:n_train], "valid": d[n_train : n_train + n_valid], "test": d[n_train + n_valid :]}


def select_split(times: np.ndarray, spec) -> np.ndarray:
    """(N,) datetime64 -> (N,) bool for a split spec: a list of days, or a mapping/tuple range
    ``{"start": ..., "end": ...}`` / ``(start, end)`` (end exclusive)."""
    if isinstance(spec, Mapping):
        return select_range(times, spec.get("start"), spec.get("end"))
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[0], (list, np.ndarray)):
        return select_range(times, spec[0], spec[1])
    return select_days(times, spec)


def split_clip_starts(
    good_time_s: np.ndarray,
    spec,
    seq_len: int,
    stride: int,
    max_consecutive_missing: int,
    interval_s: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The clip catalog of one split: the rule ingest stores and ``nowcast info --verify`` re-checks.

    good_time_s : (N,) int64 epoch seconds of the usable frames (the store's ``time[present]``).
    spec : the split (see :func:`select_split`); the rest is the clip rule (:func:`valid_clip_starts`,
    :func:`sequent_clips`) at the cadence ``interval_s``.

    Returns (random_starts_s, sequent_starts_s), int64 epoch seconds, ascending.
    """
    times = np.asarray(good_time_s, dtype=np.int64).astype("datetime64[s]")
    sub_times = times[select_split(times, spec)]
    interval = np.timedelta64(int(interval_s), "s")
    rnd = valid_clip_starts(sub_times, seq_len, max_consecutive_missing, interval)
    seq = sequent_clips(sub_times, seq_len, stride, max_consecutive_missing, interval)
    return rnd.astype("datetime64[s]").astype(np.int64), seq.astype("datetime64[s]").astype(np.int64)


def parse_split_option(text: str) -> tuple[str, object]:
    """Parse a command-line split: ``NAME=DAYLIST_FILE`` (HKO-7 ``YYYYMMDD, rain`` lines) or
    ``NAME=START..END`` (ISO dates/times, END exclusive; either side may be empty).

    Returns (name, spec) for :func:`select_split`: a list of datetime64[D] days or a (start, end) tuple.
    Raises ValueError with the accepted forms when the text does not parse.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(
            f"split {text!r}: expected NAME=DAYLIST_FILE or NAME=START..END "
            "(e.g. test=2015-01-01..2016-01-01)"
        )
    name, value = name.strip(), value.strip()
    if ".." in value:
        start, _, end = value.partition("..")
        try:
            bounds = tuple(np.datetime64(b.strip()) if b.strip() else None for b in (start, end))
        except ValueError as exc:
            raise ValueError(
                f"split {text!r}: {exc}; dates look like 2015-06-01 or 2015-06-01T12:00"
            ) from exc
        return name, bounds
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"split {text!r}: no day-list file {path} (or write a range as START..END)")
    return name, read_day_list(path)


# ----------------------------------------------------------------------------------------- day lists


def read_day_list(path: str | Path) -> list[np.datetime64]:
    """Read a day list (``YYYYMMDD, <daily rain mm>`` per line; the rain column is optional; ``#``
    comments and blank lines are skipped) -> sorted datetime64[D] days. ValueError for a bad line."""
    days = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        text = line.split(",")[0].strip()
        if not text or text.startswith("#"):
            continue
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError(f"{path}:{line_no}: expected YYYYMMDD, got {text!r}")
        days.append(np.datetime64(f"{text[:4]}-{text[4:6]}-{text[6:]}", "D"))
    return sorted(days)


def write_day_list(path: str | Path, days_rain_mm: list[tuple[np.datetime64, float]]) -> None:
    """Write a day list: one ``YYYYMMDD, <daily rain mm>`` line per (day, rain in mm) pair."""
    lines = [f"{str(np.datetime64(d, 'D')).replace('-', '')}, {rain:.1f}" for d, rain in days_rain_mm]
    Path(path).write_text("\n".join(lines) + "\n")
