"""The fluent builder: ``Workflow(name).then(...).fork().branch(...).join(...).build()``.

Every step-adding method takes a callable, or a name followed by a callable (the
seed's ``("step1", fn)`` form), validates at once and raises
``WorkflowDefinitionError`` at the offending call with the fix in the message.
``build()`` freezes the steps into a :class:`~nbflow.core.graph.WorkflowDefinition`.

``add()`` is the general form the notebook layer uses: a task whose parameters are
fed by named upstream tasks or workflow inputs, in any order (edges are resolved at
``build()``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Generic, Self, TypeVar

from nbflow.core.context import WorkflowContext
from nbflow.core.errors import WorkflowDefinitionError
from nbflow.core.fingerprint import fingerprint
from nbflow.core.graph import InputRef, Node, Source, WorkflowDefinition
from nbflow.core.task import TaskSpec, make_spec, spec_of

__all__ = ["ForkBuilder", "Workflow", "WorkflowBuilder"]

Step = Callable[..., Any]


def _takes_no_argument(fn: Step) -> bool:
    """True when ``fn`` can only be called without arguments."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return False
    return True


class WorkflowBuilder:
    """Build a workflow step by step; ``build()`` returns the immutable definition.

    >>> def double(x): return 2 * x
    >>> def inc(x): return x + 1
    >>> wf = WorkflowBuilder(WorkflowContext("math")).then(double).then("plus_one", inc).build()
    >>> wf.task_ids
    ('double', 'plus_one')
    """

    def __init__(self, context: WorkflowContext | str) -> None:
        if isinstance(context, str):
            context = WorkflowContext(context)
        if not isinstance(context, WorkflowContext):
            raise WorkflowDefinitionError(
                repr(context), "WorkflowBuilder needs a WorkflowContext or a name", "Use Workflow('name')"
            )
        self.context = context
        self._nodes: list[Node] = []
        self._ids: set[str] = set()
        self._cursor: Source = Source()  # the workflow input, until a step is added
        self._lambda_count = 0

    @property
    def name(self) -> str:
        return self.context.name

    # -- naming ------------------------------------------------------------------------
    def _fail(self, problem: str, fix: str = "") -> WorkflowDefinitionError:
        return WorkflowDefinitionError(self.name, problem, fix)

    def _resolve(self, method: str, name_or_fn: str | Step, fn: Step | None, options: Mapping[str, Any]) -> tuple[str, Step, TaskSpec]:
        if isinstance(name_or_fn, str):
            if fn is None or not callable(fn):
                raise self._fail(
                    f".{method}({name_or_fn!r}) got a name but no function",
                    f"Pass the function after the name: .{method}({name_or_fn!r}, my_function)",
                )
            name: str | None = name_or_fn
            func = fn
        else:
            if fn is not None:
                raise self._fail(
                    f".{method}() got two functions", f"Use .{method}(fn) or .{method}('name', fn)"
                )
            func = name_or_fn
            name = options.get("name")
        if not callable(func):
            raise self._fail(
                f".{method}() needs a function, got {type(func).__name__} {func!r}",
                f"Pass a function: .{method}(my_function) or .{method}('name', my_function)",
            )
        base = spec_of(func)
        extra = {k: v for k, v in options.items() if k != "name"}
        spec = make_spec(
            name=name or base.name,
            retries=extra.get("retries", base.retry),
            timeout=extra.get("timeout", base.timeout),
            tags=extra.get("tags", base.tags),
            description=extra.get("description", base.description),
            priority=extra.get("priority", base.priority),
            version=extra.get("version", base.version),
        )
        task_id = spec.name or self._default_id(func)
        if not isinstance(task_id, str) or not task_id or "/" in task_id:
            raise self._fail(f"invalid task id {task_id!r}", "Use a non-empty name without '/'")
        if task_id in self._ids:
            raise self._fail(
                f"task id {task_id!r} is used twice",
                f"Give the second one its own name: .{method}('{task_id}_2', fn)",
            )
        return task_id, func, spec

    def _default_id(self, fn: Step) -> str:
        name = getattr(fn, "__name__", None)
        if name is None:
            inner = getattr(fn, "func", None)  # functools.partial
            name = getattr(inner, "__name__", None) or type(fn).__name__
        if name == "<lambda>":
            # Stable across processes: derived from the code, not from object ids.
            base = "lambda_" + fingerprint(fn)[:6]
            candidate, n = base, 2
            while candidate in self._ids:
                candidate, n = f"{base}_{n}", n + 1
            return candidate
        return name

    def _add_node(self, node: Node) -> Node:
        self._ids.add(node.id)
        self._nodes.append(node)
        return node

    # -- steps ------------------------------------------------------------------------
    def then(self, name_or_fn: str | Step, fn: Step | None = None, **options: Any) -> Self:
        """Append a task that receives the previous step's output (or the input).

        Task options (``retries``, ``timeout``, ``tags``, ``description``, ``priority``,
        ``version``) given here take precedence over those from ``@task``.
        """
        task_id, func, spec = self._resolve("then", name_or_fn, fn, options)
        after: tuple[str, ...] = ()
        params: tuple[tuple[str, Source], ...] = (("", self._cursor),)
        if _takes_no_argument(func):
            # A task without parameters still runs after the previous step.
            after = (self._cursor.task,) if self._cursor.task else ()
            node = Node(task_id, "task", func, spec, "none", (), fingerprint(func, spec.version), after=after)
        else:
            node = Node(task_id, "task", func, spec, "value", params, fingerprint(func, spec.version))
        self._add_node(node)
        self._cursor = Source(task_id)
        return self

    def add(
        self,
        name_or_fn: str | Step,
        fn: Step | None = None,
        *,
        inputs: Mapping[str, str | InputRef] | None = None,
        **options: Any,
    ) -> Self:
        """Add a task whose keyword parameters come from named tasks or inputs.

        ``inputs`` maps each parameter name to an upstream task id (a str) or to
        ``InputRef(key)`` (an item of the workflow input). Tasks may be added in any
        order; references are checked at ``build()``. This is how a ``%%workflow`` cell
        becomes a workflow. ``add`` does not move the cursor used by ``then``.
        """
        task_id, func, spec = self._resolve("add", name_or_fn, fn, options)
        params: list[tuple[str, Source]] = []
        for param, ref in (inputs or {}).items():
            if isinstance(ref, InputRef):
                params.append((param, Source(None, ref.key)))
            elif isinstance(ref, str) and ref:
                params.append((param, Source(ref)))
            else:
                raise self._fail(
                    f"input {param!r} of task {task_id!r} is {ref!r}",
                    "Map each parameter to a task id (str) or InputRef('key')",
                )
        mode = "kwargs" if params else "none"
        self._add_node(Node(task_id, "task", func, spec, mode, tuple(params), fingerprint(func, spec.version)))
        return self

    def fork(self) -> ForkBuilder[Self]:
        """Open parallel branches that all receive the current output.

        Close them with ``.join(fn)``; the join receives ``{branch_key: last output}``
        where a branch's key is the id of its first task.
        """
        return ForkBuilder(self)

    def build(self) -> WorkflowDefinition:
        """Freeze the steps into an immutable, validated workflow definition."""
        if not self._nodes:
            raise self._fail("it has no tasks", "Add a step first, e.g. .then(my_function)")
        return WorkflowDefinition(self.name, list(self._nodes), self.context.codec, self.context.metadata)


