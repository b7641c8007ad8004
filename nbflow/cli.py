"""``nbflow`` (or ``python -m nbflow``): look at and steer instances in a store directory.

For instances started from scripts, or left behind by a dead kernel (``nbflow help``
lists them all; they are ``%workflow``'s commands, from one table, :mod:`nbflow.commands`)::

    nbflow list [--dir .nbflow | --dsn postgresql://…] [--workflow W] [--state S]
    nbflow status NAME|ID [--module my_flows]   # every task; why stale (with the current code)
    nbflow result NAME|ID TASK                  # print a task's checkpointed output
    nbflow resume NAME|ID --module my_flows [--revive]  # the module (or .py file) defining the workflow
    nbflow accept NAME|ID TASK --module my_flows # keep a checkpoint after a cosmetic edit
    nbflow cancel NAME|ID [--reason TEXT] | pause NAME|ID | unpause NAME|ID
    nbflow signal NAME|ID SIGNAL [JSON]
    nbflow clear NAME|ID
    nbflow worker --module my_flows [--id NAME] [--concurrency N]   # a PooledWorker on the store

The store is a folder (``--dir``, default ``./.nbflow``) or a PostgreSQL address
(``--dsn postgresql://user@host/db``, also accepted by ``--dir``), which workers and
runners on several machines share.

A workflow NAME means its instance (``--latest``: its most recent one, when it has
several); an instance id wins. Errors advise ``nbflow`` commands. Everything goes
through the public ``WorkflowClient`` / ``CheckpointingRunner``; no IPython is imported.
``status`` never decodes a payload (inspecting a store cannot run code planted in it);
``result`` decodes the one output asked for.
"""

from __future__ import annotations

import argparse
import codecs
import io
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nbflow.commands import CLI, DEFAULT_DIR, build_parser, hint, render_error, subcommand_parsers, usage
from nbflow.core.errors import ConfigurationError, NbflowError, UnknownInstanceError
from nbflow.store.open_store import is_store_address, open_store

# Each command imports what it uses when it runs: ``nbflow list`` (and any ``--help``)
# must not pay for the engine, asyncio or the workflow builder (tests/test_import_cost.py).
if TYPE_CHECKING:
    from nbflow.core.graph import WorkflowDefinition
    from nbflow.core.status import WorkflowStatus
    from nbflow.store.base import Backend

__all__ = ["EXIT_READER_GONE", "find_workflows", "main"]


def load_module(spec: str) -> Any:
    """Import ``spec``: a dotted module name, or a path to a .py file."""
    import importlib
    import importlib.util
    from pathlib import Path

    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.exists():
            raise ConfigurationError("--module", spec, "an importable module or an existing .py file")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        sys.path.insert(0, str(path.parent.absolute()))
        mod_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ImportError as exc:
        raise ConfigurationError("--module", spec, f"an importable module ({exc})") from None


def find_workflows(module: Any) -> dict[str, WorkflowDefinition]:
    """Every workflow a module defines at top level (built, or a builder), by name."""
    from nbflow.core.builder import WorkflowBuilder
    from nbflow.core.graph import WorkflowDefinition

    found: dict[str, WorkflowDefinition] = {}
    for value in vars(module).values():
        if isinstance(value, WorkflowBuilder):
            try:
                value = value.build()
            except NbflowError:
                continue
        if isinstance(value, WorkflowDefinition):
            found[value.name] = value
    return found


