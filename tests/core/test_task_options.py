"""@task options, RetryPolicy and durations."""

from __future__ import annotations

from datetime import timedelta

import pytest

import nbflow as nf
from nbflow.core.task import TaskSpec, spec_of


def test_task_decorator_keeps_the_function() -> None:
    @nf.task(retries=3, timeout="30s", tags=["io", "slow"], description="read it", priority=5, version="2")
    def load(path):
        return path * 2

    assert load("a") == "aa"
    spec = spec_of(load)
    assert spec.retry.max_retries == 3 and spec.retry.max_attempts == 4
    assert spec.timeout == 30.0
    assert spec.tags == ("io", "slow")
    assert spec.description == "read it"
    assert spec.priority == 5
    assert spec.version == "2"


def test_bare_decorator_and_defaults() -> None:
    @nf.task
    def f(x):
        return x

    assert spec_of(f) == TaskSpec()
    assert spec_of(lambda x: x) == TaskSpec()


def test_tags_as_one_string_and_retry_policy() -> None:
    policy = nf.RetryPolicy(max_retries=2, initial_delay="10ms", backoff=3)

    @nf.task(tags="io", retries=policy)
    def f(x):
        return x

    assert spec_of(f).tags == ("io",)
    assert spec_of(f).retry is policy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        (" 1 m ", 60.0),
        ("1.5s", 1.5),
        ("10", 10.0),
        (3, 3.0),
        (0.5, 0.5),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert nf.parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["abc", "5 parsecs", "", "-1s", -2, True, None, [1], "1h 30x", float("nan")])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(nf.ConfigurationError) as err:
        nf.parse_duration(bad, "timeout")  # type: ignore[arg-type]
    assert "timeout" in str(err.value)


def test_retry_backoff_schedule() -> None:
    p = nf.RetryPolicy(max_retries=5, initial_delay=0.1, backoff=2, max_delay=0.5)
    assert [round(p.delay_before(n), 6) for n in range(1, 6)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    fixed = nf.RetryPolicy(max_retries=2, initial_delay="1s", backoff=1)
    assert fixed.delay_before(1) == fixed.delay_before(2) == 1.0
    assert nf.RetryPolicy.coerce(None).max_retries == 0
    assert nf.RetryPolicy.coerce(4).max_retries == 4
