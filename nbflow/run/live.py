"""Running tasks, live: what they print, how far they are, and the state they save.

Each attempt of a task gets a :class:`LiveTask` (its ``get_task_context().hooks``):

- **Output.** The stdout/stderr proxies (``capture.py``) hand every write to it. Writes
  are only appended to a buffer; one flusher thread per process turns each task's new
  text into one :class:`~nbflow.run.events.TaskOutput` event at most every
  :data:`FLUSH_INTERVAL` (20 per second), so a task printing 100,000 lines sends a few
  events per second, not 100,000. Every :data:`SAVE_INTERVAL` the tail of what an
  unfinished attempt printed (and its progress) is stored in the task state, and again
  when the attempt fails or is cut short: output printed before a crash is kept.
- **Progress.** ``nf.progress(...)``/``ctx.progress(...)`` and tqdm bars (``tqdm_hook``)
  report to it; it sends :class:`~nbflow.run.events.TaskProgress` events (same rate).
- **State.** ``ctx.checkpoint(state)`` encodes ``state`` with the instance's codec and
  stores it atomically as the record ``state_id(task_id)`` (``nbflow.core.keys``), on
  the backend's large-output path (``new_sink``/``put_record``: big arrays stream to a
  file); ``ctx.restore(default)`` reads it back in a later attempt or after a crash. A
  state is used only while the task's fingerprint and the records it reads are those it
  was saved with. :meth:`LiveHub.settled` drops it once the task's output is stored.

- **Displays.** What the task displays (``display(...)``, ``plt.show()``, figures it
  leaves open) reaches :meth:`LiveTask.display` from the notebook layer's capture
  (``nbflow.run.displays`` has the seam); each is sent at once as a
  :class:`~nbflow.run.events.TaskDisplay` event and, when the attempt succeeds, stored
  with its output in the same transaction (``CheckpointIO`` asks :meth:`LiveHub.take_displays`).
  A restored task's displays are read back for its ``TaskRestored`` event
  (:meth:`LiveHub.display_fields`).

Remote bodies (``ProcessExecutor``, ``DaskExecutor``) get a :class:`RemoteLink` instead:
their output, progress and states travel back to the runner, which publishes and
commits them (``live_remote.py``).

Nothing here imports a UI: the widget listens to the events.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from nbflow.core.keys import (
    DISPLAY_SUFFIX,
    STATE_SUFFIX,
    display_id,
    parse_display_id,
    parse_item_id,
    parse_iteration_id,
    state_id,
)
from nbflow.run import displays as shown
from nbflow.run import events as ev
from nbflow.run import tqdm_hook
from nbflow.run.task_state import LIVE_KEY, PROGRESS_KEY, TaskStates, stored_progress
from nbflow.store.base import DAMAGED_CODEC, CheckpointRecord

if TYPE_CHECKING:
    from nbflow.core.graph import Node
    from nbflow.run.checkpoint import CheckpointIO

__all__ = [
    "FLUSH_INTERVAL",
    "SAVE_INTERVAL",
    "TAIL",
    "Buffered",
    "LiveHub",
    "LiveTask",
    "collapse",
    "last_line",
    "store_of",
]

FLUSH_INTERVAL = 0.05  # seconds: at most 20 output/progress events per second per task
SAVE_INTERVAL = 2.0  # seconds: how often an unfinished attempt's tail and progress are stored
TAIL = 20_000  # characters of each stream kept live (and stored for an unfinished attempt)


def collapse(text: str) -> str:
    r"""Text as a terminal shows it: each line keeps what follows its last carriage
    return, so tqdm-like ``\r`` frames become the one line they end with.

    >>> collapse("epoch 1\n\r 10%|#\r 20%|##\ndone\r\n")
    'epoch 1\n 20%|##\ndone\n'
    >>> collapse(" 50%\r100%\r")
    '100%'
    """
    if "\r" not in text:
        return text
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if "\r" in line:
            parts = [p for p in line.split("\r") if p]
            lines[i] = parts[-1] if parts else ""
    return "\n".join(lines)


def last_line(text: str, limit: int = 160) -> str:
    """The last non-empty line of ``text`` (collapsed), cut to ``limit`` characters.

    >>> last_line("loading\\nepoch 3/10 loss 0.12\\n\\n")
    'epoch 3/10 loss 0.12'
    """
    for line in reversed(collapse(text).split("\n")):
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def _tail(text: str, limit: int = TAIL) -> str:
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    return cut[newline + 1 :] if 0 <= newline < 200 else cut


# -- the flusher ----------------------------------------------------------------------------
class _Flusher:
    """One daemon thread per process that flushes the buffers of tasks that have new
    output or progress, every FLUSH_INTERVAL while there are any (asleep otherwise)."""

    def __init__(self) -> None:
        self._dirty: set[Buffered] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def mark(self, sink: Buffered) -> None:
        with self._lock:
            self._dirty.add(sink)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()  # a forked child has no flusher thread: start its own
                self._thread = threading.Thread(target=self._main, name="nbflow-live", daemon=True)
                self._thread.start()
        self._wake.set()

    def _main(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(FLUSH_INTERVAL)
            with self._lock:
                batch, self._dirty = self._dirty, set()
                if not self._dirty:
                    self._wake.clear()
            for sink in batch:
                try:
                    sink.flush()
                except Exception:  # noqa: BLE001 - a broken sink must not stop the others
                    pass


_FLUSHER = _Flusher()


# -- buffering shared by local and remote sinks ----------------------------------------------
class Buffered:
    """Output and progress of one attempt, buffered between flushes (thread-safe).

    Subclasses say where a flush goes (:meth:`_emit`): events and the store here
    (:class:`LiveTask`), the runner's channel in a worker process (``live_remote``).
    """

    __slots__ = (
        "__weakref__", "_bars", "_closed", "_cut", "_err", "_explicit", "_lock", "_marked", "_out",
        "_pending", "_progress", "_progress_sent", "_touched", "attempt", "task_id",
    )  # fmt: skip

    def __init__(self, task_id: str, attempt: int) -> None:
        self.task_id, self.attempt = task_id, attempt
        self._lock = threading.RLock()
        self._touched = False  # anything written or reported at all (a silent attempt closes for free)
        self._out: list[str] = []
        self._err: list[str] = []
        self._pending = 0  # characters buffered since the last flush
        self._cut = 0
        self._marked = False
        self._closed = False
        self._progress: tuple[float, float | None, str, float] | None = None
        self._progress_sent: tuple[float, float | None, str, float] | None = None  # the last report flushed
        self._explicit = False  # nf.progress was called: tqdm bars only add to the note
        self._bars: dict[int, list[Any]] = {}  # id(bar) -> [done, total, desc], oldest first

    # -- writers (any thread) --
    def write(self, which: str, text: str) -> None:
        """Buffer ``text`` written to ``which`` ("stdout" or "stderr")."""
        if not text:
            return
        with self._lock:
            if self._closed:
                return
            (self._out if which == "stdout" else self._err).append(text)
            self._pending += len(text)
            if self._pending > 4 * TAIL:
                self._trim()
            self._mark()

    def _trim(self) -> None:
        """Keep only the newest TAIL characters of each stream's buffer (a task printing
        faster than it is shown); what was left out is counted in ``cut``."""
        for buf in (self._out, self._err):
            text = "".join(buf)
            if len(text) > TAIL:
                kept = _tail(text)  # the newest TAIL characters, from a line start
                self._cut += len(text) - len(kept)
                text = kept
            buf[:] = [text] if text else []
        self._pending = sum(len(b[0]) for b in (self._out, self._err) if b)

    def _mark(self) -> None:
        self._touched = True
        if not self._marked:
            self._marked = True
            _FLUSHER.mark(self)

    @property
    def last_progress(self) -> tuple[float, float | None, str, float] | None:
        """(done, total, note, reported at) of the latest progress report, if any."""
        return self._progress

    def progress(self, done: float, total: float | None, note: str) -> None:
        """``nf.progress`` / ``ctx.progress``: the task's own word wins over tqdm bars.

        Called every step of a loop, so it takes no lock: it only replaces the latest
        report (a new tuple, assigned atomically); the flusher sends the latest one at
        most every FLUSH_INTERVAL (see :meth:`flush` for why no report is lost, the last
        one included)."""
        if self._closed:
            return
        self._explicit = True
        self._progress = (done, total, note[:200], time.time())
        if not self._marked:
            self._mark()

    def bar(self, key: int, done: float, total: float | None, desc: str, *, closed: bool = False) -> None:
        """A tqdm bar moved (``tqdm_hook``). The oldest open bar is the task's progress;
        an inner bar (batches inside epochs) shows in the note."""
        with self._lock:
            if self._closed:
                return
            if closed:
                entry = self._bars.pop(key, None)
                if not self._bars and not self._explicit:
                    self._set_from_bar(done, total, desc, [])
                    return
                if entry is None:
                    return
            else:
                self._bars[key] = [done, total, desc]
            if self._explicit or not self._bars:
                return
            first_key = next(iter(self._bars))
            first = self._bars[first_key]
            inner = [v for k, v in self._bars.items() if k != first_key]
            self._set_from_bar(first[0], first[1], first[2], inner)

    def _set_from_bar(self, done: float, total: float | None, desc: str, inner: list[list[Any]]) -> None:
        note = str(desc or "").strip().rstrip(":")
        if inner:
            d, t, name = inner[-1]
            inner_text = f"{str(name or '').strip().rstrip(':')} {_num(d)}/{_num(t) if t else '?'}".strip()
            note = f"{note} · {inner_text}" if note else inner_text
        self._progress = (float(done), None if not total else float(total), note[:200], time.time())
        self._mark()

    # -- flushing --
    def flush(self) -> None:
        """Hand what is buffered to :meth:`_emit` (called by the flusher, and on close).

        :meth:`progress` writes without the lock: each report is a new tuple, and one is
        sent when it is not the one sent last. The mark is dropped before the report is
        read, so a report made after that read marks the buffer again and goes out with
        the next flush: none is lost, the last one included."""
        with self._lock:
            self._marked = False
            out, err = "".join(self._out), "".join(self._err)
            self._out.clear()
            self._err.clear()
            cut, self._pending, self._cut = self._cut, 0, 0
            latest = self._progress
            progress = latest if latest is not self._progress_sent else None
            self._progress_sent = latest
            if out or err or progress is not None or cut:
                self._emit(out, err, cut, progress)

    def _emit(self, out: str, err: str, cut: int, progress: tuple[float, float | None, str, float] | None) -> None:
        raise NotImplementedError


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- the runner's side -------------------------------------------------------------------------
class LiveTask(Buffered):
    """The hooks of one local attempt (see the module docstring); also what a remote
    attempt's messages are folded into."""

    __slots__ = (
        "_deps", "_displays", "_figures", "_node", "_saved_at", "_state", "_unsaved", "fingerprint", "hub",
        "remote_token", "stderr_tail", "stdout_tail",
    )  # fmt: skip

    def __init__(self, hub: LiveHub, task_id: str, attempt: int, node: Node) -> None:
        super().__init__(task_id, attempt)
        self.hub, self.fingerprint, self._node = hub, node.fingerprint, node
        self._deps: dict[str, float] | None = None
        self.stdout_tail = ""
        self.stderr_tail = ""
        self._state: Any = _NOTHING
        self._saved_at = time.monotonic()
        self._unsaved = False  # output or progress the store has not seen
        self.remote_token: str | None = None
        self._displays: shown.DisplayList | None = None  # made on the first display
        capture = shown.provider()
        # the figures open as the attempt starts: those open at its end and not here are its own
        self._figures: Any = capture.begin() if capture is not None else None

    @property
    def deps(self) -> dict[str, float]:
        """The finish times of the records this attempt reads: a saved state is used only
        while they are the same (an upstream task that ran again makes it stale)."""
        if self._deps is None:
            records = self.hub.records
            self._deps = {d: records[d].finished_at for d in self._node.deps if d in records}
        return self._deps

    # -- TaskHooks --
    def checkpoint(self, state: Any) -> None:
        record, sink = self.hub.io.encode(state_id(self.task_id), self.fingerprint, state, **self._state_fields())
        self._store_state(record, sink)
        self._state = state

    def checkpoint_encoded(self, data: bytes | bytearray | memoryview) -> None:
        """Store a state a remote attempt encoded with this instance's codec."""
        sink = self.hub.io.backend.new_sink(self.hub.io.instance_id)
        try:
            sink.write(data)
        except BaseException:
            discard = getattr(sink, "discard", None)
            if discard is not None:
                discard()
            raise
        record = CheckpointRecord(
            task_id=state_id(self.task_id),
            fingerprint=self.fingerprint,
            codec=self.hub.io.codec.name,
            **self._state_fields(),
        )
        self._store_state(record, sink)
        self._state = _NOTHING  # decoded only if asked (restore), not held here

    def _state_fields(self) -> dict[str, Any]:
        now = time.time()
        return {"attempt": self.attempt, "started_at": now, "finished_at": now, "extra": {"deps": self.deps}}

    def _store_state(self, record: CheckpointRecord, sink: Any) -> None:
        if self._closed:
            discard = getattr(sink, "discard", None)
            if discard is not None:
                discard()
            raise asyncio.CancelledError(
                f"task {self.task_id!r}: this attempt is over (the run stopped or it timed out); its state is not saved"
            )
        self.hub.store_state(record, sink)

    def restore(self, default: Any) -> Any:
        if self._state is not _NOTHING:
            return self._state
        record = self.hub.state_record(self.task_id, self.fingerprint, self.deps)
        if record is None:
            return default
        value = self.hub.io.read(record)
        self._state = value
        return value

    def state_payload(self) -> bytes | None:
        """The stored state's encoded bytes (what a remote attempt restores), or None."""
        record = self.hub.state_record(self.task_id, self.fingerprint, self.deps)
        if record is None:
            return None
        with self.hub.io.backend.open_payload(self.hub.io.instance_id, record) as stream:
            data = stream.read()
            verify = getattr(stream, "verify", None)
            if verify is not None and not verify():
                return None  # a damaged state is as good as none: start from the default
        return bytes(data)

    # -- displays --
    def display(
        self, data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None, *, display_id: str | None = None,
        update: bool = False,
    ) -> None:  # fmt: skip
        """The task displayed ``data`` (a mimebundle); called from the task's thread."""
        bundle = shown.normalize(data, metadata)
        if bundle is None:
            return
        with self._lock:
            if self._closed:
                return
            if self._displays is None:
                self._displays = shown.DisplayList()
            self._displays.add(bundle, display_id=display_id, update=update)
            self._touched = True
        self.hub.publish(
            ev.TaskDisplay,
            task_id=self.task_id,
            attempt=self.attempt,
            bundle=bundle["data"],
            metadata=bundle["metadata"],
            display_id=display_id,
            update=update,
        )

    def clear_displays(self) -> None:
        """``clear_output()`` in the task: what it displayed so far is dropped."""
        with self._lock:
            if self._closed or self._displays is None:
                return
            self._displays.clear()
        self.hub.publish(ev.TaskDisplay, task_id=self.task_id, attempt=self.attempt, clear=True)

    @property
    def displays(self) -> tuple[Mapping[str, Any], ...]:
        """What this attempt displayed so far, in order."""
        return self._displays.items() if self._displays is not None else ()

    def remote(self, out: str, err: str, cut: int, progress: tuple[float, float | None, str, float] | None) -> None:
        """Fold in one flush of this attempt running in another process (``live_remote``)."""
        with self._lock:
            if self._closed:
                return
            if out:
                self._out.append(out)
            if err:
                self._err.append(err)
            self._pending += len(out) + len(err)
            self._cut += cut
            if progress is not None:
                self._progress = tuple(progress)  # type: ignore[assignment]  # a new tuple: sent at the next flush
            if self._pending > 4 * TAIL:
                self._trim()
            self._mark()

    # -- flushing --
    def _emit(self, out: str, err: str, cut: int, progress: tuple[float, float | None, str, float] | None) -> None:
        if out:
            self.stdout_tail = _tail(collapse(self.stdout_tail + out))
        if err:
            self.stderr_tail = _tail(collapse(self.stderr_tail + err))
        self._unsaved = True
        hub = self.hub
        if out or err or cut:
            hub.publish(ev.TaskOutput, task_id=self.task_id, attempt=self.attempt, stdout=out, stderr=err, cut=cut)
        if progress is not None:
            hub.publish(
                ev.TaskProgress,
                task_id=self.task_id,
                attempt=self.attempt,
                done=progress[0],
                total=progress[1],
                note=progress[2],
                time=progress[3],
            )
        if not self._closed and time.monotonic() - self._saved_at >= SAVE_INTERVAL:
            self._save()

    def _save(self) -> None:
        """Store the tail of what this attempt printed and its progress (task state)."""
        self._saved_at = time.monotonic()
        self._unsaved = False
        values: dict[str, Any] = {}
        if self.stdout_tail or self.stderr_tail:
            values[LIVE_KEY] = {
                "attempt": self.attempt,
                "stdout": self.stdout_tail,
                "stderr": self.stderr_tail,
                "at": time.time(),
            }
        if self._progress is not None:
            done, total, note, at = self._progress
            values[PROGRESS_KEY] = {"done": done, "total": total, "note": note, "at": at, "attempt": self.attempt}
        if values:
            try:
                self.hub.states.update(self.task_id, values)
            except Exception:  # noqa: BLE001 - a full disk must not fail the task for its log
                pass

    def close(self, ok: bool) -> None:
        """The attempt is over: take the figures it left open, send what is left, refuse
        later states, and (if it did not succeed) store what it printed and how far it got."""
        capture = shown.provider()
        if capture is not None and not self._closed:
            try:
                capture.end(self._figures, self)
            except Exception:  # noqa: BLE001 - a figure that cannot be drawn must not fail the task
                pass
        if not self._touched and self.remote_token is None:  # a silent attempt: nothing to send or keep
            self._closed = True
            return
        with self._lock:
            if self._closed:
                return
            self.flush()
            self._closed = True
            if not ok:
                self._save()
        if self.remote_token is not None:
            from nbflow.run.live_remote import forget

            forget(self.remote_token)
        self.hub.closed(self, ok)


