"""nbflow: durable workflows for Jupyter.

Define a workflow with the fluent builder (or a ``%%workflow`` cell), run it with a
``CheckpointingRunner``, and every finished task is checkpointed to disk: after a crash
or a kernel restart, running it again continues where it stopped.

>>> import nbflow as nf
>>> wf = nf.Workflow("hello").then(lambda name: f"hello {name}").build()
>>> nf.CheckpointingRunner(nf.InMemoryBackend()).run(wf, "h-1", "ada").output
'hello ada'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Errors are imported at once: the module is small (the standard library only) and an
# ``except nf.SomeError`` must never be what pays for an import.
from nbflow.core import errors
from nbflow.core.errors import (
    AmbiguousInstanceError,
    CheckpointCorruptError,
    ClaimLostError,
    CodecError,
    ConfigurationError,
    IllegalTransitionError,
    InstanceExistsError,
    InstanceLockedError,
    InvalidInstanceIdError,
    MissingDependencyError,
    NbflowError,
    RouteKeyError,
    ShapeChangedError,
    SignalRefusedError,
    SignalTimeoutError,
    StaleInstanceError,
    StoreAccessError,
    StoreAddressError,
    StoreAuthError,
    StoreConnectionError,
    StoreDatabaseMissingError,
    StoreFormatError,
    StoreFullError,
    StoreSchemaError,
    StoreUnreadableError,
    TaskChangedError,
    TaskInputError,
    TaskOutputError,
    TaskTimeoutError,
    UnknownInstanceError,
    UnknownTaskError,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowMismatchError,
)

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time these load on first use
    from nbflow.core.builder import ForkBuilder, Workflow, WorkflowBuilder
    from nbflow.core.codecs import JsonCodec, PickleCodec
    from nbflow.core.context import TaskContext, WorkflowContext, get_task_context, progress
    from nbflow.core.graph import InputRef, WorkflowDefinition
    from nbflow.core.retry import RetryPolicy, parse_duration
    from nbflow.core.status import ConflictPolicy, LoopResult, RunState, TaskError, WorkflowStatus
    from nbflow.core.task import SignalWait, task, wait_for_signal
    from nbflow.run.client import WorkflowClient
    from nbflow.run.events import EventBus, TextProgress
    from nbflow.run.executors import DaskExecutor, ProcessExecutor
    from nbflow.run.handle import RunHandle
    from nbflow.run.runner import CheckpointingRunner
    from nbflow.run.worker import PooledWorker
    from nbflow.store.disk import DiskcacheBackend
    from nbflow.store.memory import InMemoryBackend
    from nbflow.store.postgres import PostgresBackend

__version__ = "0.1.0"

# Every other public name, by the module that defines it: loaded on first use (PEP 562),
# so ``import nbflow`` or ``nbflow list`` does not pay for the engine, asyncio, the
# builder's introspection or the store backends it does not touch.
_LAZY: dict[str, str] = {
    "ForkBuilder": "nbflow.core.builder",
    "Workflow": "nbflow.core.builder",
    "WorkflowBuilder": "nbflow.core.builder",
    "JsonCodec": "nbflow.core.codecs",
    "PickleCodec": "nbflow.core.codecs",
    "TaskContext": "nbflow.core.context",
    "WorkflowContext": "nbflow.core.context",
    "get_task_context": "nbflow.core.context",
    "progress": "nbflow.core.context",
    "InputRef": "nbflow.core.graph",
    "WorkflowDefinition": "nbflow.core.graph",
    "RetryPolicy": "nbflow.core.retry",
    "parse_duration": "nbflow.core.retry",
    "ConflictPolicy": "nbflow.core.status",
    "LoopResult": "nbflow.core.status",
    "RunState": "nbflow.core.status",
    "TaskError": "nbflow.core.status",
    "WorkflowStatus": "nbflow.core.status",
    "SignalWait": "nbflow.core.task",
    "task": "nbflow.core.task",
    "wait_for_signal": "nbflow.core.task",
    "WorkflowClient": "nbflow.run.client",
    "EventBus": "nbflow.run.events",
    "TextProgress": "nbflow.run.events",
    "DaskExecutor": "nbflow.run.executors",
    "ProcessExecutor": "nbflow.run.executors",
    "RunHandle": "nbflow.run.handle",
    "CheckpointingRunner": "nbflow.run.runner",
    "PooledWorker": "nbflow.run.worker",
    "DiskcacheBackend": "nbflow.store.disk",
    "InMemoryBackend": "nbflow.store.memory",
    "PostgresBackend": "nbflow.store.postgres",
}

__all__ = [
    "AmbiguousInstanceError",
    "CheckpointCorruptError",
    "CheckpointingRunner",
    "ClaimLostError",
    "CodecError",
    "ConfigurationError",
    "ConflictPolicy",
    "DaskExecutor",
    "DiskcacheBackend",
    "EventBus",
    "ForkBuilder",
    "IllegalTransitionError",
    "InMemoryBackend",
    "InputRef",
    "InstanceExistsError",
    "InstanceLockedError",
    "InvalidInstanceIdError",
    "JsonCodec",
    "LoopResult",
    "MissingDependencyError",
    "NbflowError",
    "PickleCodec",
    "PooledWorker",
    "PostgresBackend",
    "ProcessExecutor",
    "RetryPolicy",
    "RouteKeyError",
    "RunHandle",
    "RunState",
    "ShapeChangedError",
    "SignalRefusedError",
    "SignalTimeoutError",
    "SignalWait",
    "StaleInstanceError",
    "StoreAccessError",
    "StoreAddressError",
    "StoreAuthError",
    "StoreConnectionError",
    "StoreDatabaseMissingError",
    "StoreFormatError",
    "StoreFullError",
    "StoreSchemaError",
    "StoreUnreadableError",
    "TaskChangedError",
    "TaskContext",
    "TaskError",
    "TaskInputError",
    "TaskOutputError",
    "TaskTimeoutError",
    "TextProgress",
    "UnknownInstanceError",
    "UnknownTaskError",
    "Workflow",
    "WorkflowBuilder",
    "WorkflowClient",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowDefinitionError",
    "WorkflowFailedError",
    "WorkflowMismatchError",
    "WorkflowStatus",
    "errors",
    "get_task_context",
    "parse_duration",
    "progress",
    "task",
    "wait_for_signal",
]


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt ``nf.Name`` stays an error

    def __getattr__(name: str) -> Any:
        """Load a public name from its module the first time it is asked for."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # the next lookup is a plain module attribute
        return value


def __dir__() -> list[str]:
    """What completion offers after ``nf.``: the public names (loaded or not) and the
    IPython extension hooks, not this module's own imports."""
    hooks = {"load_ipython_extension", "unload_ipython_extension"}
    return sorted({*__all__, *_LAZY, *hooks, *(name for name in globals() if name.startswith("__"))})


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: register the %%workflow and %workflow magics."""
    from nbflow.jupyter import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbflow``: close the stores the magics opened."""
    from nbflow.jupyter import unload_ipython_extension as unload

    unload(ipython)
