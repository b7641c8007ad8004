"""Every error nbflow raises, rooted at :class:`NbflowError`.

Each subclass takes structured arguments (workflow, instance, task, ...) and builds its
own message, which says what went wrong and then what to do about it. Where a caller
would reasonably expect a builtin (``KeyError`` for an unknown instance, ``ImportError``
for a missing extra, ``TimeoutError`` for a task timeout), the class inherits it too.

Errors survive pickling (``__reduce__`` re-creates them from their arguments) so they
cross worker processes intact.

Control signals (cancel, pause) are *not* errors: a run is stopped by cancelling its
asyncio tasks (``CancelledError`` derives from ``BaseException``) and by the flag sync
tasks read through ``get_task_context().cancelled`` (see :mod:`nbflow.run.control`), so
a task's ``except Exception`` can never swallow them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "AmbiguousInstanceError",
    "CheckpointCorruptError",
    "ClaimLostError",
    "CodecError",
    "ConfigurationError",
    "InstanceExistsError",
    "IllegalTransitionError",
    "InstanceLockedError",
    "InvalidInstanceIdError",
    "MissingDependencyError",
    "NbflowError",
    "RouteKeyError",
    "ShapeChangedError",
    "SignalRefusedError",
    "SignalTimeoutError",
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
    "TaskInputError",
    "TaskOutputError",
    "TaskTimeoutError",
    "UnknownInstanceError",
    "UnknownTaskError",
    "WorkflowDefinitionError",
    "WorkflowFailedError",
    "WorkflowMismatchError",
]

_FRESH_HINT = (
    "To start over, use a new instance id, or "
    "runner.with_conflict_policy(ConflictPolicy.TERMINATE_EXISTING) "
    "(in a notebook: re-run the cell with --fresh)."
)


class NbflowError(Exception):
    """Root of every error nbflow raises. Catch this to catch them all.

    ``advice`` maps phrases of the message that name a Python call to the command that
    does the same (``("resume", "etl-1")``; None: the phrase has no command form and is
    dropped). The message is written once, for Python; ``%workflow`` and the ``nbflow``
    command show their own form of each phrase (``nbflow.commands.render_error``).
    """

    def __init__(self, message: str, *args: Any, advice: Mapping[str, tuple[str, ...] | None] | None = None) -> None:
        super().__init__(message, *args)
        self.message = message
        self.advice: dict[str, tuple[str, ...] | None] = dict(advice or {})

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[NbflowError], message: str, state: dict[str, Any]) -> NbflowError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class ConfigurationError(NbflowError, ValueError):
    """An option has a value nbflow cannot use (a bad duration, retry count, path...)."""

    def __init__(self, option: str, value: Any, expected: str) -> None:
        self.option, self.value, self.expected = option, value, expected
        super().__init__(f"invalid {option}={value!r}: expected {expected}.")


class WorkflowDefinitionError(NbflowError, ValueError):
    """A builder call or a cell cannot make a valid workflow; the message names the fix."""

    def __init__(self, workflow: str, problem: str, fix: str = "", line: int | None = None) -> None:
        self.workflow, self.problem, self.fix, self.line = workflow, problem, fix, line
        where = f" (line {line})" if line is not None else ""
        text = f"workflow {workflow!r}{where}: {problem}"
        if fix:
            text += f". {fix}"
        super().__init__(text if text.endswith(".") else text + ".")


class InvalidInstanceIdError(NbflowError, ValueError):
    """An instance id that cannot be stored (empty, too long, not a string)."""

    def __init__(self, instance_id: Any, why: str) -> None:
        self.instance_id, self.why = instance_id, why
        super().__init__(
            f"invalid instance id {instance_id!r}: {why}. Use a non-empty string of at most "
            "200 characters, e.g. 'etl-2026-11-25'."
        )


class InstanceExistsError(NbflowError):
    """The instance id is taken and the conflict policy is FAIL (the default)."""

    def __init__(self, workflow: str, instance_id: str, state: str) -> None:
        self.workflow, self.instance_id, self.state = workflow, instance_id, state
        super().__init__(
            f"instance {instance_id!r} of workflow {workflow!r} already exists (state: {state}). "
            "Continue it with runner.resume(wf, instance_id) or "
            "runner.with_conflict_policy(ConflictPolicy.USE_EXISTING); discard it with "
            "ConflictPolicy.TERMINATE_EXISTING; or pick a new instance id."
        )


class UnknownInstanceError(NbflowError, KeyError):
    """No instance with that id exists in the store."""

    def __init__(self, instance_id: str, where: str = "") -> None:
        self.instance_id, self.where = instance_id, where
        place = f" in {where}" if where else ""
        listing = "WorkflowClient(backend).list_instances()"
        start = "; start one with runner.run(wf, instance_id, input)"
        super().__init__(
            f"no instance {instance_id!r}{place}, and no workflow of that name has one. "
            f"List the stored ones with {listing}{start}.",
            advice={listing: ("list",), start: None},
        )

    def __str__(self) -> str:  # KeyError would add quotes
        return self.message


class AmbiguousInstanceError(NbflowError, KeyError):
    """A workflow name was given where one instance is meant, and it has several."""

    def __init__(self, name: str, instances: Iterable[tuple[str, str, str, float]], where: str = "") -> None:
        """``instances``: (instance id, inputs digest, state, updated at), newest first."""
        self.name, self.where = name, where
        self.instances = tuple(instances)
        shown = [
            f"{iid} (inputs {digest[:8] or '?'}, {state}, updated "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(updated))})"
            for iid, digest, state, updated in self.instances[:10]
        ]
        if len(self.instances) > 10:
            shown.append(f"and {len(self.instances) - 10} more")
        place = f" in {where}" if where else ""
        latest = "latest=True"
        super().__init__(
            f"workflow {name!r} has {len(self.instances)} instances{place}, newest first: {'; '.join(shown)}. "
            f"Pass one of these instance ids instead of {name!r}, or {latest} for the most recent one.",
            advice={latest: ("--latest",)},
        )

    def __str__(self) -> str:
        return self.message


class UnknownTaskError(NbflowError, KeyError):
    """A task id that the workflow does not have."""

    def __init__(self, workflow: str, task_id: str, known: Iterable[str]) -> None:
        self.workflow, self.task_id = workflow, task_id
        self.known = tuple(known)
        shown = ", ".join(repr(k) for k in self.known[:12])
        more = ", ..." if len(self.known) > 12 else ""
        super().__init__(f"workflow {workflow!r} has no task {task_id!r}; its tasks are {shown}{more}.")

    def __str__(self) -> str:
        return self.message


class WorkflowMismatchError(NbflowError):
    """An instance belongs to another workflow than the one given."""

    def __init__(self, instance_id: str, stored: str, given: str) -> None:
        self.instance_id, self.stored, self.given = instance_id, stored, given
        super().__init__(
            f"instance {instance_id!r} belongs to workflow {stored!r}, not {given!r}. "
            f"Pass the {stored!r} workflow, or use another instance id."
        )


class ShapeChangedError(NbflowError):
    """Resume refused: the workflow's graph is not the one the instance was run with."""

    def __init__(self, workflow: str, instance_id: str, changes: Iterable[str]) -> None:
        self.workflow, self.instance_id = workflow, instance_id
        self.changes = tuple(changes)
        super().__init__(
            f"workflow {workflow!r} changed shape since instance {instance_id!r} was "
            f"checkpointed ({'; '.join(self.changes)}). {_FRESH_HINT}"
        )


