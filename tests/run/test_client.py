"""WorkflowClient steering: a signal is refused where nothing can receive it, and a
payload that cannot be encoded is an nbflow error naming the signal."""

from __future__ import annotations

import threading

import pytest

import nbflow as nf


def signal_flow(fail: bool = False) -> nf.WorkflowDefinition:
    def after(payload: object) -> object:
        if fail:
            raise ValueError("boom")
        return payload

    return nf.Workflow("s").then("prep", lambda x: x).wait_for_signal("go").then("after", after).build()


@pytest.mark.parametrize("state", ["completed", "failed", "cancelled"])
def test_a_signal_to_a_finished_or_cancelled_instance_is_refused(runner: nf.CheckpointingRunner, state: str) -> None:
    client = nf.WorkflowClient(runner.backend)
    if state == "cancelled":
        assert runner.run(signal_flow(), "i", 1).state == "awaiting_signal"
        client.cancel("i")
    else:
        assert (
            runner.run(
                nf.Workflow("s").then("t", (lambda x: 1 / 0) if state == "failed" else (lambda x: x)).build(), "i", 1
            ).state
            == state
        )
    assert client.status("i").state == state
    with pytest.raises(nf.SignalRefusedError) as info:
        client.send_signal("i", "go", {"ok": True})
    err = info.value
    assert isinstance(err, nf.NbflowError)
    assert (err.instance_id, err.signal, err.state) == ("i", "go", state)
    assert f"is {state}" in str(err) and "'go'" in str(err)
    assert ("new instance" in str(err)) and (state == "completed" or "resume" in str(err).lower())
    assert runner.backend.pop_signal("i", "go") is None  # nothing was buffered


def test_a_signal_to_a_waiting_instance_is_delivered(runner: nf.CheckpointingRunner) -> None:
    wf = signal_flow()
    assert runner.run(wf, "i", 1).state == "awaiting_signal"
    nf.WorkflowClient(runner.backend).send_signal("i", "go", {"by": "ana"})
    status = runner.resume(wf, "i")
    assert status.state == "completed" and status.output == {"by": "ana"}


def test_an_unpicklable_payload_is_a_codec_error_naming_the_signal(runner: nf.CheckpointingRunner) -> None:
    assert runner.run(signal_flow(), "i", 1).state == "awaiting_signal"
    client = nf.WorkflowClient(runner.backend)
    with pytest.raises(nf.CodecError) as info:
        client.send_signal("i", "go", {"lock": threading.Lock()})
    err = info.value
    assert isinstance(err, nf.NbflowError) and err.__cause__ is None
    assert "the payload of signal 'go'" in str(err) and "lock" in str(err)
    assert runner.backend.pop_signal("i", "go") is None
    client.send_signal("i", "go", "fine")  # the instance still takes a good payload
    assert runner.resume(signal_flow(), "i").output == "fine"


def test_a_signal_to_an_unknown_instance_is_refused(runner: nf.CheckpointingRunner) -> None:
    with pytest.raises(nf.UnknownInstanceError):
        nf.WorkflowClient(runner.backend).send_signal("nobody", "go", 1)


def test_a_payload_a_json_workflow_cannot_store_is_a_codec_error(runner: nf.CheckpointingRunner) -> None:
    wf = nf.Workflow("sj", codec=nf.JsonCodec()).wait_for_signal("go").then("after", lambda p: p).build()
    assert runner.run(wf, "i", 1).state == "awaiting_signal"
    client = nf.WorkflowClient(runner.backend)
    with pytest.raises(nf.CodecError, match="the payload of signal 'go'") as info:
        client.send_signal("i", "go", object())
    assert info.value.codec == "json"
    client.send_signal("i", "go", {"ok": [1, 2]})
    assert runner.resume(wf, "i").output == {"ok": [1, 2]}
