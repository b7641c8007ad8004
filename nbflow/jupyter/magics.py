"""The ``%%workflow`` cell magic and the ``%workflow`` line magic.

``%%workflow NAME [flags]`` turns a cell of functions into a workflow (see
:mod:`nbflow.jupyter.cell` for the rules), binds it as ``NAME``, shows its widget and
runs it durably; the cell's value is the workflow's output. Re-running the same cell
resumes the same instance (the default instance id is the name plus a digest of the
inputs), so after a kernel restart finished tasks are restored, not recomputed.

``%workflow list | status | resume | cancel | pause | unpause | signal | show | clear``
steers workflows defined in this kernel (by name) or stored instances (by id).

Everything goes through the public engine API (``CheckpointingRunner``,
``WorkflowClient`` and runner events); nothing here reaches into the scheduler.

Errors: a bad cell or a bad flag raises ``UsageError`` (one line, no traceback); a
failed *task* is not a usage error: its error and the user's part of its traceback are
printed to stderr and the cell's value is None.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from nbflow import (
    CheckpointingRunner,
    ConflictPolicy,
    DiskcacheBackend,
    InstanceLockedError,
    NbflowError,
    RunHandle,
    WorkflowClient,
    WorkflowDefinition,
    WorkflowFailedError,
    WorkflowStatus,
)
from nbflow.jupyter.cell import analyze_cell, build_cell_workflow, check_inputs
from nbflow.jupyter.lineparse import USAGE, parse_inputs, split_line
from nbflow.jupyter.reports import RunLog, StatusReport, format_failure
from nbflow.run import events as ev

__all__ = ["BackgroundControls", "WorkflowMagics"]

DEFAULT_DIR = ".nbflow"


@dataclass
class _Entry:
    """One workflow defined by a ``%%workflow`` cell in this kernel."""

    name: str
    workflow: WorkflowDefinition
    instance_id: str
    inputs: dict[str, Any]
    backend: DiskcacheBackend
    on_change: str = "rerun"
    runner: CheckpointingRunner | None = None
    handle: RunHandle | None = None
    widget: Any = None
    log: RunLog = field(default_factory=lambda: RunLog(""))
    background_error: str = ""
    threads: list[threading.Thread] = field(default_factory=list)

    def new_runner(self, *, fresh: bool = False) -> CheckpointingRunner:
        policy = ConflictPolicy.TERMINATE_EXISTING if fresh else ConflictPolicy.USE_EXISTING
        self.runner = CheckpointingRunner(
            self.backend,
            conflict_policy=policy,
            on_change=self.on_change,
            echo_output=False,
            inline_sync=False,
        )
        return self.runner


def _usage_error(exc: NbflowError, name: str) -> UsageError:
    text = str(exc)
    if isinstance(exc, InstanceLockedError):
        text += f" In this notebook: %workflow cancel {name}, or wait for the background run."
    return UsageError(text)


# -- widget controls for background runs ----------------------------------------------------
class BackgroundControls:
    """What the widget's buttons do during a ``--background`` run (WidgetControls)."""

    def __init__(self, magics: WorkflowMagics, entry: _Entry) -> None:
        self._magics = magics
        self._entry = entry

    def cancel(self) -> None:
        entry = self._entry
        handle = entry.handle
        if handle is not None and not handle.done():
            handle.cancel("cancelled from the widget")
        else:  # e.g. a re-run started from the widget: ask through the store
            WorkflowClient(entry.backend).cancel(entry.instance_id, by="the widget")

    def send_signal(self, name: str, payload: Any = None) -> None:
        entry = self._entry
        client = WorkflowClient(entry.backend)
        client.send_signal(entry.instance_id, name, payload)
        # A parked instance holds no thread: continue it so the signal is consumed.
        if not client.is_running(entry.instance_id) and client.status(entry.instance_id).state == "awaiting_signal":
            try:
                self._magics._start_background(entry, resume=True)
            except UsageError as exc:
                entry.background_error = str(exc)

    def rerun_from(self, task_id: str) -> None:
        entry = self._entry
        # Refuse while a run is in flight: the re-run would only fail on the instance lock in
        # its thread (the widget saying "Re-running ..." meanwhile), and attaching it would
        # replace the run log that %workflow status reads for the run still going.
        busy = (entry.handle is not None and not entry.handle.done()) or any(t.is_alive() for t in entry.threads)
        if busy or WorkflowClient(entry.backend).is_running(entry.instance_id):
            raise InstanceLockedError(entry.instance_id, "a run of this widget is still going; cancel it or wait")
        runner = entry.new_runner()
        detach = self._magics._attach(entry, runner, entry.widget)

        def work() -> None:
            try:
                runner.rerun_from(entry.workflow, entry.instance_id, task_id)
            except NbflowError as exc:
                entry.background_error = str(exc)
            finally:
                detach()

        thread = threading.Thread(target=work, name=f"nbflow-rerun:{entry.instance_id}", daemon=True)
        entry.threads.append(thread)
        thread.start()


