"""The built workflow: an immutable DAG of nodes, its definition hash and its order.

Every front end (the fluent builder, the ``%%workflow`` cell) compiles to this one
model, and the scheduler only ever sees this model. A node says *where its arguments
come from* (``Source``) and *how they are passed* (``mode``, a
:class:`~nbflow.core.vocabulary.PassMode`):

- ``VALUE``: ``fn(upstream)`` — the builder's ``then``;
- ``DICT``: ``fn({key: upstream, ...})`` — a fork's ``join``;
- ``KWARGS``: ``fn(name=upstream, ...)`` — a notebook cell's parameter names;
- ``NONE``: ``fn()``; ``FIRST``: a route's merge (the branch that ran).

This module holds no execution logic and imports nothing outside ``nbflow.core``.
"""

from __future__ import annotations

import functools
import heapq
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nbflow.core.errors import UnknownTaskError, WorkflowDefinitionError
from nbflow.core.fingerprint import stable_digest
from nbflow.core.task import TaskSpec
from nbflow.core.vocabulary import NodeKind, PassMode

__all__ = ["InputRef", "Node", "Source", "WorkflowDefinition"]


@dataclass(frozen=True)
class Source:
    """Where one argument comes from: a task's output, or the workflow input.

    ``task=None`` means the workflow input; ``key`` then picks one item of it (the
    notebook's ``--input path=...``); ``key=None`` passes the whole input.
    """

    task: str | None = None
    key: str | None = None

    def describe(self) -> str:
        if self.task is not None:
            return self.task
        return "$input" if self.key is None else f"$input.{self.key}"


@dataclass(frozen=True)
class InputRef:
    """Marks a parameter fed from the workflow input (``key=None``: the whole input)."""

    key: str | None = None


