"""One command table for ``%workflow`` and ``nbflow``: the two front ends' parsers are
compared with each other and with the table, and advice is worded per front end."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nbflow as nf
from nbflow.cli import _parser as cli_parser
from nbflow.commands import CLI, COMMANDS, MAGIC, CommandLineError, hint, names_and_args, render_error, usage
from nbflow.jupyter.session import Session


def _magic_parser() -> object:
    return Session({}).parser


def test_every_command_and_argument_comes_from_the_one_table() -> None:
    magic = names_and_args(_magic_parser())  # type: ignore[arg-type]
    cli = names_and_args(cli_parser())
    for front_end, parsed in ((MAGIC, magic), (CLI, cli)):
        expected = {c.name: tuple(a.name for a in c.args_for(front_end)) for c in COMMANDS if front_end in c.front_ends}
        assert parsed == expected, front_end
    shared = set(magic) & set(cli)
    # the commands both offer: all but the shell-only worker and migrate
    assert shared == {c.name for c in COMMANDS} - {"worker", "migrate"}
    for name in shared:
        only_magic = set(magic[name]) - set(cli[name])
        only_cli = set(cli[name]) - set(magic[name])
        # the only differences are the widget flags, which a shell has no use for
        assert only_magic <= {"--background", "--no-widget"}, (name, only_magic)
        assert only_cli == set(), (name, only_cli)


def test_a_name_or_id_is_accepted_wherever_an_instance_is() -> None:
    for cmd in COMMANDS:
        positional = [a.name for a in cmd.args if a.positional]
        if cmd.name in ("list", "worker", "help", "migrate"):
            assert "ref" not in positional
        else:
            assert positional[0] == "ref", cmd.name
            assert "--latest" in {a.name for a in cmd.args}, cmd.name


def test_help_texts_of_both_front_ends_list_the_same_commands() -> None:
    magic_lines = usage(MAGIC).splitlines()
    cli_lines = usage(CLI).splitlines()
    assert [line.split()[1] for line in magic_lines if line.startswith("%workflow ")] == [
        c.name for c in COMMANDS if MAGIC in c.front_ends
    ]
    assert [line.split()[1] for line in cli_lines if line.startswith("nbflow ")] == [c.name for c in COMMANDS]


def test_hints_are_worded_per_front_end() -> None:
    assert hint(MAGIC, "resume", "sales") == "%workflow resume sales"
    assert hint(CLI, "resume", "sales") == "`nbflow resume sales`"
    assert (
        hint(CLI, "result", "my wf", "clean", directory="/tmp/a b") == "`nbflow --dir '/tmp/a b' result 'my wf' clean`"
    )


def test_errors_carry_python_advice_and_each_front_end_rewrites_it() -> None:
    err = nf.InstanceLockedError("etl-1", "runner in pid 7")
    assert "WorkflowClient(backend).cancel(instance_id)" in str(err)  # Python callers get Python
    assert "cancel it (%workflow cancel etl-1)" in render_error(err, MAGIC)
    assert "cancel it (`nbflow cancel etl-1`)" in render_error(err, CLI)
    unknown = nf.UnknownInstanceError("nope", "a store")
    magic, cli = render_error(unknown, MAGIC), render_error(unknown, CLI, "/s")
    assert magic.endswith("List the stored ones with %workflow list.") and "runner.run" not in magic
    assert cli.endswith("List the stored ones with `nbflow --dir /s list`.") and "WorkflowClient" not in cli
    refused = nf.SignalRefusedError("etl-1", "go", "failed")
    assert "(`nbflow resume etl-1`)" in render_error(refused, CLI)
    assert "(%workflow resume etl-1)" in render_error(refused, MAGIC)
    # the message text itself exists once: only the advised call differs
    assert render_error(err, MAGIC).replace("%workflow cancel etl-1", "X") == render_error(err, CLI).replace(
        "`nbflow cancel etl-1`", "X"
    )


def test_the_magic_parser_raises_instead_of_exiting() -> None:
    with pytest.raises(CommandLineError, match="unrecognized arguments: --bogus"):
        _magic_parser().parse_args(["status", "x", "--bogus"])  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        cli_parser().parse_args(["status", "x", "--bogus"])


def test_the_session_and_the_shell_command_import_no_ipython() -> None:
    code = (
        "import sys, nbflow.cli, nbflow.jupyter.session; "
        "bad = {'IPython', 'ipywidgets'} & set(sys.modules); assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
