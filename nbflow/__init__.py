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

from typing import Any

from nbflow.core import errors
from nbflow.core.builder import ForkBuilder, Workflow, WorkflowBuilder
from nbflow.core.codecs import JsonCodec, PickleCodec
from nbflow.core.context import TaskContext, WorkflowContext, get_task_context, progress
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
from nbflow.store.postgres import PostgresBackend  # psycopg is imported only when one is opened

__version__ = "0.1.0"

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


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbflow``: register the %%workflow and %workflow magics."""
    from nbflow.jupyter import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbflow``: close the stores the magics opened."""
    from nbflow.jupyter import unload_ipython_extension as unload

    unload(ipython)
