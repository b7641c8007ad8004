"""Keep JupyterLab's status bar saying "Busy" while a cell that shows a widget runs.

Why it said "Idle": JupyterLab 4 (and Notebook 7) talk to widgets over *kernel
subshells* (``commsOverSubshells``, on by default with ipykernel 7): when a widget's comm
opens, the front end sends ``create_subshell_request`` on the control channel, and
every message a widget sends afterwards (a click, a selection) goes to that subshell,
which ipykernel handles *while the cell still runs*. Each of those messages publishes
its own ``status: busy`` then ``status: idle`` on IOPub, and the front end shows the
kernel's last status — so a cell that displayed nbflow's widget (or a tqdm.notebook
bar) read "Idle" for the rest of its run, although the cell was still executing.

The fix: while the cell that showed the widget runs, every ``idle`` that ipykernel
publishes for *another* request is followed at once by a ``busy`` for that cell's
request — the truth. It stops by itself when the cell's own ``idle`` goes out (so a
``--background`` run, whose cell returns at once, is not kept busy). Outside ipykernel,
or with an ipykernel that has no ``_publish_status``, nothing happens.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["hold_current_cell", "keep_busy"]

_lock = threading.Lock()
_keepers: dict[int, _Keeper] = {}  # id(kernel) -> its keeper: installed once per kernel


class _Keeper:
    """Wraps one kernel's ``_publish_status`` (installed once per kernel).

    ``Kernel._publish_status(status, channel, parent=None)`` (ipykernel 6 and 7) is the
    one private ipykernel API nbflow uses, and this class is the only code that touches
    it; tests/jupyter/test_kernel_busy.py checks that the installed ipykernel still has
    it with that signature."""

    @staticmethod
    def supported(kernel: Any) -> bool:
        """Whether ``kernel`` has what the keeper wraps and reads."""
        return hasattr(kernel, "_publish_status") and hasattr(kernel, "get_parent")

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.original = kernel._publish_status
        self.parent: dict[str, Any] | None = None  # the request of the cell kept busy
        self.msg_id: str | None = None
        kernel._publish_status = self.publish

    def hold(self, parent: dict[str, Any]) -> None:
        msg_id = (parent.get("header") or {}).get("msg_id")
        if not msg_id:
            return
        with _lock:
            self.parent, self.msg_id = parent, msg_id

    def publish(self, status: str, channel: str, parent: Any = None) -> None:
        self.original(status, channel, parent)
        if status != "idle":
            return
        with _lock:
            keep, keep_id = self.parent, self.msg_id
        if keep is None:
            return
        try:
            source = parent or self.kernel.get_parent(channel)
            source_id = ((source or {}).get("header") or {}).get("msg_id")
        except Exception:  # noqa: BLE001 - an unexpected kernel: never break its status
            return
        if source_id == keep_id:  # the cell itself is done: stop
            with _lock:
                if self.msg_id == keep_id:
                    self.parent = self.msg_id = None
            return
        try:
            self.original("busy", "shell", keep)
        except Exception:  # noqa: BLE001 - see above
            pass


def hold_current_cell() -> bool:
    """Keep the running cell reported busy until it ends (see the module docstring).

    Call it from the kernel's main thread while a cell runs (the widget does, when it is
    created). Returns whether it could: False outside an ipykernel kernel.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:
        return False
    if not Kernel.initialized():
        return False
    return keep_busy(Kernel.instance())


def keep_busy(kernel: Any) -> bool:
    """Keep ``kernel``'s current shell request (a cell being executed) reported busy
    until it ends; False when ``kernel`` is not an ipykernel-like kernel running a cell."""
    if not _Keeper.supported(kernel):
        return False
    try:
        parent = kernel.get_parent("shell")
    except Exception:  # noqa: BLE001 - an ipykernel without per-channel parents
        return False
    if not parent or (parent.get("header") or {}).get("msg_type") != "execute_request":
        return False
    with _lock:
        keeper = _keepers.get(id(kernel))
        if keeper is None:  # the keeper holds the kernel, so its id is never reused meanwhile
            keeper = _keepers[id(kernel)] = _Keeper(kernel)
    keeper.hold(parent)
    return True
