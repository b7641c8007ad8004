"""Cell source -> workflow: the pure half of ``%%workflow`` (no IPython here).

A ``%%workflow`` cell is plain Python. Its rules:

- Every top-level ``def`` / ``async def`` is a task; its id is the function's name
  (or ``@nf.task(name=...)``). Functions whose name starts with ``_`` are helpers,
  not tasks. Other top-level statements (imports, constants) are allowed and run.
- A parameter named after another function of the cell is an edge: ``def clean(load)``
  receives the output of ``load``.
- Any other parameter is a workflow input, given with ``--input key=value``. A
  parameter with a default value is optional: it takes the ``--input`` value when one
  is given and keeps its default otherwise.
- ``approval = nf.wait_for_signal("approval", after=["train"])`` at top level is a
  signal step: once ``train`` finished it waits for the signal (the widget's button,
  ``%workflow signal``, ``WorkflowClient.send_signal``); a parameter named ``approval``
  receives the payload. ``after=`` must list the cell's function names literally.

Turning a cell into a workflow happens in two steps so the magic can refuse a bad
cell *before* running any of its code: :func:`analyze_cell` reads the source with
``ast`` (syntax, duplicate names, cycles, inputs), then, once the cell's code has run,
:func:`build_cell_workflow` looks the functions up in the namespace and builds the
:class:`~nbflow.core.graph.WorkflowDefinition`. :func:`compile_cell` does both, running
the code in a fresh namespace; it is what tests and scripts use.

Every problem raises ``WorkflowDefinitionError`` with the line it is on.
"""

from __future__ import annotations

import ast
import hashlib
import json
import keyword
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nbflow.core.builder import WorkflowBuilder
from nbflow.core.errors import NbflowError, WorkflowDefinitionError
from nbflow.core.fingerprint import stable_digest
from nbflow.core.graph import InputRef, WorkflowDefinition
from nbflow.core.task import SignalWait

__all__ = [
    "CellAnalysis",
    "CellFunction",
    "CellParam",
    "CellWorkflow",
    "analyze_cell",
    "build_cell_workflow",
    "check_inputs",
    "compile_cell",
    "default_instance_id",
]


@dataclass(frozen=True)
class CellParam:
    """One parameter of a cell function: an edge (``source`` is a function name) or an input."""

    name: str
    line: int
    has_default: bool
    source: str | None = None  # the upstream function, when the parameter is an edge

    @property
    def is_input(self) -> bool:
        return self.source is None


@dataclass(frozen=True)
class CellFunction:
    """A task-to-be: a top-level function of the cell."""

    name: str
    line: int
    params: tuple[CellParam, ...]
    is_async: bool = False
    kind: str = "task"  # or "signal": ``name = nf.wait_for_signal(...)``
    after: tuple[str, ...] = ()  # a signal step waits for these tasks first

    @property
    def deps(self) -> tuple[str, ...]:
        return tuple(p.source for p in self.params if p.source is not None) + self.after


@dataclass(frozen=True)
class CellAnalysis:
    """What the cell's source says, before any of it runs."""

    name: str
    source: str
    functions: tuple[CellFunction, ...]
    header_line: int | None = None  # the ``%%workflow`` line, for errors about flags

    def function(self, name: str) -> CellFunction:
        return next(f for f in self.functions if f.name == name)

    @property
    def input_params(self) -> dict[str, list[tuple[CellFunction, CellParam]]]:
        """Input name -> the (function, parameter) pairs that read it."""
        out: dict[str, list[tuple[CellFunction, CellParam]]] = {}
        for fn in self.functions:
            for p in fn.params:
                if p.is_input:
                    out.setdefault(p.name, []).append((fn, p))
        return out


@dataclass(frozen=True)
class CellWorkflow:
    """A built cell: the workflow, the inputs it runs with, and its default instance id."""

    workflow: WorkflowDefinition
    inputs: dict[str, Any]
    instance_id: str
    task_ids: dict[str, str] = field(default_factory=dict)  # function name -> task id


def _fail(name: str, problem: str, fix: str = "", line: int | None = None) -> WorkflowDefinitionError:
    return WorkflowDefinitionError(name, problem, fix, line=line)


def _is_task_def(node: ast.stmt) -> bool:
    return isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_")


