"""Live output, progress and saved states of task bodies that run in other processes.

``ProcessExecutor`` and ``DaskExecutor`` ship a task body to another process. Its
context there gets :class:`RemoteHooks`, and what they produce travels back:

- **over a channel while the body runs** — a ``multiprocessing.connection`` socket of
  the runner's process (:class:`Channel`, one per process, authenticated with a random
  key): coalesced output and progress (one message per flush, as for local tasks) and
  each ``ctx.checkpoint(state)``, encoded there with the instance's codec and committed
  here by the runner before ``checkpoint`` returns (so a kill of either process keeps
  the last state);
- **with the call's result** when the channel cannot be reached (a Dask worker on
  another machine): the last state goes back with the outcome and the runner commits
  it, so a retry or a resume continues from it.

Displays: when the runner's process captures displays (a notebook,
``nbflow.run.displays.provider()``), the pyplot figures a shipped body leaves open
(``plt.show()`` is a no-op there, so that covers it too) are drawn as PNG in the worker
and sent over the channel before the result, and stored with the task's output like a
local task's. A worker process has no IPython shell: an explicit ``display(obj)`` there
prints its text form into the task's captured stdout, and without a reachable channel
(a remote Dask worker) figures are not brought back.

A shipped attempt restores the state the runner read for it before sending it
(:class:`RemoteLink`), so ``ctx.restore`` costs no round trip.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from typing import TYPE_CHECKING, Any

from nbflow.run import displays
from nbflow.run.live import Buffered

if TYPE_CHECKING:
    from nbflow.run.live import LiveTask

__all__ = ["Channel", "RemoteHooks", "RemoteLink", "link_for"]


class RemoteLink:
    """What a shipped attempt needs to talk back (pickled with the call)."""

    __slots__ = ("address", "attempt", "authkey", "codec", "displays", "state", "task_id", "token")

    def __init__(
        self,
        address: Any,
        authkey: bytes,
        token: str,
        task_id: str,
        attempt: int,
        codec: Any,
        state: bytes | None,
        displays: bool = False,
    ) -> None:
        self.address, self.authkey, self.token = address, authkey, token
        self.task_id, self.attempt, self.codec, self.state = task_id, attempt, codec, state
        self.displays = displays  # the runner captures displays: send back the figures left open

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


# -- the runner's side -------------------------------------------------------------------------
class Channel:
    """The runner process's end: accepts connections from worker processes and folds
    their messages into the attempts' :class:`~nbflow.run.live.LiveTask`."""

    _instance: Channel | None = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> Channel | None:
        """This process's channel (started on first use), or None if it cannot listen."""
        with cls._instance_lock:
            inst = cls._instance
            if inst is None or inst._pid != os.getpid():
                try:
                    inst = cls._instance = Channel()
                except OSError:
                    return None
            return inst

    @classmethod
    def current(cls) -> Channel | None:
        """This process's channel if one was started (never starts one)."""
        return cls._instance

    def __init__(self) -> None:
        self._pid = os.getpid()
        self.authkey = secrets.token_bytes(32)
        self._listener = Listener(authkey=self.authkey)  # AF_UNIX here, a named pipe on Windows
        self.address = self._listener.address
        self._tasks: dict[str, LiveTask] = {}
        self._lock = threading.Lock()
        self._counter = 0
        threading.Thread(target=self._accept, name="nbflow-live-channel", daemon=True).start()

    def register(self, task: LiveTask) -> str:
        with self._lock:
            self._counter += 1
            token = f"{self._counter}-{secrets.token_hex(4)}"
            self._tasks[token] = task
        return token

    def unregister(self, token: str) -> None:
        with self._lock:
            self._tasks.pop(token, None)

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except Exception:  # noqa: BLE001 - a peer that failed the handshake: go on
                time.sleep(0.05)  # (and never spin if accepting keeps failing)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="nbflow-live-peer", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return
                kind, token = msg[0], msg[1]
                with self._lock:
                    task = self._tasks.get(token)
                if kind == "live":
                    if task is not None:
                        task.remote(*msg[2:])
                elif kind == "display":
                    if task is not None:
                        task.display(msg[2], msg[3])
                elif kind == "sync":  # everything before it is folded in: the result may go ahead
                    try:
                        conn.send(("ok",))
                    except OSError:
                        return
                elif kind == "state":
                    try:
                        data = conn.recv_bytes()
                    except (EOFError, OSError):
                        return
                    reply: tuple[Any, ...] = ("ok",)
                    if task is None:
                        reply = (
                            "over",
                            "this attempt is over (the run stopped or it timed out); its state is not saved",
                        )
                    else:
                        try:
                            task.checkpoint_encoded(data)
                        except BaseException as exc:  # noqa: BLE001 - told to the task, which raises it
                            reply = ("error", f"{type(exc).__name__}: {exc}")
                    try:
                        conn.send(reply)
                    except OSError:
                        return


