"""Parsing the magics' arguments: ``--input k=v`` values and ``%workflow`` lines.

Kept apart from the magics so the rules (Python literals, ``$var`` from the notebook,
a raw JSON tail for signals) are readable and testable on their own.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError

__all__ = ["USAGE", "parse_inputs", "split_line"]

USAGE = """\
%workflow list                      instances in the store(s) used by this kernel
%workflow status NAME               state of a workflow (or instance id) and its tasks
%workflow resume NAME               continue an instance (--background, --no-widget)
%workflow cancel NAME               stop a running instance (finished tasks are kept)
%workflow pause NAME                stop after the running tasks finish
%workflow unpause NAME              lift a pause (then resume)
%workflow signal NAME SIGNAL JSON   send a signal with a JSON payload
%workflow show NAME                 show the widget (or text) with what a resume would do
%workflow clear NAME                delete an instance and its checkpoints
NAME is a workflow defined by a %%workflow cell in this kernel, or a stored instance id.
Every command takes --dir PATH (default: the cell's --dir, else ./.nbflow)."""


def parse_inputs(items: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """``["path=data.csv", "n=3", "rows=$rows"]`` -> ``{"path": "data.csv", "n": 3, "rows": <rows>}``.

    A value is a Python literal when it parses as one, else a string; ``$name`` is the
    value of ``name`` in the notebook's namespace.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"--input {item!r}: expected KEY=VALUE, e.g. --input path=data.csv or --input rows=$rows")
        if key in out:
            raise UsageError(f"--input {key!r} is given twice")
        if raw.startswith("$"):
            var = raw[1:]
            if not var.isidentifier():
                raise UsageError(f"--input {item!r}: after '$' put a variable name, e.g. --input {key}=$my_{key}")
            if var not in namespace:
                raise UsageError(f"--input {key}=${var}: there is no variable {var!r} in the notebook; define it first")
            out[key] = namespace[var]
        else:
            try:
                out[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                out[key] = raw
    return out


_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|\S+)""")


def split_line(line: str, n_positional: Callable[[str], int]) -> tuple[list[str], dict[str, Any], str]:
    """Split a line-magic line into positionals and flags, leaving the rest raw.

    Flags (``--dir PATH``, ``--no-widget``, ``--background``) may appear anywhere
    before the raw tail; the tail (a signal's JSON payload) is not tokenized.
    """
    pos: list[str] = []
    opts: dict[str, Any] = {"dir": None, "no_widget": False, "background": False}
    rest = line
    while True:
        m = _TOKEN.match(rest)
        if m is None:
            break
        token = m.group(1)
        want = n_positional(pos[0]) + 1 if pos else 1
        if len(pos) >= want and not token.startswith("--"):
            break  # the raw tail (a signal's payload)
        if token[:1] in "\"'" and token[-1:] == token[:1] and len(token) >= 2:
            token = token[1:-1]
        rest = rest[m.end() :]
        if token in ("--dir", "-d") or token.startswith("--dir="):
            if "=" in token:
                opts["dir"] = token.split("=", 1)[1]
            else:
                m = _TOKEN.match(rest)
                if m is None:
                    raise UsageError("--dir needs a folder, e.g. --dir .nbflow")
                value = m.group(1)
                opts["dir"] = value[1:-1] if value[:1] in "\"'" else value
                rest = rest[m.end() :]
        elif token == "--no-widget":
            opts["no_widget"] = True
        elif token == "--background":
            opts["background"] = True
        elif token.startswith("--"):
            raise UsageError(f"unknown option {token!r}.\n{USAGE}")
        else:
            pos.append(token)
    return pos, opts, rest.strip()