def analyze_cell(name: str, source: str, *, header_line: int | None = None) -> CellAnalysis:
    """Read a cell's source and check everything that does not need it to run.

    Raises ``WorkflowDefinitionError`` (with ``.line``) for: a workflow name that is not
    an identifier, a syntax error, no functions, a function defined twice, a function
    named like the workflow, ``*args``/``**kwargs``/positional-only parameters, and a
    cycle. Line numbers are those of ``source``; ``header_line`` is the line of the
    ``%%workflow`` header (for errors about it), if there is one.

    >>> a = analyze_cell("etl", "def load(path):\\n    return [path]\\ndef n(load):\\n    return len(load)\\n")
    >>> [(f.name, f.deps) for f in a.functions]
    [('load', ()), ('n', ('load',))]
    >>> sorted(a.input_params)
    ['path']
    """
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise _fail(
            str(name),
            "the workflow name must be a Python identifier (it is bound in the namespace)",
            "Use e.g. %%workflow etl",
            header_line,
        )
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        where = f": {exc.text.strip()}" if exc.text and exc.text.strip() else ""
        raise _fail(name, f"the cell has a syntax error ({exc.msg}){where}", "Fix the code", exc.lineno) from None
    defs = [node for node in tree.body if _is_task_def(node)]
    if not defs:
        first = tree.body[0].lineno if tree.body else (header_line or 1)
        raise _fail(
            name,
            "the cell defines no functions, so there is no task to run",
            "Write each step as a top-level def; a parameter named after another function is an edge",
            first,
        )
    signals = [(target, call) for target, call in map(_signal_assignment, tree.body) if target is not None]
    seen: dict[str, int] = {}
    for node in defs:
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if node.name in seen:
            raise _fail(
                name,
                f"function {node.name!r} is defined twice (first on line {seen[node.name]})",
                "Each task needs its own name; rename or delete one of them",
                node.lineno,
            )
        seen[node.name] = node.lineno
        if node.name == name:
            raise _fail(
                name,
                f"function {node.name!r} has the workflow's name, which the cell binds to the workflow",
                f"Rename the function or the workflow (%%workflow {name}_wf)",
                node.lineno,
            )
    for target, call in signals:
        assert target is not None and call is not None
        if target.id in seen:
            raise _fail(
                name,
                f"{target.id!r} is both a function and a signal step (line {seen[target.id]})",
                "Give the signal step its own name",
                target.lineno,
            )
        seen[target.id] = target.lineno
    functions = tuple(_function(name, node, seen) for node in defs)  # type: ignore[arg-type]
    functions += tuple(_signal_step(name, target, call, seen) for target, call in signals)  # type: ignore[arg-type]
    _check_cycles(name, functions)
    return CellAnalysis(name, source, functions, header_line)


def _function(wf_name: str, node: ast.FunctionDef | ast.AsyncFunctionDef, names: Mapping[str, int]) -> CellFunction:
    args = node.args
    if args.vararg is not None or args.kwarg is not None:
        star = args.vararg or args.kwarg
        assert star is not None
        prefix = "*" if star is args.vararg else "**"
        raise _fail(
            wf_name,
            f"task {node.name!r} has a {prefix}{star.arg} parameter, which no task or input can fill",
            "Name each parameter: an upstream function's name or an input",
            star.lineno,
        )
    if args.posonlyargs:
        raise _fail(
            wf_name,
            f"task {node.name!r} has positional-only parameters (before '/'); tasks receive keywords",
            "Remove the '/'",
            args.posonlyargs[0].lineno,
        )
    positional = args.args
    n_defaults = len(args.defaults)
    params: list[CellParam] = []
    for i, arg in enumerate(positional):
        has_default = i >= len(positional) - n_defaults
        params.append(_param(arg, has_default, names))
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        params.append(_param(arg, default is not None, names))
    return CellFunction(node.name, node.lineno, tuple(params), isinstance(node, ast.AsyncFunctionDef))


def _signal_assignment(node: ast.stmt) -> tuple[ast.Name | None, ast.Call | None]:
    """``name = nf.wait_for_signal(...)`` (or ``wait_for_signal(...)``) at top level."""
    if (
        isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Call)
    ):
        func = node.value.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if called == "wait_for_signal":
            return node.targets[0], node.value
    return None, None


