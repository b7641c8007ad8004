"""Codecs: pickle (notebook classes included, across processes) and JSON; the codec
name is stored with each record and decoding never guesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.core.codecs import codec_by_name


@pytest.mark.parametrize("codec", [nf.PickleCodec(), nf.JsonCodec()])
def test_round_trip(codec: object) -> None:
    value = {"rows": [1, 2.5, "x", None, True], "nested": {"k": []}}
    assert codec.loads(codec.dumps(value)) == value  # type: ignore[attr-defined]


def test_pickle_handles_lambdas_and_local_classes() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    codec = nf.PickleCodec()
    p = codec.loads(codec.dumps(Point(3)))
    assert p.x == 3
    assert codec.loads(codec.dumps(lambda v: v + 1))(1) == 2


def test_json_refuses_non_json_values_as_codec_error() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    wf = nf.Workflow("w", codec=nf.JsonCodec()).then("obj", lambda x: object()).build()
    status = runner.run(wf, "i", None)
    assert status.state == "failed" and status.error.type == "CodecError"


def test_codec_name_is_stored_with_each_record(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    wf_json = nf.Workflow("j", codec=nf.JsonCodec()).then("t", lambda x: {"v": x}).build()
    wf_pickle = nf.Workflow("p").then("t", lambda x: {"v": x}).build()
    runner.run(wf_json, "ij", 1)
    runner.run(wf_pickle, "ip", 1)
    assert backend.get_record("ij", "t").codec == "json"
    assert backend.get_record("ip", "t").codec == "pickle"
    # A JSON record is readable text.
    with backend.open_payload("ij", backend.get_record("ij", "t")) as f:
        assert f.read() == b'{"v":1}'
    # The runner's codec option is the default when the workflow sets none.
    runner_json = nf.CheckpointingRunner(backend, codec=nf.JsonCodec(), echo_output=False)
    runner_json.run(wf_pickle, "ip2", 1)
    assert backend.get_record("ip2", "t").codec == "json"
    assert runner_json.status("ip2").output == {"v": 1}


def test_unknown_codec_name_is_a_codec_error(tmp_path: Path) -> None:
    with pytest.raises(nf.CodecError) as err:
        codec_by_name("msgpack-9000")
    assert "msgpack-9000" in str(err.value) and "register_codec" in str(err.value)

    backend = nf.DiskcacheBackend(tmp_path)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    wf = nf.Workflow("w").then("t", lambda x: x).build()
    runner.run(wf, "i", 1)
    record = backend.get_record("i", "t")
    record.codec = "msgpack-9000"
    sink = backend.new_sink("i")
    sink.write(b"junk")
    backend.put_record("i", record, sink)
    # A record's codec name is compared with the reader's codec, never obeyed.
    with pytest.raises(nf.CheckpointCorruptError) as refused:
        runner.get_task_result("i", "t")
    assert "msgpack-9000" in str(refused.value) and "'pickle'" in str(refused.value)


_WRITER = """
import numpy as np
import nbflow as nf

class Measurement:
    def __init__(self, value):
        self.value = value
    def doubled(self):
        return 2 * self.value

wf = nf.Workflow("m").then("measure", lambda x: (Measurement(x), np.arange(5))).build()
status = nf.CheckpointingRunner(nf.DiskcacheBackend({store!r}), echo_output=False).run(wf, "i", 21)
assert status.state == "completed", status
"""

_READER = """
import nbflow as nf
value, arr = nf.WorkflowClient(nf.DiskcacheBackend({store!r})).get_task_result("i", "measure")
assert type(value).__name__ == "Measurement"
print(value.doubled(), arr.sum())
"""


def test_pickle_loads_a_main_defined_class_in_another_process(tmp_path: Path) -> None:
    """A class defined in ``__main__`` (a notebook) still loads after a restart,
    in a process where that class was never defined."""
    store = str(tmp_path / "store")
    for name, src in (("writer.py", _WRITER), ("reader.py", _READER)):
        (tmp_path / name).write_text(textwrap.dedent(src.format(store=store)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    w = subprocess.run(
        [sys.executable, str(tmp_path / "writer.py")], capture_output=True, text=True, timeout=60, env=env
    )
    assert w.returncode == 0, w.stderr
    r = subprocess.run(
        [sys.executable, str(tmp_path / "reader.py")], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["42", "10"]
