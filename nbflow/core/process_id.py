"""This process's id, without a system call each time it is asked.

``os.getpid()`` is a system call, and a store asks it before every statement (a forked
child must open its own database connections, never use its parent's). The id is read
once and again in each forked child (``os.register_at_fork``), so asking is a read of a
variable. Where there is no fork (Windows) the id never changes.
"""

from __future__ import annotations

import os

__all__ = ["current_pid"]

_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def current_pid() -> int:
    """``os.getpid()``, answered from memory."""
    return _pid
