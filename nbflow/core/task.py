"""The ``@task`` decorator and the frozen options it attaches to a function.

``@task(...)`` does not wrap the function: it returns the same function with a
``TaskSpec`` stored on it, so a decorated function is still callable and testable on
its own, and still pickles by reference.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from nbflow.core.errors import ConfigurationError
from nbflow.core.keys import ID_RULE, check_task_id
from nbflow.core.retry import Duration, RetryPolicy, parse_duration

__all__ = ["TASK_OPTIONS", "SignalWait", "TaskSpec", "check_option_names", "spec_of", "task", "wait_for_signal"]

F = TypeVar("F", bound=Callable[..., Any])

_SPEC_ATTR = "__nbflow_task__"

TASK_OPTIONS = ("name", "retries", "timeout", "tags", "description", "priority", "version", "pin")
"""The options ``@task`` takes; builder steps take them too (``.then(fn, retries=3)``)."""


@dataclass(frozen=True)
class TaskSpec:
    """Options of one task. None of them is part of the workflow's shape."""

    name: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    tags: tuple[str, ...] = ()
    description: str = ""
    priority: int = 0
    version: str | None = None
    pin: tuple[str, ...] = ()  # packages whose installed versions go into the fingerprint


def make_spec(
    *,
    name: str | None = None,
    retries: RetryPolicy | int | None = None,
    timeout: Duration | None = None,
    tags: Iterable[str] = (),
    description: str = "",
    priority: int = 0,
    version: str | int | None = None,
    pin: Iterable[str] = (),
) -> TaskSpec:
    """Validate task options and freeze them; every bad value gets a ConfigurationError.

    ``name`` is only checked for being a non-empty string here: whether it is an
    allowed task id is checked where it is used (``@task`` and the builder), so the
    builder can report it as a ``WorkflowDefinitionError`` naming its workflow.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError("name", name, "a non-empty string")
    if isinstance(tags, str):
        tags = (tags,)
    # A str is iterable, a dict iterates its keys, an int not at all: only lists and
    # tuples say plainly "these labels", so only they are taken.
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise ConfigurationError("tags", tags, "a list of strings, e.g. tags=['io']")
    tag_tuple = tuple(tags)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ConfigurationError("priority", priority, "a whole number (higher runs first)")
    if not isinstance(description, str):
        raise ConfigurationError("description", description, "a string")
    if version is not None and (
        isinstance(version, bool)
        or not isinstance(version, str | int)
        or (isinstance(version, str) and not version.strip())
    ):
        raise ConfigurationError("version", version, "a non-empty string or a whole number, e.g. version='2'")
    if isinstance(pin, str):
        pin = (pin,)
    if not isinstance(pin, list | tuple) or not all(isinstance(p, str) and p.strip() for p in pin):
        raise ConfigurationError("pin", pin, "a list of package names, e.g. pin=['pandas']")
    seconds = None if timeout is None else parse_duration(timeout, "timeout")
    if seconds is not None and seconds <= 0:
        raise ConfigurationError("timeout", timeout, "a positive duration like '30s'")
    return TaskSpec(
        name=name,
        retry=RetryPolicy.coerce(retries),
        timeout=seconds,
        tags=tag_tuple,
        description=description,
        priority=priority,
        version=None if version is None else str(version),
        pin=tuple(pin),
    )


@overload
def task(fn: F, /) -> F: ...
@overload
def task(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    retries: RetryPolicy | int | None = None,
    timeout: Duration | None = None,
    tags: Iterable[str] = (),
    description: str = "",
    priority: int = 0,
    version: str | int | None = None,
    pin: Iterable[str] = (),
) -> Callable[[F], F]: ...


def task(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    retries: RetryPolicy | int | None = None,
    timeout: Duration | None = None,
    tags: Iterable[str] = (),
    description: str = "",
    priority: int = 0,
    version: str | int | None = None,
    pin: Iterable[str] = (),
    **unknown: Any,
) -> F | Callable[[F], F]:
    """Attach task options to a function; usable bare (``@task``) or with options.

    Args:
        name: task id (default: the function's name).
        retries: a retry count or a ``RetryPolicy`` (exponential backoff).
        timeout: per-attempt limit, e.g. ``"30s"``.
        tags: free labels, shown by the widget.
        description: one line shown in the widget and the CLI.
        priority: among tasks ready at once, higher runs first.
        version: overrides the code fingerprint: bump it to force a re-run, or keep it
            fixed to keep checkpoints across cosmetic code edits.
        pin: packages (``["pandas"]``) whose installed versions are part of the
            fingerprint: upgrading one re-runs the task.

    >>> @task(retries=2, timeout="30s", tags=["io"])
    ... def load(path):
    ...     return path.upper()
    >>> load("x"), spec_of(load).timeout, spec_of(load).retry.max_retries
    ('X', 30.0, 2)

    A misspelt option is refused with the closest valid one (the typed overloads let
    a type checker catch it earlier; this catches it when no checker runs):

    >>> task(retry=3)
    Traceback (most recent call last):
    ...
    nbflow.core.errors.ConfigurationError: invalid retry=3: expected an option of @task...Did you mean retries=3?...
    """
    check_option_names("@task", unknown, TASK_OPTIONS)
    if name is not None:
        _check_name(name)
    spec = make_spec(
        name=name,
        retries=retries,
        timeout=timeout,
        tags=tags,
        description=description,
        priority=priority,
        version=version,
        pin=pin,
    )

    def attach(func: F) -> F:
        if not callable(func):
            raise ConfigurationError("@task target", func, "a function or other callable")
        try:
            setattr(func, _SPEC_ATTR, spec)
        except (AttributeError, TypeError):
            raise ConfigurationError(
                "@task target", func, "a function (this object does not take attributes; wrap it in a def)"
            ) from None
        return func

    return attach(fn) if fn is not None else attach


def _check_name(name: object) -> None:
    """Refuse a ``name=`` that is not an allowed task id (see :mod:`nbflow.core.keys`)."""
    reason = check_task_id(name)
    if reason is not None:
        raise ConfigurationError("name", name, f"an allowed task id, but {reason}. Task ids may use {ID_RULE}")


def check_option_names(where: str, given: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Refuse keyword options ``where`` does not know, suggesting the closest valid one.

    Options passed as ``**options`` would otherwise be ignored without a word, and a
    misspelt ``retry=3`` would quietly run without retries.

    >>> check_option_names(".map()", {"concurency": 4}, (*TASK_OPTIONS, "concurrency"))
    Traceback (most recent call last):
    ...
    nbflow.core.errors.ConfigurationError: invalid concurency=4: expected an option of .map()...Did you mean concurrency=4?...
    """
    choices = list(valid)
    for key, value in given.items():
        if key in choices:
            continue
        close = difflib.get_close_matches(key, choices, n=1)
        hint = f"Did you mean {close[0]}={value!r}? " if close else ""
        raise ConfigurationError(
            key, value, f"an option of {where}, and {key!r} is not one. {hint}Its options are {', '.join(choices)}"
        )


def spec_of(fn: Callable[..., Any]) -> TaskSpec:
    """The options attached by ``@task``, or the defaults."""
    spec = getattr(fn, _SPEC_ATTR, None)
    return spec if isinstance(spec, TaskSpec) else TaskSpec()


@dataclass(frozen=True)
class SignalWait:
    """A wait for a human (or another program), declared in a ``%%workflow`` cell.

    ``approval = nf.wait_for_signal("approval", after=["train"], timeout="1h")`` makes a
    step ``approval`` that waits, once ``train`` finished, until
    ``WorkflowClient.send_signal(instance, "approval", payload)`` (or the widget's
    approve button, or ``%workflow signal``); a task with a parameter named
    ``approval`` receives the payload.
    """

    signal: str
    timeout: float | None = None
    after: tuple[str, ...] = ()


def wait_for_signal(signal: str, *, timeout: Duration | None = None, after: Iterable[str] | str = ()) -> SignalWait:
    """Declare a signal step in a ``%%workflow`` cell (see :class:`SignalWait`).

    >>> wait_for_signal("approval", after="train", timeout="1h")
    SignalWait(signal='approval', timeout=3600.0, after=('train',))
    """
    if not isinstance(signal, str) or not signal:
        raise ConfigurationError("signal", signal, "a non-empty signal name such as 'approval'")
    names = (after,) if isinstance(after, str) else tuple(after)
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigurationError("after", after, "task names, e.g. after=['train']")
    seconds = None if timeout is None else parse_duration(timeout, "timeout")
    return SignalWait(signal, seconds, names)