_NOTHING = object()


class LiveHub:
    """The live side of one scheduler: makes each attempt's :class:`LiveTask`, keeps
    what the last attempt of each task printed, and drops states of finished tasks.

    ``publish(event_type, **fields)`` is the scheduler's; ``records`` its records (read
    for the stamps a state is saved with); ``states`` its task states (shared with the
    retry ledger).
    """

    def __init__(
        self,
        publish: Callable[..., None],
        io: CheckpointIO,
        states: TaskStates,
        records: Mapping[str, CheckpointRecord],
    ) -> None:
        self.publish, self.io, self.states, self.records = publish, io, states, records
        # state records a previous process left (a task killed while it ran): dropped when
        # their task finishes, as the ones saved here
        self._left: set[str] = set()
        # display records stored by earlier runs: a restored task shows them again
        self._display_records: set[str] = set()
        for rid in records if records else ():
            if rid.endswith(STATE_SUFFIX):
                self._left.add(rid)
            elif rid.endswith(DISPLAY_SUFFIX):
                self._display_records.add(rid)
        _remember_store(io.instance_id, io.backend)
        self._saved: set[str] = set()  # task ids whose state record this process wrote or read
        self._last: dict[str, tuple[str, str]] = {}  # task id -> (stdout, stderr) of a failed attempt
        self._final: dict[str, dict[str, Any]] = {}  # task id -> last progress of its successful attempt
        # displays of successful attempts until their record is written (take_displays),
        # then until their TaskFinished is built (display_fields); of failed attempts
        self._shown: dict[str, tuple[Mapping[str, Any], ...]] = {}
        self._announce: dict[str, tuple[Mapping[str, Any], ...]] = {}
        self._failed_shown: dict[str, tuple[Mapping[str, Any], ...]] = {}
        self._lock = threading.Lock()
        io.displays_of = self.take_displays  # the output's writer stores them in its transaction
        tqdm_hook.install()  # tqdm bars in tasks report here (patched once, when tqdm is imported)

    def attempt(self, node: Node, task_id: str, attempt: int) -> LiveTask:
        return LiveTask(self, task_id, attempt, node)

    # -- states --
    def store_state(self, record: CheckpointRecord, sink: Any) -> None:
        from nbflow.run.worker_units import ClaimedIO

        io = self.io
        if isinstance(io, ClaimedIO):  # a pooled worker: only while its claim holds, and never releasing it
            stored = io.backend.commit_claimed(io.instance_id, io.key, io.token, [(record, sink)], release=False)
            if stored is None:
                from nbflow.core.errors import ClaimLostError

                raise ClaimLostError(io.instance_id, io.key, io.worker)
        else:
            io.backend.put_record(io.instance_id, record, sink)
        with self._lock:
            self._saved.add(record.task_id)

    def state_record(self, task_id: str, fingerprint: str, deps: Mapping[str, float]) -> CheckpointRecord | None:
        """The stored state of ``task_id`` if it is still valid for this code and inputs."""
        rid = state_id(task_id)
        record = self.io.backend.get_record(self.io.instance_id, rid)
        if record is None or record.codec == DAMAGED_CODEC:
            return None
        with self._lock:
            self._saved.add(rid)
        if record.fingerprint != fingerprint or record.extra.get("deps") != dict(deps):
            return None
        return record

    def settled(self, task_ids: Iterable[str]) -> None:
        """These tasks' outputs are stored: drop their saved states and live output (a
        plain task keeps its last progress, so a restored node can still say it)."""
        stored = self.states.all() if self.states.loaded else None
        if not (self._saved or self._left or self._final or self._last or stored or self._shown or self._failed_shown):
            return  # the common case: nothing was saved, printed, reported or displayed
        task_ids = tuple(task_ids)
        if self._shown or self._failed_shown:
            with self._lock:
                for tid in task_ids:
                    self._shown.pop(tid, None)  # a writer that does not store displays (a claimed unit)
                    self._failed_shown.pop(tid, None)
        drop: list[str] = []
        final: dict[str, dict[str, Any]] = {}
        with self._lock:
            for tid in task_ids:
                rid = state_id(tid)
                if rid in self._saved or rid in self._left:
                    self._saved.discard(rid)
                    self._left.discard(rid)
                    drop.append(rid)
                self._last.pop(tid, None)
                progress = self._final.pop(tid, None)
                if progress is not None:
                    final[tid] = progress
        if drop:
            self.io.backend.delete_records(self.io.instance_id, drop)
        for tid in task_ids:
            if tid not in final and (stored is None or tid not in stored):
                continue
            item = parse_item_id(tid) is not None or parse_iteration_id(tid) is not None
            if tid in final and not item:
                self.states.update(tid, {PROGRESS_KEY: final[tid]}, drop=(LIVE_KEY,))
            else:
                self.states.drop(tid, (LIVE_KEY, PROGRESS_KEY) if item else (LIVE_KEY,))

    # -- output of attempts that did not succeed --
    def closed(self, task: LiveTask, ok: bool) -> None:
        pictures = task.displays
        if pictures:
            with self._lock:
                if ok:
                    self._shown[task.task_id] = pictures
                    self._failed_shown.pop(task.task_id, None)
                else:
                    self._failed_shown[task.task_id] = pictures
        if not ok and (task.stdout_tail or task.stderr_tail):
            with self._lock:
                self._last[task.task_id] = (task.stdout_tail, task.stderr_tail)
        elif ok and task.last_progress is not None:
            done, total, note, at = task.last_progress
            with self._lock:
                self._final[task.task_id] = {"done": done, "total": total, "note": note, "at": at}

    # -- displays, for the output's record and the events --
    def take_displays(self, task_id: str) -> tuple[Mapping[str, Any], ...]:
        """The displays of ``task_id``'s successful attempt, handed to the writer of its
        record (once); kept for its TaskFinished event (not for map items and loop
        iterations, which have none: their TaskDisplay events were sent live)."""
        if not self._shown:
            return ()
        with self._lock:
            pictures = self._shown.pop(task_id, ())
            if pictures and parse_item_id(task_id) is None and parse_iteration_id(task_id) is None:
                self._announce[task_id] = pictures
        return pictures

    def display_fields(
        self, task_id: str, record: CheckpointRecord | None = None, *, restored: bool = False
    ) -> dict[str, Any]:
        """The display fields of ``task_id``'s TaskFinished (``record``: the one just
        written), TaskRestored (``restored``: read back from the store) or TaskFailed
        (no record) event."""
        if record is None:
            with self._lock:
                return {"displays": self._failed_shown.pop(task_id, ())} if self._failed_shown else {}
        fields: dict[str, Any] = {"preview_bundle": record.preview_bundle}
        if restored:
            if self._display_records:
                fields["displays"] = self.stored_displays(task_id, record)
        elif self._announce:
            with self._lock:
                fields["displays"] = self._announce.pop(task_id, ())
        return fields

    def forget_displays(self, task_id: str) -> None:
        """Nobody takes ``task_id``'s TaskFinished: let go of the displays kept for it
        (what :meth:`display_fields` would have handed over)."""
        if self._announce:
            with self._lock:
                self._announce.pop(task_id, None)

    def stored_displays(self, task_id: str, record: CheckpointRecord) -> tuple[Mapping[str, Any], ...]:
        """What ``task_id`` displayed when it ran, read from its display record (a map's
        or loop's: what its items or iterations displayed, the first
        :data:`~nbflow.run.displays.MAX_DISPLAYS`, each naming its item in
        ``metadata["nbflow_item"]``). Nothing on a missing, outdated or damaged record:
        a picture never fails a resume."""
        pictures = list(self._read_displays(task_id, record))
        if "items" in record.extra or "iterations" in record.extra:
            owned = sorted(
                (parsed[1], owner)
                for rid in self._display_records
                if (owner := parse_display_id(rid)) is not None
                and (parsed := parse_item_id(owner) or parse_iteration_id(owner)) is not None
                and parsed[0] == task_id
            )
            for _, part in owned:
                if len(pictures) >= shown.MAX_DISPLAYS:
                    break
                stored = self.records.get(part)
                if stored is not None:
                    for picture in self._read_displays(part, stored):
                        pictures.append({**picture, "metadata": {**picture["metadata"], "nbflow_item": part}})
        return tuple(pictures[: shown.MAX_DISPLAYS])

    def _read_displays(self, task_id: str, record: CheckpointRecord) -> tuple[Mapping[str, Any], ...]:
        rid = display_id(task_id)
        token = record.extra.get("displays")
        if not token or rid not in self._display_records:
            return ()
        stored = self.records.get(rid)
        if stored is None or stored.extra.get("for") != token:
            return ()  # an older run's displays: the task ran again since and showed nothing
        try:
            with self.io.backend.open_payload(self.io.instance_id, stored) as stream:
                data = stream.read()
                verify = getattr(stream, "verify", None)
                if verify is not None and not verify():
                    return ()
        except Exception:  # noqa: BLE001 - see stored_displays
            return ()
        return shown.decode(bytes(data))

    def last_output(self, task_id: str) -> tuple[str, str]:
        """(stdout, stderr) of ``task_id``'s last attempt that did not succeed."""
        with self._lock:
            return self._last.get(task_id, ("", ""))

    def announce_stored(self, task_ids: Iterable[str]) -> None:
        """Publish where unfinished tasks were when their last run stopped (their
        stored progress): a view opened after a restart says so."""
        states = self.states.all()
        if not states:
            return
        for tid in task_ids:
            p = stored_progress(states.get(tid))
            if p is not None:
                self.publish(
                    ev.TaskProgress, task_id=tid, done=p["done"], total=p["total"], note=p["note"], stored=True
                )


# Which store each recently started instance checkpoints to, for subscribers that read
# history there (the widget's expected durations): events stay plain data, and a view
# that sees RunStarted asks here. Bounded: the last _STORES_KEPT instances.
_STORES: dict[str, Any] = {}
_STORES_KEPT = 64
_stores_lock = threading.Lock()


def _remember_store(instance_id: str, backend: Any) -> None:
    with _stores_lock:
        _STORES.pop(instance_id, None)
        _STORES[instance_id] = backend
        while len(_STORES) > _STORES_KEPT:
            del _STORES[next(iter(_STORES))]


def store_of(instance_id: str) -> Any:
    """The backend the latest run of ``instance_id`` in this process uses, or None."""
    with _stores_lock:
        return _STORES.get(instance_id)
