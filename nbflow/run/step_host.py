"""What a step may ask of the engine that runs it.

A step (a task, a route, a loop, a map, a delay, a signal wait, ...: see
:data:`nbflow.run.steps.STEPS`) is an ``async`` function of a :class:`StepHost` and
its node. The host is the one thing it talks to: the step's arguments, running a
function with the node's retries and timeout, committing the step's record, failing
for good, publishing an event, telling where the run stands. The scheduler of a
single-process run is the host; a ``PooledWorker`` hosts each unit it claims the same
way (a scheduler over the instance as stored, writing through a claim), so every step
is written once, for both.

How a step ends other than by committing is in :mod:`nbflow.run.outcomes`.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nbflow.core.graph import Node, Source, WorkflowDefinition
from nbflow.core.status import RunState
from nbflow.core.vocabulary import PlanStep
from nbflow.run import events as ev
from nbflow.run.attempts import RetryLedger
from nbflow.run.capture import Capture
from nbflow.run.checkpoint import CheckpointIO, preview, previews
from nbflow.run.control import RunControl
from nbflow.run.live import LiveHub
from nbflow.run.outcomes import StepFailed
from nbflow.store.base import CheckpointRecord

__all__ = ["EngineSettings", "Step", "StepHost", "attempt_fields"]


@dataclass(frozen=True)
class EngineSettings:
    """How an engine runs steps, the same for every step of a run.

    Args:
        executor: where sync bodies run (a thread pool, ``ProcessExecutor``, Dask).
        echo: also print what tasks print (it is always captured).
        inline_sync: a sync step may run on the engine thread when nothing could run
            beside it (no thread hop in a plain chain).
        worker: the name stored in every record (and carried by events).
        park_on_signal: reaching a signal nobody sent ends the run ``awaiting_signal``
            instead of waiting for it.
        park_on_delay: reaching a delay before its wake-up time ends the step with
            :class:`~nbflow.run.outcomes.NotDue` instead of sleeping (a worker pool
            gives the unit back and picks it up when it is due).
        records_may_lag: the host's records were read before it claimed the step, so
            a record another process wrote since (a delay's wake-up time, a loop's
            iteration) may be missing from them: such records are looked up in the
            store before being written anew (a worker pool).
    """

    executor: Any
    echo: bool = False
    inline_sync: bool = False
    worker: str | None = None
    park_on_signal: bool = True
    park_on_delay: bool = False
    records_may_lag: bool = False


class StepHost(Protocol):
    """What a step may use of the engine. Implemented by ``Scheduler``."""

    wf: WorkflowDefinition
    instance_id: str
    records: dict[str, CheckpointRecord]  # every stored record of the instance, by id
    io: CheckpointIO
    settings: EngineSettings
    control: RunControl  # stop requests (poll() at step boundaries)
    retries: RetryLedger  # attempt counts that survive a restart
    live: LiveHub  # live output, progress and saved states of running attempts
    cancel_event: threading.Event  # set when the run stops
    branch_of: dict[str, str]  # route id -> the label of the branch it chose
    skipped: set[str]  # steps that do not run in this instance (a route took another branch)

    @property
    def plan(self) -> Mapping[str, PlanStep]:
        """What this run does with each step (an item of a map runs only if RUN)."""
        ...

    def arguments(self, node: Node) -> tuple[list[Any], dict[str, Any]]:
        """The step's arguments, as its mode passes them (its inputs are then released)."""
        ...

    def get(self, src: Source) -> Any:
        """The value ``src`` names (an upstream output, the input, an item of either)."""
        ...

    def value(self, task_id: str) -> Any:
        """The output of ``task_id`` (read from its record the first time)."""
        ...

    def release(self, node: Node) -> None:
        """``node`` no longer needs its inputs: free those nobody else needs."""
        ...

    def lookup(self, task_id: str) -> CheckpointRecord | None: ...

    def is_async(self, fn: Callable[..., Any]) -> bool: ...

    async def attempts(
        self,
        node: Node,
        fn: Callable[..., Any],
        args: list[Any],
        kwargs: dict[str, Any],
        task_id: str,
        inline: bool,
        failed: Exception | None = None,
    ) -> tuple[Any, Capture, int, float]:
        """Run ``fn`` with the node's retries and timeout: (value, capture, attempt,
        started); raises StepFailed when its retries are spent."""
        ...

    def commit(
        self,
        node: Node,
        value: Any,
        *,
        attempt: int = 1,
        started: float | None = None,
        cap: Capture | None = None,
        extra: dict[str, Any] | None = None,
        ref: str | None = None,
        record: CheckpointRecord | None = None,
    ) -> None:
        """Checkpoint the step's output and announce it: the step is durably done."""
        ...

    def failure(self, task_id: str, exc: BaseException, attempt: int = 1, message: str | None = None) -> StepFailed:
        """The StepFailed to raise for ``task_id`` failing for good (announced here)."""
        ...

    def publish(self, event_type: type[ev.RunEvent], **fields: Any) -> None: ...

    def set_state(self, state: RunState, wake_at: float | None = None, signal: str | None = None) -> None:
        """Where the run stands while the step waits (waiting, awaiting_signal, running)."""
        ...


Step = Callable[[StepHost, Node, bool], Awaitable[None]]
"""A step: ``await step(host, node, inline)``; ``inline``: it runs on the engine thread."""


def attempt_fields(
    value: Any,
    cap: Capture | None,
    attempt: int,
    worker: str | None,
    *,
    started: float | None = None,
    finished: float | None = None,
    rich: bool = True,
) -> dict[str, Any]:
    """The fields of the record that stores what one attempt returned: its attempt,
    previews (without ``rich``, only the one-line one: a reference's value is shown
    by the records it points at), what it printed and where it ran (a remote
    executor's capture names its process or Dask worker), and its times when given."""
    fields: dict[str, Any] = {"attempt": attempt, "worker": getattr(cap, "worker", None) or worker}
    if rich:
        fields["preview"], fields["preview_bundle"] = previews(value)
    else:
        fields["preview"] = preview(value)
    if cap is not None:
        if isinstance(cap, Capture):
            fields["stdout"], fields["stderr"] = cap.texts()
        else:  # a remote executor's capture
            fields["stdout"], fields["stderr"] = cap.stdout.getvalue(), cap.stderr.getvalue()
    if started is not None:
        fields["started_at"] = started
    if finished is not None:
        fields["finished_at"] = finished
    return fields
