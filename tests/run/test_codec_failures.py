"""An output the codec cannot store fails the instance with a status naming the task
(or map item / loop iteration) and the CodecError; it never escapes ``runner.run()``."""

from __future__ import annotations

from typing import Any

import pytest

import nbflow as nf

UNSTORABLE = {
    "lambda": lambda: lambda y: y,
    "object": object,
    "set": lambda: {1, 2},
}


@pytest.mark.parametrize("kind", sorted(UNSTORABLE))
@pytest.mark.parametrize("timeout", [None, 30], ids=["chunked", "one-by-one"])
def test_a_map_item_the_codec_refuses_fails_the_instance(
    runner: nf.CheckpointingRunner, kind: str, timeout: float | None
) -> None:
    make = UNSTORABLE[kind]

    def item(x: int) -> Any:
        return make() if x == 3 else x

    wf = nf.Workflow("m", codec=nf.JsonCodec()).map("m", item, timeout=timeout).build()
    status = runner.run(wf, "i", list(range(6)))
    assert status.state == "failed"
    assert status.error.task_id == "m[3]" and status.error.type == "CodecError"
    assert "'m[3]'" in status.error.message and "json" in status.error.message
    stored = runner.backend.load_instance("i")
    assert stored is not None and stored.state == "failed"
    assert runner.backend.get_record("i", "m[3]") is None


def test_a_plain_task_the_codec_refuses_fails_the_instance(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("t", codec=nf.JsonCodec()).then("make", lambda x: object()).then("after", lambda v: v).build()
    status = runner.run(wf, "i", 1)
    assert status.state == "failed"
    assert status.error.task_id == "make" and status.error.type == "CodecError"
    assert runner.backend.get_record("i", "after") is None


def test_a_loop_iteration_the_codec_refuses_fails_the_instance(runner: nf.CheckpointingRunner) -> None:
    wf = (
        nf.Workflow("l", codec=nf.JsonCodec())
        .loop("grow", lambda x: nf.LoopResult.again(object()), max_iterations=3)
        .build()
    )
    status = runner.run(wf, "i", 1)
    assert status.state == "failed"
    assert status.error.task_id == "grow" and status.error.type == "CodecError"
    assert "'grow#1'" in status.error.message


def test_an_unpicklable_map_item_fails_the_instance_with_pickle_too(runner: nf.CheckpointingRunner) -> None:
    import threading

    wf = nf.Workflow("p").map("m", lambda x: threading.Lock() if x else x).build()
    status = runner.run(wf, "i", [0, 1])
    assert status.state == "failed"
    assert status.error.task_id == "m[1]" and status.error.type == "CodecError"
    assert "pickle" in status.error.message


def test_a_worker_fails_the_instance_on_an_item_the_codec_refuses(backend: Any) -> None:
    wf = nf.Workflow("w", codec=nf.JsonCodec()).map("m", lambda x: object() if x == 1 else x).build()
    client = nf.WorkflowClient(backend)
    client.submit(wf, "i", [0, 1, 2])
    nf.PooledWorker("w1", backend, [wf], poll_interval=0.05).run(until_idle=True)
    status = client.status("i")
    assert status.state == "failed"
    assert status.error.task_id == "m[1]" and "CodecError" in (status.error.type + status.error.message)
