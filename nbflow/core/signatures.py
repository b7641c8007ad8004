"""How a step's function will be called, and the ``build()`` check that it can be.

The scheduler calls each step's function in one fixed way, set by the node's kind and
mode (see :mod:`nbflow.core.graph`):

- a task or a route's key function: ``"value"`` → ``fn(upstream)``, ``"dict"`` →
  ``fn({branch: output, ...})`` (a fork's join), ``"kwargs"`` → ``fn(name=upstream, ...)``
  (a notebook cell, or a join whose parameters are the branch keys), ``"none"`` → ``fn()``;
- a loop body: ``fn(value)``, first the previous output, then each ``LoopResult.again`` value;
- a map function: ``fn(item)`` for each item of the previous output.

A function that cannot take that would fail with a ``TypeError`` only when the run
reaches it, perhaps an hour in; binding its signature to placeholder arguments at
``build()`` refuses it before anything runs. Functions whose signature cannot be read
(some builtins and C extensions) are not checked.

Execution code does not belong here: this module only describes calls.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nbflow.core.errors import WorkflowDefinitionError
from nbflow.core.graph import Node
from nbflow.core.typed import prepare

__all__ = ["check_call", "planned_call"]

_ONE = "_"  # a placeholder: binding only looks at how many arguments and their names

_ONE_FIX = (
    "A step receives exactly one value: give it one required parameter (defaults for the others); "
    "to combine several outputs use .fork().branch(...).join(fn)"
)
_ITEM_FIX = "A map function receives one item at a time: give it one required parameter (defaults for the others)"
_LOOP_FIX = "A loop body receives one value: give it one required parameter (defaults for the others)"


def planned_call(node: Node) -> tuple[tuple[Any, ...], dict[str, Any], str, str] | None:
    """``(args, kwargs, what it receives, how to fix a mismatch)`` for ``node``'s
    function, or None if the node has no function of its own.

    >>> from nbflow.core.graph import Source
    >>> from nbflow.core.task import TaskSpec
    >>> node = Node("clean", "task", len, TaskSpec(), "value", (("", Source("load")),), "fp")
    >>> planned_call(node)[:3]
    (('_',), {}, "one value, the output of 'load'")
    """
    if node.fn is None:
        return None
    if node.kind == "loop":
        return (_ONE,), {}, "one value (the previous output, then each LoopResult.again value)", _LOOP_FIX
    if node.kind == "map":
        return (_ONE,), {}, "one item of the previous output at a time", _ITEM_FIX
    if node.kind not in ("task", "route"):
        return None
    if node.mode == "value":
        src = node.params[0][1]
        origin = "the workflow input" if src.task is None and src.key is None else f"the output of {src.describe()!r}"
        return (_ONE,), {}, f"one value, {origin}", _ONE_FIX
    if node.mode == "dict":
        keys = ", ".join(f"{key!r}: ..." for key, _ in node.params)
        names = ", ".join(key for key, _ in node.params)
        fix = (
            "A join receives one dict of its branches' outputs: give it one parameter (def join(parts)), "
            f"or name its parameters after the branch keys ({names}) to receive them as keyword arguments"
        )
        return (_ONE,), {}, f"one dict {{{keys}}}", fix
    if node.mode == "kwargs":
        params = [name for name, _ in node.params]
        fix = "Name its parameters after what feeds them, or give the others defaults"
        return (), dict.fromkeys(params, _ONE), f"the keyword arguments {', '.join(params)}", fix
    if node.mode == "none":
        return (), {}, "no arguments", "Give its parameters defaults, or let it take the previous output"
    return None


def _binds(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], follow: bool) -> str | None:
    """None if ``fn`` can be called so, the binding error if not, "" if unreadable."""
    try:
        sig = inspect.signature(fn, follow_wrapped=follow)
    except (TypeError, ValueError):
        return ""
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        return f"{exc}"
    return None


def check_call(workflow: str, node: Node) -> None:
    """Raise ``WorkflowDefinitionError`` if ``node``'s function cannot take what the
    scheduler will pass it; say what it receives and its signature.

    A decorator using ``functools.wraps`` shows the wrapped function's signature while
    the wrapper may take other arguments (it may supply one itself), so a function is
    refused only when neither its own nor the wrapped signature fits.
    """
    plan = planned_call(node)
    if plan is None:
        return
    assert node.fn is not None
    prepare(node.fn)  # its pydantic annotations, read once here rather than at every call
    args, kwargs, receives, fix = plan
    problem = _binds(node.fn, args, kwargs, follow=True)
    if not problem:
        return
    if _binds(node.fn, args, kwargs, follow=False) is None:
        return
    label = getattr(node.fn, "__name__", type(node.fn).__name__)
    signature = f"{label}{inspect.signature(node.fn)}"
    raise WorkflowDefinitionError(
        workflow,
        f"{node.kind} {node.id!r} will be called with {receives}, but its signature {signature} cannot take that "
        f"({problem})",
        fix,
    )