# -- the magics -------------------------------------------------------------------------------
@magics_class
class WorkflowMagics(Magics):
    """``%%workflow`` and ``%workflow``; one instance per shell holds its registry."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.entries: dict[str, _Entry] = {}
        self._backends: dict[str, DiskcacheBackend] = {}
        self._widget_hint_shown = False

    def close(self) -> None:
        """Close the stores opened by this kernel's cells (background runs are cancelled)."""
        for entry in self.entries.values():
            if entry.handle is not None and not entry.handle.done():
                entry.handle.cancel("the nbflow extension was unloaded")
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    # -- stores ------------------------------------------------------------------------
    def backend(self, directory: str | os.PathLike[str] | None, *, create: bool = True) -> DiskcacheBackend:
        path = Path(directory or DEFAULT_DIR).expanduser().absolute()
        key = str(path)
        found = self._backends.get(key)
        if found is not None:
            return found
        if not create and not (path / "instances").is_dir():
            raise UsageError(f"there is no nbflow store at {key}; pass the cell's --dir PATH")
        try:
            backend = DiskcacheBackend(path)
        except NbflowError as exc:
            raise UsageError(str(exc)) from None
        self._backends[key] = backend
        return backend

    # -- %%workflow ----------------------------------------------------------------------
    @magic_arguments(name="workflow")
    @argument("name", help="workflow name; the built workflow is bound to it in the namespace")
    @argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a workflow input: a Python literal (else a string), or $var for a notebook variable; repeatable",
    )
    @argument("--no-run", action="store_true", help="build and show the workflow without running it")
    @argument("--fresh", action="store_true", help="discard the stored instance and start over")
    @argument("--instance", metavar="ID", default=None, help="instance id (default: NAME plus a digest of the inputs)")
    @argument("--background", action="store_true", help="return at once; the widget keeps updating")
    @argument("--no-widget", action="store_true", help="do not display the live widget")
    @argument("--dir", metavar="PATH", default=None, help="checkpoint store folder (default ./.nbflow)")
    @argument(
        "--on-change",
        choices=("rerun", "fail"),
        default="rerun",
        help="a task whose code changed: re-run it and its descendants (default), or refuse",
    )
    @no_var_expand
    @cell_magic("workflow")  # type: ignore[arg-type]  # IPython types its decorators as taking Never
    def workflow_cell(self, line: str, cell: str) -> Any:
        """Turn the cell's functions into a durable workflow and run it.

        Every top-level function is a task; a parameter named after another function is
        an edge; any other parameter is an input (``--input key=value``) unless it has a
        default value, which it then keeps. Re-running the cell resumes the same
        instance: finished tasks are restored from the store, edited ones re-run.
        """
        try:  # POSIX quoting: --input words="hello world" --dir "my store"
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%%workflow {line}: {exc}") from None
        args = self.workflow_cell.parser.parse_args(argv)
        name = args.name
        shell: Any = self.shell
        inputs = parse_inputs(args.input, shell.user_ns)
        # The header line keeps the cell's line numbers: line 1 is the %%workflow line.
        text = f"# %%workflow {line}\n{cell}"
        try:
            source = shell.transform_cell(text)
        except SyntaxError as exc:  # an IPython-syntax problem (e.g. a bad %magic line)
            raise UsageError(f"workflow {name!r} (line {exc.lineno}): {exc.msg}") from None
        try:
            analysis = analyze_cell(name, source, header_line=1)
            check_inputs(analysis, inputs)
        except NbflowError as exc:
            raise UsageError(str(exc)) from None
        # Run the code the way the shell runs any cell (tracebacks show the cell's lines;
        # the functions live in __main__). The nested run would detach the outer cell's
        # result from the display hook, so put it back for the cell's value.
        outer = getattr(shell.displayhook, "exec_result", None)
        try:
            result = shell.run_cell(text, store_history=False)
        finally:
            shell.displayhook.exec_result = outer
        if not result.success:
            raised = result.error_before_exec or result.error_in_exec
            raise UsageError(
                f"workflow {name!r}: the cell's code raised {type(raised).__name__}: {raised} "
                "(traceback above); no task ran"
            )
        try:
            built = build_cell_workflow(analysis, shell.user_ns, inputs)
        except NbflowError as exc:
            raise UsageError(str(exc)) from None
        shell.user_ns[name] = built.workflow
        backend = self.backend(args.dir)
        entry = _Entry(
            name=name,
            workflow=built.workflow,
            instance_id=args.instance or built.instance_id,
            inputs=built.inputs,
            backend=backend,
            on_change=args.on_change,
        )
        old = self.entries.get(name)
        if old is not None and old.handle is not None and not old.handle.done():
            entry.handle = old.handle  # still running: keep it reachable for %workflow cancel
        self.entries[name] = entry
        runner = entry.new_runner(fresh=args.fresh)
        if args.no_run:
            if not args.no_widget:
                self._show_widget(entry, runner, fresh=args.fresh)
            return None
        widget = (
            None if args.no_widget else self._show_widget(entry, runner, fresh=args.fresh, background=args.background)
        )
        if args.background:
            return self._start_background(entry, runner=runner, widget=widget)
        return self._run_blocking(entry, runner, widget)

    # -- running ------------------------------------------------------------------------
    def _show_widget(
        self, entry: _Entry, runner: CheckpointingRunner, *, fresh: bool = False, background: bool = False
    ) -> Any:
        try:
            from nbflow.jupyter.widget import WorkflowWidget
        except Exception as exc:  # noqa: BLE001 - a broken widget must not stop the run
            if not self._widget_hint_shown:
                self._widget_hint_shown = True
                print(f"nbflow: the live widget is not available ({exc}); running without it.", file=sys.stderr)
            return None
        try:
            plan = (
                {t: "run" for t in entry.workflow.task_ids} if fresh else runner.plan(entry.workflow, entry.instance_id)
            )
        except NbflowError:
            plan = None
        controls = BackgroundControls(self, entry) if background else None
        widget = WorkflowWidget(entry.workflow, instance_id=entry.instance_id, plan=plan, controls=controls)
        entry.widget = widget
        show = getattr(widget, "display", None)
        if callable(show):
            show()  # with a display id, so flush() refreshes the saved static fallback
        else:
            display(widget)
        return widget

    def _attach(
        self, entry: _Entry, runner: CheckpointingRunner, widget: Any, *, until_finished: bool = False
    ) -> Callable[[], None]:
        """Subscribe the run log (and the widget) to ``runner``; returns detach()."""
        entry.log = RunLog(entry.instance_id, entry.workflow.task_ids)
        unsubscribers = [runner.subscribe(entry.log)]
        if widget is not None:
            unsubscribers.append(widget.listen(runner.events))
        done = threading.Event()

        def detach() -> None:
            if done.is_set():
                return
            done.set()
            for unsubscribe in unsubscribers:
                unsubscribe()
            if widget is not None:
                widget.flush()

        if until_finished:

            def on_event(event: ev.RunEvent) -> None:
                if isinstance(event, ev.RunFinished) and event.instance_id == entry.instance_id:
                    detach()

            unsubscribers.append(runner.subscribe(on_event))
        return detach

    def _run_blocking(self, entry: _Entry, runner: CheckpointingRunner, widget: Any, *, resume: bool = False) -> Any:
        detach = self._attach(entry, runner, widget)
        try:
            if resume:
                status = runner.resume(entry.workflow, entry.instance_id)
            else:
                status = runner.run(entry.workflow, entry.instance_id, entry.inputs)
        except KeyboardInterrupt:
            detach()
            print(
                f"interrupted: {self._kept(entry)} tasks kept; re-run the cell to resume",
                file=sys.stderr,
            )
            return None
        except NbflowError as exc:
            raise _usage_error(exc, entry.name) from None
        finally:
            detach()
        return self._outcome(entry, status)

    def _start_background(
        self,
        entry: _Entry,
        *,
        runner: CheckpointingRunner | None = None,
        widget: Any = None,
        resume: bool = False,
    ) -> RunHandle:
        runner = runner or entry.new_runner()
        widget = widget if widget is not None else entry.widget
        if widget is not None:
            widget.set_controls(BackgroundControls(self, entry))
        detach = self._attach(entry, runner, widget, until_finished=True)
        try:
            if resume:
                handle = runner.start(entry.workflow, entry.instance_id, resume=True)
            else:
                handle = runner.start(entry.workflow, entry.instance_id, entry.inputs)
        except NbflowError as exc:
            detach()
            raise _usage_error(exc, entry.name) from None
        entry.handle = handle
        return handle

    def _kept(self, entry: _Entry) -> int:
        try:
            return WorkflowClient(entry.backend).status(entry.instance_id).tasks_done
        except NbflowError:
            return sum(1 for s in entry.log.tasks.values() if s in ("done", "restored"))

    def _outcome(self, entry: _Entry, status: WorkflowStatus) -> Any:
        state, name = str(status.state), entry.name
        if state == "completed":
            return status.output
        if state == "failed":
            # Raised, not printed: the cell is marked failed and Run All stops here.
            task = status.error.task_id if status.error else ""
            raise WorkflowFailedError(name, status.instance_id, task, format_failure(name, status))
        if state == "awaiting_signal":
            print(
                f"{name}: waiting for signal {status.signal!r}. Send it with "
                f"%workflow signal {name} {status.signal} JSON, then %workflow resume {name}",
                file=sys.stderr,
            )
        elif state in ("cancelled", "interrupted", "paused", "waiting"):
            extra = f" (%workflow unpause {name} first)" if state == "paused" else ""
            print(
                f"{state}: {status.tasks_done} tasks kept; re-run the cell or %workflow resume {name} to continue{extra}",
                file=sys.stderr,
            )
        else:
            print(f"{name}: {state}", file=sys.stderr)
        return None

    # -- %workflow ----------------------------------------------------------------------
    @no_var_expand
    @line_magic("workflow")  # type: ignore[arg-type]  # IPython types its decorators as taking Never
    def workflow_line(self, line: str) -> Any:
        """Steer workflows: list, status, resume, cancel, pause, unpause, signal, show, clear.

        %workflow list | status NAME | resume NAME | cancel NAME | pause NAME |
        unpause NAME | signal NAME SIGNAL JSON | show NAME | clear NAME  [--dir PATH]
        """
        arity = {"list": 0, "help": 0, "signal": 2}
        pos, opts, rest = split_line(line, lambda cmd: arity.get(cmd, 1))
        if not pos or pos[0] == "help":
            print(USAGE)
            return None
        command, refs = pos[0], pos[1:]
        if command not in ("list", "status", "resume", "cancel", "pause", "unpause", "signal", "show", "clear"):
            raise UsageError(f"unknown %workflow command {command!r}.\n{USAGE}")
        if command == "list":
            return self._list(opts["dir"])
        if len(refs) < arity.get(command, 1):
            raise UsageError(f"%workflow {command} needs a workflow name or instance id.\n{USAGE}")
        if rest and command != "signal":
            raise UsageError(f"%workflow {command}: unexpected {rest!r}.\n{USAGE}")
        try:
            return getattr(self, f"_cmd_{command}")(refs, opts, rest)
        except NbflowError as exc:
            raise _usage_error(exc, refs[0]) from None

    def _resolve(self, ref: str, directory: str | None) -> tuple[DiskcacheBackend, str, _Entry | None]:
        """A workflow name of this kernel, or a stored instance id -> (store, instance id, entry)."""
        entry = self.entries.get(ref)
        if entry is None:
            entry = next((e for e in self.entries.values() if e.instance_id == ref), None)
        if entry is not None and (directory is None or self.backend(directory) is entry.backend):
            return entry.backend, entry.instance_id, entry
        backend = self.backend(directory or self._default_dir(), create=False)
        meta = next((m for m in backend.list_instances() if m.instance_id == ref), None)
        if meta is None:
            raise UsageError(
                f"no workflow {ref!r} is defined in this kernel (run its %%workflow cell) and there is no "
                f"instance {ref!r} in {backend.directory}; %workflow list shows the stored ones"
            )
        # An instance of a workflow defined here (another instance id): use that definition.
        owner = self.entries.get(meta.workflow)
        if owner is not None:
            entry = _Entry(
                name=owner.name,
                workflow=owner.workflow,
                instance_id=ref,
                inputs={},
                backend=backend,
                on_change=owner.on_change,
            )
        return backend, ref, entry

    def _default_dir(self) -> str:
        dirs = {str(e.backend.directory) for e in self.entries.values()}
        return dirs.pop() if len(dirs) == 1 else DEFAULT_DIR

    def _list(self, directory: str | None) -> None:
        if directory is not None:
            backends = [self.backend(directory, create=False)]
        else:
            backends = list({id(e.backend): e.backend for e in self.entries.values()}.values())
            default = Path(DEFAULT_DIR).absolute()
            if (default / "instances").is_dir() and all(b.directory != default for b in backends):
                backends.append(self.backend(default))
        if not backends:
            print("no nbflow store yet: run a %%workflow cell (or pass --dir PATH)")
            return
        here = {e.instance_id: e.name for e in self.entries.values()}
        for backend in backends:
            rows = WorkflowClient(backend).list_instances()
            print(f"{backend.directory}: {len(rows)} instance(s)")
            for st in rows:
                mark = "  *" if st.instance_id in here else ""
                print(f"  {st.instance_id}  {st.workflow}  {st.state}  {st.tasks_done}/{st.tasks_total}{mark}")
        if here:
            print("(* defined by a %%workflow cell in this kernel)")
        return

    def _report(
        self, backend: DiskcacheBackend, instance_id: str, entry: _Entry | None, *, plan: bool = False
    ) -> StatusReport:
        """Status text: per task, its state in this kernel's last run, or (``plan``, or
        no run here yet) what a resume would do with it."""
        status = WorkflowClient(backend).status(instance_id)
        tasks: dict[str, str] = {}
        note = ""
        if not plan and entry is not None and entry.log.instance_id == instance_id and entry.log.state:
            tasks = dict(entry.log.tasks)
        elif entry is not None:
            steps = entry.new_runner().plan(entry.workflow, instance_id)
            words = {"restore": "restore", "stale": "stale (runs again)", "run": "run"}
            tasks = {t: words.get(p, p) for t, p in steps.items()}
            if plan:
                note = f"  (what %workflow resume {entry.name} would do)"
        if entry is not None and entry.background_error:
            note = "\n".join(filter(None, [note, f"  last background error: {entry.background_error}"]))
        return StatusReport(entry.name if entry else status.workflow, status, tasks, note)

    def _cmd_status(self, refs: list[str], opts: dict[str, Any], rest: str) -> StatusReport:
        backend, iid, entry = self._resolve(refs[0], opts["dir"])
        return self._report(backend, iid, entry)

    def _cmd_show(self, refs: list[str], opts: dict[str, Any], rest: str) -> Any:
        backend, iid, entry = self._resolve(refs[0], opts["dir"])
        if entry is not None and not opts["no_widget"]:
            running = entry.handle is not None and not entry.handle.done() and entry.widget is not None
            if running:
                display(entry.widget)  # the live one, still updating
                return None
            if self._show_widget(entry, entry.new_runner()) is not None:
                return None
        return self._report(backend, iid, entry, plan=True)

    def _cmd_resume(self, refs: list[str], opts: dict[str, Any], rest: str) -> Any:
        backend, iid, entry = self._resolve(refs[0], opts["dir"])
        if entry is None:
            meta_wf = WorkflowClient(backend).status(iid).workflow
            raise UsageError(
                f"instance {iid!r} belongs to workflow {meta_wf!r}, which is not defined in this kernel: "
                f"run its %%workflow cell (add --no-run to only define it), then %workflow resume {iid}"
            )
        runner = entry.new_runner()
        widget = None if opts["no_widget"] else self._show_widget(entry, runner, background=opts["background"])
        if opts["background"]:
            return self._start_background(entry, runner=runner, widget=widget, resume=True)
        return self._run_blocking(entry, runner, widget, resume=True)

    def _cmd_cancel(self, refs: list[str], opts: dict[str, Any], rest: str) -> None:
        backend, iid, entry = self._resolve(refs[0], opts["dir"])
        handle = entry.handle if entry is not None else None
        if handle is not None and handle.instance_id == iid and not handle.done():
            handle.cancel("cancelled by %workflow cancel")
            handle_state = "cancel requested"
        else:
            client = WorkflowClient(backend)
            running = client.is_running(iid)
            client.cancel(iid, by="%workflow cancel")
            handle_state = "cancel requested" if running else "marked cancelled (it was not running)"
        print(f"{iid}: {handle_state}; finished tasks are kept")

    def _cmd_pause(self, refs: list[str], opts: dict[str, Any], rest: str) -> None:
        backend, iid, _entry = self._resolve(refs[0], opts["dir"])
        WorkflowClient(backend).pause(iid, by="%workflow pause")
        print(f"{iid}: pause requested; running tasks finish and are kept")

    def _cmd_unpause(self, refs: list[str], opts: dict[str, Any], rest: str) -> None:
        backend, iid, _entry = self._resolve(refs[0], opts["dir"])
        WorkflowClient(backend).unpause(iid)
        print(f"{iid}: unpaused; continue it with %workflow resume {refs[0]}")

    def _cmd_signal(self, refs: list[str], opts: dict[str, Any], rest: str) -> None:
        backend, iid, _entry = self._resolve(refs[0], opts["dir"])
        signal = refs[1]
        payload: Any = None
        if rest:
            try:
                payload = json.loads(rest)
            except ValueError as exc:
                raise UsageError(f"%workflow signal: the payload is not JSON ({exc}): {rest!r}") from None
        client = WorkflowClient(backend)
        client.send_signal(iid, signal, payload)
        hint = ""
        if not client.is_running(iid) and client.status(iid).state == "awaiting_signal":
            hint = f"; continue it with %workflow resume {refs[0]}"
        print(f"{iid}: signal {signal!r} sent{hint}")

    def _cmd_clear(self, refs: list[str], opts: dict[str, Any], rest: str) -> None:
        backend, iid, entry = self._resolve(refs[0], opts["dir"])
        removed = WorkflowClient(backend).clear(iid)
        if entry is not None and entry.log.instance_id == iid:
            entry.log = RunLog(iid, entry.workflow.task_ids)
        print(f"{iid}: {'cleared' if removed else 'nothing stored'}")
