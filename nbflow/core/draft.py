"""A workflow under construction: its steps so far and the checks each new step passes.

The fluent builders (:class:`~nbflow.core.builder.WorkflowBuilder`, and the fork and
route builders of :mod:`nbflow.core.branching`) all add steps to one ``Draft``: it
names steps, refuses a bad id or a duplicate at the call that adds it, and holds the
cursor (where the next ``then`` reads from). Keeping it out of the builder classes
lets the branching builders share it without reaching into the workflow builder, and
keeps the user-facing builder's namespace to the methods users call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from nbflow.core.errors import WorkflowDefinitionError
from nbflow.core.fingerprint import fingerprint, stable_digest
from nbflow.core.graph import Node, Source
from nbflow.core.keys import ID_RULE, MAX_ID_LENGTH, check_task_id
from nbflow.core.signatures import check_call
from nbflow.core.task import TASK_OPTIONS, TaskSpec, check_option_names, make_spec, spec_of
from nbflow.core.vocabulary import NodeKind, PassMode

__all__ = ["Draft"]

Step = Callable[..., Any]

# Keyword options a step method takes besides the task options, so that a misspelt
# one (``concurency=4``) is matched against them too.
_METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "map": ("concurrency",),
    "loop": ("max_iterations", "on_max"),
    "add": ("inputs",),
}

_NOT_ALLOWED = re.compile(r"[^\w.\- ]+")


def _suggest_id(bad: str) -> str:
    """A nearby allowed id for a refused one (``m[0]`` -> ``m_0``), or "" if none."""
    guess = _NOT_ALLOWED.sub("_", bad).strip("_ ")[:MAX_ID_LENGTH]
    return guess if guess and check_task_id(guess) is None else ""


class Draft:
    """The steps of workflow ``name`` added so far, in order, and the cursor."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self.ids: set[str] = set()
        self.cursor: Source = Source()  # the workflow input, until a step is added

    def index(self, task_id: str) -> int:
        """Where step ``task_id`` stands in ``nodes``."""
        return [n.id for n in self.nodes].index(task_id)

    def fail(self, problem: str, fix: str = "") -> WorkflowDefinitionError:
        return WorkflowDefinitionError(self.name, problem, fix)

    def check_id(self, task_id: object, what: str) -> None:
        """Refuse an id that is not allowed (see :mod:`nbflow.core.keys`): one that
        looks like an internal record id would overwrite that record."""
        reason = check_task_id(task_id)
        if reason is None:
            return
        guess = _suggest_id(task_id) if isinstance(task_id, str) else ""
        raise self.fail(
            f"invalid {what} id {task_id!r}: {reason}",
            f"{what.capitalize()} ids may use {ID_RULE}" + (f"; e.g. {guess!r}" if guess else ""),
        )

    def resolve(
        self, method: str, name_or_fn: str | Step, fn: Step | None, options: Mapping[str, Any]
    ) -> tuple[str, Step, TaskSpec]:
        if isinstance(name_or_fn, str):
            if fn is None or not callable(fn):
                raise self.fail(
                    f".{method}({name_or_fn!r}) got a name but no function",
                    f"Pass the function after the name: .{method}({name_or_fn!r}, my_function)",
                )
            name: str | None = name_or_fn
            func = fn
        else:
            if fn is not None:
                raise self.fail(f".{method}() got two functions", f"Use .{method}(fn) or .{method}('name', fn)")
            func = name_or_fn
            name = options.get("name")
        if not callable(func):
            raise self.fail(
                f".{method}() needs a function, got {type(func).__name__} {func!r}",
                f"Pass a function: .{method}(my_function) or .{method}('name', my_function)",
            )
        check_option_names(f".{method}()", options, (*TASK_OPTIONS, *_METHOD_OPTIONS.get(method, ())))
        base = spec_of(func)
        extra = {k: v for k, v in options.items() if k != "name"}
        spec = make_spec(
            name=base.name if name is None else name,  # "" must be refused, not ignored
            retries=extra.get("retries", base.retry),
            timeout=extra.get("timeout", base.timeout),
            tags=extra.get("tags", base.tags),
            description=extra.get("description", base.description),
            priority=extra.get("priority", base.priority),
            version=extra.get("version", base.version),
            pin=extra.get("pin", base.pin),
        )
        task_id = spec.name or self.default_id(func)
        self.check_id(task_id, "task")
        if task_id in self.ids:
            raise self.fail(
                f"task id {task_id!r} is used twice",
                f"Give the second one its own name: .{method}('{task_id}_2', fn)",
            )
        return task_id, func, spec

    def default_id(self, fn: Step) -> str:
        name = getattr(fn, "__name__", None)
        if name is None:
            inner = getattr(fn, "func", None)  # functools.partial
            name = getattr(inner, "__name__", None) or type(fn).__name__
        if name == "<lambda>":
            # Stable across processes: derived from the code, not from object ids.
            base = "lambda_" + fingerprint(fn)[:6]
            candidate, n = base, 2
            while candidate in self.ids:
                candidate, n = f"{base}_{n}", n + 1
            return candidate
        return name

    def add_node(self, node: Node) -> Node:
        # Checked here, at the call that adds the step, rather than at build(): the
        # traceback then points at the offending .then()/.join(), and no run starts
        # with a step that would fail with a TypeError when reached.
        check_call(self.name, node)
        self.ids.add(node.id)
        self.nodes.append(node)
        return node

    def special(
        self,
        kind: NodeKind,
        task_id: str,
        *,
        fn: Step | None = None,
        spec: TaskSpec | None = None,
        mode: PassMode = PassMode.VALUE,
        params: tuple[tuple[str, Source], ...] | None = None,
        after: tuple[str, ...] = (),
        options: Mapping[str, Any] | None = None,
    ) -> Node:
        """Add a control-flow node fed by the cursor, and move the cursor onto it."""
        if task_id in self.ids:
            raise self.fail(f"step id {task_id!r} is used twice", f"Give the {kind} step another name")
        if kind != NodeKind.COLLECT:  # a collect step's id is made by keys.child_id, not given
            self.check_id(task_id, "step")
        opts = dict(options or {})
        fp = (
            fingerprint(fn, (spec or TaskSpec()).version, (spec or TaskSpec()).pin)
            if fn is not None
            else stable_digest(kind, repr(sorted(opts.items())))
        )
        node = Node(
            task_id,
            kind,
            fn,
            spec or TaskSpec(),
            mode,
            params if params is not None else (("", self.cursor),),
            fp,
            after=after,
            options=opts,
        )
        self.add_node(node)
        self.cursor = Source(task_id)
        return node
