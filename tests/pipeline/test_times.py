"""pipeline.times: epoch seconds <-> ISO 8601."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import NowcastError
from pipeline.times import iso_utc, parse_time_s


def test_parse_time():
    t = int(np.datetime64("2015-06-04T12:00", "s").astype(np.int64))
    for value in (
        "2015-06-04T12:00",
        "2015-06-04T12:00:00Z",
        "2015-06-04 12:00",
        "2015-06-04T12:00+00:00",
        str(t),
        t,
    ):
        assert parse_time_s(value) == t
    with pytest.raises(NowcastError, match="cannot read the time 'yesterday'"):
        parse_time_s("yesterday")
    assert parse_time_s("2015-06-04T20:00+08:00") == t  # an offset is honoured
    assert parse_time_s(np.int64(t)) == t and parse_time_s(float(t)) == t


def test_iso_utc():
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert parse_time_s(iso_utc(1433419200)) == 1433419200
