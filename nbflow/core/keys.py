"""Record ids: the one place that says how nbflow names what it stores.

An instance's records are keyed by id. A user's task stores its output under its own
task id; nbflow stores more under ids it derives from those:

- ``__input__``: the workflow input (:data:`INPUT_ID`);
- ``m[3]``: item 3 of map ``m``; ``m[0:64]``: a chunk of its items (a pooled worker's unit);
- ``newton#2``: iteration 2 of loop ``newton``; ``nap#wake``: the stored deadline of a wait;
- ``train#state``: the state a running task saved with ``ctx.checkpoint`` (also ``m[3]#state``);
- ``plot#display``: what a finished task displayed (figures, ``display(...)``), stored with it;
- ``child/load``: task ``load`` of a child workflow composed with ``then_flow``.

Those forms stay unambiguous only if no task id can take them, so user task ids (and
workflow names, which become child prefixes) follow one rule, checked by
:func:`check_task_id`: letters, digits, ``_``, ``-``, ``.`` and spaces, at most 100
characters, not starting with ``__``. A task named ``m[0]`` next to a map ``m`` would
otherwise overwrite that map's first item, and one named ``__input__`` the stored input.

Build ids only with these functions; never by hand. This module is pure Python and
imports nothing, so every layer (core, store, run, jupyter) can use it.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "ALLOWED_CHARACTERS",
    "ID_RULE",
    "INPUT_ID",
    "MAX_ID_LENGTH",
    "RESERVED_PREFIX",
    "DISPLAY_SUFFIX",
    "STATE_SUFFIX",
    "check_task_id",
    "child_id",
    "child_prefix",
    "chunk_id",
    "item_id",
    "iteration_id",
    "parse_item_id",
    "parse_iteration_id",
    "display_id",
    "parse_display_id",
    "parse_state_id",
    "state_id",
    "wait_id",
]

INPUT_ID = "__input__"
"""The id the workflow input is stored under, like a task output."""

RESERVED_PREFIX = "__"
"""Ids starting with this are nbflow's own (``__input__`` and whatever comes next)."""

MAX_ID_LENGTH = 100

ALLOWED_CHARACTERS = "letters, digits, '_', '-', '.' and spaces"
"""The characters a task id or workflow name may use, worded for error messages."""

ID_RULE = f"{ALLOWED_CHARACTERS}, at most {MAX_ID_LENGTH} characters, not starting with {RESERVED_PREFIX!r}"
"""The whole rule, worded for error messages."""

# What each reserved character is for, so a refusal can say why and not just "no".
_RESERVED = {
    "[": "map items ('m[0]') and chunks ('m[0:10]')",
    "]": "map items ('m[0]') and chunks ('m[0:10]')",
    "/": "the tasks of child workflows ('child/task')",
    "#": "loop iterations and waits ('loop#2')",
    ":": "idempotency keys ('workflow:instance:task')",
    "\\": "escapes and Windows paths",
}

_PLAIN = re.compile(r"[A-Za-z0-9_.\- ]+")  # the common case, checked without a loop
_ITEM = re.compile(r"(.+)\[(0|[1-9][0-9]*)\]")
_ITERATION = re.compile(r"(.+)#([1-9][0-9]*)")


def item_id(map_id: str, index: int) -> str:
    """The record id of item ``index`` of map ``map_id``.

    >>> item_id("square", 3)
    'square[3]'
    """
    return f"{map_id}[{index}]"


def chunk_id(map_id: str, start: int, stop: int) -> str:
    """The id of items ``start`` to ``stop - 1`` of map ``map_id`` taken as one unit.

    >>> chunk_id("square", 0, 64)
    'square[0:64]'
    """
    return f"{map_id}[{start}:{stop}]"


def parse_item_id(record_id: str) -> tuple[str, int] | None:
    """``(map_id, index)`` if ``record_id`` names a map item, else None.

    Chunks, iterations and plain task ids are not items.

    >>> parse_item_id("square[3]"), parse_item_id("child/square[10]")
    (('square', 3), ('child/square', 10))
    >>> parse_item_id("square"), parse_item_id("square[0:64]"), parse_item_id("square[03]")
    (None, None, None)
    """
    if not record_id.endswith("]"):  # the hot path: most ids are plain
        return None
    m = _ITEM.fullmatch(record_id)
    return (m.group(1), int(m.group(2))) if m is not None else None


def iteration_id(loop_id: str, iteration: int) -> str:
    """The record id of iteration ``iteration`` (from 1) of loop ``loop_id``.

    >>> iteration_id("newton", 2)
    'newton#2'
    """
    return f"{loop_id}#{iteration}"


