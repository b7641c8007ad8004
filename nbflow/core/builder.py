"""The fluent builder: ``Workflow(name).then(...).fork().branch(...).join(...).build()``.

Every step-adding method takes a callable, or a name followed by a callable (the
seed's ``("step1", fn)`` form), validates at once and raises
``WorkflowDefinitionError`` at the offending call with the fix in the message.
``build()`` freezes the steps into a :class:`~nbflow.core.graph.WorkflowDefinition`.

Two checks run as each step is added. Its id must follow the rule of
:mod:`nbflow.core.keys` (an id shaped like an internal record id, ``m[0]`` or
``__input__``, would overwrite that record), and its function must be able to take
what the scheduler will pass it (:mod:`nbflow.core.signatures`), so a mismatch is
refused before a run instead of failing when the run reaches it.

``add()`` is the general form the notebook layer uses: a task whose parameters are
fed by named upstream tasks or workflow inputs, in any order (edges are resolved at
``build()``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, NoReturn, Self

from nbflow.core.branching import DEFAULT_BRANCH, ForkBuilder, RouteBuilder, branch_label
from nbflow.core.context import WorkflowContext
from nbflow.core.draft import Draft
from nbflow.core.errors import WorkflowDefinitionError
from nbflow.core.fingerprint import fingerprint
from nbflow.core.graph import InputRef, Node, Source, WorkflowDefinition
from nbflow.core.keys import child_id, child_prefix
from nbflow.core.retry import parse_duration
from nbflow.core.vocabulary import NodeKind, PassMode

__all__ = ["DEFAULT_BRANCH", "ForkBuilder", "branch_label", "RouteBuilder", "Workflow", "WorkflowBuilder"]

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
        self._draft = Draft(context.name)

    @property
    def name(self) -> str:
        return self.context.name

    # -- steps ------------------------------------------------------------------------
    def then(self, name_or_fn: str | Step, fn: Step | None = None, **options: Any) -> Self:
        """Append a task that receives the previous step's output (or the input).

        Task options (``retries``, ``timeout``, ``tags``, ``description``, ``priority``,
        ``version``) given here take precedence over those from ``@task``.
        """
        task_id, func, spec = self._draft.resolve("then", name_or_fn, fn, options)
        after: tuple[str, ...] = ()
        params: tuple[tuple[str, Source], ...] = (("", self._draft.cursor),)
        if _takes_no_argument(func):
            # A task without parameters still runs after the previous step.
            after = (self._draft.cursor.task,) if self._draft.cursor.task else ()
            node = Node(
                task_id,
                NodeKind.TASK,
                func,
                spec,
                PassMode.NONE,
                (),
                fingerprint(func, spec.version, spec.pin),
                after=after,
            )
        else:
            node = Node(
                task_id, NodeKind.TASK, func, spec, PassMode.VALUE, params, fingerprint(func, spec.version, spec.pin)
            )
        self._draft.add_node(node)
        self._draft.cursor = Source(task_id)
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
        task_id, func, spec = self._draft.resolve("add", name_or_fn, fn, options)
        params: list[tuple[str, Source]] = []
        for param, ref in (inputs or {}).items():
            if isinstance(ref, InputRef):
                params.append((param, Source(None, ref.key)))
            elif isinstance(ref, str) and ref:
                params.append((param, Source(ref)))
            else:
                raise self._draft.fail(
                    f"input {param!r} of task {task_id!r} is {ref!r}",
                    "Map each parameter to a task id (str) or InputRef('key')",
                )
        mode = PassMode.KWARGS if params else PassMode.NONE
        self._draft.add_node(
            Node(task_id, NodeKind.TASK, func, spec, mode, tuple(params), fingerprint(func, spec.version, spec.pin))
        )
        return self

    def fork(self) -> ForkBuilder[Self]:
        """Open parallel branches that all receive the current output.

        Close them with ``.join(fn)``; the join receives ``{branch_key: last output}``
        where a branch's key is the id of its first task.
        """
        return ForkBuilder(self, self._draft)

    # Branch methods belong to .fork() and .route(); on the builder itself they would be
    # an AttributeError that does not say what was forgotten.
    def join(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: a join closes a fork. Use ``.fork().branch(f).branch(g).join(fn)``."""
        raise self._draft.fail(
            ".join() without .fork(): there are no branches to join",
            "Open them first: .fork().branch(f).branch(g).join(fn); to run one step after another use .then(fn)",
        )

    def branch(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: branches belong to a fork or a route."""
        raise self._draft.fail(
            ".branch() outside a fork or route",
            "Start the branches with .fork().branch(f).branch(g).join(fn) (all run) "
            "or .route(key_fn, keys=[...]).branch(key, f).done() (one runs)",
        )

    def default_branch(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: a default branch belongs to a route."""
        raise self._draft.fail(
            ".default_branch() outside a route",
            "Use .route(key_fn, keys=[...]).branch(key, f).default_branch(g).done()",
        )

    def done(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: ``.done()`` closes a route."""
        raise self._draft.fail(
            ".done() without .route()",
            "Use .route(key_fn, keys=[...]).branch(key, f).done(); a fork ends with .join(fn)",
        )

    # -- control flow -----------------------------------------------------------------
    def route(
        self,
        key_fn: str | Step,
        fn_or_keys: Step | Iterable[Any] | None = None,
        keys: Iterable[Any] | None = None,
        *,
        name: str | None = None,
    ) -> RouteBuilder[Self]:
        """Branch on a key: ``key_fn(previous output)`` picks the branch to run.

        ``route(key_fn, keys=[...])``, or ``route("name", key_fn, keys=[...])`` like
        every other step.

        ``keys`` declares every key ``key_fn`` may return; ``.branch(key, ...)`` must use
        declared keys, and every declared key needs a branch unless a
        ``.default_branch(...)`` exists (checked at ``.done()``). The branches not
        taken show as skipped; the step after ``.done()`` receives the output of the
        branch that ran.
        """
        if isinstance(key_fn, str):  # the ("name", fn) form
            task_id, func, spec = self._draft.resolve("route", key_fn, fn_or_keys, {})  # type: ignore[arg-type]
        else:
            if fn_or_keys is not None:
                if callable(fn_or_keys) or keys is not None:
                    raise self._draft.fail(
                        ".route() got two functions or keys twice",
                        "Use .route(key_fn, keys=[...]) or .route('name', key_fn, keys=[...])",
                    )
                keys = fn_or_keys
            task_id, func, spec = self._draft.resolve("route", name or key_fn, key_fn if name else None, {})
        declared = tuple(keys) if keys is not None else None
        if declared is not None and len(set(map(repr, declared))) != len(declared):
            raise self._draft.fail(f"route {task_id!r} declares a key twice: {list(declared)!r}", "List each key once")
        node = self._draft.special(
            NodeKind.ROUTE,
            task_id,
            fn=func,
            spec=spec,
            options={"keys": list(declared) if declared is not None else None},
        )
        return RouteBuilder(self, self._draft, node.id, declared)

    def loop(
        self,
        body: str | Step,
        fn: Step | None = None,
        *,
        max_iterations: int = 10,
        on_max: str = "fail",
        **options: Any,
    ) -> Self:
        """Repeat ``body`` on its own output until it returns ``LoopResult.done(v)``.

        The body receives the previous output first, then whatever it passed to
        ``LoopResult.again(v)``. Every iteration is checkpointed: a crash in iteration 7
        resumes at iteration 7. After ``max_iterations``, ``on_max="fail"`` fails the
        run and ``"exit_with_last"`` continues with the last value.
        """
        task_id, func, spec = self._draft.resolve("loop", body, fn, options)
        if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
            raise self._draft.fail(f"loop {task_id!r} has max_iterations={max_iterations!r}", "Use a whole number >= 1")
        if on_max not in ("fail", "exit_with_last"):
            raise self._draft.fail(f"loop {task_id!r} has on_max={on_max!r}", "Use on_max='fail' or 'exit_with_last'")
        self._draft.special(
            NodeKind.LOOP, task_id, fn=func, spec=spec, options={"max_iterations": max_iterations, "on_max": on_max}
        )
        return self

    def map(self, name_or_fn: str | Step, fn: Step | None = None, *, concurrency: int = 8, **options: Any) -> Self:
        """Run ``fn`` on every item of the previous output (any iterable), in parallel.

        Each item is checkpointed on its own, so a crash at item 5,000 of 10,000
        resumes there; results come back as a list in input order. Retries and
        timeouts apply per item; a failing item fails the step with its index.
        """
        task_id, func, spec = self._draft.resolve("map", name_or_fn, fn, options)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise self._draft.fail(f"map {task_id!r} has concurrency={concurrency!r}", "Use a whole number >= 1")
        self._draft.special(NodeKind.MAP, task_id, fn=func, spec=spec, options={"concurrency": concurrency})
        return self

    def delay(self, name: str, duration: str | float | timedelta) -> Self:
        """A durable pause: the wake-up time is stored, so after a restart only the
        remaining time is waited. The next step receives the previous output."""
        seconds = parse_duration(duration, f"delay {name!r}")
        self._draft.special(NodeKind.DELAY, name, options={"seconds": seconds})
        return self

    def wait_for_signal(
        self, signal: str, *, name: str | None = None, timeout: str | float | timedelta | None = None
    ) -> Self:
        """Park until ``WorkflowClient.send_signal(instance, signal, payload)``.

        Signals are buffered (first in, first out), so one sent before the workflow
        gets here, or while no process runs it, is not lost. The next step receives
        the payload. After ``timeout`` the run fails with ``SignalTimeoutError``.
        """
        if not isinstance(signal, str) or not signal:
            raise self._draft.fail(f"wait_for_signal got signal name {signal!r}", "Use a non-empty string")
        seconds = None if timeout is None else parse_duration(timeout, f"timeout of signal {signal!r}")
        after = (self._draft.cursor.task,) if self._draft.cursor.task else ()
        self._draft.special(
            NodeKind.SIGNAL,
            name or signal,
            mode=PassMode.NONE,
            params=(),
            after=after,
            options={"signal": signal, "timeout": seconds},
        )
        return self

    def add_signal(
        self,
        step_id: str,
        signal: str | None = None,
        *,
        timeout: str | float | timedelta | None = None,
        after: Iterable[str] = (),
    ) -> Self:
        """The DAG form of ``wait_for_signal`` (what a ``%%workflow`` cell uses): a step
        ``step_id`` that waits for ``signal`` (default: the same name) once the tasks in
        ``after`` finished; tasks with a parameter named ``step_id`` get the payload.
        Like ``add``, it does not move the cursor used by ``then``."""
        signal = step_id if signal is None else signal
        if not isinstance(signal, str) or not signal:
            raise self._draft.fail(f"signal step {step_id!r} got signal name {signal!r}", "Use a non-empty string")
        seconds = None if timeout is None else parse_duration(timeout, f"timeout of signal {signal!r}")
        cursor = self._draft.cursor
        self._draft.special(
            NodeKind.SIGNAL,
            step_id,
            mode=PassMode.NONE,
            params=(),
            after=tuple(after),
            options={"signal": signal, "timeout": seconds},
        )
        self._draft.cursor = cursor
        return self

    def then_flow(self, child: WorkflowDefinition | WorkflowBuilder) -> Self:
        """Run a whole built workflow as the next step; it receives the current output.

        Its task ids are prefixed with the child's name (``child/task``) so they never
        collide, and the widget draws them as a cluster. The next step receives the
        child's output (a dict of its final tasks' outputs if it has several).
        """
        if isinstance(child, WorkflowBuilder):
            child = child.build()
        if not isinstance(child, WorkflowDefinition):
            raise self._draft.fail(
                f".then_flow() needs a built workflow, got {type(child).__name__}", "Pass Workflow('child')...build()"
            )
        prefix = child_prefix(child.name)
        if any(i.startswith(prefix) for i in self._draft.ids):
            raise self._draft.fail(
                f"child workflow {child.name!r} is composed twice", "Build the second copy under another name"
            )
        origin = self._draft.cursor

        def rebase(src: Source) -> Source:
            if src.task is None:
                return (
                    Source(origin.task, src.key)
                    if origin.task
                    else Source(None, src.key if origin.key is None else origin.key)
                )
            return Source(child_id(child.name, src.task), src.key)

        for node in child.nodes:
            options = dict(node.options)
            if "guard" in options:
                options["guard"] = child_id(child.name, options["guard"])
            after = tuple(child_id(child.name, a) for a in node.after)
            if not node.deps and origin.task and node.mode == PassMode.NONE:
                after = (*after, origin.task)
            group = child.name if node.group is None else f"{child.name}/{node.group}"
            self._draft.add_node(
                Node(
                    child_id(child.name, node.id),
                    node.kind,
                    node.fn,
                    node.spec,
                    node.mode,
                    tuple((n, rebase(s)) for n, s in node.params),
                    node.fingerprint,
                    group=group,
                    options=options,
                    after=after,
                )
            )
        if len(child.sinks) == 1:
            self._draft.cursor = Source(child_id(child.name, child.sinks[0]))
        else:
            params = tuple((sink, Source(child_id(child.name, sink))) for sink in child.sinks)
            self._draft.special(
                NodeKind.COLLECT, child_id(child.name, "output"), mode=PassMode.DICT, params=params, options={}
            )
            self._draft.nodes[-1] = _regroup(self._draft.nodes[-1], child.name)
        return self

    def build(self) -> WorkflowDefinition:
        """Freeze the steps into an immutable, validated workflow definition."""
        if not self._draft.nodes:
            raise self._draft.fail("it has no tasks", "Add a step first, e.g. .then(my_function)")
        return WorkflowDefinition(self.name, list(self._draft.nodes), self.context.codec, self.context.metadata)


def _regroup(node: Node, group: str) -> Node:
    return Node(
        node.id,
        node.kind,
        node.fn,
        node.spec,
        node.mode,
        node.params,
        node.fingerprint,
        group=group,
        options=node.options,
        after=node.after,
    )


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
