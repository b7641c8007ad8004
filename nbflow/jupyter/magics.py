"""The ``%%workflow`` cell magic and the ``%workflow`` line magic: a thin adapter.

``%%workflow NAME [flags]`` turns a cell of functions into a workflow (see
:mod:`nbflow.jupyter.cell` for the rules), binds it as ``NAME`` (with
``NAME.result(task)`` and ``NAME.results``), shows its widget and runs it durably; the
cell's value is the workflow's output. Re-running the same cell resumes the same
instance (the default instance id is the name plus a digest of the inputs), so after a
kernel restart finished tasks are restored, not recomputed.

``%workflow help`` lists the line commands; they are the ``nbflow`` shell command's,
from one table (:mod:`nbflow.commands`). What they do, and the kernel's state, live in
:class:`nbflow.jupyter.session.Session`; this module only wires it to IPython.

Errors: a bad cell or a bad line raises ``UsageError`` (one line, no traceback, with
advice worded as ``%workflow`` commands); a failed *task* fails the cell with a compact
report (``WorkflowFailedError``); the stop button fails the cell too (after marking
the instance interrupted), so "Run All" stops there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.display import display

from nbflow import NbflowError, WorkflowFailedError
from nbflow.commands import MAGIC, build_cell_parser, render_error, usage
from nbflow.jupyter.session import BackgroundControls, Entry, Session

__all__ = ["BackgroundControls", "WorkflowMagics"]


@magics_class
class WorkflowMagics(Magics):
    """``%%workflow`` and ``%workflow``; one instance per shell holds its :class:`Session`."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.session = Session(
            shell.user_ns,
            display=lambda obj: display(obj),  # looked up at call time (tests replace it)
            run_code=self._run_code,
            transform=shell.transform_cell,
        )

    @property
    def entries(self) -> dict[str, Entry]:
        """The workflows this kernel's cells defined, by name."""
        return self.session.entries

    def close(self) -> None:
        """Close the stores opened by this kernel's cells (background runs are cancelled)."""
        self.session.close()

    def _run_code(self, text: str) -> BaseException | None:
        """Run the cell's code the way the shell runs any cell (tracebacks show the
        cell's lines; the functions live in __main__). The nested run would detach the
        outer cell's result from the display hook, so put it back for the cell's value."""
        shell: Any = self.shell
        outer = getattr(shell.displayhook, "exec_result", None)
        try:
            result = shell.run_cell(text, store_history=False)
        finally:
            shell.displayhook.exec_result = outer
        if result.success:
            return None
        raised: BaseException | None = result.error_before_exec or result.error_in_exec
        return raised

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except WorkflowFailedError:
            raise  # fails the cell with its compact report
        except NbflowError as exc:
            raise UsageError(render_error(exc, MAGIC)) from None

    @no_var_expand  # nbflow expands $var itself, and refuses an undefined one
    @cell_magic("workflow")  # type: ignore[arg-type]  # IPython types its decorators as taking Never
    def workflow_cell(self, line: str, cell: str) -> Any:
        """Turn the cell's functions into a durable workflow and run it.

        Every top-level function is a task; a parameter named after another function is
        an edge; any other parameter is an input (``--input key=value``) unless it has a
        default value, which it then keeps. Re-running the cell resumes the same
        instance: finished tasks are restored from the store, edited ones re-run.
        """
        return self._call(self.session.cell, line, cell)

    @no_var_expand
    @line_magic("workflow")  # type: ignore[arg-type]  # IPython types its decorators as taking Never
    def workflow_line(self, line: str) -> Any:
        """Steer workflows (``%workflow help``); the same commands as ``nbflow``."""
        return self._call(self.session.line, line)


# ``%%workflow?`` and ``%workflow?`` show the arguments from the shared table.
WorkflowMagics.workflow_cell.__doc__ = (
    (WorkflowMagics.workflow_cell.__doc__ or "") + "\n" + build_cell_parser().format_help()
)
WorkflowMagics.workflow_line.__doc__ = (WorkflowMagics.workflow_line.__doc__ or "") + "\n\n" + usage(MAGIC)
