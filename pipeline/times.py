"""Time stamps as the pipeline keeps them (int seconds since the Unix epoch, UTC) <-> ISO 8601 text."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from pipeline.errors import NowcastError


def iso_utc(time_s: int) -> str:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), for messages and summaries."""
    return str(np.datetime64(int(time_s), "s")) + "Z"


def parse_time_s(value: str | int | float) -> int:
    """A time a user typed -> int epoch seconds.

    Accepts epoch seconds (int, float or digits) or ISO 8601 (``2015-06-04T12:00``, ``2015-06-04 12:00``,
    ``...Z``, ``...+08:00``); a time without an offset is UTC. Raises NowcastError (exit code 2) otherwise.
    """
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return int(value)
    text = str(value).strip()
    if text.lstrip("+-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise NowcastError(
            f"cannot read the time {value!r}: use ISO 8601 UTC such as 2015-06-04T12:00 or epoch seconds",
            exit_code=2,
        ) from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())