class TaskChangedError(NbflowError):
    """Resume refused under ``on_change="fail"``: some task's code changed."""

    def __init__(self, workflow: str, instance_id: str, tasks: Iterable[str]) -> None:
        self.workflow, self.instance_id = workflow, instance_id
        self.tasks = tuple(tasks)
        super().__init__(
            f"the code of task(s) {', '.join(map(repr, self.tasks))} of workflow {workflow!r} "
            f"changed since instance {instance_id!r} checkpointed them. Re-run them with "
            "on_change='rerun', restore the old code, or start over. " + _FRESH_HINT
        )


class InstanceLockedError(NbflowError):
    """Another runner (in this or another process) is running the instance right now."""

    def __init__(self, instance_id: str, holder: str = "") -> None:
        self.instance_id, self.holder = instance_id, holder
        who = f" ({holder})" if holder else ""
        cancel = "WorkflowClient(backend).cancel(instance_id)"
        super().__init__(
            f"instance {instance_id!r} is being run by another runner{who}. Wait for it to "
            f"finish, cancel it ({cancel}), or use another "
            "instance id; nbflow never runs one instance twice at once.",
            advice={cancel: ("cancel", instance_id)},
        )


class CheckpointCorruptError(NbflowError):
    """A stored record or payload is *damaged*: its bytes fail their checksum, its format
    is not nbflow's, or it names something it may not (a file outside the instance, a
    codec the store was not opened with). Only this error ever suggests discarding, and
    it says what that loses."""

    def __init__(self, instance_id: str, detail: str, location: str = "", task_id: str | None = None) -> None:
        self.instance_id, self.detail, self.location, self.task_id = instance_id, detail, location, task_id
        where = f" at {location}" if location else ""
        if task_id is not None:
            fix = (
                f"Re-run that task and what depends on it: runner.rerun_from(wf, {instance_id!r}, {task_id!r}) "
                f"(in a notebook: %workflow clear then re-run the cell), which keeps every other checkpoint; "
                f"or discard the whole instance with `nbflow clear {instance_id}`, which loses all its checkpoints."
            )
        else:
            fix = (
                f"Discarding it with `nbflow clear {instance_id}` (or WorkflowClient(backend).clear(instance_id)) "
                "loses every checkpoint of this instance; run it again afterwards."
            )
        super().__init__(
            f"the checkpoints of instance {instance_id!r}{where} are damaged ({detail}). "
            f"Other instances are unaffected. {fix}"
        )


