"""Run a workflow script in a child process, kill it with SIGKILL at a point it reaches, and
read what a resumed child prints: the steps every kill -9 test takes.

A test writes its workflow as a script into ``tmp_path`` (``write_script``) and runs it with
``spawn`` (to kill it from outside once ``ready()`` holds) or ``run`` (when the child kills
itself). Children import nbflow exactly as the test does: their ``PYTHONPATH`` is the
test's ``sys.path``. A child reports by printing one JSON object as its last line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

KILL_POINT_TIMEOUT = 120.0  # seconds a child may take to reach the point where it is killed


def write_script(path: Path, source: str) -> Path:
    """Write ``source`` to ``path`` once: the run and the resume execute the same file."""
    if not path.exists():
        path.write_text(source)
    return path


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **(extra or {}), "PYTHONPATH": os.pathsep.join(sys.path)}


def spawn(script: Path, *args: object, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python script *args`` with its output piped, for ``kill_when`` or ``finish``."""
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=child_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(script: Path, *args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python script *args`` to its end (or its own kill -9) and capture its output."""
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_when(proc: subprocess.Popen[str], ready: Callable[[], bool], awaited: str = "reached the kill point") -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; fail if it exits first or never gets there.

    ``awaited`` completes the failure message "the child never ..."."""
    deadline = time.monotonic() + KILL_POINT_TIMEOUT
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"the child never {awaited}"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL


def kill_when_marked(proc: subprocess.Popen[str], marker: Path) -> None:
    """SIGKILL ``proc`` once it wrote ``marker`` (it does so where it is to die, then waits)."""
    kill_when(proc, marker.exists)


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a child printed as its last line."""
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Wait for ``proc`` to succeed and return its report (its last line, as JSON)."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return last_json(out)
