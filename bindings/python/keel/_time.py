"""Durations as Keel's API takes them: seconds (int or float) or a ``timedelta``."""

from __future__ import annotations

import datetime
from typing import Union

Duration = Union[int, float, datetime.timedelta]


def seconds(duration: Duration) -> float:
    """``duration`` in seconds; refuses negative and non-numeric values."""
    if isinstance(duration, datetime.timedelta):
        value = duration.total_seconds()
    elif isinstance(duration, (int, float)) and not isinstance(duration, bool):
        value = float(duration)
    else:
        raise TypeError(f"a duration is seconds or a timedelta, not {type(duration).__name__}")
    if value < 0 or value != value:
        raise ValueError(f"a duration is not negative: {duration!r}")
    return value