class StoreFormatError(NbflowError):
    """An instance written by an older nbflow whose records this one does not read as
    they are: nothing is damaged, it needs converting once."""

    def __init__(self, instance_id: str, path: str, written_by: str = "nbflow 0.1") -> None:
        self.instance_id, self.path, self.written_by = instance_id, path, written_by
        store = str(path).rsplit("/instances/", 1)[0]
        super().__init__(
            f"instance {instance_id!r} at {path} was written by {written_by}, whose records this nbflow does "
            f"not read as they are. Nothing is damaged: convert the store once with `nbflow migrate --dir {store}` "
            "(it reads the old records with pickle, so only for a store you trust), then resume."
        )


class StoreUnreadableError(NbflowError, PermissionError):
    """The store (or one instance in it) cannot be read or written because of the
    operating system's permissions, a read-only filesystem or the disk's own I/O
    error: nothing is known to be damaged."""

    def __init__(self, path: str, detail: str, instance_id: str | None = None) -> None:
        self.path, self.detail, self.instance_id = path, detail, instance_id
        what = f"instance {instance_id!r} at {path}" if instance_id else f"the store at {path}"
        if "read-only" in detail.lower():
            fix = "mount that filesystem read-write, or copy the store to a writable disk and open the copy"
        elif "i/o error" in detail.lower():
            fix = (
                "the disk reported an input/output error; check the device (the system log, e.g. `dmesg`, "
                "and the disk's health), then try again — nbflow changed nothing"
            )
        else:
            fix = f"give this user read and write permission on that folder (e.g. `chmod -R u+rwX {path}`) or open the store as its owner"
        super().__init__(f"{what} cannot be accessed ({detail}). Nothing is damaged: {fix}.")