def parse_iteration_id(record_id: str) -> tuple[str, int] | None:
    """``(loop_id, iteration)`` if ``record_id`` names a loop iteration, else None.

    >>> parse_iteration_id("newton#2"), parse_iteration_id("nap#wake"), parse_iteration_id("newton")
    (('newton', 2), None, None)
    """
    m = _ITERATION.fullmatch(record_id) if "#" in record_id else None
    return (m.group(1), int(m.group(2))) if m is not None else None


def wait_id(step_id: str, what: str) -> str:
    """The id of the stored deadline of a wait (``what`` is "wake" or "deadline").

    >>> wait_id("nap", "wake")
    'nap#wake'
    """
    return f"{step_id}#{what}"


STATE_SUFFIX = "#state"


def state_id(task_id: str) -> str:
    """The record id of the state task ``task_id`` saved with ``ctx.checkpoint(state)``.

    ``#`` cannot appear in a task id, and a loop iteration ends in digits, so this id
    never names a task, an item, an iteration or a wait.

    >>> state_id("train"), state_id("square[3]"), state_id("newton#2")
    ('train#state', 'square[3]#state', 'newton#2#state')
    """
    return task_id + STATE_SUFFIX


def parse_state_id(record_id: str) -> str | None:
    """The task (or item, or iteration) id a state record belongs to, else None.

    >>> parse_state_id("train#state"), parse_state_id("newton#2#state"), parse_state_id("nap#wake")
    ('train', 'newton#2', None)
    """
    if record_id.endswith(STATE_SUFFIX) and len(record_id) > len(STATE_SUFFIX):
        return record_id[: -len(STATE_SUFFIX)]
    return None


DISPLAY_SUFFIX = "#display"


def display_id(task_id: str) -> str:
    """The record id of what task ``task_id`` displayed (its captured mimebundles),
    stored in the same transaction as its output.

    ``#`` cannot appear in a task id, and a loop iteration ends in digits, so this id
    never names a task, an item, an iteration, a wait or a state.

    >>> display_id("plot"), display_id("square[3]"), display_id("newton#2")
    ('plot#display', 'square[3]#display', 'newton#2#display')
    """
    return task_id + DISPLAY_SUFFIX


def parse_display_id(record_id: str) -> str | None:
    """The task (or item, or iteration) id a display record belongs to, else None.

    >>> parse_display_id("plot#display"), parse_display_id("plot#state"), parse_display_id("plot")
    ('plot', None, None)
    """
    if record_id.endswith(DISPLAY_SUFFIX) and len(record_id) > len(DISPLAY_SUFFIX):
        return record_id[: -len(DISPLAY_SUFFIX)]
    return None


def child_prefix(child_name: str) -> str:
    """What every id of child workflow ``child_name`` starts with once composed.

    >>> child_prefix("clean")
    'clean/'
    """
    return child_name + "/"


def child_id(child_name: str, task_id: str) -> str:
    """The id task ``task_id`` of child workflow ``child_name`` gets in its parent.

    >>> child_id("clean", "dedupe")
    'clean/dedupe'
    """
    return child_prefix(child_name) + task_id


def check_task_id(task_id: object) -> str | None:
    """Why ``task_id`` cannot be a task id or workflow name, or None if it can.

    Letters and digits are meant as in Python names (any script), so every function
    name is a valid id and a ``%%workflow`` cell's tasks always pass.

    >>> check_task_id("load"), check_task_id("step 1.b-2"), check_task_id("données")
    (None, None, None)
    >>> check_task_id("m[0]")
    "it contains '[', which nbflow reserves for map items ('m[0]') and chunks ('m[0:10]')"
    >>> check_task_id("__input__")
    "it starts with '__', which nbflow reserves for its own records (like '__input__')"
    """
    if not isinstance(task_id, str):
        return f"it is of type {type(task_id).__name__}, not a string"
    if not task_id.strip():
        return "it is empty"
    if len(task_id) > MAX_ID_LENGTH:
        return f"it has {len(task_id)} characters (at most {MAX_ID_LENGTH})"
    if task_id.startswith(RESERVED_PREFIX):
        return f"it starts with {RESERVED_PREFIX!r}, which nbflow reserves for its own records (like {INPUT_ID!r})"
    if _PLAIN.fullmatch(task_id):
        return None
    for ch in task_id:
        if ch in _RESERVED:
            return f"it contains {ch!r}, which nbflow reserves for {_RESERVED[ch]}"
        if unicodedata.category(ch).startswith("C"):
            return f"it contains the control (or invisible) character U+{ord(ch):04X}"
        if ch not in "-. " and not ("_" + ch).isidentifier():
            return f"it contains {ch!r}, which is not allowed"
    return None
