"""Stable fingerprints of task code and of workflow shapes.

A task's fingerprint decides whether its checkpoint is still valid after the user edits
code. It must be equal across processes and kernels for the same code, and differ when
the code really changed. Source text is a poor basis in a notebook (cell file names
change per kernel, several lambdas share a line), so we hash the *compiled* code:
bytecode, constants (nested code objects recursively, the docstring left out), names,
plus the values a function closes over, its defaults, and the code of helper functions
it calls from its own module. ``version=`` on ``@task`` overrides all of it.

Nothing here depends on ``PYTHONHASHSEED``, dict order of sets, or object ids.
"""

from __future__ import annotations

import hashlib
import pickle
import types
from collections.abc import Callable
from typing import Any

__all__ = ["fingerprint", "stable_digest"]

_PRIMITIVES = (int, float, str, bytes, bool, type(None), complex)


def stable_digest(*parts: str) -> str:
    """A short hex digest of text parts (sha256, first 16 hex digits)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def fingerprint(fn: Callable[..., Any], version: str | None = None) -> str:
    """Fingerprint of a task callable; equal code gives an equal fingerprint.

    >>> fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 1)
    True
    >>> fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 2)
    False
    >>> fingerprint(lambda x: x, version="2") == fingerprint(lambda y: y * 9, version="2")
    True
    """
    if version is not None:
        return stable_digest("version", version)
    return stable_digest("code", _describe_callable(fn, set(), depth=0))


def _describe_callable(fn: Any, seen: set[int], depth: int) -> str:
    if isinstance(fn, types.MethodType):
        return "method:" + _describe_callable(fn.__func__, seen, depth) + ":" + _value(fn.__self__, seen, depth)
    if hasattr(fn, "func") and hasattr(fn, "args") and hasattr(fn, "keywords"):  # functools.partial
        inner = _describe_callable(fn.func, seen, depth)
        return f"partial:{inner}:{_value(fn.args, seen, depth)}:{_value(fn.keywords, seen, depth)}"
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - we want the method, not callable()
        if call is not None and hasattr(call, "__code__"):
            return f"callable:{type(fn).__qualname__}:{_describe_callable(call, seen, depth)}"
        return f"opaque:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    if id(fn) in seen:
        return f"recursive:{code.co_name}"
    seen.add(id(fn))
    parts = [_code(code, getattr(fn, "__doc__", None))]
    parts.append("defaults:" + _value(getattr(fn, "__defaults__", None), seen, depth))
    parts.append("kwdefaults:" + _value(getattr(fn, "__kwdefaults__", None), seen, depth))
    closure = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, closure, strict=False):
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell: the closure variable is not bound yet
            contents = "<unbound>"
        parts.append(f"closure:{name}={_value(contents, seen, depth)}")
    # Helpers the task calls from its own module (a notebook's __main__ included):
    # editing one of them invalidates the task, which is what a notebook user expects.
    module = getattr(fn, "__module__", None)
    fn_globals = getattr(fn, "__globals__", {})
    if depth < 3:
        for name in sorted(_global_names(code)):
            ref = fn_globals.get(name)
            if isinstance(ref, types.FunctionType) and ref.__module__ == module and ref is not fn:
                parts.append(f"helper:{name}={_describe_callable(ref, seen, depth + 1)}")
    return "|".join(parts)


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _code(code: types.CodeType, doc: str | None) -> str:
    consts = list(code.co_consts)
    # co_consts[0] is the docstring slot: the docstring, or None when there is none.
    # Drop it either way, so adding, editing or removing a docstring is not a changed task.
    if consts and (consts[0] is None if doc is None else consts[0] == doc):
        consts = consts[1:]
    rendered = []
    for const in consts:
        if isinstance(const, types.CodeType):
            rendered.append("code(" + _code(const, None) + ")")
        else:
            rendered.append(_primitive(const))
    return ":".join(
        [
            code.co_code.hex(),
            ",".join(rendered),
            ",".join(code.co_names),
            ",".join(code.co_varnames),
            str(code.co_argcount),
            str(code.co_kwonlyargcount),
            str(code.co_flags),
        ]
    )


def _primitive(value: Any) -> str:
    if isinstance(value, frozenset | set):
        return "{" + ",".join(sorted(_primitive(v) for v in value)) + "}"
    if isinstance(value, tuple):
        return "(" + ",".join(_primitive(v) for v in value) + ")"
    return repr(value)


def _value(value: Any, seen: set[int], depth: int) -> str:
    """A stable description of a closure/default value."""
    if isinstance(value, _PRIMITIVES):
        return f"{type(value).__name__}:{value!r}"
    if isinstance(value, tuple | list):
        inner = ",".join(_value(v, seen, depth) for v in value)
        return f"{type(value).__name__}[{inner}]"
    if isinstance(value, dict):
        items = sorted((repr(k), _value(v, seen, depth)) for k, v in value.items())
        return "dict{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if isinstance(value, set | frozenset):
        return "set{" + ",".join(sorted(_value(v, seen, depth) for v in value)) + "}"
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    if isinstance(value, type):
        return f"type:{value.__module__}.{value.__qualname__}"
    if callable(value):
        return "fn:" + stable_digest(_describe_callable(value, seen, depth + 1))
    try:
        data = pickle.dumps(value, protocol=4)
    except Exception:  # noqa: BLE001 - unpicklable values are described by type only
        return f"object:{type(value).__module__}.{type(value).__qualname__}"
    return f"pickle:{type(value).__qualname__}:{hashlib.sha256(data).hexdigest()[:16]}"