@dataclass(frozen=True, eq=False)
class Node:
    """One step of a workflow. ``kind`` is ``NodeKind.TASK`` for plain tasks;
    control-flow steps (loop, map, route, delay, signal) carry their settings in
    ``options``."""

    id: str
    kind: NodeKind
    fn: Callable[..., Any] | None
    spec: TaskSpec
    mode: PassMode
    params: tuple[tuple[str, Source], ...]
    fingerprint: str
    group: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    # Extra dependencies that pass no value (e.g. the branches of a route feed their merge).
    after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A kind or mode given as its string is read as the word (so a misspelt one
        # fails here, when the workflow is built, not when a run reaches the step).
        object.__setattr__(self, "kind", NodeKind(self.kind))
        object.__setattr__(self, "mode", PassMode(self.mode))

    @functools.cached_property
    def deps(self) -> tuple[str, ...]:
        """Upstream task ids, in parameter order, without repeats."""
        seen: dict[str, None] = {}
        for _, src in self.params:
            if src.task is not None:
                seen.setdefault(src.task)
        for dep in self.after:
            seen.setdefault(dep)
        return tuple(seen)

    @property
    def input_keys(self) -> tuple[str | None, ...]:
        """Workflow-input items this node reads (None: the whole input)."""
        return tuple(src.key for _, src in self.params if src.task is None)

    def shape_line(self) -> str:
        """The node's contribution to the definition hash: structure, not code."""
        opts = json.dumps(
            {k: v for k, v in sorted(self.options.items()) if _is_shape_option(v)},
            sort_keys=True,
            default=str,
        )
        params = ",".join(f"{name}<-{src.describe()}" for name, src in self.params)
        after = ",".join(self.after)
        return f"{self.id}|{self.kind}|{self.mode}|{params}|{after}|{self.group or ''}|{opts}"

    def __repr__(self) -> str:
        return f"Node({self.id!r}, kind={self.kind!r}, deps={list(self.deps)!r})"


def _is_shape_option(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | tuple | list | type(None))


class WorkflowDefinition:
    """An immutable, validated workflow: what ``build()`` returns and runners run.

    ``nodes`` are in a deterministic topological order (ties broken by the order the
    builder added them). ``definition_hash`` covers the shape only — ids, kinds, edges,
    control-flow settings — so editing a task body never changes it; per-task code
    fingerprints (``node.fingerprint``) track the bodies.
    """

    __slots__ = ("_by_id", "_children", "_shape", "codec", "definition_hash", "metadata", "name", "nodes", "sinks")

    name: str
    nodes: tuple[Node, ...]
    codec: Any
    metadata: Mapping[str, Any]
    definition_hash: str
    sinks: tuple[str, ...]
    _by_id: Mapping[str, Node]
    _children: Mapping[str, tuple[str, ...]]
    _shape: tuple[str, ...]

    def __init__(self, name: str, nodes: list[Node], codec: Any = None, metadata: Mapping[str, Any] | None = None):
        if not nodes:
            raise WorkflowDefinitionError(
                name, "it has no tasks", "Add at least one step, e.g. Workflow(name).then(fn).build()"
            )
        by_id: dict[str, Node] = {}
        for node in nodes:
            if node.id in by_id:
                raise WorkflowDefinitionError(
                    name, f"task id {node.id!r} is used twice", "Give one of them its own name: .then('other_name', fn)"
                )
            by_id[node.id] = node
        for node in nodes:
            for dep in node.deps:
                if dep not in by_id:
                    raise WorkflowDefinitionError(
                        name,
                        f"task {node.id!r} takes the output of {dep!r}, which is not a task of this workflow",
                        f"Add a task named {dep!r}, or rename the parameter",
                    )
        order = _topological(name, nodes)
        children: dict[str, list[str]] = {n.id: [] for n in order}
        for node in order:
            for dep in node.deps:
                children[dep].append(node.id)
        setter = object.__setattr__
        setter(self, "name", name)
        setter(self, "nodes", tuple(order))
        setter(self, "codec", codec)
        setter(self, "metadata", MappingProxyType(dict(metadata or {})))
        setter(self, "_by_id", MappingProxyType(by_id))
        setter(self, "_children", MappingProxyType({k: tuple(v) for k, v in children.items()}))
        setter(self, "sinks", tuple(n.id for n in order if not children[n.id]))
        setter(self, "_shape", tuple(n.shape_line() for n in order))
        setter(self, "definition_hash", stable_digest(name, *self._shape))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"a built workflow is immutable (tried to set {key!r}); build a new one")

    # -- lookups -----------------------------------------------------------------------
    @property
    def workflow_id(self) -> str:
        """The workflow's name (sayiir calls it the workflow id)."""
        return self.name

    @property
    def task_ids(self) -> tuple[str, ...]:
        return tuple(n.id for n in self.nodes)

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """(upstream, downstream) pairs in node order."""
        return tuple((dep, n.id) for n in self.nodes for dep in n.deps)

    def node(self, task_id: str) -> Node:
        try:
            return self._by_id[task_id]
        except KeyError:
            raise UnknownTaskError(self.name, task_id, self._by_id) from None

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_id

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def children(self, task_id: str) -> tuple[str, ...]:
        return self._children[task_id]

    def descendants(self, task_id: str) -> set[str]:
        """Every task downstream of ``task_id`` (not including it)."""
        out: set[str] = set()
        stack = list(self._children[task_id])
        while stack:
            tid = stack.pop()
            if tid not in out:
                out.add(tid)
                stack.extend(self._children[tid])
        return out

    def shape(self) -> tuple[str, ...]:
        """The lines the definition hash is made of; stored to explain shape changes."""
        return self._shape

    def fingerprints(self) -> dict[str, str]:
        return {n.id: n.fingerprint for n in self.nodes}

    def __repr__(self) -> str:
        return f"<Workflow {self.name!r}: {len(self.nodes)} tasks, hash {self.definition_hash}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkflowDefinition, (self.name, list(self.nodes), self.codec, dict(self.metadata)))


def _topological(name: str, nodes: list[Node]) -> list[Node]:
    """Kahn's algorithm; ties keep insertion order so the result is deterministic."""
    position = {n.id: i for i, n in enumerate(nodes)}
    indegree = {n.id: len(n.deps) for n in nodes}
    dependents: dict[str, list[str]] = {n.id: [] for n in nodes}
    for n in nodes:
        for dep in n.deps:
            dependents[dep].append(n.id)
    by_id = {n.id: n for n in nodes}
    order: list[Node] = []
    heap = [(position[nid], nid) for nid, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    while heap:
        _, nid = heapq.heappop(heap)
        order.append(by_id[nid])
        for child in dependents[nid]:
            indegree[child] -= 1
            if indegree[child] == 0:
                heapq.heappush(heap, (position[child], child))
    if len(order) != len(nodes):
        cycle = _find_cycle({n.id: n.deps for n in nodes if indegree[n.id] > 0})
        raise WorkflowDefinitionError(
            name,
            f"its tasks form a cycle: {' -> '.join(cycle)}",
            "A task cannot (indirectly) take its own output; break the cycle by renaming a parameter",
        )
    return order


def _find_cycle(deps: Mapping[str, tuple[str, ...]]) -> list[str]:
    """One cycle among the nodes left over by Kahn's algorithm, as a path."""
    start = sorted(deps)[0]
    path: list[str] = []
    index: dict[str, int] = {}
    node = start
    while node not in index:
        index[node] = len(path)
        path.append(node)
        node = next(d for d in deps[node] if d in deps)
    cycle = path[index[node] :]
    cycle.reverse()  # report in data-flow order: producer -> consumer
    return [*cycle, cycle[0]]
