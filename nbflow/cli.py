"""``nbflow`` (or ``python -m nbflow``): look at and steer instances in a store directory.

For instances started from scripts, or left behind by a dead kernel::

    nbflow list [--dir .nbflow] [--workflow W] [--state S]
    nbflow status ID
    nbflow resume ID --module my_flows      # the module (or .py file) that defines the workflow
    nbflow cancel ID [--reason TEXT] | pause ID | unpause ID
    nbflow signal ID NAME [JSON]
    nbflow clear ID
    nbflow worker --module my_flows [--id NAME] [--concurrency N]   # a PooledWorker on the store

Everything goes through the public ``WorkflowClient`` / ``CheckpointingRunner``; no
IPython is imported.
"""

from __future__ import annotations

import argparse
import codecs
import importlib
import importlib.util
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nbflow.core.builder import WorkflowBuilder
from nbflow.core.errors import ConfigurationError, NbflowError
from nbflow.core.graph import WorkflowDefinition
from nbflow.core.status import WorkflowStatus
from nbflow.run.client import WorkflowClient
from nbflow.run.events import TextProgress
from nbflow.run.runner import CheckpointingRunner
from nbflow.store.disk import DiskcacheBackend

__all__ = ["find_workflows", "main"]


def load_module(spec: str) -> Any:
    """Import ``spec``: a dotted module name, or a path to a .py file."""
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


def _age(ts: float) -> str:
    seconds = max(0, int(time.time() - ts))
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


def _output_preview(backend: DiskcacheBackend, instance_id: str) -> str | None:
    """The stored previews of a completed instance's final outputs (no payload decoded)."""
    meta = backend.load_instance(instance_id)
    if meta is None or not meta.sinks:
        return None
    records = backend.get_records(instance_id)
    shown = {s: records[s].preview if s in records else "?" for s in meta.sinks}
    return next(iter(shown.values())) if len(shown) == 1 else ", ".join(f"{k}: {v}" for k, v in shown.items())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbflow", description="Inspect and steer nbflow instances in a store.")
    parser.add_argument("--dir", default=".nbflow", help="the store directory (default ./.nbflow)")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="list stored instances, newest first")
    ls.add_argument("--workflow", help="only this workflow")
    ls.add_argument("--state", help="only this state (running, completed, failed, ...)")
    st = sub.add_parser("status", help="show one instance")
    st.add_argument("instance")
    rs = sub.add_parser("resume", help="continue an instance in this process")
    rs.add_argument("instance")
    rs.add_argument("--module", required=True, help="module name or .py file defining the workflow")
    for name, text in (("cancel", "stop a running instance"), ("pause", "pause at the next task boundary")):
        p = sub.add_parser(name, help=text)
        p.add_argument("instance")
        p.add_argument("--reason", default="", help="why (stored with the instance)")
    up = sub.add_parser("unpause", help="lift a pause (then resume)")
    up.add_argument("instance")
    sg = sub.add_parser("signal", help="send a signal (buffered until the workflow waits for it)")
    sg.add_argument("instance")
    sg.add_argument("name")
    sg.add_argument("payload", nargs="?", default="null", help="JSON payload (default null)")
    cl = sub.add_parser("clear", help="delete an instance and its checkpoints")
    cl.add_argument("instance")
    wk = sub.add_parser("worker", help="run a PooledWorker on the store until Ctrl-C / SIGTERM")
    wk.add_argument("--module", required=True, help="module name or .py file defining the workflows")
    wk.add_argument("--id", default=None, help="worker name (default host:pid)")
    wk.add_argument("--concurrency", type=int, default=1, help="units run at once (default 1)")
    wk.add_argument("--claim-ttl", default="5m", help="claim lifetime without heartbeat (default 5m)")
    wk.add_argument("--heartbeat", default="30s", help="claim renewal interval (default 30s)")
    wk.add_argument("--poll-interval", default="1s", help="look for work this often when idle (default 1s)")
    wk.add_argument("--until-idle", action="store_true", help="exit once no instance is pending or running")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nbflow`` command; returns the exit code."""
    _printable_streams()
    args = _parser().parse_args([_typed_text(a) for a in sys.argv[1:]] if argv is None else argv)
    try:
        return _run(args)
    except NbflowError as exc:
        print(f"nbflow: {exc}", file=sys.stderr)
        return 2


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


def _run(args: argparse.Namespace) -> int:
    backend = DiskcacheBackend(args.dir)
    client = WorkflowClient(backend)
    cmd = args.command
    if cmd == "list":
        rows = client.list_instances(workflow=args.workflow, state=args.state)
        if not rows:
            print(f"no instances in {backend.directory}")
            return 0
        metas = {m.instance_id: m for m in backend.list_instances()}
        print(f"{'INSTANCE':<32} {'WORKFLOW':<20} {'STATE':<16} {'TASKS':>9}  UPDATED")
        for s in rows:
            state = str(s.state)
            if state == "running" and not client.is_running(s.instance_id):
                state = "running?"  # no live runner holds it: the process died; resume it
            updated = _age(metas[s.instance_id].updated_at) if s.instance_id in metas else ""
            print(f"{s.instance_id:<32} {s.workflow:<20} {state:<16} {s.tasks_done:>4}/{s.tasks_total:<4}  {updated}")
        return 0
    if cmd == "status":
        # output=False: the CLI shows stored previews and never decodes a payload, so
        # inspecting a store cannot run code planted in it
        status = client.status(args.instance, output=False)
        _print_status(status, client.is_running(args.instance), _output_preview(backend, args.instance))
        return 0
    if cmd == "resume":
        status = client.status(args.instance, output=False)
        flows = find_workflows(load_module(args.module))
        if status.workflow not in flows:
            raise ConfigurationError(
                "--module", args.module, f"a module defining workflow {status.workflow!r} (it defines {sorted(flows)})"
            )
        runner = CheckpointingRunner(backend)
        runner.subscribe(TextProgress())
        result = runner.resume(flows[status.workflow], args.instance)
        _print_status(result, False)
        return 0 if result.state in ("completed", "awaiting_signal", "paused") else 1
    if cmd in ("cancel", "pause"):
        getattr(client, cmd)(args.instance, reason=args.reason, by="nbflow CLI")
        print(f"{cmd} requested for {args.instance}")
        return 0
    if cmd == "unpause":
        client.unpause(args.instance)
        print(f"unpaused {args.instance}; resume it to continue")
        return 0
    if cmd == "signal":
        try:
            payload = json.loads(args.payload)
        except json.JSONDecodeError as exc:
            raise ConfigurationError("payload", args.payload, f"JSON ({exc})") from None
        client.send_signal(args.instance, args.name, payload)
        print(f"signal {args.name!r} sent to {args.instance}")
        return 0
    if cmd == "clear":
        removed = client.clear(args.instance)
        print(f"cleared {args.instance}" if removed else f"nothing stored for {args.instance}")
        return 0
    if cmd == "worker":
        return _worker(backend, args)
    raise AssertionError(cmd)  # pragma: no cover - argparse restricts the commands


def _worker(backend: DiskcacheBackend, args: argparse.Namespace) -> int:
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
    print(f"worker {worker.worker_id} on {backend.directory}: {', '.join(sorted(flows))}", flush=True)
    try:
        worker.run(until_idle=args.until_idle)
    except KeyboardInterrupt:
        pass
    print(f"worker {worker.worker_id} stopped: {worker.stats}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
