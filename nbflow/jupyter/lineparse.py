"""Reading a magic's line: shell-like words, ``$var`` from the notebook, ``--input k=v``.

The rules, in one place and testable without IPython:

- Words split on spaces; ``"..."`` and ``'...'`` group (``--dir "my store"``).
- Every ``$name`` (or ``${name}``) in any word — ``--dir $store``, ``--instance
  run-$day``, a positional, a signal's payload — is replaced by that notebook
  variable's value; inside single quotes it is kept as typed, and ``$$`` is a literal
  ``$``. A ``$name`` that names no variable is refused with its name: it is never
  passed on as the text ``$name`` (papermill injects parameters as variables, so a
  typo would otherwise write to a folder called ``$store``).
- ``--input key=$var`` passes the variable's *object* (a DataFrame stays a DataFrame);
  any other ``--input key=value`` is a Python literal when it parses as one, else text.
- A command's raw tail (a signal's JSON payload) is not split into words; ``$payload``
  as the whole tail passes the variable's object.

:func:`magic_argv` uses the command table (:mod:`nbflow.commands`) to know which
options take a value and where a raw tail starts.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nbflow.commands import MAGIC, CommandLineError, command

__all__ = ["NOTHING", "Token", "expand", "magic_argv", "parse_inputs", "tail_value", "tokenize"]


class _Nothing:
    def __repr__(self) -> str:
        return "<NOTHING>"


NOTHING: Any = _Nothing()  # "no object": the tail is text
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_]\w*)\}|\$([A-Za-z_]\w*)")
_WHOLE = re.compile(r"^\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))$")
_INPUT_VAR = re.compile(r"^[A-Za-z_]\w*=\$(?:\{[A-Za-z_]\w*\}|[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class Token:
    """One word of a line: its segments (``kind`` "bare", "double" or "single", text)
    and where it is in the line."""

    segments: tuple[tuple[str, str], ...]
    start: int
    end: int

    @property
    def raw(self) -> str:
        quote = {"bare": "", "double": '"', "single": "'"}
        return "".join(f"{quote[k]}{t}{quote[k]}" for k, t in self.segments)

    @property
    def plain(self) -> str:
        """The word with its quotes removed and nothing expanded."""
        return "".join(t for _, t in self.segments)

    def text(self, namespace: Mapping[str, Any]) -> str:
        """The word with quotes removed and ``$var`` expanded (not inside '...')."""
        return "".join(t if k == "single" else expand(t, namespace, self.raw) for k, t in self.segments)


def tokenize(line: str) -> list[Token]:
    """Split ``line`` into words, keeping quotes and ``$`` for :meth:`Token.text`.

    >>> [t.plain for t in tokenize('status "my wf" --dir \\'a b\\' x')]
    ['status', 'my wf', '--dir', 'a b', 'x']
    """
    tokens: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        segments: list[tuple[str, str]] = []
        while i < n and not line[i].isspace():
            ch = line[i]
            if ch in "\"'":
                kind = "double" if ch == '"' else "single"
                j, buf = i + 1, []
                while j < n and line[j] != ch:
                    if ch == '"' and line[j] == "\\" and j + 1 < n and line[j + 1] in '"\\$':
                        buf.append(line[j + 1])
                        j += 2
                        continue
                    buf.append(line[j])
                    j += 1
                if j >= n:
                    raise CommandLineError(f"{line.strip()!r}: a {ch} quote is not closed")
                segments.append((kind, "".join(buf)))
                i = j + 1
            else:
                j = i
                while j < n and not line[j].isspace() and line[j] not in "\"'":
                    j += 1
                segments.append(("bare", line[i:j]))
                i = j
        tokens.append(Token(tuple(segments), start, i))
    return tokens


def _lookup(name: str, namespace: Mapping[str, Any], where: str) -> Any:
    if name not in namespace:
        raise CommandLineError(
            f"{where}: there is no variable {name!r} in the notebook; define it first (or write $$ for a literal $)"
        )
    return namespace[name]


def expand(text: str, namespace: Mapping[str, Any], where: str = "") -> str:
    """``text`` with every ``$name`` / ``${name}`` replaced by ``str()`` of the variable.

    >>> expand("run-$day/${n}x $$5", {"day": "mon", "n": 2})
    'run-mon/2x $5'
    """

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return str(_lookup(m.group(1) or m.group(2), namespace, where or text))

    return _VAR.sub(sub, text)


def tail_value(tail: str, namespace: Mapping[str, Any]) -> tuple[Any, str]:
    """A raw tail: (the variable's object, "") when it is just ``$name``, else
    (NOTHING, the tail with ``$var`` expanded)."""
    m = _WHOLE.match(tail.strip())
    if m:
        return _lookup(m.group(1) or m.group(2), namespace, tail.strip()), ""
    return NOTHING, expand(tail, namespace, tail.strip())


def magic_argv(line: str, namespace: Mapping[str, Any]) -> tuple[list[str], Any]:
    """A ``%workflow`` line -> (argv for the table's parser, the tail's object or NOTHING).

    Words are expanded (see the module docstring), except ``--input key=$var`` words,
    which :func:`parse_inputs` resolves to the variable's object. For a command whose
    last argument is a raw tail (``signal``'s payload), the line from that argument on
    is one argv item, not split (expanded; "" when it is just ``$var``, whose object is
    returned instead), placed right after the positionals before it.

    >>> magic_argv('signal etl --dir s go {"ok": true}', {})
    (['signal', 'etl', '--dir', 's', 'go', '{"ok": true}'], <NOTHING>)
    """
    tokens = tokenize_prefix(line)
    argv: list[str] = []
    cmd = command(tokens[0].plain) if tokens else None
    args = cmd.args_for(MAGIC) if cmd is not None else ()
    valued = {a.name for a in args if not a.positional and not a.flag} | {"--input", "-i"}
    known = {a.name for a in args if not a.positional}
    positionals = [a for a in args if a.positional]
    rest_at = next((i for i, a in enumerate(positionals) if a.rest), None)
    seen_positionals = 0
    i = 0
    tail: str | None = None
    tail_at = 0
    while i < len(tokens):
        token = tokens[i]
        word = token.plain
        if i and rest_at is not None and seen_positionals == rest_at and word.split("=", 1)[0] not in known:
            tail = line[token.start :].strip()
            break
        argv.append(token.text(namespace) if i else word)
        if i and word.split("=", 1)[0] in valued and "=" not in word and i + 1 < len(tokens):
            value = tokens[i + 1]
            keep_raw = word in ("--input", "-i") and _INPUT_VAR.match(value.raw) is not None
            argv.append(value.raw if keep_raw else value.text(namespace))
            i += 2
            continue
        if i and not word.startswith("-"):
            seen_positionals += 1
            if seen_positionals == rest_at:
                tail_at = len(argv)
        i += 1
    if tail is None:
        return argv, NOTHING
    obj, text = tail_value(tail, namespace)
    argv.insert(tail_at, text)
    return argv, obj


def tokenize_prefix(line: str) -> list[Token]:
    """:func:`tokenize`, tolerant of a raw tail it cannot split (an unbalanced quote
    in a JSON payload): words up to the first one that does not parse."""
    try:
        return tokenize(line)
    except CommandLineError:
        out: list[Token] = []
        pos = 0
        while True:
            try:
                word = tokenize(line[pos:])[:1]
            except CommandLineError:
                return out
            if not word:
                return out
            t = word[0]
            out.append(Token(t.segments, t.start + pos, t.end + pos))
            pos += t.end


def cell_argv(line: str, namespace: Mapping[str, Any]) -> list[str]:
    """A ``%%workflow`` line -> argv, expanded like :func:`magic_argv` (no tail)."""
    tokens = tokenize(line)
    argv: list[str] = []
    i = 0
    while i < len(tokens):
        word = tokens[i].plain
        if word in ("--input", "-i") and i + 1 < len(tokens):
            value = tokens[i + 1]
            argv += [word, value.raw if _INPUT_VAR.match(value.raw) else value.text(namespace)]
            i += 2
            continue
        if word.startswith("--input=") and _INPUT_VAR.match(word[len("--input=") :]):
            argv.append(word)
        else:
            argv.append(tokens[i].text(namespace))
        i += 1
    return argv


def parse_inputs(items: list[str], namespace: Mapping[str, Any]) -> dict[str, Any]:
    """``["path=data.csv", "n=3", "rows=$rows"]`` -> ``{"path": "data.csv", "n": 3, "rows": <rows>}``.

    A value is a Python literal when it parses as one, else a string; ``$name`` is the
    value of ``name`` in the notebook's namespace (the object itself).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CommandLineError(
                f"--input {item!r}: expected KEY=VALUE, e.g. --input path=data.csv or --input rows=$rows"
            )
        if key in out:
            raise CommandLineError(f"--input {key!r} is given twice")
        whole = _WHOLE.match(raw)
        if whole:
            out[key] = _lookup(whole.group(1) or whole.group(2), namespace, f"--input {key}={raw}")
        elif raw.startswith("$") and not raw.startswith("$$"):
            raise CommandLineError(f"--input {item!r}: after '$' put a variable name, e.g. --input {key}=$my_{key}")
        else:
            try:
                out[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                out[key] = raw
    return out
