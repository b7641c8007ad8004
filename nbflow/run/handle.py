"""The engine thread and the handle of a background run.

Every run executes on its own thread with its own asyncio loop. That is what lets
``runner.run`` work inside Jupyter (whose cell already runs inside a loop) without
``nest_asyncio``, lets ``await runner.run_async`` leave the caller's loop free, and lets
``start`` return at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from nbflow.core.status import WorkflowStatus
from nbflow.run.control import RunControl

__all__ = ["RunHandle", "launch"]


class RunHandle:
    """A run in progress on its engine thread.

    ``wait()`` blocks for the final ``WorkflowStatus``; ``cancel()`` asks the run to
    stop at once (finished tasks stay checkpointed; the next run resumes);
    ``status`` is a live snapshot.
    """

    def __init__(
        self,
        instance_id: str,
        future: concurrent.futures.Future[WorkflowStatus],
        control: RunControl,
        snapshot: Callable[[], WorkflowStatus],
        thread: threading.Thread,
    ) -> None:
        self.instance_id = instance_id
        self._future = future
        self._control = control
        self._snapshot = snapshot
        self._thread = thread

    @property
    def future(self) -> concurrent.futures.Future[WorkflowStatus]:
        """The run's result as a ``concurrent.futures.Future`` (what ``await`` wraps)."""
        return self._future

    def wait(self, timeout: float | None = None) -> WorkflowStatus:
        """Block until the run stops and return its status (raises its nbflow error)."""
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def cancel(self, reason: str = "cancelled by the user", *, state: str = "cancelled") -> None:
        """Stop the run at once; running async tasks are cancelled, sync ones are told
        through ``get_task_context().cancelled`` and their results discarded."""
        self._control.request(state, reason)

    def pause(self, reason: str = "paused by the user") -> None:
        """Stop after the running tasks finish (they are checkpointed)."""
        self._control.request("paused", reason)

    @property
    def status(self) -> WorkflowStatus:
        if self._future.done() and self._future.exception() is None:
            return self._future.result()
        return self._snapshot()

    def __repr__(self) -> str:
        return f"<RunHandle {self.instance_id!r} {self.status.state}>"


def launch(
    instance_id: str,
    body: Callable[[], Coroutine[Any, Any, WorkflowStatus]],
    control: RunControl,
    snapshot: Callable[[], WorkflowStatus],
    on_exit: Callable[[], None],
) -> RunHandle:
    """Start ``body()`` on a new engine thread with its own event loop."""
    future: concurrent.futures.Future[WorkflowStatus] = concurrent.futures.Future()

    def main() -> None:
        loop = asyncio.new_event_loop()
        try:
            result = loop.run_until_complete(body())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            on_exit()
            future.set_exception(exc)
        else:
            on_exit()
            future.set_result(result)
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    thread = threading.Thread(target=main, name=f"nbflow-run:{instance_id}", daemon=True)
    future.set_running_or_notify_cancel()
    thread.start()
    return RunHandle(instance_id, future, control, snapshot, thread)
