"""Stable fingerprints of task code and of workflow shapes.

A task's fingerprint decides whether its checkpoint is still valid after the user edits
code. It must be equal across processes and kernels for the same code, and differ when
the code really changed. Source text is a poor basis in a notebook (cell file names
change per kernel, several lambdas share a line), so we hash the *compiled* code:
bytecode, constants (nested code objects recursively, the docstring left out), names,
plus the values a function closes over, its defaults, and the code of helper functions
it calls — from its own module, and from the user's own modules (importable files
outside the standard library and site-packages), transitively up to
:data:`MAX_HELPER_DEPTH` calls deep and :data:`MAX_HELPERS` functions. ``pin=`` adds
the installed versions of named packages; ``version=`` on ``@task`` replaces the code.

:func:`explain` also says what went into a fingerprint, component by component
(``body``, ``defaults``, ``closure:NAME``, ``helper:NAME``, ``pin:PACKAGE``,
``version``), so a later process can tell *why* a checkpoint is stale, and diff the
source of the function that changed (:meth:`Breakdown.to_json` is what a checkpoint
record keeps).

Nothing here depends on ``PYTHONHASHSEED``, dict order of sets, or object ids.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import site
import sys
import sysconfig
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Breakdown", "breakdown_of", "explain", "fingerprint", "is_local_module", "stable_digest"]

_PRIMITIVES = (int, float, str, bytes, bool, type(None), complex)

MAX_HELPER_DEPTH = 3
"""Helpers of helpers are followed this many calls deep."""
MAX_HELPERS = 200
"""At most this many functions go into one task's fingerprint (the rest are left out)."""
MAX_SOURCE = 4000
"""Characters of one function's source a checkpoint keeps (for diffs)."""
MAX_SOURCES = 16000
"""Characters of source all of one task's functions keep together."""
MAX_VALUE = 120
"""Characters of a closure value's or pin's text kept to show what it was."""


def stable_digest(*parts: str) -> str:
    """A short hex digest of text parts (sha256, first 16 hex digits)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(eq=False)
class Breakdown:
    """What went into one fingerprint: a digest per component, and where to read it.

    ``parts`` maps components to short digests: ``body`` (the task's own code),
    ``defaults``, ``closure:NAME``, ``helper:NAME`` (a function it calls, with its own
    defaults and closure; its helpers are components of their own), ``pin:PACKAGE``
    (the installed version) or ``version`` (``@task(version=...)``). ``values`` holds a
    short text of closure values and pins; ``functions`` the function whose source
    explains a component (read lazily: :meth:`sources`).
    """

    digest: str
    parts: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    functions: dict[str, Callable[..., Any]] = field(default_factory=dict, repr=False)

    def sources(self, limit: int = MAX_SOURCES) -> dict[str, str]:
        """Component -> source text, for the components whose source can be read;
        each at most :data:`MAX_SOURCE` characters, together at most ``limit``."""
        out: dict[str, str] = {}
        left = limit
        for component in sorted(self.functions, key=lambda c: (c != "body", c)):
            text = source_of(self.functions[component])
            if text is None or left <= 0:
                continue
            if len(text) > MAX_SOURCE:
                text = text[:MAX_SOURCE] + "\n# ... (cut)\n"
            text = text[:left]
            left -= len(text)
            out[component] = text
        return out

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form a checkpoint record keeps in ``extra["fp"]``."""
        return {"v": 1, "parts": dict(self.parts), "values": dict(self.values), "src": self.sources()}


class _Collect:
    """Where :func:`_describe_callable` notes components while it describes."""

    def __init__(self) -> None:
        self.parts: dict[str, str] = {}
        self.values: dict[str, str] = {}
        self.functions: dict[str, Callable[..., Any]] = {}
        self.root_module: str | None = None  # helpers from other modules are named module.name


_REGISTRY: OrderedDict[str, Breakdown] = OrderedDict()
_REGISTRY_SIZE = 4096
_REGISTRY_LOCK = threading.Lock()


def fingerprint(fn: Callable[..., Any], version: str | None = None, pin: Iterable[str] = ()) -> str:
    """Fingerprint of a task callable; equal code gives an equal fingerprint.

    >>> fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 1)
    True
    >>> fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 2)
    False
    >>> fingerprint(lambda x: x, version="2") == fingerprint(lambda y: y * 9, version="2")
    True
    """
    return explain(fn, version, pin).digest


def explain(fn: Callable[..., Any], version: str | None = None, pin: Iterable[str] = ()) -> Breakdown:
    """The fingerprint of ``fn`` with what went into it (see :class:`Breakdown`).

    >>> def make(k):
    ...     def scale(x):
    ...         return x * k
    ...     return scale
    >>> sorted(explain(make(2)).parts)
    ['body', 'closure:k', 'defaults']
    >>> explain(make(2)).parts["closure:k"] == explain(make(3)).parts["closure:k"]
    False
    """
    pins = tuple(pin)
    collect = _Collect()
    if version is not None:
        collect.parts["version"] = stable_digest("version", version)
        collect.values["version"] = _short(repr(version))
        text = None
    else:
        text = _describe_callable(fn, set(), 0, collect, "")
    pin_text = []
    for name in pins:
        installed = _installed_version(name)
        collect.parts[f"pin:{name}"] = stable_digest("pin", name, installed)
        collect.values[f"pin:{name}"] = installed
        pin_text.append(f"pin:{name}={installed}")
    if text is None:
        digest = stable_digest("version", version or "", *pin_text) if pins else stable_digest("version", version or "")
    else:
        digest = stable_digest("code", "|".join([text, *pin_text]) if pins else text)
    breakdown = Breakdown(digest, collect.parts, collect.values, collect.functions)
    with _REGISTRY_LOCK:
        _REGISTRY[digest] = breakdown
        _REGISTRY.move_to_end(digest)
        while len(_REGISTRY) > _REGISTRY_SIZE:
            _REGISTRY.popitem(last=False)
    return breakdown


def breakdown_of(digest: str) -> Breakdown | None:
    """The breakdown of a fingerprint this process computed recently, else None."""
    with _REGISTRY_LOCK:
        return _REGISTRY.get(digest)


def _installed_version(name: str) -> str:
    import importlib.metadata  # only for pinned libraries: it costs ~30 ms at startup (email, ...)

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = sys.modules.get(name)
    if module is None:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not importable: pinned as absent
            return "not installed"
    return str(getattr(module, "__version__", "unknown version"))


def _short(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


# -- which modules are the user's own ------------------------------------------------------
_LOCAL: dict[str, bool] = {}


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths.get(key, "") for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # pragma: no cover - some embedded interpreters lack it
        pass
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else ""
    roots.add(user if isinstance(user, str) else "")
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # nbflow itself
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots if r))