def _age(ts: float, now: float | None = None) -> str:
    seconds = max(0, int((time.time() if now is None else now) - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _print_status(status: WorkflowStatus, running: bool, preview: str | None = None) -> None:
    """``preview``: the stored preview of the output, shown instead of decoding it."""
    live = " (a runner holds it now)" if running else ""
    print(f"instance  {status.instance_id}")
    print(f"workflow  {status.workflow}")
    print(f"state     {status.state}{live}")
    print(f"tasks     {status.tasks_done}/{status.tasks_total} checkpointed")
    if status.signal:
        print(f"signal    waiting for {status.signal!r}")
    if status.wake_at:
        print(f"wakes     {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status.wake_at))}")
    if status.message:
        print(f"message   {status.message}")
    if status.error:
        print(f"error     {status.error}")
        if status.error.traceback:
            print(status.error.traceback.rstrip())
    if status.is_completed():
        print(f"output    {status.output!r}"[:400] if preview is None else f"output    {preview}"[:400])


def _output_preview(backend: Backend, instance_id: str) -> str | None:
    """The stored previews of a completed instance's final outputs (no payload decoded)."""
    meta = backend.load_instance(instance_id)
    if meta is None or not meta.sinks:
        return None
    records = backend.get_records(instance_id)
    shown = {s: records[s].preview if s in records else "?" for s in meta.sinks}
    return next(iter(shown.values())) if len(shown) == 1 else ", ".join(f"{k}: {v}" for k, v in shown.items())


def _parser() -> argparse.ArgumentParser:
    """The ``nbflow`` parser: built from the command table ``%workflow`` uses too."""
    return build_parser(CLI)


# What a shell reports for a program that SIGPIPE ended (128 + 13): ``yes | head -1``.
EXIT_READER_GONE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nbflow`` command; returns the exit code.

    A reader that stops early (``nbflow list | head -1``) is no error of nbflow's: it
    exits quietly with :data:`EXIT_READER_GONE`, the status a shell gives ``cat`` or
    ``git log`` there, so ``set -o pipefail`` scripts see what they see with any tool.
    Python ignores SIGPIPE (a write to a closed pipe raises BrokenPipeError instead);
    setting it back to the default for the whole process would kill nbflow silently
    whenever a PostgreSQL connection drops mid-write, so the error is caught here.
    """
    _printable_streams()
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help and usage errors: their text must get out too
            _flush_stdout()
            raise
        _flush_stdout()  # a reader that has gone is found here, not at interpreter exit
        return code
    except BrokenPipeError:
        _discard_unwritten_output()
        return EXIT_READER_GONE


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args([_typed_text(a) for a in sys.argv[1:]] if argv is None else argv)
    try:
        return _run(args)
    except NbflowError as exc:
        print(f"nbflow: {render_error(exc, CLI, _store_hint(args))}", file=sys.stderr)
        return 2


def _flush_stdout() -> None:
    if sys.stdout is not None:  # None under pythonw, which has no console
        sys.stdout.flush()


def _discard_unwritten_output() -> None:
    """Point stdout at the null device: what is still buffered would otherwise fail
    again at exit, as "Exception ignored ... BrokenPipeError" on stderr."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _store_hint(args: argparse.Namespace) -> str | None:
    """The --dir to repeat in advice: None for the default store."""
    directory = getattr(args, "dir", DEFAULT_DIR)
    if is_store_address(directory):
        from nbflow.store.postgres_connect import redact_password

        return redact_password(directory)  # advice is printed: never the password
    return None if directory == DEFAULT_DIR else str(directory)


def _printable_streams() -> None:
    """Print any instance id whatever the locale: a character the output's encoding
    lacks (LC_ALL=C, a Windows code page when redirected) comes out as an escape
    instead of a UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and codecs.lookup(stream.encoding).name != "utf-8":
            stream.reconfigure(errors="backslashreplace")


def _typed_text(arg: str) -> str:
    """An argument as the UTF-8 text typed, when the locale could not decode it
    (LC_ALL=C leaves its bytes as surrogate escapes); no-op on Windows."""
    if not any("\udc80" <= c <= "\udcff" for c in arg):
        return arg
    try:
        return os.fsencode(arg).decode("utf-8")
    except UnicodeError:
        return arg


def _migrate(directory: str) -> int:
    from nbflow.store.migrate import migrate_store

    report = migrate_store(directory)
    for name in report.migrated:
        print(f"migrated {name}")
    for name, why in report.failed.items():
        print(f"could not migrate {name}: {why}", file=sys.stderr)
    print(f"{len(report.migrated)} migrated, {len(report.current)} already current, {len(report.failed)} failed")
    return 1 if report.failed else 0


def _run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "help":
        return _help(args.topic)
    if cmd == "migrate":
        if is_store_address(args.dir):
            raise ConfigurationError("--dir", args.dir, "a store folder: only folders hold nbflow 0.1 instances")
        return _migrate(args.dir)
    backend = open_store(args.dir)
    if cmd == "list":
        return _list(backend, args)
    if cmd == "worker":
        return _worker(backend, args)
    from nbflow.run.client import WorkflowClient
    from nbflow.run.lookup import resolve_instance

    client = WorkflowClient(backend)
    # every other command names one instance: an instance id, or a workflow name
    try:
        iid = resolve_instance(backend, args.ref, latest=args.latest).instance_id
    except UnknownInstanceError:
        if cmd != "clear":
            raise
        iid = args.ref  # clearing what is not there: "nothing stored", not an error
    where = _store_hint(args)
    if cmd in ("status", "show"):
        # output=False: the CLI shows stored previews and never decodes a payload, so
        # inspecting a store cannot run code planted in it
        status = client.status(iid, output=False)
        _print_status(status, client.is_running(iid), _output_preview(backend, iid))
        _print_tasks(backend, iid, where)
        if args.module:
            _print_plan(backend, iid, _workflow_of(status.workflow, args.module))
        elif cmd == "show":
            print(
                f"(pass --module to compare the checkpoints with the current code: {hint(CLI, 'show', iid, '--module', 'FILE')})"
            )
        return 0
    if cmd == "result":
        print(repr(client.get_task_result(iid, args.task)))
        return 0
    if cmd == "resume":
        from nbflow.run.events import TextProgress
        from nbflow.run.runner import CheckpointingRunner

        status = client.status(iid, output=False)
        runner = CheckpointingRunner(backend)
        runner.subscribe(TextProgress(), kinds=TextProgress.KINDS)
        result = runner.resume(_workflow_of(status.workflow, args.module), iid, revive=args.revive)
        _print_status(result, False)
        return 0 if result.state in ("completed", "awaiting_signal", "paused") else 1
    if cmd == "accept":
        from nbflow.run.runner import CheckpointingRunner

        status = client.status(iid, output=False)
        wf = _workflow_of(status.workflow, args.module)
        before = backend.get_record(iid, args.task)
        record = CheckpointingRunner(backend).accept(wf, iid, args.task)
        if before is not None and before.fingerprint == record.fingerprint and "accepted" not in record.extra:
            print(f"the checkpoint of {args.task!r} in {iid} already matches its current code")
        else:
            print(
                f"accepted: the checkpoint of {args.task!r} in {iid} is kept for its current code; resume restores it"
            )
        return 0
    if cmd in ("cancel", "pause"):
        getattr(client, cmd)(iid, reason=args.reason, by="nbflow CLI")
        print(f"{cmd} requested for {iid}")
        return 0
    if cmd == "unpause":
        client.unpause(iid)
        print(f"unpaused {iid}; resume it to continue: {hint(CLI, 'resume', iid, '--module', 'FILE', directory=where)}")
        return 0
    if cmd == "signal":
        import json

        try:
            payload = json.loads(args.payload)
        except json.JSONDecodeError as exc:
            raise ConfigurationError("payload", args.payload, f"JSON ({exc})") from None
        client.send_signal(iid, args.signal, payload)
        print(f"signal {args.signal!r} sent to {iid}")
        return 0
    if cmd == "clear":
        removed = client.clear(iid)
        print(f"cleared {iid}" if removed else f"nothing stored for {iid}")
        return 0
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the commands


def _help(topic: str | None) -> int:
    if topic is None:
        print(usage(CLI))
        return 0
    sub = subcommand_parsers(_parser()).get(topic)
    if sub is None:
        print(f"nbflow: unknown command {topic!r}\n{usage(CLI)}", file=sys.stderr)
        return 2
    print(sub.format_help())
    return 0


def _where(backend: Backend) -> str:
    """How to name a store to the user (a database's address without its password)."""
    return str(getattr(backend, "where", None) or getattr(backend, "directory", backend))


def _list(backend: Backend, args: argparse.Namespace) -> int:
    """One read of the store index (``Backend.list_summaries``), newest first: no
    instance is opened unless it changed since it was indexed, and no engine is loaded."""
    from nbflow.core.status import RunState
    from nbflow.run.lookup import live_state
    from nbflow.store.base import InstanceMeta

    known = {state.value: state for state in RunState}
    rows = []
    for row in sorted(backend.list_summaries(workflow=args.workflow), key=lambda r: r.updated_at, reverse=True):
        word = row.state
        if word == RunState.RUNNING:  # the word status uses: nobody holds it any more -> interrupted
            word = live_state(backend, InstanceMeta(row.instance_id, row.workflow, "", state=word))
        state = known.get(word, RunState.FAILED)
        if args.state is None or state == args.state:
            rows.append((row, state))
    if not rows:
        print(f"no instances in {_where(backend)}")
        return 0
    lines = [f"{'INSTANCE':<32} {'WORKFLOW':<20} {'STATE':<16} {'TASKS':>9}  UPDATED"]
    now = time.time()
    for row, state in rows:
        lines.append(
            f"{row.instance_id:<32} {row.workflow:<20} {state!s:<16} "
            f"{row.tasks_done:>4}/{row.tasks_total:<4}  {_age(row.updated_at, now)}"
        )
    print("\n".join(lines))
    return 0


def _print_tasks(backend: Backend, iid: str, where: str | None) -> None:
    """Every task as the store has it, and what to do about a run that stopped."""
    from nbflow.run.lookup import live_state
    from nbflow.run.report import format_rows, task_rows

    meta = backend.load_instance(iid)
    if meta is None:
        return
    try:
        rows = task_rows(backend, meta)
    except NbflowError as exc:  # a damaged or unreadable store: the header said what is known
        print(f"tasks     cannot be listed: {exc}")
        return
    print()
    for line in format_rows(rows):
        print(line)
    stopped = [r.task for r in rows if r.state == "interrupted"]
    state = live_state(backend, meta)
    if stopped:
        print(f"was running when the run stopped: {', '.join(stopped)} (they run again on resume)")
    if state in ("interrupted", "cancelled", "failed", "paused"):
        print(f"continue it with {hint(CLI, 'resume', iid, '--module', 'FILE', directory=where)}")


def _print_plan(backend: Backend, iid: str, wf: WorkflowDefinition) -> None:
    """What a resume with ``wf`` (the current code) would do, and why stale tasks are stale."""
    from nbflow.run.runner import CheckpointingRunner
    from nbflow.run.stale import explain_plan

    records = backend.get_records(iid)
    runner = CheckpointingRunner(backend)
    plan = runner.plan(wf, iid)
    reasons = explain_plan(wf, records, plan)
    print()
    print("with the current code, a resume would:")
    width = max((len(t) for t in plan), default=0)
    for tid, what in plan.items():
        words = {"restore": "restore", "stale": "run again (stale)", "run": "run", "skip": "skip"}.get(what, what)
        reason = reasons.get(tid)
        print(f"  {tid.ljust(width)}  {words}" + (f": {reason.text}" if reason else ""))
        if reason and reason.diff:
            for line in reason.diff.splitlines():
                print(f"  {''.ljust(width)}    {line}")


def _workflow_of(name: str, module: str | None) -> WorkflowDefinition:
    if not module:
        raise ConfigurationError("--module", module, f"the module (or .py file) defining workflow {name!r}")
    flows = find_workflows(load_module(module))
    if name not in flows:
        raise ConfigurationError(
            "--module", module, f"a module defining workflow {name!r} (it defines {sorted(flows)})"
        )
    return flows[name]


def _worker(backend: Backend, args: argparse.Namespace) -> int:
    import os
    import signal
    import socket

    from nbflow.run.worker import PooledWorker

    flows = find_workflows(load_module(args.module))
    if not flows:
        raise ConfigurationError("--module", args.module, "a module defining at least one workflow")
    worker = PooledWorker(
        args.id or f"{socket.gethostname()}:{os.getpid()}",
        backend,
        list(flows.values()),
        claim_ttl=args.claim_ttl,
        heartbeat=args.heartbeat,
        poll_interval=args.poll_interval,
        concurrency=args.concurrency,
    )
    # SIGTERM exists on every platform, but Windows never runs a handler for it
    # (os.kill(pid, SIGTERM) there is TerminateProcess): stop a Windows worker with Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: worker.request_stop(finish=True))
    print(f"worker {worker.worker_id} on {_where(backend)}: {', '.join(sorted(flows))}", flush=True)
    try:
        worker.run(until_idle=args.until_idle)
    except KeyboardInterrupt:
        pass
    print(f"worker {worker.worker_id} stopped: {worker.stats}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
