"""The branching parts of the builder: ``fork().branch().join()`` and
``route().branch().default_branch().done()``.

They collect branches and add their steps to the parent builder's
:class:`~nbflow.core.draft.Draft`, whose cursor and validation they share; they call
the builder itself only through its public methods (``then``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

from nbflow.core.draft import Draft
from nbflow.core.fingerprint import fingerprint
from nbflow.core.graph import Node, Source
from nbflow.core.vocabulary import NodeKind, PassMode

if TYPE_CHECKING:
    from nbflow.core.builder import WorkflowBuilder

__all__ = ["DEFAULT_BRANCH", "ForkBuilder", "RouteBuilder", "branch_label"]

Step = Callable[..., Any]
B = TypeVar("B", bound="WorkflowBuilder")


class ForkBuilder(Generic[B]):
    """Collects the branches of a fork; ``join`` closes it and returns the builder."""

    def __init__(self, parent: B, draft: Draft) -> None:
        self._parent, self._draft = parent, draft
        self._origin = draft.cursor
        self._branches: list[tuple[str, str]] = []  # (key, last task id)

    def branch(self, *steps: str | Step | tuple[str, Step], name: str | None = None) -> Self:
        """Add a branch of one or several chained steps: ``branch(a)``, ``branch(a, b)``,
        ``branch("name", fn)``, ``branch(("a", f), ("b", g))``. ``name=`` names the
        first step when a single callable is given."""
        parent, draft = self._parent, self._draft
        items = _pair_steps(draft, steps)
        if not items:
            raise draft.fail(".branch() needs at least one function", "Use .branch(fn) or .branch(fn1, fn2)")
        if name is not None:
            if len(items) != 1 or items[0][0] is not None:
                raise draft.fail(".branch(name=...) names a single unnamed step", "Use .branch('name', fn)")
            items = [(name, items[0][1])]
        saved = draft.cursor
        draft.cursor = self._origin
        first: str | None = None
        for step_name, fn in items:
            if step_name is None:
                parent.then(fn)
            else:
                parent.then(step_name, fn)
            first = first or draft.cursor.task
        last = draft.cursor.task
        draft.cursor = saved
        assert first is not None and last is not None
        self._branches.append((first, last))
        return self

    def join(self, name_or_fn: str | Step, fn: Step | None = None, **options: Any) -> B:
        """Close the fork with a task receiving ``{branch_key: output}``.

        When the join function's parameters are exactly the branch keys (``def
        report(stats, plot)`` after ``.branch(stats).branch(plot)``), it is called with
        them as keyword arguments instead — the same function then works in a
        ``%%workflow`` cell and in the builder.
        """
        parent, draft = self._parent, self._draft
        if not self._branches:
            raise draft.fail(".join() after .fork() with no branches", "Add .branch(fn) before .join(...)")
        task_id, func, spec = draft.resolve("join", name_or_fn, fn, options)
        params = tuple((key, Source(last)) for key, last in self._branches)
        mode = PassMode.KWARGS if _takes_exactly(func, [key for key, _ in self._branches]) else PassMode.DICT
        draft.add_node(
            Node(task_id, NodeKind.TASK, func, spec, mode, params, fingerprint(func, spec.version, spec.pin))
        )
        draft.cursor = Source(task_id)
        return parent


def _takes_exactly(fn: Step, names: list[str]) -> bool:
    """True if ``fn``'s parameters are exactly ``names`` (two or more), all passable by
    keyword: a join written like a notebook task."""
    if len(names) < 2:
        return False
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = list(sig.parameters.values())
    return all(p.kind in kinds for p in params) and sorted(p.name for p in params) == sorted(names)


def _pair_steps(draft: Draft, steps: tuple[Any, ...]) -> list[tuple[str | None, Step]]:
    """Turn ``(a, "name", b, ("c", f))`` into ``[(None, a), ("name", b), ("c", f)]``."""
    out: list[tuple[str | None, Step]] = []
    i = 0
    while i < len(steps):
        item = steps[i]
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], item[1]))
        elif isinstance(item, str):
            if i + 1 >= len(steps) or not callable(steps[i + 1]):
                raise draft.fail(
                    f"branch step name {item!r} is not followed by a function",
                    f"Use .branch({item!r}, my_function)",
                )
            out.append((item, steps[i + 1]))
            i += 1
        elif callable(item):
            out.append((None, item))
        else:
            raise draft.fail(f".branch() got {item!r}, which is not a function", "Pass functions")
        i += 1
    return out


DEFAULT_BRANCH = "__default__"


def branch_label(key: Any) -> str:
    """How a route key is named in the graph and in checkpoints (keys may be any type)."""
    return key if key is DEFAULT_BRANCH else repr(key)


class RouteBuilder(Generic[B]):
    """Collects the branches of a route; ``done()`` checks them and returns the builder."""

    def __init__(self, parent: B, draft: Draft, route_id: str, declared: tuple[Any, ...] | None) -> None:
        self._parent, self._draft = parent, draft
        self._route = route_id
        self._origin = Source(route_id)
        self._declared = declared
        self._branches: list[tuple[Any, str, str]] = []  # (key, first id, last id)
        self._default: tuple[str, str] | None = None

    def _chain(self, steps: tuple[Any, ...], when: Any, method: str) -> tuple[str, str]:
        parent, draft = self._parent, self._draft
        items = _pair_steps(draft, steps)
        if not items:
            raise draft.fail(f".{method}() needs at least one function", f"Use .{method}(..., fn)")
        saved = draft.cursor
        # The first step gets the value the route looked at, and runs only if its key won.
        feed = draft.nodes[draft.index(self._route)].params
        draft.cursor = feed[0][1] if feed else Source()
        first: str | None = None
        for i, (step_name, fn) in enumerate(items):
            if step_name is None:
                parent.then(fn)
            else:
                parent.then(step_name, fn)
            if i == 0:
                node = draft.nodes[-1]
                draft.nodes[-1] = Node(
                    node.id,
                    node.kind,
                    node.fn,
                    node.spec,
                    node.mode,
                    node.params,
                    node.fingerprint,
                    options={**node.options, "guard": self._route, "when": branch_label(when)},
                    after=(*node.after, self._route),
                )
                first = node.id
        last = draft.cursor.task
        draft.cursor = saved
        assert first is not None and last is not None
        return first, last

    def branch(self, key: Any, *steps: str | Step | tuple[str, Step]) -> Self:
        """The steps to run when the route's key function returns ``key``."""
        draft = self._draft
        if self._declared is not None and key not in self._declared:
            raise draft.fail(
                f"route {self._route!r} has a branch for key {key!r}, which is not declared (keys={list(self._declared)!r})",
                f"Add {key!r} to route(..., keys=[...]) or fix the key",
            )
        if any(k == key for k, _, _ in self._branches):
            raise draft.fail(f"route {self._route!r} has two branches for key {key!r}", "Keep one")
        first, last = self._chain(steps, key, "branch")
        self._branches.append((key, first, last))
        return self

    def default_branch(self, *steps: str | Step | tuple[str, Step]) -> Self:
        """The steps to run when the key matches no branch."""
        if self._default is not None:
            raise self._draft.fail(f"route {self._route!r} has two default branches", "Keep one")
        self._default = self._chain(steps, DEFAULT_BRANCH, "default_branch")
        return self

    def done(self, name: str | None = None) -> B:
        """Close the route; the next step receives the output of the branch that ran."""
        parent, draft = self._parent, self._draft
        if not self._branches and self._default is None:
            raise draft.fail(f"route {self._route!r} has no branches", "Add .branch(key, fn) before .done()")
        if self._declared is not None and self._default is None:
            missing = [k for k in self._declared if not any(k == b for b, _, _ in self._branches)]
            if missing:
                raise draft.fail(
                    f"route {self._route!r} has no branch for declared key(s) {missing!r} and no default",
                    "Add .branch(key, fn) for each, or .default_branch(fn)",
                )
        if self._declared is None:  # remember the branch keys to name them in a run-time error
            at = draft.index(self._route)
            draft.nodes[at] = dataclasses.replace(
                draft.nodes[at], options={**draft.nodes[at].options, "branches": [k for k, _, _ in self._branches]}
            )
        ends = [(branch_label(k), last) for k, _, last in self._branches]
        if self._default is not None:
            ends.append((DEFAULT_BRANCH, self._default[1]))
        merge_id = name or f"{self._route}.done"
        draft.cursor = Source(self._route)
        draft.special(
            NodeKind.MERGE,
            merge_id,
            mode=PassMode.FIRST,
            params=tuple((k, Source(last)) for k, last in ends),
            options={"route": self._route},
        )
        return parent