class StoreFullError(NbflowError, OSError):
    """The filesystem holding the store is full (or over quota): nothing is damaged, and
    what was stored before is intact."""

    def __init__(self, path: str, detail: str, instance_id: str | None = None, task_id: str | None = None) -> None:
        self.path, self.detail, self.instance_id, self.task_id = path, detail, instance_id, task_id
        inst = f" of instance {instance_id!r}" if instance_id else ""
        what = (
            f" while saving task {task_id!r}{inst}"
            if task_id
            else (f" while writing instance {instance_id!r}" if instance_id else "")
        )
        super().__init__(
            f"the disk holding the store at {path} is full{what} ({detail}). Nothing is damaged: "
            "every checkpoint stored before is intact. Free some space (or point the store at a larger disk), "
            "then resume; only the unfinished tasks run again."
        )


class StaleInstanceError(NbflowError):
    """The instance was cleared or restarted by another process since this one loaded it."""

    def __init__(self, instance_id: str, detail: str = "") -> None:
        self.instance_id, self.detail = instance_id, detail
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"instance {instance_id!r} was cleared or restarted by another process since this runner "
            f"loaded it{extra}; nothing was written over the new one. Run or resume it again to continue "
            "with what the store holds now."
        )


class CodecError(NbflowError):
    """A value cannot be encoded or decoded by the chosen codec."""

    def __init__(self, codec: str, task_id: str, detail: str, *, what: str = "") -> None:
        """``what`` names the value when it is not a task's output (a signal's payload)."""
        self.codec, self.task_id, self.detail, self.what = codec, task_id, detail, what
        hint = (
            "JsonCodec stores only JSON types (dict, list, str, int, float, bool, None); "
            "use PickleCodec for other objects."
            if codec == "json"
            else "Use a picklable value, or convert it (e.g. to a dict or a file path)."
        )
        subject = what or f"the output of task {task_id!r}"
        super().__init__(f"codec {codec!r} cannot handle {subject}: {detail}. {hint}")


class TaskTimeoutError(NbflowError, TimeoutError):
    """One attempt of a task ran longer than its ``timeout``."""

    def __init__(self, task_id: str, timeout: float) -> None:
        self.task_id, self.timeout = task_id, timeout
        super().__init__(
            f"task {task_id!r} exceeded its timeout of {timeout:g}s. Raise timeout= on the task, "
            "or make it faster. (A synchronous task's thread cannot be killed: it finishes in the "
            "background and its result is discarded.)"
        )


class RouteKeyError(NbflowError, KeyError):
    """A route's key function returned a key that has no branch and there is no default."""

    def __init__(self, workflow: str, route: str, key: Any, declared: Iterable[Any]) -> None:
        self.workflow, self.route, self.key = workflow, route, key
        self.declared = tuple(declared)
        super().__init__(
            f"route {route!r} of workflow {workflow!r} got key {key!r}, which is not among the "
            f"declared keys {list(self.declared)!r}. Add .branch({key!r}, ...) or "
            ".default_branch(...)."
        )

    def __str__(self) -> str:
        return self.message


class SignalRefusedError(NbflowError):
    """A signal was sent to an instance that can no longer receive it."""

    def __init__(self, instance_id: str, signal: str, state: str) -> None:
        self.instance_id, self.signal, self.state = instance_id, signal, state
        advice: dict[str, tuple[str, ...] | None] = {}
        if state == "completed":
            todo = "Nothing waits for it any more; start a new instance to run the workflow again."
        else:
            resume = "runner.resume(wf, instance_id)"
            todo = (
                f"Resume the instance first ({resume}), then send "
                "the signal when it waits for it; or start a new instance."
            )
            advice = {resume: ("resume", instance_id)}
        super().__init__(f"signal {signal!r} was not sent: instance {instance_id!r} is {state}. {todo}", advice=advice)