def link_for(task: LiveTask) -> RemoteLink:
    """The link a shipped attempt of ``task`` gets (registers it on the channel)."""
    codec = task.hub.io.codec
    channel = Channel.get()
    state = task.state_payload()
    if channel is None:
        return RemoteLink(None, b"", "", task.task_id, task.attempt, codec, state)
    token = channel.register(task)
    task.remote_token = token
    capture = displays.provider() is not None
    return RemoteLink(channel.address, channel.authkey, token, task.task_id, task.attempt, codec, state, capture)


def forget(token: str | None) -> None:
    """The attempt is over: messages for it are ignored (states refused) from now on."""
    if token:
        channel = Channel.current()
        if channel is not None:
            channel.unregister(token)


# -- the worker's side -------------------------------------------------------------------------
_conns: dict[Any, Connection | None] = {}
_conn_lock = threading.Lock()


def _connection(link: RemoteLink) -> Connection | None:
    """One connection per worker process to the runner (None if it cannot be reached:
    then states go back with the result)."""
    if not link.address:
        return None
    key = (os.getpid(), link.address)
    if key not in _conns:
        try:
            _conns[key] = Client(link.address, authkey=link.authkey)
        except (OSError, EOFError, ValueError):
            _conns[key] = None
    return _conns[key]


class RemoteHooks(Buffered):
    """A shipped attempt's ``TaskContext.hooks`` (see the module docstring)."""

    __slots__ = ("_figures", "_sent", "_state", "_unsent", "link")

    def __init__(self, link: RemoteLink) -> None:
        super().__init__(link.task_id, link.attempt)
        self.link = link
        self._state: Any = _NOTHING
        self._unsent: bytes | None = None
        self._sent = False  # live messages went out: close() waits until they are folded in
        self._figures = displays.figure_numbers() if link.displays else None

    def _emit(self, out: str, err: str, cut: int, progress: tuple[float, float | None, str, float] | None) -> None:
        with _conn_lock:
            conn = _connection(self.link)
            if conn is None:
                return  # the output comes back with the result anyway
            try:
                conn.send(("live", self.link.token, out, err, cut, progress))
                self._sent = True
            except OSError:
                _conns[(os.getpid(), self.link.address)] = None

    def checkpoint(self, state: Any) -> None:
        buffer = io.BytesIO()
        self.link.codec.dump(state, buffer)
        data = buffer.getvalue()
        self._state = state
        with _conn_lock:
            conn = _connection(self.link)
            if conn is not None:
                try:
                    conn.send(("state", self.link.token))
                    conn.send_bytes(data)
                    reply = conn.recv()
                except (OSError, EOFError):
                    _conns[(os.getpid(), self.link.address)] = None
                    conn = None
                else:
                    self._unsent = None
                    if reply[0] == "over":
                        import asyncio

                        raise asyncio.CancelledError(f"task {self.task_id!r}: {reply[1]}")
                    if reply[0] != "ok":
                        raise RuntimeError(f"task {self.task_id!r}: the runner could not store its state: {reply[1]}")
                    return
        self._unsent = data  # goes back with the result

    def restore(self, default: Any) -> Any:
        if self._state is not _NOTHING:
            return self._state
        if self.link.state is None:
            return default
        self._state = self.link.codec.load(io.BytesIO(self.link.state))
        return self._state

    def close(self) -> bytes | None:
        """Send what is buffered and wait until the runner folded it in (so the last
        output and progress come before the result, not after it); returns a state the
        runner has not stored yet."""
        with self._lock:
            if self._closed:
                return self._unsent
            self.flush()
            self._closed = True
        if self.link.displays:
            self._send_figures()
        if self._sent:
            with _conn_lock:
                conn = _connection(self.link)
                if conn is not None:
                    try:
                        conn.send(("sync", self.link.token))
                        conn.recv()
                    except (OSError, EOFError):
                        _conns[(os.getpid(), self.link.address)] = None
        return self._unsent

    def _send_figures(self) -> None:
        """Draw the figures the body left open, send them, and close them."""
        for fig in displays.new_figures(self._figures):
            try:
                shown = displays.figure_display(fig)
            except Exception:  # noqa: BLE001 - a figure that cannot be drawn must not fail the task
                continue
            finally:
                displays.close_figure(fig)
            with _conn_lock:
                conn = _connection(self.link)
                if conn is None:
                    return
                try:
                    conn.send(("display", self.link.token, shown["data"], shown["metadata"]))
                    self._sent = True
                except OSError:
                    _conns[(os.getpid(), self.link.address)] = None
                    return


_NOTHING = object()
