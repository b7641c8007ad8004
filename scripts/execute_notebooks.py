"""Run the lesson notebooks top to bottom and store their outputs: the reference nbval compares.

The ``.ipynb`` files in ``notebooks/`` are the source. Edit them in Jupyter, then::

    python scripts/execute_notebooks.py                     # every lesson, outputs written in place
    python scripts/execute_notebooks.py notebooks/04-*.ipynb  # some of them
    python scripts/execute_notebooks.py --check             # run them, write nothing, fail on an error

Each notebook runs in a kernel of its own whose working folder (and ``TMPDIR``) is a fresh
temporary folder, removed afterwards: the stores a lesson makes (``.nbflow/<lesson>``, the
``tempfile.mkdtemp`` folders of 04 and 05, the ``flows.py`` 05 writes) never meet a store of
yours or of a test run in the checkout, and nothing is left behind. ``*.py`` files beside a
notebook are copied in, so a helper module next to a lesson imports as it does in Jupyter.
A cell tagged ``raises-exception`` may fail (the lessons about failures need one); an error in
any other cell stops that notebook, and then nothing of it is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def lessons() -> list[Path]:
    """The lesson notebooks, in reading order (``01-…`` to ``NN-…``)."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def execute(path: Path, *, timeout: int) -> nbformat.NotebookNode:
    """Run ``path`` in a new kernel inside a temporary folder; return it with its outputs.

    Raises ``CellExecutionError`` (or a timeout / dead-kernel error) when a cell not tagged
    ``raises-exception`` fails."""
    nb: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    with tempfile.TemporaryDirectory(prefix=f"nbflow-{path.stem[:2]}-", ignore_cleanup_errors=True) as workdir:
        for helper in path.parent.glob("*.py"):
            shutil.copy2(helper, workdir)
        env = {**os.environ, "TMPDIR": workdir}
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, resources={"metadata": {"path": workdir}})
        client.execute(env=env)
    return nb


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Run the lesson notebooks and store their outputs.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every lesson)")
    parser.add_argument("--check", action="store_true", help="run them and report errors, write nothing")
    parser.add_argument("--timeout", type=int, default=300, help="seconds one cell may take (default 300)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or lessons()
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    failed = []
    for path in paths:
        t0 = time.monotonic()
        try:
            nb = execute(path, timeout=args.timeout)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            failed.append(path.name)
            print(f"FAILED {path.name}: {exc}", file=sys.stderr)
            continue
        if not args.check:
            nbformat.validate(nb)
            nbformat.write(nb, path)  # type: ignore[no-untyped-call]
        verb = "ran" if args.check else "executed and wrote"
        print(f"{verb} {path.name} in {time.monotonic() - t0:.1f} s")
    if failed:
        print(f"{len(failed)} of {len(paths)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