class SignalTimeoutError(NbflowError, TimeoutError):
    """A ``wait_for_signal`` step waited longer than its timeout."""

    def __init__(self, instance_id: str, signal: str, timeout: float) -> None:
        self.instance_id, self.signal, self.timeout = instance_id, signal, timeout
        super().__init__(
            f"instance {instance_id!r} waited {timeout:g}s for signal {signal!r}, which never "
            "came. Send it with WorkflowClient(backend).send_signal(instance_id, "
            f"{signal!r}, payload) and resume, or raise the step's timeout."
        )


class MissingDependencyError(NbflowError, ImportError):
    """An optional dependency is not installed; the message has the install command."""

    def __init__(self, package: str, feature: str, install: str) -> None:
        self.package, self.feature, self.install = package, feature, install
        super().__init__(f"{feature} needs {package}, which is not installed. Install it: {install}")


class WorkflowFailedError(NbflowError):
    """A notebook run ended ``failed``: a task failed for good (retries exhausted).

    The ``%%workflow`` magic raises it so the cell is marked failed and "Run All" stops
    there, like any failing cell. The message is the compact report (the failing task,
    its error, the user's frames of its traceback, and what to do); in IPython it is
    shown *instead of* a traceback of nbflow's internals (``_render_traceback_``).
    """

    def __init__(self, workflow: str, instance_id: str, task_id: str, report: str) -> None:
        self.workflow, self.instance_id, self.task_id = workflow, instance_id, task_id
        super().__init__(report)

    def _render_traceback_(self) -> list[str]:
        return self.message.splitlines()


class ClaimLostError(NbflowError):
    """This worker's claim on a unit expired and another worker took it over: the
    result computed here is dropped (the other worker's is the one kept)."""

    def __init__(self, instance_id: str, task_id: str, worker: str) -> None:
        self.instance_id, self.task_id, self.worker = instance_id, task_id, worker
        super().__init__(
            f"worker {worker!r} lost its claim on {task_id!r} of instance {instance_id!r} (it expired and "
            "another worker took the step over); its result was not stored. Make heartbeat shorter than claim_ttl."
        )


class IllegalTransitionError(NbflowError):
    """A state change the instance lifecycle forbids (``completed -> running``, a paused
    instance made to run, ...); see :mod:`nbflow.run.lifecycle` for the table."""

    def __init__(self, instance_id: str, from_state: str, to_state: str, by: str, allowed: Iterable[str] = ()) -> None:
        self.instance_id, self.from_state, self.to_state, self.by = instance_id, from_state, to_state, by
        self.allowed = tuple(allowed)
        who = f" (asked by {by})" if by else ""
        if from_state == "paused":
            todo = "A paused instance stays paused until it is unpaused: WorkflowClient(backend).unpause(instance_id)."
        elif from_state == "cancelled":
            todo = (
                "A cancelled instance runs again only when revived: runner.resume(wf, instance_id, revive=True) "
                "or WorkflowClient(backend).revive(instance_id)."
            )
        elif from_state == "completed":
            todo = (
                "A completed instance is final; re-run some of its tasks with runner.rerun_from(wf, instance_id, "
                "task), or start over with a new instance id."
            )
        else:
            todo = f"From {from_state} it can move to: {', '.join(self.allowed) or 'nothing'}."
        super().__init__(
            f"instance {instance_id!r} cannot move from {from_state} to {to_state}{who}. {todo}",
            advice={"WorkflowClient(backend).unpause(instance_id)": ("unpause", instance_id)},
        )


