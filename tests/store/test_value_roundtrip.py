"""Every kind of value survives a checkpoint: written by one process, read by another.

Through the public API only (runner, client, backends), so these keep holding while
the store's record format changes. Values: bytes of sizes around 64 KiB, the store's
256 KiB inline limit and 1 MiB; numpy arrays of every dtype and layout; DataFrames;
nested builtins with shared references and cycles; classes defined in ``__main__``;
and JSON values for JsonCodec. Each is checkpointed as a task output and as a workflow
input (read back by resuming the instance in the reading process).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import nbflow as nf
from tests.store import value_roundtrip_child as child

ROOT = Path(__file__).resolve().parents[2]

_WRITER = (
    child.MAIN_SOURCE
    + """
import sys
import nbflow as nf
from tests.store.value_roundtrip_child import write
write(nf.DiskcacheBackend(sys.argv[1]), MAIN_VALUES)
print("written")
"""
)

_READER = """
import sys
import nbflow as nf
from tests.store.value_roundtrip_child import check, value_count
failures = check(nf.DiskcacheBackend(sys.argv[1]))
print("\\n".join(failures))
print(f"checked {value_count()} values, {len(failures)} failed")
sys.exit(1 if failures else 0)
"""


def _python(source: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", source, *args], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT
    )


@pytest.mark.slow
def test_values_written_by_one_process_are_read_back_by_another(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    written = _python(_WRITER, store)
    assert written.returncode == 0 and "written" in written.stdout, written.stderr[-4000:]
    read = _python(_READER, store)
    assert read.returncode == 0, read.stdout[-4000:] + read.stderr[-4000:]
    assert f"checked {child.value_count()} values, 0 failed" in read.stdout


def test_values_round_trip_through_the_in_memory_store() -> None:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(child.MAIN_SOURCE, namespace)  # classes in __main__, as a notebook makes them
    backend = nf.InMemoryBackend()
    child.write(backend, namespace["MAIN_VALUES"])  # type: ignore[arg-type]
    assert child.check(backend) == []
