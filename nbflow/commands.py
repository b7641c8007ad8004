"""The one table of commands that ``%workflow`` (in a notebook) and ``nbflow`` (in a
shell) offer: their names, arguments and help, and how each front end words a command.

Both front ends build their parsers from :data:`COMMANDS` with :func:`build_parser`,
so a command or an argument cannot exist in one and be missing (or spelt differently)
in the other; ``tests/test_commands.py`` compares the two parsers. An argument or a
command may be marked for one front end only (``front_ends``): the magic's
``--background`` and ``--no-widget``, the shell's ``worker``. ``%workflow`` is a thin
adapter over this table (``nbflow.jupyter.magics``), and so is ``nbflow.cli``.

Advice in messages is written once and worded per front end: :func:`hint` renders a
command as ``%workflow resume sales`` or ``nbflow resume sales``, and
:func:`render_error` swaps the Python calls an error names (``NbflowError.advice``) for
the front end's own command.

No IPython here: the shell command imports this module too.
"""

from __future__ import annotations

import argparse
import shlex
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from nbflow.core.errors import NbflowError

__all__ = [
    "CELL_ARGS",
    "CLI",
    "COMMANDS",
    "MAGIC",
    "Arg",
    "Command",
    "DIR_ALIASES",
    "CommandLineError",
    "ParserExit",
    "build_cell_parser",
    "build_parser",
    "subcommand_parsers",
    "command",
    "hint",
    "render_error",
    "usage",
]

MAGIC, CLI = "magic", "cli"
BOTH = frozenset({MAGIC, CLI})
DEFAULT_DIR = ".nbflow"


