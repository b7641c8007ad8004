"""Getting finished outputs back: a workflow bound to its store and instance.

``%%workflow sales`` binds ``sales`` in the notebook to a :class:`BoundWorkflow`: still
the built ``WorkflowDefinition`` (runners take it, it pickles as one), plus the store
and instance the cell runs, so ``sales.result("clean")`` and ``sales.results["clean"]``
read a task's checkpointed output — also in a fresh kernel, once the cell was re-run
(``--no-run`` is enough: nothing runs, the outputs come from the store).

:class:`StoredResults` is a read-only mapping of the finished tasks' outputs that
decodes a value only when it is looked up (a 200 MB array costs nothing until asked
for); its repr shows the stored previews, decoding nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from nbflow.core.codecs import Codec, PickleCodec
from nbflow.core.errors import UnknownTaskError
from nbflow.core.graph import WorkflowDefinition
from nbflow.core.status import WorkflowStatus
from nbflow.run.checkpoint import CheckpointIO
from nbflow.store.base import Backend, CheckpointRecord

__all__ = ["BoundWorkflow", "StoredResults"]


class StoredResults(Mapping[str, Any]):
    """Finished outputs of one instance, by task id, decoded on first access.

    The set of finished tasks is read when the mapping is made (``wf.results`` makes a
    new one each time); a value is decoded when it is looked up, then kept.
    """

    def __init__(
        self,
        backend: Backend,
        instance_id: str,
        task_ids: tuple[str, ...],
        codec: Codec | None = None,
        workflow: str = "",
    ) -> None:
        records = backend.get_records(instance_id)
        self._records: dict[str, CheckpointRecord] = {t: records[t] for t in task_ids if t in records}
        self._all = records
        self._task_ids = task_ids
        self._io = CheckpointIO(backend, instance_id, codec or PickleCodec())
        self._values: dict[str, Any] = {}
        self.instance_id = instance_id
        self.workflow = workflow or instance_id

    def __getitem__(self, task_id: str) -> Any:
        if task_id in self._values:
            return self._values[task_id]
        record = self._records.get(task_id)
        if record is None:
            what = "no checkpoint yet" if task_id in self._task_ids else "not a task of this workflow"
            raise UnknownTaskError(self.workflow, f"{task_id} ({what})", self._records or self._task_ids)
        value = self._io.read(record, self._all.get)
        self._values[task_id] = value
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def previews(self) -> dict[str, str]:
        """Task id -> the stored short preview of its output (nothing decoded)."""
        return {t: r.preview for t, r in self._records.items()}

    def __repr__(self) -> str:
        shown = ", ".join(f"{t!r}: {p}" for t, p in self.previews().items())
        return f"<results of {self.instance_id!r} (loaded when accessed): {{{shown}}}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class BoundWorkflow(WorkflowDefinition):
    """A built workflow that knows where its instance lives: ``.result(task)``,
    ``.results``, ``.status()``. Everywhere else it is the plain definition."""

    __slots__ = ("_backend", "_bound_codec", "_instance_id")

    _backend: Backend
    _instance_id: str
    _bound_codec: Codec | None

    def __init__(self, wf: WorkflowDefinition, backend: Backend, instance_id: str) -> None:
        # Share the built definition's frozen parts instead of building it again.
        setter = object.__setattr__
        for slot in WorkflowDefinition.__slots__:
            setter(self, slot, getattr(wf, slot))
        setter(self, "_backend", backend)
        setter(self, "_instance_id", instance_id)
        setter(self, "_bound_codec", wf.codec)

    @property
    def instance_id(self) -> str:
        """The instance the cell runs (its default: the name plus a digest of the inputs)."""
        return self._instance_id

    @property
    def backend(self) -> Backend:
        return self._backend

    def result(self, task_id: str) -> Any:
        """The checkpointed output of ``task_id`` (``UnknownTaskError`` if it has none)."""
        self.node(task_id)  # UnknownTaskError naming the workflow's tasks
        return self.results[task_id]

    @property
    def results(self) -> StoredResults:
        """Finished outputs by task id, decoded when accessed."""
        return StoredResults(self._backend, self._instance_id, self.task_ids, self._bound_codec, self.name)

    def status(self) -> WorkflowStatus:
        """The stored status of the bound instance (no output decoded)."""
        from nbflow.run.client import WorkflowClient

        return WorkflowClient(self._backend).status(self._instance_id, output=False)

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.nodes)} tasks, instance {self._instance_id!r}>"
