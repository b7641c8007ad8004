"""One kernel's nbflow session: the workflows its cells defined, the stores they use,
and every ``%%workflow`` / ``%workflow`` command, without IPython.

:class:`Session` holds the per-kernel state (``entries``: one :class:`Entry` per
workflow name a cell defined; the stores opened) and does what the magics do; the
magics (:mod:`nbflow.jupyter.magics`) only hand it their line and cell and turn its
``NbflowError`` into IPython's ``UsageError``. Tests drive a ``Session`` over a plain
dict namespace.

Commands come from the shared table (:mod:`nbflow.commands`); a name or id is resolved
by :func:`nbflow.run.lookup.resolve_instance`, except that a workflow defined by a cell
of this kernel means the instance that cell runs ("where was I" needs no store search).
Everything goes through the public engine API (``CheckpointingRunner``,
``WorkflowClient``, runner events); nothing here reaches into the scheduler.
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbflow import (
    CheckpointingRunner,
    ConflictPolicy,
    DiskcacheBackend,
    InstanceLockedError,
    NbflowError,
    RunHandle,
    RunState,
    UnknownInstanceError,
    WorkflowClient,
    WorkflowDefinition,
    WorkflowDefinitionError,
    WorkflowFailedError,
    WorkflowStatus,
)
from nbflow.commands import (
    COMMANDS,
    DEFAULT_DIR,
    MAGIC,
    CommandLineError,
    ParserExit,
    build_cell_parser,
    build_parser,
    hint,
    subcommand_parsers,
    usage,
)
from nbflow.core.fingerprint import stable_digest
from nbflow.jupyter.cell import analyze_cell, build_cell_workflow, check_inputs
from nbflow.jupyter.lineparse import NOTHING, cell_argv, magic_argv, parse_inputs
from nbflow.jupyter.reports import RunLog, StatusReport, format_failure
from nbflow.run import events as ev
from nbflow.run.lookup import live_state, resolve_instance
from nbflow.run.report import task_rows
from nbflow.run.results import BoundWorkflow
from nbflow.run.stale import explain_plan, previous_run
from nbflow.store.open_store import is_store_address, open_store

__all__ = ["BackgroundControls", "CellInterrupted", "Entry", "Session"]


@dataclass
class Entry:
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


class CellInterrupted(KeyboardInterrupt):
    """The stop button stopped a run: the instance is marked interrupted (finished tasks
    kept) and the cell fails, so "Run All" does not go on to the cells after it.
    IPython shows the message instead of a traceback through nbflow's internals."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def _render_traceback_(self) -> list[str]:
        return ["KeyboardInterrupt: " + self.message]


class BackgroundControls:
    """What the widget's buttons do during a ``--background`` run (WidgetControls)."""

    def __init__(self, session: Session, entry: Entry) -> None:
        self._session = session
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
                self._session.start_background(entry, resume=True)
            except NbflowError as exc:
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
        detach = self._session.attach(entry, runner, entry.widget)

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