_ROOTS: tuple[str, ...] | None = None


def is_local_module(name: str | None) -> bool:
    """True for a module the user wrote: an imported file outside the standard library,
    site-packages and nbflow (a ``utils.py`` beside the notebook, a project package).

    >>> is_local_module("json"), is_local_module("nbflow.core.keys"), is_local_module(None)
    (False, False, False)
    """
    global _ROOTS
    if not name or name == "__main__":
        return False
    found = _LOCAL.get(name)
    if found is not None:
        return found
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path:
        local = False
    else:
        if _ROOTS is None:
            _ROOTS = _library_roots()
        real = os.path.realpath(path)
        local = not any(real.startswith(root) for root in _ROOTS)
    _LOCAL[name] = local
    return local


# -- sources --------------------------------------------------------------------------------
_SOURCES: OrderedDict[int, tuple[Any, str | None]] = OrderedDict()
_SOURCES_LOCK = threading.Lock()


def source_of(fn: Callable[..., Any]) -> str | None:
    """The source text of ``fn`` (None where Python cannot find it), cached per function."""
    key = id(fn)
    with _SOURCES_LOCK:
        hit = _SOURCES.get(key)
        if hit is not None and hit[0] is fn:
            return hit[1]
    try:
        text: str | None = inspect.getsource(fn)
    except (OSError, TypeError, IndexError, SyntaxError):
        text = None
    with _SOURCES_LOCK:
        _SOURCES[key] = (fn, text)  # holds fn: an id is not reused while it is cached
        while len(_SOURCES) > _REGISTRY_SIZE:
            _SOURCES.popitem(last=False)
    return text


# -- describing code --------------------------------------------------------------------------
def _helper_refs(fn: Any, code: types.CodeType) -> list[tuple[str, Any]]:
    """(name, function) for the helpers ``fn`` calls: functions of its own module and of
    the user's modules, by global name (``helper``) or as a module attribute
    (``utils.helper``), sorted by name."""
    module = getattr(fn, "__module__", None)
    fn_globals = getattr(fn, "__globals__", {})
    names = _global_names(code)
    found: list[tuple[str, Any]] = []
    for name in sorted(names):
        ref = fn_globals.get(name)
        if isinstance(ref, types.FunctionType):
            if ref is not fn and (ref.__module__ == module or is_local_module(ref.__module__)):
                found.append((name, ref))
        elif isinstance(ref, types.ModuleType) and is_local_module(ref.__name__):
            attrs = vars(ref)
            for attr in sorted(names):
                value = attrs.get(attr)
                if isinstance(value, types.FunctionType) and value is not fn and is_local_module(value.__module__):
                    found.append((f"{name}.{attr}", value))
    return found