def _shown(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the error
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(field: str) -> str:
    return f"field {field!r}" if field else "the value"


class TaskInputError(NbflowError, ValueError):
    """A task's argument does not validate against the pydantic model its parameter is
    annotated with. The task did not run (and is not retried: its input would not change)."""

    def __init__(
        self, task_id: str, param: str, model: str, field: str, value: Any, detail: str, more: int = 0
    ) -> None:
        self.task_id, self.param, self.model, self.field = task_id, param, model, field
        self.value, self.detail, self.more = _shown(value), detail, more
        extra = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        super().__init__(
            f"task {task_id!r} got an invalid {model} for its parameter {param!r}: {_where(field)}: {detail} "
            f"(got {self.value}){extra}. Fix what feeds {param!r} (the upstream output or the workflow input), "
            "or the model."
        )


class TaskOutputError(NbflowError, ValueError):
    """A task's output does not validate against the pydantic model of its return
    annotation — as it returned it, or (``checkpoint=True``) as its checkpoint holds it."""

    def __init__(
        self, task_id: str, model: str, field: str, value: Any, detail: str, more: int = 0, checkpoint: bool = False
    ) -> None:
        self.task_id, self.model, self.field = task_id, model, field
        self.value, self.detail, self.more, self.checkpoint = _shown(value), detail, more, checkpoint
        extra = f" (and {more} more problem{'s' * (more > 1)})" if more else ""
        if checkpoint:
            text = (
                f"the checkpoint of task {task_id!r} does not fit its return annotation {model}: {_where(field)}: "
                f"{detail} (stored {self.value}){extra}. Nothing is damaged: the task's model changed since it ran; "
                f"re-run it with runner.rerun_from(wf, instance_id, {task_id!r})."
            )
        else:
            text = (
                f"task {task_id!r} returned an invalid {model}: {_where(field)}: {detail} (got {self.value}){extra}. "
                f"Return a {model} (or a dict that validates as one), or change the return annotation."
            )
        super().__init__(text)


class StoreConnectionError(NbflowError, ConnectionError):
    """A database store cannot be reached (the server is down, or the address is wrong).
    Nothing is damaged: what was stored is on the server."""

    def __init__(self, where: str, detail: str, fix: str = "") -> None:
        self.where, self.detail = where, detail
        fix = fix or "check that the server is running and that host and port in the address are right, then retry"
        super().__init__(f"cannot reach the store at {where} ({detail}). Nothing is damaged: {fix}.")


class StoreAddressError(NbflowError, ValueError):
    """A store address (``postgresql://…``) that cannot be parsed."""

    def __init__(self, address: str, detail: str) -> None:
        self.address, self.detail = address, detail
        super().__init__(
            f"the store address {address!r} is not valid ({detail}). Give a folder path, or a PostgreSQL address "
            "such as 'postgresql://user:password@host:5432/database'."
        )


class StoreAuthError(StoreConnectionError):
    """The database server refused the user name or password of a store address."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(
            where,
            detail,
            "put the right user and password in the address (or in ~/.pgpass / PGPASSWORD), "
            "or ask the database's administrator for access",
        )


class StoreDatabaseMissingError(StoreConnectionError):
    """The server is up but the database a store address names does not exist."""

    def __init__(self, where: str, database: str, detail: str) -> None:
        self.database = database
        super().__init__(
            where, detail, f"create it once (`createdb {database}`, or CREATE DATABASE {database};) or fix its name"
        )


class StoreSchemaError(NbflowError):
    """A database store's tables were made by another version of nbflow."""

    def __init__(self, where: str, found: int, expected: int) -> None:
        self.where, self.found, self.expected = where, found, expected
        if found > expected:
            fix = "a newer nbflow wrote it: upgrade nbflow here (pip install -U nbflow) to use this store"
        else:
            fix = (
                "an older nbflow wrote it: finish or export its runs with that version, or point this nbflow at "
                "a new database; nothing in it was changed"
            )
        super().__init__(
            f"the store at {where} has schema version {found}, this nbflow uses version {expected}. Nothing is damaged: {fix}."
        )


class StoreAccessError(NbflowError, PermissionError):
    """The database user of a store address may not do what nbflow needs there (create
    its tables, or read and write them). Nothing is damaged."""

    def __init__(self, where: str, user: str, detail: str) -> None:
        self.where, self.user, self.detail = where, user, detail
        super().__init__(
            f"the database user {user!r} may not use the store at {where} ({detail}). Nothing is damaged: let its "
            f"owner grant access (GRANT CREATE ON SCHEMA public TO {user}; to use tables made by another user, "
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {user}; and "
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {user}), or use a database {user!r} owns."
        )
