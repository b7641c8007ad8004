"""Durations ("30s", "5m", "1h30m") and the retry policy with exponential backoff.

Kept apart from the task decorator because the runner, the delay step and the worker
pool all parse durations the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from nbflow.core.errors import ConfigurationError

__all__ = ["RetryPolicy", "parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

Duration = str | float | int | timedelta


def parse_duration(value: Duration, option: str = "duration") -> float:
    """Seconds in ``value``: a number of seconds, a timedelta, or text like "1h30m".

    >>> parse_duration("30s"), parse_duration("5m"), parse_duration("1h30m"), parse_duration(2)
    (30.0, 300.0, 5400.0, 2.0)
    >>> parse_duration("250ms")
    0.25
    """
    if isinstance(value, bool):
        raise ConfigurationError(option, value, "a duration like 30, '30s', '5m', '1h30m'")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos, seconds = 0, 0.0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            try:
                seconds = float(text)
            except ValueError:
                raise ConfigurationError(option, value, "a duration like 30, '30s', '5m', '1h30m' or '250ms'") from None
    else:
        raise ConfigurationError(option, value, "a duration like 30, '30s', '5m', '1h30m'")
    if seconds < 0 or seconds != seconds:
        raise ConfigurationError(option, value, "a duration of zero or more seconds")
    return seconds


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing task is tried again, and how long to wait in between.

    The n-th retry waits ``initial_delay * backoff ** (n - 1)`` seconds, capped at
    ``max_delay``.

    >>> p = RetryPolicy(max_retries=3, initial_delay=0.5, backoff=2)
    >>> [p.delay_before(n) for n in (1, 2, 3)]
    [0.5, 1.0, 2.0]
    """

    max_retries: int = 0
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigurationError("max_retries", self.max_retries, "a whole number >= 0")
        object.__setattr__(self, "initial_delay", parse_duration(self.initial_delay, "initial_delay"))
        if not isinstance(self.backoff, int | float) or self.backoff < 1:
            raise ConfigurationError("backoff", self.backoff, "a number >= 1 (1 means a fixed delay)")
        if self.max_delay is not None:
            object.__setattr__(self, "max_delay", parse_duration(self.max_delay, "max_delay"))

    @classmethod
    def coerce(cls, value: RetryPolicy | int | None) -> RetryPolicy:
        """A policy from ``retries=``: a RetryPolicy, a count, or None for no retries."""
        if value is None:
            return cls()
        if isinstance(value, RetryPolicy):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(max_retries=value)
        raise ConfigurationError("retries", value, "a whole number >= 0 or a RetryPolicy(...)")

    @property
    def max_attempts(self) -> int:
        """Attempts in all: the first one plus the retries."""
        return self.max_retries + 1

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        delay = self.initial_delay * self.backoff ** (retry - 1)
        return min(delay, self.max_delay) if self.max_delay is not None else delay
