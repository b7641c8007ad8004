"""Keeping a running cell reported busy (``nbflow.jupyter.kernel_busy``), against a
stand-in kernel with ipykernel's shape, and the private ipykernel API it relies on."""

from __future__ import annotations

import inspect
from typing import Any

from ipykernel.kernelbase import Kernel

from nbflow.jupyter import kernel_busy


def _msg(msg_id: str, msg_type: str = "execute_request") -> dict[str, Any]:
    return {"header": {"msg_id": msg_id, "msg_type": msg_type}}


class StandInKernel:
    """What the keeper uses of an ipykernel ``Kernel``: ``_publish_status`` and
    ``get_parent``; every status it publishes is recorded."""

    def __init__(self, current: dict[str, Any]) -> None:
        self.current = current
        self.published: list[tuple[str, str, str | None]] = []

    def _publish_status(self, status: str, channel: str, parent: Any = None) -> None:
        msg_id = ((parent or {}).get("header") or {}).get("msg_id")
        self.published.append((status, channel, msg_id))

    def get_parent(self, channel: str) -> dict[str, Any]:
        return self.current


def test_the_private_ipykernel_api_it_wraps_is_still_there() -> None:
    params = list(inspect.signature(Kernel._publish_status).parameters)
    assert params[:3] == ["self", "status", "channel"] and "parent" in params
    assert hasattr(Kernel, "get_parent")


def test_an_idle_for_another_request_is_followed_by_busy_until_the_cell_ends() -> None:
    cell, comm = _msg("cell-1"), _msg("comm-7", "comm_msg")
    kernel = StandInKernel(cell)
    assert kernel_busy.keep_busy(kernel)
    kernel._publish_status("busy", "control", comm)
    kernel._publish_status("idle", "control", comm)  # a widget message handled meanwhile
    assert kernel.published == [
        ("busy", "control", "comm-7"),
        ("idle", "control", "comm-7"),
        ("busy", "shell", "cell-1"),
    ]
    kernel.published.clear()
    kernel._publish_status("idle", "shell", cell)  # the cell itself ends: no more correcting
    kernel._publish_status("idle", "control", comm)
    assert kernel.published == [("idle", "shell", "cell-1"), ("idle", "control", "comm-7")]


def test_installed_once_per_kernel() -> None:
    kernel = StandInKernel(_msg("cell-1"))
    assert kernel_busy.keep_busy(kernel)
    kernel.current = _msg("cell-2")
    assert kernel_busy.keep_busy(kernel)  # the second cell is held by the same wrapper
    kernel._publish_status("idle", "control", _msg("comm", "comm_msg"))
    assert kernel.published == [("idle", "control", "comm"), ("busy", "shell", "cell-2")]


def test_nothing_happens_outside_a_running_cell() -> None:
    assert not kernel_busy.keep_busy(object())  # not a kernel
    kernel = StandInKernel(_msg("c", "comm_msg"))  # the current request is not a cell
    assert not kernel_busy.keep_busy(kernel)
    kernel._publish_status("idle", "control", _msg("x", "comm_msg"))
    assert kernel.published == [("idle", "control", "x")]
    assert not kernel_busy.hold_current_cell()  # no ipykernel kernel in this process