class CommandLineError(NbflowError):
    """A command line that does not parse (an unknown command or option, a missing
    argument), or a ``$var`` that names no variable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class ParserExit(Exception):  # noqa: N818 - mirrors argparse's own exit, not an error
    """``-h`` in the magic: the help was printed, nothing else is to be done."""


@dataclass(frozen=True)
class Arg:
    """One argument of a command: a positional (``ref``) or an option (``--dir``)."""

    name: str
    help: str
    metavar: str | None = None
    flag: bool = False  # an option without a value
    optional: bool = False  # a positional that may be left out
    default: Any = None
    rest: bool = False  # the magic passes the rest of its line as is (a JSON payload)
    type: Callable[[str], Any] | None = None
    required_in: frozenset[str] = frozenset()  # front ends where an option must be given
    front_ends: frozenset[str] = BOTH

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Command:
    """One command: its name, a one-line summary and its arguments."""

    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    front_ends: frozenset[str] = BOTH
    takes_ref: bool = field(default=False, compare=False)

    def args_for(self, front_end: str) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if front_end in a.front_ends)


_REF = Arg("ref", "a workflow name (its most recent instance, if it has only one) or an instance id", "NAME|ID")
_TASK = Arg("task", "a task id of the workflow", "TASK")
_DIR = Arg(
    "--dir",
    f"the store: a folder (default ./{DEFAULT_DIR}; in a notebook, the cell's --dir) or a PostgreSQL address "
    "postgresql://user@host/database (also spelt --store, or --dsn)",
    "PATH|URL",
)
# Other spellings of --dir: a database store is an address, not a folder.
DIR_ALIASES = ("--store", "--dsn")
_LATEST = Arg("--latest", "a NAME with several instances means its most recently updated one", flag=True)
_MODULE = Arg(
    "--module",
    "module name or .py file defining the workflow (in a notebook: not needed once its %%workflow cell ran)",
    "MODULE",
)
_REASON = Arg("--reason", "why (stored with the instance)", "TEXT", default="")
_BACKGROUND = Arg("--background", "return at once; the widget keeps updating", flag=True, front_ends=frozenset({MAGIC}))
_NO_WIDGET = Arg("--no-widget", "print text instead of showing the widget", flag=True, front_ends=frozenset({MAGIC}))


def _ref_command(name: str, summary: str, *args: Arg, front_ends: frozenset[str] = BOTH) -> Command:
    return Command(name, summary, (_REF, *args, _DIR, _LATEST), front_ends, takes_ref=True)


COMMANDS: tuple[Command, ...] = (
    Command(
        "list",
        "stored instances, newest first",
        (
            Arg("--workflow", "only instances of this workflow", "NAME"),
            Arg("--state", "only instances in this state (running, interrupted, completed, failed, ...)", "STATE"),
            _DIR,
        ),
    ),
    _ref_command("status", "every task: state, attempts, duration, finished time, output; why stale", _MODULE),
    _ref_command("show", "what a resume would do, and why each stale task is stale", _MODULE, _NO_WIDGET),
    _ref_command("result", "a task's checkpointed output (the cell's value; printed by the shell)", _TASK),
    _ref_command(
        "resume",
        "continue an instance: finished tasks are restored, the rest run",
        Arg(_MODULE.name, _MODULE.help, _MODULE.metavar, required_in=frozenset({CLI})),
        Arg(
            "--revive",
            "run a cancelled instance again (a plain resume leaves it cancelled; a paused one needs unpause)",
            flag=True,
        ),
        _BACKGROUND,
        _NO_WIDGET,
    ),
    _ref_command(
        "accept",
        "keep a task's checkpoint valid for its current code (after a cosmetic edit)",
        _TASK,
        Arg(_MODULE.name, _MODULE.help, _MODULE.metavar, required_in=frozenset({CLI})),
    ),
    _ref_command("cancel", "stop a running instance (finished tasks are kept)", _REASON),
    _ref_command("pause", "stop after the running tasks finish", _REASON),
    _ref_command("unpause", "lift a pause (then resume)"),
    _ref_command(
        "signal",
        "send a signal (buffered until the workflow waits for it)",
        Arg("signal", "the signal's name", "SIGNAL"),
        Arg("payload", "its JSON payload (default null)", "JSON", optional=True, default="null", rest=True),
    ),
    _ref_command("clear", "delete an instance and all its checkpoints"),
    Command(
        "worker",
        "run a PooledWorker on the store until Ctrl-C / SIGTERM",
        (
            Arg("--module", "module name or .py file defining the workflows", "MODULE", required_in=frozenset({CLI})),
            Arg("--id", "worker name (default host:pid)", "NAME"),
            Arg("--concurrency", "units run at once (default 1)", "N", default=1, type=int),
            Arg("--claim-ttl", "claim lifetime without heartbeat (default 5m)", "DURATION", default="5m"),
            Arg("--heartbeat", "claim renewal interval (default 30s)", "DURATION", default="30s"),
            Arg("--poll-interval", "look for work this often when idle (default 1s)", "DURATION", default="1s"),
            Arg("--until-idle", "exit once no instance is pending or running", flag=True),
            _DIR,
        ),
        front_ends=frozenset({CLI}),
    ),
    Command(
        "migrate",
        "convert instances written by nbflow 0.1 to the current record format (reads their pickles: trusted stores only)",
        (_DIR,),
        front_ends=frozenset({CLI}),
    ),
    Command("help", "this list, or one command's arguments", (Arg("topic", "a command", "COMMAND", optional=True),)),
)

_BY_NAME = {c.name: c for c in COMMANDS}

#: The ``%%workflow NAME`` cell magic's arguments (a notebook-only front end; same table).
CELL_ARGS: tuple[Arg, ...] = (
    Arg("name", "workflow name; the built workflow is bound to it in the namespace", "NAME"),
    Arg(
        "--input",
        "a workflow input KEY=VALUE: a Python literal (else a string), or $var for a notebook variable; repeatable",
        "KEY=VALUE",
    ),
    Arg("--no-run", "build and show the workflow without running it", flag=True),
    Arg("--fresh", "discard the stored instance and start over", flag=True),
    Arg("--instance", "instance id (default: NAME plus a digest of the inputs)", "ID"),
    Arg("--background", "return at once; the widget keeps updating", flag=True),
    Arg("--no-widget", "do not display the live widget", flag=True),
    _DIR,
    Arg(
        "--on-change",
        "a task whose code changed: re-run it and its descendants (default), or refuse",
        "rerun|fail",
        default="rerun",
    ),
)


def command(name: str) -> Command | None:
    """The command called ``name``, or None."""
    return _BY_NAME.get(name)


def commands_for(front_end: str) -> tuple[Command, ...]:
    return tuple(c for c in COMMANDS if front_end in c.front_ends)


# -- parsers ----------------------------------------------------------------------------------
class _RaisingParser(argparse.ArgumentParser):
    """For the magic: a bad line raises CommandLineError instead of exiting the kernel."""

    def error(self, message: str) -> NoReturn:
        raise CommandLineError(f"{self.prog}: {message}. {hint(MAGIC, 'help')} lists the commands")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise CommandLineError(message or f"{self.prog}: error")
        raise ParserExit()


def _add(parser: argparse.ArgumentParser, arg: Arg, front_end: str, *, sub: bool) -> argparse.Action:
    if arg.positional:
        kwargs: dict[str, Any] = {"help": arg.help, "metavar": arg.metavar}
        if arg.optional:
            kwargs.update(nargs="?", default=arg.default)
        return parser.add_argument(arg.name, **kwargs)
    if arg.flag:
        return parser.add_argument(arg.name, action="store_true", help=arg.help)
    default = arg.default
    names: tuple[str, ...] = (arg.name,)
    if arg.name == "--dir":
        names += DIR_ALIASES
        if sub and front_end == CLI:
            default = argparse.SUPPRESS  # `nbflow --dir D status X` and `nbflow status X --dir D` both work
    kwargs = {"type": arg.type} if arg.type is not None else {}
    return parser.add_argument(
        *names, metavar=arg.metavar, help=arg.help, default=default, required=front_end in arg.required_in, **kwargs
    )


# What each parser built here holds, recorded from argparse's own return values as it is
# built: argparse has no public way to list a parser's subcommands or their arguments.
_BUILT: weakref.WeakKeyDictionary[argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, tuple[str, ...]]]]
_BUILT = weakref.WeakKeyDictionary()


def _name_of(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """{command: its own parser} of a parser made by :func:`build_parser` (for ``help``)."""
    return {name: sub for name, (sub, _) in _BUILT.get(parser, {}).items()}


def build_parser(front_end: str) -> argparse.ArgumentParser:
    """The argparse parser of ``%workflow`` (``MAGIC``) or ``nbflow`` (``CLI``), made
    from :data:`COMMANDS`. The magic's raises :class:`CommandLineError`; the shell's
    exits with status 2 and a usage line, like any command."""
    if front_end == MAGIC:
        parser: argparse.ArgumentParser = _RaisingParser(
            prog="%workflow", description="Steer durable workflows from a notebook.", add_help=False
        )
    else:
        parser = argparse.ArgumentParser(prog="nbflow", description="Inspect and steer nbflow instances in a store.")
        parser.add_argument("--dir", *DIR_ALIASES, default=DEFAULT_DIR, metavar=_DIR.metavar, help=_DIR.help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in commands_for(front_end):
        kwargs: dict[str, Any] = {"help": cmd.summary, "description": cmd.summary}
        if front_end == MAGIC:
            kwargs["prog"] = f"%workflow {cmd.name}"
        p = sub.add_parser(cmd.name, **kwargs)
        added = tuple(_name_of(_add(p, arg, front_end, sub=True)) for arg in cmd.args_for(front_end))
        _BUILT.setdefault(parser, {})[cmd.name] = (p, added)
    return parser


def build_cell_parser() -> argparse.ArgumentParser:
    """The parser of the ``%%workflow`` line (:data:`CELL_ARGS`)."""
    parser = _RaisingParser(prog="%%workflow", description="Run a cell of functions as a durable workflow.")
    for arg in CELL_ARGS:
        if arg.name == "--input":
            parser.add_argument("--input", "-i", action="append", default=[], metavar=arg.metavar, help=arg.help)
        elif arg.name == "--on-change":
            parser.add_argument(arg.name, choices=("rerun", "fail"), default="rerun", help=arg.help)
        else:
            _add(parser, arg, MAGIC, sub=False)
    return parser


def usage(front_end: str) -> str:
    """The command list, one line each, worded for ``front_end``."""
    lines = []
    rows = []
    for cmd in commands_for(front_end):
        words = [cmd.name]
        for arg in cmd.args_for(front_end):
            if arg.positional:
                words.append(f"[{arg.metavar}]" if arg.optional else str(arg.metavar))
        rows.append((" ".join(words), cmd.summary))
    width = max(len(r[0]) for r in rows)
    head = "%workflow" if front_end == MAGIC else "nbflow"
    for left, summary in rows:
        lines.append(f"{head} {left.ljust(width)}  {summary}")
    lines.append(
        "NAME is a workflow name (in a notebook: the one its %%workflow cell defined) or an instance id; "
        "an instance id wins."
    )
    lines.append(
        f"Every command takes --dir PATH (default ./{DEFAULT_DIR}) or --dir postgresql://… (a shared store); "
        f"'{head} help COMMAND' shows its options."
    )
    return "\n".join(lines)


# -- wording ------------------------------------------------------------------------------------
def hint(front_end: str, name: str, *args: str, directory: str | None = None) -> str:
    """How ``front_end`` spells a command: ``%workflow resume sales`` in a notebook,
    ```nbflow resume sales``` in a shell (``directory``: a non-default store).

    >>> hint(MAGIC, "resume", "sales"), hint(CLI, "resume", "sales", directory="/tmp/s")
    ('%workflow resume sales', '`nbflow --dir /tmp/s resume sales`')
    """
    words = " ".join(shlex.quote(str(a)) for a in (name, *args))
    if front_end == MAGIC:
        return f"%workflow {words}" + (f" --dir {shlex.quote(directory)}" if directory else "")
    store = f" --dir {shlex.quote(directory)}" if directory else ""
    return f"`nbflow{store} {words}`"


def render_error(exc: BaseException, front_end: str, directory: str | None = None) -> str:
    """The message of ``exc`` with the Python calls it advises replaced by ``front_end``'s
    commands (``NbflowError.advice``); other errors as they are."""
    text = str(exc)
    advice = getattr(exc, "advice", None) or {}
    for phrase, cmd in advice.items():
        if cmd is None:
            replacement = ""
        elif cmd[0].startswith("-"):
            replacement = " ".join(cmd)
        else:
            replacement = hint(front_end, *cmd, directory=directory)
        text = text.replace(phrase, replacement)
    return text


def names_and_args(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    """{command: its argument names} as argparse registered them on a parser made by
    :func:`build_parser` (what the golden test compares with the table)."""
    return {name: names for name, (_, names) in _BUILT.get(parser, {}).items()}