def _describe_callable(fn: Any, seen: set[int], depth: int, collect: _Collect | None = None, as_part: str = "") -> str:
    """The text a fingerprint hashes. With ``collect``, also notes components: the
    root's (``as_part == ""``) body, defaults and closure values, or, for a helper, one
    component ``as_part`` of its own code; its helpers become components of their own."""
    if isinstance(fn, types.MethodType):
        text = "method:" + _describe_callable(fn.__func__, seen, depth) + ":" + _value(fn.__self__, seen, depth)
        _note_whole(collect, as_part, text, fn)
        return text
    if hasattr(fn, "func") and hasattr(fn, "args") and hasattr(fn, "keywords"):  # functools.partial
        inner = _describe_callable(fn.func, seen, depth)
        text = f"partial:{inner}:{_value(fn.args, seen, depth)}:{_value(fn.keywords, seen, depth)}"
        _note_whole(collect, as_part, text, fn.func)
        return text
    code = getattr(fn, "__code__", None)
    if not isinstance(code, types.CodeType):
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - we want the method, not callable()
        if call is not None and hasattr(call, "__code__"):
            text = f"callable:{type(fn).__qualname__}:{_describe_callable(call, seen, depth)}"
            _note_whole(collect, as_part, text, call)
            return text
        text = f"opaque:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        _note_whole(collect, as_part, text, None)
        return text
    if id(fn) in seen:
        return f"recursive:{code.co_name}"
    seen.add(id(fn))
    body = _code(code, getattr(fn, "__doc__", None))
    defaults = "defaults:" + _value(getattr(fn, "__defaults__", None), seen, depth)
    kwdefaults = "kwdefaults:" + _value(getattr(fn, "__kwdefaults__", None), seen, depth)
    own = [body, defaults, kwdefaults]
    closure = getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars, closure, strict=False):
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell: the closure variable is not bound yet
            contents = "<unbound>"
        described = _value(contents, seen, depth)
        own.append(f"closure:{name}={described}")
        if collect is not None and not as_part:
            collect.parts[f"closure:{name}"] = stable_digest(described)
            collect.values[f"closure:{name}"] = _preview(contents)
    if collect is not None:
        if not as_part:
            collect.root_module = getattr(fn, "__module__", None)
        if as_part:
            collect.parts[as_part] = stable_digest(*own)
            collect.functions[as_part] = fn
        else:
            collect.parts["body"] = stable_digest(body)
            collect.parts["defaults"] = stable_digest(defaults, kwdefaults)
            collect.functions["body"] = fn
            shown = [_preview(v) for v in getattr(fn, "__defaults__", None) or ()]
            shown += [f"{k}={_preview(v)}" for k, v in sorted((getattr(fn, "__kwdefaults__", None) or {}).items())]
            if shown:
                collect.values["defaults"] = _short(", ".join(shown))
    parts = own
    # Helpers the task calls: editing one of them invalidates the task, which is what a
    # notebook user expects — whether it is in the notebook or in a utils.py beside it.
    if depth < MAX_HELPER_DEPTH:
        for name, ref in _helper_refs(fn, code):
            if len(seen) >= MAX_HELPERS:
                parts.append("helpers:truncated")
                break
            qualified = f"{ref.__module__}.{ref.__qualname__}"
            component = f"helper:{name}"
            if collect is not None and (ref.__module__ != collect.root_module or component in collect.parts):
                component = f"helper:{qualified}"
            parts.append(f"helper:{name}={_describe_callable(ref, seen, depth + 1, collect, component)}")
    return "|".join(parts)


def _note_whole(collect: _Collect | None, as_part: str, text: str, fn: Any) -> None:
    if collect is None:
        return
    component = as_part or "body"
    collect.parts[component] = stable_digest(text)
    if fn is not None and getattr(fn, "__code__", None) is not None:
        collect.functions[component] = fn


def _preview(value: Any) -> str:
    try:
        return _short(repr(value))
    except Exception:  # noqa: BLE001 - a broken __repr__ only loses the preview
        return f"<{type(value).__name__}>"


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
