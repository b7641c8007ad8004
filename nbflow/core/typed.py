"""Typed task inputs and outputs: pydantic models in a task's annotations (optional).

A task whose parameter is annotated with a pydantic model (``def price(order: Order)``,
also ``list[Order]``, ``Order | None``, ...) receives the model: the value given to it (a
dict from an upstream task, the workflow input, a restored checkpoint) is validated and
converted first, and a value that does not validate fails the task at once with
``TaskInputError`` naming the task, the parameter, the field and the value (no retry: the
input would not change). A task whose return type is a model has its output validated
the same way (a dict is converted; an invalid one raises ``TaskOutputError``, which
counts as a failed attempt and is retried by its policy).

Storage (:class:`RecordTypes`, used by ``CheckpointIO``): with ``JsonCodec`` a model
output is stored as ``model_dump(mode="json")`` and its record's ``extra`` says which
model (``"model": "shop.models:Order"``); on restore it is rebuilt **through the task's
own return annotation** — never through the class a record names, so an untrusted store
cannot choose a class for nbflow to instantiate (a record for a task without such an
annotation comes back as plain JSON data). With ``PickleCodec`` a model is pickled as it
is (cloudpickle: a model defined in a notebook survives a restart); on restore it is
re-validated through the annotation, which turns an instance of the class as it was
pickled into one of the class as the notebook defines it now.

Cost: nothing unless pydantic is imported — every check starts with ``"pydantic" in
sys.modules`` (no model annotation can exist without it), and pydantic itself is only
imported here once it is. A function's annotations are read once, when the builder adds
its step (:func:`prepare`, from ``check_call``), and cached; a task without model
annotations is called exactly as before, with the very objects it was given.

What is not converted: loop bodies' values (a loop returns ``LoopResult``), route keys,
items of the workflow input read by name (``--input key=...``), and annotations that are
strings nbflow cannot resolve (a model imported only under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import functools
import inspect
import reprlib
import sys
import threading
import types
import typing
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nbflow.core.errors import CodecError, TaskInputError, TaskOutputError
from nbflow.core.keys import INPUT_ID, parse_item_id

__all__ = ["MODEL_KEY", "FnTypes", "RecordTypes", "prepare", "record_types", "types_of"]

MODEL_KEY = "model"
"""The key of a record's ``extra`` that names the model its output was stored as."""

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60


def _loaded() -> bool:
    return "pydantic" in sys.modules


@dataclass(frozen=True)
class Typed:
    """One annotation that mentions a pydantic model, with its validator."""

    adapter: Any  # pydantic.TypeAdapter
    name: str  # for messages: "Order", "list[Order]"
    path: str  # stored in records: "shop.models:Order", "list[shop.models:Order]"

    def validate(self, value: Any, *, from_attributes: bool = True) -> Any:
        """The value as the annotation's type (a model instance already of that type
        comes back as itself); raises pydantic's ValidationError."""
        return self.adapter.validate_python(value, from_attributes=from_attributes)

    def dump(self, value: Any) -> Any:
        """JSON-able data of a value of the annotation's type (refuses any other value)."""
        return self.adapter.dump_python(value, mode="json", warnings="error")


