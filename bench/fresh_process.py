"""One measurement in a fresh Python process: ``python -m bench.<module> --worker ...``.

A fresh process is what some measurements are about (reading a result back after a
restart) and what keeps others clean (a resident-memory peak nothing else has touched).
The worker imports the very nbflow and bench this process imported (a snapshot under
test may shadow the working tree), runs in the directory it is given, and reports one
JSON object as the last line it prints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["run_worker", "worker_env"]


def run_worker(module: str, args: list[str], cwd: Path, *, timeout: float = 600) -> dict[str, Any]:
    """Run ``python -m module *args`` in ``cwd`` and return the JSON object it printed last;
    a failing worker raises with the end of its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=worker_env(),
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment, with ``PYTHONPATH`` leading to the very nbflow and
    bench it imported, and ``extra`` on top."""
    import bench
    import nbflow

    roots = [str(Path(m.__file__).parent.parent) for m in (nbflow, bench) if m.__file__]
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*dict.fromkeys(roots), env.get("PYTHONPATH")]))
    return env