B = TypeVar("B", bound=WorkflowBuilder)


class ForkBuilder(Generic[B]):
    """Collects the branches of a fork; ``join`` closes it and returns the builder."""

    def __init__(self, parent: B) -> None:
        self._parent = parent
        self._origin = parent._cursor
        self._branches: list[tuple[str, str]] = []  # (key, last task id)

    def branch(self, *steps: str | Step | tuple[str, Step], name: str | None = None) -> Self:
        """Add a branch of one or several chained steps: ``branch(a)``, ``branch(a, b)``,
        ``branch("name", fn)``, ``branch(("a", f), ("b", g))``. ``name=`` names the
        first step when a single callable is given."""
        parent = self._parent
        items = _pair_steps(parent, steps)
        if not items:
            raise parent._fail(".branch() needs at least one function", "Use .branch(fn) or .branch(fn1, fn2)")
        if name is not None:
            if len(items) != 1 or items[0][0] is not None:
                raise parent._fail(".branch(name=...) names a single unnamed step", "Use .branch('name', fn)")
            items = [(name, items[0][1])]
        saved = parent._cursor
        parent._cursor = self._origin
        first: str | None = None
        for step_name, fn in items:
            if step_name is None:
                parent.then(fn)
            else:
                parent.then(step_name, fn)
            first = first or parent._cursor.task
        last = parent._cursor.task
        parent._cursor = saved
        assert first is not None and last is not None
        self._branches.append((first, last))
        return self

    def join(self, name_or_fn: str | Step, fn: Step | None = None, **options: Any) -> B:
        """Close the fork with a task receiving ``{branch_key: output}``."""
        parent = self._parent
        if not self._branches:
            raise parent._fail(".join() after .fork() with no branches", "Add .branch(fn) before .join(...)")
        task_id, func, spec = parent._resolve("join", name_or_fn, fn, options)
        params = tuple((key, Source(last)) for key, last in self._branches)
        parent._add_node(Node(task_id, "task", func, spec, "dict", params, fingerprint(func, spec.version)))
        parent._cursor = Source(task_id)
        return parent


def _pair_steps(parent: WorkflowBuilder, steps: tuple[Any, ...]) -> list[tuple[str | None, Step]]:
    """Turn ``(a, "name", b, ("c", f))`` into ``[(None, a), ("name", b), ("c", f)]``."""
    out: list[tuple[str | None, Step]] = []
    i = 0
    while i < len(steps):
        item = steps[i]
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append((item[0], item[1]))
        elif isinstance(item, str):
            if i + 1 >= len(steps) or not callable(steps[i + 1]):
                raise parent._fail(
                    f"branch step name {item!r} is not followed by a function",
                    f"Use .branch({item!r}, my_function)",
                )
            out.append((item, steps[i + 1]))
            i += 1
        elif callable(item):
            out.append((None, item))
        else:
            raise parent._fail(f".branch() got {item!r}, which is not a function", "Pass functions")
        i += 1
    return out


class Workflow(WorkflowBuilder):
    """``Workflow("etl")``: the short way to start a builder (name, codec, metadata).

    >>> def load(p): return [p]
    >>> def n(rows): return len(rows)
    >>> def s(rows): return sorted(rows)
    >>> def report(parts): return parts
    >>> wf = Workflow("etl").then(load).fork().branch(n).branch(s).join(report).build()
    >>> wf.edges
    (('load', 'n'), ('load', 's'), ('n', 'report'), ('s', 'report'))
    """

    def __init__(self, name: str, *, codec: Any = None, metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(WorkflowContext(name, codec=codec, metadata=metadata))