@dataclass(frozen=True)
class FnTypes:
    """The model annotations of one function: its typed parameters and return type."""

    positional: Mapping[int, tuple[str, Typed]]  # position -> (parameter name, type)
    keyword: Mapping[str, Typed]  # parameter name -> type (those that can be passed by name)
    result: Typed | None

    def inputs(self, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """``args`` and ``kwargs`` with each typed argument validated and converted;
        raises ``TaskInputError``. Untyped arguments are passed on as they are."""
        new_args, new_kwargs = args, kwargs
        for index, (name, typed) in self.positional.items():
            if index < len(args):
                if new_args is args:
                    new_args = list(args)
                new_args[index] = _check_input(task_id, name, typed, args[index])
        for name, typed in self.keyword.items():
            if name in kwargs:
                if new_kwargs is kwargs:
                    new_kwargs = dict(kwargs)
                new_kwargs[name] = _check_input(task_id, name, typed, kwargs[name])
        return new_args, new_kwargs

    def output(self, task_id: str, value: Any) -> Any:
        """``value`` validated against the return annotation; raises ``TaskOutputError``."""
        if self.result is None:
            return value
        try:
            return self.result.validate(value)
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, reworded below
            field, bad, detail, more = _first_problem(exc, value)
            raise TaskOutputError(task_id, self.result.name, field, bad, detail, more) from None


def _check_input(task_id: str, param: str, typed: Typed, value: Any) -> Any:
    try:
        return typed.validate(value)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, reworded below
        field, bad, detail, more = _first_problem(exc, value)
        raise TaskInputError(task_id, param, typed.name, field, bad, detail, more) from None


def _first_problem(exc: Exception, value: Any) -> tuple[str, Any, str, int]:
    """(field path, offending value, what is wrong, how many more problems)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return "", value, f"{type(exc).__name__}: {exc}", 0
    try:
        found = errors()
    except Exception:  # noqa: BLE001 - an unusual error object: its text will do
        return "", value, str(exc), 0
    if not found:
        return "", value, str(exc), 0
    first = found[0]
    field = ".".join(str(part) for part in first.get("loc", ()))
    return field, first.get("input", value), str(first.get("msg", "")), len(found) - 1


# -- reading annotations (once per function) ----------------------------------------------
_cache: weakref.WeakKeyDictionary[Callable[..., Any], FnTypes | None] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def types_of(fn: Callable[..., Any]) -> FnTypes | None:
    """The model annotations of ``fn``, or None when it has none (always None while
    pydantic is not imported). Read once per function, then cached."""
    if not _loaded():
        return None
    try:
        return _cache[fn]
    except KeyError:
        pass
    except TypeError:  # not weak-referenceable or not hashable: read each time (rare)
        return _read(fn)
    found = _read(fn)
    with _cache_lock:
        try:
            _cache[fn] = found
        except TypeError:
            pass
    return found


def prepare(fn: Callable[..., Any]) -> None:
    """Read ``fn``'s annotations now (the builder calls this when it adds a step), so
    running the task only looks them up."""
    types_of(fn)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.ismethod(target):
        target = target.__func__
    if not (inspect.isfunction(target) or inspect.isbuiltin(target)):
        target = type(target).__call__  # a callable object: its __call__'s annotations
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable string annotations: use the real objects only
        raw = getattr(target, "__annotations__", None) or {}
        return {k: v for k, v in raw.items() if not isinstance(v, str)}


def _read(fn: Callable[..., Any]) -> FnTypes | None:
    if inspect.isclass(fn):  # a class called as a step: its annotations are its fields
        return None
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    hints = _hints(fn)
    if not hints:
        return None
    positional: dict[int, tuple[str, Typed]] = {}
    keyword: dict[str, Typed] = {}
    position = 0
    for param in signature.parameters.values():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        typed = _typed(hints.get(param.name))
        if param.kind in _POSITIONAL:
            if typed is not None:
                positional[position] = (param.name, typed)
            position += 1
        if typed is not None and param.kind != inspect.Parameter.POSITIONAL_ONLY:
            keyword[param.name] = typed
    result = _typed(hints.get("return"))
    if not positional and not keyword and result is None:
        return None
    return FnTypes(positional, keyword, result)


def _mentions_model(annotation: Any, base: type, depth: int = 0) -> bool:
    if depth > 10:
        return False
    if isinstance(annotation, type):
        try:
            return issubclass(annotation, base)
        except TypeError:
            return False
    return any(_mentions_model(arg, base, depth + 1) for arg in typing.get_args(annotation))


def _typed(annotation: Any) -> Typed | None:
    if annotation is None or annotation is type(None):
        return None
    import pydantic

    if not _mentions_model(annotation, pydantic.BaseModel):
        return None
    try:
        adapter = pydantic.TypeAdapter(annotation)
    except Exception:  # noqa: BLE001 - an annotation pydantic cannot validate: left alone
        return None
    return Typed(adapter, _spell(annotation, full=False), _spell(annotation, full=True))


def _spell(annotation: Any, *, full: bool) -> str:
    """``Order`` / ``shop.models:Order``; generics spelt with their arguments."""
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return f"{annotation.__module__}:{annotation.__qualname__}" if full else annotation.__qualname__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is None or not args:
        return repr(annotation)
    parts = [_spell(a, full=full) for a in args]
    if origin in (typing.Union, types.UnionType):
        return " | ".join(parts)
    return f"{getattr(origin, '__name__', repr(origin))}[{', '.join(parts)}]"


# -- storing and restoring typed values ---------------------------------------------------
class RecordTypes:
    """Which records of a workflow hold typed values, and how to store and rebuild them.

    Keyed by record id: a task's output (its return annotation), a map's items (the map
    function's return annotation), and the workflow input (the annotation of the
    parameters that receive the whole input, when they agree)."""

    def __init__(self, outputs: Mapping[str, Typed], items: Mapping[str, Typed], input_type: Typed | None) -> None:
        self.outputs, self.items, self.input_type = dict(outputs), dict(items), input_type

    def typed(self, record_id: str) -> Typed | None:
        """The annotation the value stored under ``record_id`` is validated against."""
        found = self.outputs.get(record_id)
        if found is not None:
            return found
        if record_id == INPUT_ID:
            return self.input_type
        item = parse_item_id(record_id)
        return self.items.get(item[0]) if item is not None else None

    def to_store(self, record_id: str, value: Any, codec: str, fields: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """What to encode for ``value`` and the record's fields: with the JSON codec a
        typed value becomes its JSON data, and ``extra`` names its model either way."""
        typed = self.typed(record_id)
        if typed is None:
            return value, fields
        is_input = record_id == INPUT_ID  # not validated: stored as data only if it is a model
        if codec == "json":
            try:
                value = typed.dump(value)
            except Exception as exc:  # noqa: BLE001 - pydantic's serialization error, reworded
                if is_input:
                    return value, fields
                detail = f"its {typed.name} cannot be dumped as JSON ({type(exc).__name__}: {exc})"
                raise CodecError(codec, record_id, detail) from None
        elif is_input:
            return value, fields
        extra = {**fields.get("extra", {}), MODEL_KEY: typed.path}
        return value, {**fields, "extra": extra}

    def from_store(self, record_id: str, stored_codec: str, value: Any) -> Any:
        """A decoded value rebuilt through the annotation of the task that wrote it
        (the class a record names is never looked up)."""
        typed = self.typed(record_id)
        if typed is None:
            return value
        try:
            return typed.validate(value, from_attributes=stored_codec != "json")
        except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError, reworded below
            if record_id == INPUT_ID:
                return value  # the tasks that take the input name the problem (TaskInputError)
            field, bad, detail, more = _first_problem(exc, value)
            task = parse_item_id(record_id)
            raise TaskOutputError(
                task[0] if task else record_id, typed.name, field, bad, detail, more, checkpoint=True
            ) from None


def record_types(wf: Any) -> RecordTypes | None:
    """The typed records of workflow ``wf`` (None if it has none: nothing to do)."""
    if not _loaded():
        return None
    outputs: dict[str, Typed] = {}
    items: dict[str, Typed] = {}
    inputs: dict[str, Typed] = {}
    for node in wf.nodes:
        if node.fn is None:
            continue
        found = types_of(node.fn)
        if found is None:
            continue
        if found.result is not None and node.kind == "task":
            outputs[node.id] = found.result
        elif found.result is not None and node.kind == "map":
            items[node.id] = found.result
        if node.kind not in ("task", "route"):
            continue
        for name, src in node.params:
            if src.task is not None or src.key is not None:
                continue
            typed = found.keyword.get(name) if node.mode == "kwargs" else None
            if node.mode == "value" and 0 in found.positional:
                typed = found.positional[0][1]
            if typed is not None:
                inputs[typed.path] = typed
    input_type = next(iter(inputs.values())) if len(inputs) == 1 else None
    if not outputs and not items and input_type is None:
        return None
    return RecordTypes(outputs, items, input_type)