def _signal_step(wf_name: str, target: ast.Name, call: ast.Call, names: Mapping[str, int]) -> CellFunction:
    """A signal step: its ``after=`` names must be literal names of the cell's tasks."""
    after: tuple[str, ...] = ()
    for kw in call.keywords:
        if kw.arg != "after":
            continue
        try:
            value = ast.literal_eval(kw.value)
        except ValueError:
            value = None
        items = (value,) if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise _fail(
                wf_name,
                f"signal step {target.id!r}: after= must list task names as text",
                "Write e.g. after=['train']",
                kw.value.lineno,
            )
        unknown = [v for v in items if v not in names]
        if unknown:
            raise _fail(
                wf_name,
                f"signal step {target.id!r} waits after {unknown[0]!r}, which is not a function of the cell",
                f"Use the names of the cell's functions: {sorted(names)}",
                kw.value.lineno,
            )
        after = tuple(items)
    return CellFunction(target.id, target.lineno, (), kind="signal", after=after)


def _param(arg: ast.arg, has_default: bool, names: Mapping[str, int]) -> CellParam:
    source = arg.arg if arg.arg in names else None
    return CellParam(arg.arg, arg.lineno, has_default, source)


def _check_cycles(name: str, functions: tuple[CellFunction, ...]) -> None:
    """Depth-first search for a cycle among the edges; names it and its line."""
    deps = {f.name: f.deps for f in functions}
    lines = {f.name: f.line for f in functions}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :]  # consumer -> producer
                cycle.reverse()  # report in data-flow order, from the first-defined task
                first = min(range(len(cycle)), key=lambda i: lines[cycle[i]])
                cycle = cycle[first:] + cycle[:first]
                path = " -> ".join([*cycle, cycle[0]])
                line = lines[cycle[0]]
                if len(cycle) == 1:
                    problem = f"task {dep!r} takes its own output (a parameter named {dep!r}): a cycle {path}"
                else:
                    problem = f"its tasks form a cycle: {path}"
                raise _fail(
                    name,
                    problem,
                    "A task cannot (indirectly) take its own output; rename one of the parameters",
                    line,
                )
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for fn in functions:
        if fn.name not in state:
            visit(fn.name)


def check_inputs(analysis: CellAnalysis, inputs: Mapping[str, Any]) -> None:
    """Every required input is given, and every given input is read by some task."""
    name = analysis.name
    wanted = analysis.input_params
    for key in inputs:
        if key not in wanted:
            edges = {f.name for f in analysis.functions}
            takes = ", ".join(sorted(wanted)) or "no inputs"
            hint = (
                f"{key!r} is a task of this cell, so it cannot also be an input"
                if key in edges
                else f"the tasks take: {takes}"
            )
            raise _fail(
                name,
                f"--input {key!r} is not a parameter of any task ({hint})",
                "Remove the --input or fix its name",
                analysis.header_line,
            )
    for key, users in wanted.items():
        if key in inputs:
            continue
        required = [(fn, p) for fn, p in users if not p.has_default]
        if required:
            fn, p = required[0]
            raise _fail(
                name,
                f"task {fn.name!r} needs the input {key!r}, which no --input gives and no function of the cell is named",
                f"Pass it: %%workflow {name} --input {key}=VALUE (or --input {key}=$variable), "
                "give the parameter a default, or define a function with that name",
                p.line,
            )