def _exec_in(namespace: dict[str, Any]) -> Callable[[str], BaseException | None]:
    """Run cell code in ``namespace`` (what a Session without IPython does); its source is
    registered with linecache so tracebacks and fingerprints can show its lines."""

    def run(text: str) -> BaseException | None:
        filename = f"<nbflow-cell-{stable_digest(text)}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        try:
            exec(compile(text, filename, "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - reported like a failing cell
            traceback.print_exc()
            return exc
        return None

    return run


class Session:
    """The per-kernel state and the commands of ``%%workflow`` and ``%workflow``.

    Args:
        namespace: the user's namespace (functions, inputs' ``$var`` values; workflows
            are bound here).
        display: shows an object (the widget) in the output area.
        run_code: runs a cell's code in the namespace; returns the exception it raised,
            or None (IPython: ``shell.run_cell``; default: ``exec``).
        transform: turns IPython syntax into Python (IPython: ``shell.transform_cell``).
    """

    def __init__(
        self,
        namespace: dict[str, Any],
        *,
        display: Callable[[Any], None] | None = None,
        run_code: Callable[[str], BaseException | None] | None = None,
        transform: Callable[[str], str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.entries: dict[str, Entry] = {}
        self._backends: dict[str, DiskcacheBackend] = {}
        self._widget_hint_shown = False
        self._display = display or (lambda obj: print(repr(obj)))
        self._run_code = run_code or _exec_in(namespace)
        self._transform = transform or (lambda text: text)
        self._parser = build_parser(MAGIC)
        self._cell_parser = build_cell_parser()
        self._commands = {c.name for c in COMMANDS if MAGIC in c.front_ends}

    def close(self) -> None:
        """Close the stores opened by this kernel's cells (background runs are cancelled)."""
        for entry in self.entries.values():
            if entry.handle is not None and not entry.handle.done():
                entry.handle.cancel("the nbflow extension was unloaded")
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    @property
    def parser(self) -> argparse.ArgumentParser:
        """The ``%workflow`` parser (built from the shared command table)."""
        return self._parser

    # -- stores ------------------------------------------------------------------------
    def backend(self, directory: str | os.PathLike[str] | None, *, create: bool = True) -> DiskcacheBackend:
        if is_store_address(directory):  # a database store (`--dir postgresql://…`): one per address
            store = self._backends.get(str(directory)) or open_store(str(directory))
            self._backends[str(directory)] = store  # type: ignore[assignment]  # it has .directory too
            return store  # type: ignore[return-value]
        path = Path(directory or DEFAULT_DIR).expanduser().absolute()
        key = str(path)
        found = self._backends.get(key)
        if found is not None:
            return found
        if not create and not (path / "instances").is_dir():
            raise CommandLineError(f"there is no nbflow store at {key}; pass the cell's --dir PATH")
        backend = DiskcacheBackend(path)
        self._backends[key] = backend
        return backend

    def _default_dir(self) -> str:
        dirs = {str(e.backend.directory) for e in self.entries.values()}
        return dirs.pop() if len(dirs) == 1 else DEFAULT_DIR

    # -- %%workflow ----------------------------------------------------------------------
    def cell(self, line: str, cell: str) -> Any:
        """Turn the cell's functions into a durable workflow and run it (``%%workflow``)."""
        args = self._cell_parser.parse_args(cell_argv(line, self.namespace))
        name = args.name
        inputs = parse_inputs(args.input, self.namespace)
        # The header line keeps the cell's line numbers: line 1 is the %%workflow line.
        text = f"# %%workflow {line}\n{cell}"
        try:
            source = self._transform(text)
        except SyntaxError as exc:  # an IPython-syntax problem (e.g. a bad %magic line)
            raise WorkflowDefinitionError(name, str(exc.msg), line=exc.lineno) from None
        analysis = analyze_cell(name, source, header_line=1)
        check_inputs(analysis, inputs)
        raised = self._run_code(text)
        if raised is not None:
            raise WorkflowDefinitionError(
                name, f"the cell's code raised {type(raised).__name__}: {raised} (traceback above); no task ran"
            )
        built = build_cell_workflow(analysis, self.namespace, inputs)
        backend = self.backend(args.dir)
        instance_id = args.instance or built.instance_id
        # The name gives the workflow, and its results: sales.result("clean"), sales.results.
        self.namespace[name] = BoundWorkflow(built.workflow, backend, instance_id)
        entry = Entry(name, built.workflow, instance_id, built.inputs, backend, on_change=args.on_change)
        old = self.entries.get(name)
        if old is not None and old.handle is not None and not old.handle.done():
            entry.handle = old.handle  # still running: keep it reachable for %workflow cancel
        self.entries[name] = entry
        runner = entry.new_runner(fresh=args.fresh)
        if args.no_run:
            if not args.no_widget:
                self.show_widget(entry, runner, fresh=args.fresh)
            return None
        stored = None if args.fresh else backend.load_instance(instance_id)
        if stored is not None and stored.state == "cancelled":
            # Re-running the cell says "run it": a cancelled instance runs again (a plain
            # %workflow resume leaves it cancelled unless --revive asks).
            WorkflowClient(backend).revive(instance_id, by="re-running its %%workflow cell")
        widget = (
            None if args.no_widget else self.show_widget(entry, runner, fresh=args.fresh, background=args.background)
        )
        if args.background:
            return self.start_background(entry, runner=runner, widget=widget)
        return self.run_blocking(entry, runner, widget)

    # -- running ------------------------------------------------------------------------
    def _plan(self, entry: Entry, runner: CheckpointingRunner, *, fresh: bool = False) -> tuple[Any, dict[str, str]]:
        """(plan, reasons) for the widget and ``show``: what a run of ``entry`` would do."""
        wf = entry.workflow
        if fresh:
            return dict.fromkeys(wf.task_ids, "run"), {}
        try:
            plan = runner.plan(wf, entry.instance_id)
            records = entry.backend.get_records(entry.instance_id)
            previous = previous_run(entry.backend, wf, entry.instance_id) if not records else None
            if previous is not None and not any(p != "run" for p in plan.values()):
                records = {**records, **_input_record(wf, entry)}
            reasons = explain_plan(wf, records, plan, previous=previous)
        except NbflowError:
            return None, {}
        return plan, {t: str(r) for t, r in reasons.items()}

    def _load_code(self, entry: Entry) -> Callable[[str], str]:
        """The line that loads a task's output: ``%workflow result etl clean``, naming the
        instance by id when the workflow's name has other instances."""
        others = [row.instance_id for row in entry.backend.list_summaries(workflow=entry.name)]
        ref = entry.name if set(others) <= {entry.instance_id} else entry.instance_id
        return lambda task: hint(MAGIC, "result", ref, task, directory=_shown_dir(entry.backend.directory))

    def show_widget(
        self, entry: Entry, runner: CheckpointingRunner, *, fresh: bool = False, background: bool = False
    ) -> Any:
        try:
            from nbflow.jupyter.widget import WorkflowWidget
        except Exception as exc:  # noqa: BLE001 - a broken widget must not stop the run
            if not self._widget_hint_shown:
                self._widget_hint_shown = True
                print(f"nbflow: the live widget is not available ({exc}); running without it.", file=sys.stderr)
            return None
        plan, reasons = self._plan(entry, runner, fresh=fresh)
        controls = BackgroundControls(self, entry) if background else None
        widget = WorkflowWidget(
            entry.workflow,
            instance_id=entry.instance_id,
            plan=plan,
            controls=controls,
            reasons=reasons,
            load_code=self._load_code(entry),
        )
        entry.widget = widget
        show = getattr(widget, "display", None)
        if callable(show):
            show()  # with a display id, so flush() refreshes the saved static fallback
        else:
            self._display(widget)
        return widget

    def attach(
        self, entry: Entry, runner: CheckpointingRunner, widget: Any, *, until_finished: bool = False
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

    def run_blocking(
        self, entry: Entry, runner: CheckpointingRunner, widget: Any, *, resume: bool = False, revive: bool = False
    ) -> Any:
        detach = self.attach(entry, runner, widget)
        try:
            if resume:
                status = runner.resume(entry.workflow, entry.instance_id, revive=revive)
            else:
                status = runner.run(entry.workflow, entry.instance_id, entry.inputs)
        except KeyboardInterrupt:
            # runner.run marked the instance interrupted; failing the cell stops Run All
            detach()
            raise CellInterrupted(
                f"{entry.name}: interrupted, {self._kept(entry)} tasks kept; re-run the cell or "
                f"{hint(MAGIC, 'resume', entry.name)} to continue"
            ) from None
        finally:
            detach()
        return self._outcome(entry, status)

    def start_background(
        self,
        entry: Entry,
        *,
        runner: CheckpointingRunner | None = None,
        widget: Any = None,
        resume: bool = False,
        revive: bool = False,
    ) -> RunHandle:
        runner = runner or entry.new_runner()
        widget = widget if widget is not None else entry.widget
        if widget is not None:
            widget.set_controls(BackgroundControls(self, entry))
        detach = self.attach(entry, runner, widget, until_finished=True)
        try:
            if resume:
                handle = runner.start(entry.workflow, entry.instance_id, resume=True, revive=revive)
            else:
                handle = runner.start(entry.workflow, entry.instance_id, entry.inputs)
        except NbflowError:
            detach()
            raise
        entry.handle = handle
        return handle

    def _kept(self, entry: Entry) -> int:
        try:
            return WorkflowClient(entry.backend).status(entry.instance_id, output=False).tasks_done
        except NbflowError:
            return sum(1 for s in entry.log.tasks.values() if s in ("done", "restored"))

    def _outcome(self, entry: Entry, status: WorkflowStatus) -> Any:
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
                f"{hint(MAGIC, 'signal', name, str(status.signal))} JSON, then {hint(MAGIC, 'resume', name)}",
                file=sys.stderr,
            )
        elif state == "cancelled":
            print(
                f"cancelled: {status.tasks_done} tasks kept; {hint(MAGIC, 'resume', name, '--revive')} runs it again",
                file=sys.stderr,
            )
        elif state in ("interrupted", "paused", "waiting"):
            extra = f" ({hint(MAGIC, 'unpause', name)} first)" if state == "paused" else ""
            print(
                f"{state}: {status.tasks_done} tasks kept; re-run the cell or {hint(MAGIC, 'resume', name)} "
                f"to continue{extra}",
                file=sys.stderr,
            )
        else:
            print(f"{name}: {state}", file=sys.stderr)
        return None

    # -- %workflow ----------------------------------------------------------------------
    def line(self, line: str) -> Any:
        """Run one ``%workflow`` line (see ``%workflow help``)."""
        argv, tail_object = magic_argv(line, self.namespace)
        if not argv:
            print(usage(MAGIC))
            return None
        if argv[0] not in self._commands:
            raise CommandLineError(f"unknown %workflow command {argv[0]!r}.\n{usage(MAGIC)}")
        try:
            args = self._parser.parse_args(argv)
        except ParserExit:
            return None
        args.payload_object = tail_object
        return getattr(self, f"_cmd_{args.command}")(args)

    def resolve(
        self, ref: str, directory: str | None, latest: bool = False
    ) -> tuple[DiskcacheBackend, str, Entry | None]:
        """A name or id -> (store, instance id, the entry of its workflow if a cell of
        this kernel defined it). A workflow defined here means the instance its cell
        runs, unless ``ref`` is also the id of a stored instance (an id wins)."""
        entry = self.entries.get(ref)
        if entry is None:
            entry = next((e for e in self.entries.values() if e.instance_id == ref), None)
        here = entry is not None and (directory is None or self.backend(directory) is entry.backend)
        if entry is not None and here and (entry.instance_id == ref or entry.backend.load_instance(ref) is None):
            return entry.backend, entry.instance_id, entry
        backend = self.backend(directory or self._default_dir(), create=False)
        try:
            meta = resolve_instance(backend, ref, latest=latest)
        except UnknownInstanceError:
            raise CommandLineError(
                f"no workflow {ref!r} is defined in this kernel (run its %%workflow cell) and there is no "
                f"instance or workflow {ref!r} in {backend.directory}; {hint(MAGIC, 'list')} shows the stored ones"
            ) from None
        # An instance of a workflow defined here (another instance id): use that definition.
        owner = self.entries.get(meta.workflow)
        found = None
        if owner is not None:
            found = Entry(owner.name, owner.workflow, meta.instance_id, {}, backend, on_change=owner.on_change)
        return backend, meta.instance_id, found

    def _definition(self, entry: Entry | None, backend: DiskcacheBackend, iid: str, module: str | None) -> Entry:
        """The entry to run or compare with: this kernel's, or one from ``--module``."""
        if module:
            from nbflow.cli import find_workflows, load_module

            meta = WorkflowClient(backend).status(iid, output=False)
            flows = find_workflows(load_module(module))
            if meta.workflow not in flows:
                raise CommandLineError(f"--module {module} defines no workflow {meta.workflow!r} ({sorted(flows)})")
            return Entry(meta.workflow, flows[meta.workflow], iid, {}, backend)
        if entry is None:
            meta_wf = WorkflowClient(backend).status(iid, output=False).workflow
            raise CommandLineError(
                f"instance {iid!r} belongs to workflow {meta_wf!r}, which is not defined in this kernel: "
                f"run its %%workflow cell (add --no-run to only define it) or pass --module, then "
                f"{hint(MAGIC, 'resume', iid)}"
            )
        return entry

    def _cmd_help(self, args: argparse.Namespace) -> None:
        if args.topic:
            sub = subcommand_parsers(self._parser).get(args.topic)
            if sub is None:
                raise CommandLineError(f"unknown %workflow command {args.topic!r}.\n{usage(MAGIC)}")
            print(sub.format_help())
            return
        print(usage(MAGIC))

    def _cmd_list(self, args: argparse.Namespace) -> None:
        if args.dir is not None:
            backends = [self.backend(args.dir, create=False)]
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
            rows = [
                s
                for s in WorkflowClient(backend).list_instances(workflow=args.workflow)
                if args.state is None or str(s.state) == args.state
            ]
            print(f"{backend.directory}: {len(rows)} instance(s)")
            for st in rows:
                mark = "  *" if st.instance_id in here else ""
                print(f"  {st.instance_id}  {st.workflow}  {st.state}  {st.tasks_done}/{st.tasks_total}{mark}")
        if here:
            print("(* defined by a %%workflow cell in this kernel)")

    def _report(self, backend: DiskcacheBackend, iid: str, entry: Entry | None, *, plan: bool = False) -> StatusReport:
        """``status``: every task as the store has it (and this kernel's run says);
        ``plan``: what a resume would do with each task, and why."""
        client = WorkflowClient(backend)
        meta = backend.load_instance(iid)
        if meta is None and plan and entry is not None:  # a cell's instance that has not run yet
            _steps, upcoming = self._plan(entry, entry.new_runner())
            fresh = WorkflowStatus(entry.name, iid, RunState.PENDING, tasks_total=len(entry.workflow.nodes))
            return StatusReport(
                entry.name,
                fresh,
                dict.fromkeys(entry.workflow.task_ids, "run"),
                "  (not stored yet: the next run of its cell starts it)",
                reasons=upcoming,
                plan=True,
            )
        status = client.status(iid, output=not plan)
        meta = resolve_instance(backend, iid)
        rows = task_rows(backend, meta)
        name = entry.name if entry else status.workflow
        tasks: dict[str, str] = {r.task: r.state for r in rows}
        reasons: dict[str, str] = {}
        note = ""
        if plan and entry is not None:
            steps, reasons = self._plan(entry, entry.new_runner())
            words = {"restore": "restore", "stale": "stale (runs again)", "run": "run", "skip": "skip"}
            tasks = {t: words.get(p, p) for t, p in (steps or {}).items()}
            note = f"  (what {hint(MAGIC, 'resume', entry.name)} would do)"
        elif entry is not None and entry.log.instance_id == iid and entry.log.state:
            tasks.update(entry.log.tasks)
            reasons = dict(entry.log.reasons)
        if entry is not None and entry.background_error:
            note = "\n".join(filter(None, [note, f"  last background error: {entry.background_error}"]))
        footer = ""
        state = live_state(backend, meta)
        if state in ("interrupted", "cancelled", "failed", "paused") and not plan:
            footer = f"  continue it with {hint(MAGIC, 'resume', name if entry else iid)}"
        return StatusReport(name, status, tasks, note, rows=rows, reasons=reasons, plan=plan, footer=footer)

    def _cmd_status(self, args: argparse.Namespace) -> StatusReport:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        if args.module:
            entry = self._definition(entry, backend, iid, args.module)
        return self._report(backend, iid, entry)

    def _cmd_show(self, args: argparse.Namespace) -> Any:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        if args.module:
            entry = self._definition(entry, backend, iid, args.module)
        if entry is not None and not args.no_widget:
            running = entry.handle is not None and not entry.handle.done() and entry.widget is not None
            if running:
                self._display(entry.widget)  # the live one, still updating
                return None
            if self.show_widget(entry, entry.new_runner()) is not None:
                return None
        return self._report(backend, iid, entry, plan=True)

    def _cmd_result(self, args: argparse.Namespace) -> Any:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        codec = entry.workflow.codec if entry is not None else None
        return WorkflowClient(backend, codec).get_task_result(iid, args.task)

    def _cmd_resume(self, args: argparse.Namespace) -> Any:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        entry = self._definition(entry, backend, iid, args.module)
        runner = entry.new_runner()
        widget = None if args.no_widget else self.show_widget(entry, runner, background=args.background)
        if args.background:
            return self.start_background(entry, runner=runner, widget=widget, resume=True, revive=args.revive)
        return self.run_blocking(entry, runner, widget, resume=True, revive=args.revive)

    def _cmd_accept(self, args: argparse.Namespace) -> None:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        entry = self._definition(entry, backend, iid, args.module)
        before = backend.get_record(iid, args.task)
        record = entry.new_runner().accept(entry.workflow, iid, args.task)
        if before is not None and before.fingerprint == record.fingerprint and "accepted" not in record.extra:
            print(f"{iid}: the checkpoint of {args.task!r} already matches its current code")
            return
        print(
            f"{iid}: the checkpoint of {args.task!r} is kept for its current code (accepted as a cosmetic edit); "
            "the next run restores it"
        )

    def _cmd_cancel(self, args: argparse.Namespace) -> None:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        handle = entry.handle if entry is not None else None
        if handle is not None and handle.instance_id == iid and not handle.done():
            handle.cancel(args.reason or "cancelled by %workflow cancel")
            handle_state = "cancel requested"
        else:
            client = WorkflowClient(backend)
            running = client.is_running(iid)
            client.cancel(iid, reason=args.reason, by="%workflow cancel")
            handle_state = "cancel requested" if running else "marked cancelled (it was not running)"
        print(f"{iid}: {handle_state}; finished tasks are kept")

    def _cmd_pause(self, args: argparse.Namespace) -> None:
        backend, iid, _entry = self.resolve(args.ref, args.dir, args.latest)
        WorkflowClient(backend).pause(iid, reason=args.reason, by="%workflow pause")
        print(f"{iid}: pause requested; running tasks finish and are kept")

    def _cmd_unpause(self, args: argparse.Namespace) -> None:
        backend, iid, _entry = self.resolve(args.ref, args.dir, args.latest)
        WorkflowClient(backend).unpause(iid)
        print(f"{iid}: unpaused; continue it with {hint(MAGIC, 'resume', args.ref)}")

    def _cmd_signal(self, args: argparse.Namespace) -> None:
        backend, iid, _entry = self.resolve(args.ref, args.dir, args.latest)
        if args.payload_object is not NOTHING:
            payload = args.payload_object
        else:
            try:
                payload = json.loads(args.payload or "null")
            except ValueError as exc:
                raise CommandLineError(f"%workflow signal: the payload is not JSON ({exc}): {args.payload!r}") from None
        client = WorkflowClient(backend)
        client.send_signal(iid, args.signal, payload)
        extra = ""
        if not client.is_running(iid) and client.status(iid, output=False).state == "awaiting_signal":
            extra = f"; continue it with {hint(MAGIC, 'resume', args.ref)}"
        print(f"{iid}: signal {args.signal!r} sent{extra}")

    def _cmd_clear(self, args: argparse.Namespace) -> None:
        backend, iid, entry = self.resolve(args.ref, args.dir, args.latest)
        removed = WorkflowClient(backend).clear(iid)
        if entry is not None and entry.log.instance_id == iid:
            entry.log = RunLog(iid, entry.workflow.task_ids)
        print(f"{iid}: {'cleared' if removed else 'nothing stored'}")


def _input_record(wf: WorkflowDefinition, entry: Entry) -> dict[str, Any]:
    """A stand-in input record for an instance not stored yet: what its inputs' facts
    will be, so a new instance can be compared with the previous one."""
    from nbflow.run.stale import input_facts
    from nbflow.store.base import INPUT_KEY, CheckpointRecord

    return {INPUT_KEY: CheckpointRecord(INPUT_KEY, "", "", extra=input_facts(entry.inputs))}


def _shown_dir(directory: Any) -> str | None:
    """How a line the user may copy names the store: nothing for the default folder, a
    path relative to the working folder when the store is inside it (a saved notebook
    then carries no machine-specific path), else the store's address as it is."""
    text = str(directory)
    if "://" in text:
        return text
    path = Path(text).absolute()
    if path == Path(DEFAULT_DIR).absolute():
        return None
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return text