def build_cell_workflow(
    analysis: CellAnalysis,
    namespace: Mapping[str, Any],
    inputs: Mapping[str, Any] | None = None,
) -> CellWorkflow:
    """Build the workflow from a cell whose code already ran in ``namespace``."""
    inputs = dict(inputs or {})
    check_inputs(analysis, inputs)
    name = analysis.name
    builder = WorkflowBuilder(name)
    task_ids: dict[str, str] = {}
    funcs: dict[str, Any] = {}
    for fn in analysis.functions:
        obj = namespace.get(fn.name)
        if fn.kind == "signal":
            if not isinstance(obj, SignalWait):
                raise _fail(
                    name,
                    f"{fn.name!r} is not a signal step after the cell ran (it is {type(obj).__name__})",
                    "Do not rebind it later in the cell",
                    fn.line,
                )
            funcs[fn.name] = obj
            task_ids[fn.name] = fn.name
            continue
        if obj is None or not callable(obj):
            raise _fail(
                name,
                f"{fn.name!r} is not a function after the cell ran (it is {type(obj).__name__})",
                "Do not rebind a task's name later in the cell",
                fn.line,
            )
        funcs[fn.name] = obj
        spec = getattr(obj, "__nbflow_task__", None)
        task_ids[fn.name] = getattr(spec, "name", None) or fn.name
    for fn in analysis.functions:
        if fn.kind == "signal":
            wait = funcs[fn.name]
            try:
                builder.add_signal(fn.name, wait.signal, timeout=wait.timeout, after=[task_ids[a] for a in fn.after])
            except NbflowError as exc:
                raise _with_line(name, exc, fn.line) from None
            continue
        refs: dict[str, str | InputRef] = {}
        for p in fn.params:
            if p.source is not None:
                refs[p.name] = task_ids[p.source]
            elif p.name in inputs:
                refs[p.name] = InputRef(p.name)
            # else: an optional parameter keeps its default
        try:
            builder.add(task_ids[fn.name], funcs[fn.name], inputs=refs)
        except NbflowError as exc:
            raise _with_line(name, exc, fn.line) from None
    try:
        workflow = builder.build()
    except NbflowError as exc:
        raise _with_line(name, exc, analysis.functions[0].line) from None
    return CellWorkflow(workflow, inputs, default_instance_id(name, inputs), task_ids)


def _with_line(name: str, exc: NbflowError, line: int) -> WorkflowDefinitionError:
    if isinstance(exc, WorkflowDefinitionError):
        return WorkflowDefinitionError(exc.workflow, exc.problem, exc.fix, line=exc.line or line)
    return WorkflowDefinitionError(name, str(exc).rstrip("."), line=line)


def compile_cell(
    name: str,
    source: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    namespace: dict[str, Any] | None = None,
    filename: str = "<nbflow-cell>",
) -> CellWorkflow:
    """Analyze, run and build a cell in one go (tests, scripts).

    The code runs in ``namespace`` (default: a fresh one whose ``__name__`` is
    ``__main__``, like a notebook's), and nothing runs if the cell is refused.

    >>> cw = compile_cell("w", "def a(x):\\n    return x + 1\\ndef b(a):\\n    return a * 2\\n", {"x": 1})
    >>> cw.workflow.edges, cw.inputs
    ((('a', 'b'),), {'x': 1})
    """
    inputs = dict(inputs or {})
    analysis = analyze_cell(name, source)
    check_inputs(analysis, inputs)
    ns: dict[str, Any] = namespace if namespace is not None else {"__name__": "__main__"}
    exec(compile(source, filename, "exec"), ns)
    return build_cell_workflow(analysis, ns, inputs)


# -- instance ids ------------------------------------------------------------------------
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _canonical(value: Any) -> Any:
    """A JSON-able, process-independent description of an input value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return {type(value).__name__: [_canonical(v) for v in value]}
    if isinstance(value, set | frozenset):
        items = sorted(json.dumps(_canonical(v), sort_keys=True) for v in value)
        return {"set": items}
    if isinstance(value, dict):
        pairs = [(json.dumps(_canonical(k), sort_keys=True), _canonical(v)) for k, v in value.items()]
        pairs.sort(key=lambda kv: kv[0])
        return {"dict": pairs}
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    try:
        data = pickle.dumps(value, protocol=4)
    except Exception:  # noqa: BLE001 - unpicklable: fall back to its repr without addresses
        return {kind: _ADDRESS.sub("", repr(value))}
    return {kind: hashlib.sha256(data).hexdigest()}


def default_instance_id(name: str, inputs: Mapping[str, Any]) -> str:
    """``{name}-{digest of the inputs}``: equal in every kernel for equal inputs.

    >>> default_instance_id("etl", {"path": "a.csv", "n": 3}) == default_instance_id("etl", {"n": 3, "path": "a.csv"})
    True
    >>> default_instance_id("etl", {"path": "a.csv"}) == default_instance_id("etl", {"path": "b.csv"})
    False
    """
    canon = json.dumps(_canonical(dict(inputs)), sort_keys=True, separators=(",", ":"))
    return f"{name}-{stable_digest('inputs', canon)[:10]}"
