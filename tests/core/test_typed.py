"""Typed task inputs and outputs (``nbflow.core.typed``): pydantic models in a task's
annotations are validated and converted, stored as JSON with JsonCodec and rebuilt
through the task's annotation, never through a class a record names."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core import typed
from nbflow.core.codecs import JsonCodec
from nbflow.run.checkpoint import CheckpointIO
from tests.conftest import make_backend

pydantic = pytest.importorskip("pydantic")
BaseModel = pydantic.BaseModel


class Item(BaseModel):
    sku: str
    qty: int


class Customer(BaseModel):
    name: str
    email: str


class Order(BaseModel):
    id: int
    customer: Customer
    items: list[Item]


class Quote(BaseModel):
    order_id: int
    total: float


RAW = {"id": 7, "customer": {"name": "Ada", "email": "ada@example.org"}, "items": [{"sku": "a", "qty": "2"}]}
MODULE = __name__


@pytest.fixture(params=["memory-pickle", "memory-json", "disk-pickle", "disk-json"])
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[nf.CheckpointingRunner]:
    kind, codec = request.param.split("-")
    backend = make_backend(kind, tmp_path)
    yield nf.CheckpointingRunner(backend, codec=JsonCodec() if codec == "json" else nf.PickleCodec(), echo_output=False)
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def shop(seen: list[Any]) -> nf.WorkflowDefinition:
    """load (untyped, returns a dict) -> parse (dict -> Order) -> price (Order -> Quote) -> done (Quote -> Quote)."""

    def load(raw):  # type: ignore[no-untyped-def]
        return raw

    def parse(order: Order) -> Order:
        seen.append(("parse", type(order), type(order.customer), type(order.items[0])))
        return order

    def price(order: Order) -> Quote:
        seen.append(("price", type(order)))
        return {"order_id": order.id, "total": sum(i.qty for i in order.items) * 2.5}  # type: ignore[return-value]

    def done(quote: Quote) -> Quote:
        seen.append(("done", type(quote)))
        return quote

    return nf.Workflow("shop").then(load).then(parse).then(price).then(done).build()


# -- model in, model out -------------------------------------------------------------------
def test_models_in_and_out(runner: nf.CheckpointingRunner) -> None:
    seen: list[Any] = []
    wf = shop(seen)
    status = runner.run(wf, "s-1", RAW)
    assert status.state == "completed", status.error
    assert status.output == Quote(order_id=7, total=5.0) and type(status.output) is Quote
    assert seen == [("parse", Order, Customer, Item), ("price", Order), ("done", Quote)]
    records = runner.backend.get_records("s-1")
    assert records["parse"].extra["model"] == f"{MODULE}:Order"  # the record says which model
    assert records["price"].extra["model"] == f"{MODULE}:Quote"
    assert "model" not in records["load"].extra  # untyped: untouched


def test_restored_models_are_rebuilt_through_the_annotation(runner: nf.CheckpointingRunner) -> None:
    seen: list[Any] = []
    wf = shop(seen)
    runner.run(wf, "s-1", RAW)
    seen.clear()
    status = runner.rerun_from(wf, "s-1", "done")  # `price` restored from its checkpoint
    assert seen == [("done", Quote)] and type(status.output) is Quote
    replay = runner.resume(wf, "s-1")  # everything restored, the final model too
    assert type(replay.output) is Quote and replay.output.total == 5.0


def test_json_stores_the_models_json_data(tmp_path: Path) -> None:
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, codec=JsonCodec(), echo_output=False)
    runner.run(shop([]), "s-1", RAW)
    record = backend.get_record("s-1", "parse")
    assert record is not None and record.codec == "json"
    plain = CheckpointIO(backend, "s-1", JsonCodec()).read(record)  # no types: the stored data
    assert plain == {
        "id": 7,
        "customer": {"name": "Ada", "email": "ada@example.org"},
        "items": [{"sku": "a", "qty": 2}],
    }
    # the client knows no workflow, so it gives the JSON data, not a model
    assert nf.WorkflowClient(backend, codec=JsonCodec()).get_task_result("s-1", "price") == {
        "order_id": 7,
        "total": 5.0,
    }


def test_a_model_workflow_input_is_stored_as_json_and_rebuilt(tmp_path: Path) -> None:
    seen: list[Any] = []

    def parse(order: Order) -> Order:
        seen.append(type(order))
        return order

    wf = nf.Workflow("in").then(parse).then("n", lambda o: len(o.items)).build()
    backend = nf.DiskcacheBackend(tmp_path / "store")
    runner = nf.CheckpointingRunner(backend, codec=JsonCodec(), echo_output=False)
    order = Order.model_validate(RAW)
    assert runner.run(wf, "i-1", order).output == 1
    record = backend.get_record("i-1", "__input__")
    assert record is not None and record.extra["model"] == f"{MODULE}:Order"
    assert runner.rerun_from(wf, "i-1", "parse").output == 1  # the input restored as an Order
    assert seen == [Order, Order]


def test_map_items_and_join_kwargs_are_typed(runner: nf.CheckpointingRunner) -> None:
    def items(order: Order) -> list[dict[str, Any]]:
        return [i.model_dump() for i in order.items] * 3

    def line(item: Item) -> Item:
        assert type(item) is Item
        return item.model_copy(update={"qty": item.qty * 10})

    def count(lines: list[Item]) -> int:
        assert all(type(x) is Item for x in lines)
        return sum(x.qty for x in lines)

    wf = nf.Workflow("m").then(items).map("line", line, concurrency=2).then(count).build()
    assert runner.run(wf, "m-1", RAW).output == 60
    assert runner.backend.get_record("m-1", "line[2]").extra["model"] == f"{MODULE}:Item"
    assert runner.rerun_from(wf, "m-1", "count").output == 60  # items restored as Items


# -- validation errors ---------------------------------------------------------------------
def test_an_invalid_input_fails_the_task_naming_the_field(runner: nf.CheckpointingRunner) -> None:
    calls: list[int] = []

    @nf.task(retries=3)
    def parse(order: Order) -> Order:
        calls.append(1)
        return order

    wf = nf.Workflow("bad").then("load", lambda raw: raw).then(parse).build()
    bad = {**RAW, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": "three"}]}
    status = runner.run(wf, "b-1", bad)
    assert status.state == "failed" and calls == []  # never ran, and not retried
    assert status.error is not None and status.error.type == "TaskInputError" and status.error.task_id == "parse"
    message = status.error.message
    assert "task 'parse' got an invalid Order for its parameter 'order'" in message
    assert "field 'items.1.qty'" in message and "'three'" in message and "valid integer" in message


def test_an_invalid_output_is_a_failed_attempt_naming_the_field(runner: nf.CheckpointingRunner) -> None:
    calls: list[int] = []

    @nf.task(retries=nf.RetryPolicy(1, initial_delay=0))
    def price(raw: dict[str, Any]) -> Quote:
        calls.append(1)
        return {"order_id": 1, "total": "lots"}  # type: ignore[return-value]

    status = runner.run(nf.Workflow("badout").then(price).build(), "o-1", {})
    assert status.state == "failed" and len(calls) == 2  # retried like any error of the task
    assert status.error is not None and status.error.type == "TaskOutputError"
    assert "task 'price' returned an invalid Quote: field 'total'" in status.error.message
    assert "'lots'" in status.error.message


def test_errors_are_nbflow_errors_that_pickle() -> None:
    import pickle

    for err in (
        nf.TaskInputError("t", "order", "Order", "items.0.qty", "x", "bad"),
        nf.TaskOutputError("t", "Quote", "total", "x", "bad", checkpoint=True),
    ):
        assert isinstance(err, nf.NbflowError) and isinstance(err, ValueError)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and str(clone) == str(err) and clone.field == err.field


# -- untyped tasks are untouched -----------------------------------------------------------
def test_a_task_without_annotations_gets_the_very_objects(backend: Any) -> None:
    runner = nf.CheckpointingRunner(backend, echo_output=False)  # pickle: any object can flow
    made: list[Any] = []
    got: list[Any] = []

    def make(x):  # type: ignore[no-untyped-def]
        made.append({"order": Order.model_validate(RAW), "raw": dict(RAW)})
        return made[-1]

    def use(value):  # type: ignore[no-untyped-def]
        got.append(value)
        return 1

    def typed_but_not_models(value: dict[str, Any]) -> int:
        got.append(value)
        return 2

    wf = nf.Workflow("plain").then(make).fork().branch(use).branch(typed_but_not_models).join("j", dict).build()
    runner.run(wf, "p-1", None)
    assert got[0] is made[0] and got[1] is made[0]  # identity preserved: no copy, no conversion
    for fn in (make, use, typed_but_not_models, len):
        assert typed.types_of(fn) is None
    # and as before, JsonCodec refuses a model that no annotation asks to store as JSON
    status = nf.CheckpointingRunner(backend, codec=JsonCodec(), echo_output=False).run(wf, "p-2", None)
    assert status.state == "failed" and status.error is not None and status.error.type == "CodecError"


def test_no_import_cost_without_pydantic() -> None:
    code = (
        "import sys, nbflow as nf\n"
        "wf = nf.Workflow('w').then('a', lambda x: x + 1).map('m', lambda i: i * 2).build()\n"
        "r = nf.CheckpointingRunner(nf.InMemoryBackend(), codec=nf.JsonCodec(), echo_output=False)\n"
        "assert r.run(nf.Workflow('v').then('a', lambda x: [x]).build(), 'i', 1).output == [1]\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_annotations_are_read_once_at_build_time(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Any] = []
    real = typed._read
    monkeypatch.setattr(typed, "_read", lambda fn: reads.append(fn) or real(fn))

    def parse(order: Order) -> Quote:
        return Quote(order_id=order.id, total=1.0)

    wf = nf.Workflow("once").then(parse).build()
    assert reads == [parse]  # when the step was added
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    for i in range(3):
        runner.run(wf, f"o-{i}", RAW)
    assert reads == [parse]  # not per call


# -- an untrusted store cannot choose a class ----------------------------------------------
TRAP_BUILT: list[int] = []


class Trap(BaseModel):
    """A class a planted record names: building it would be the attack."""

    order_id: int = 0

    def __init__(self, **data: Any) -> None:
        TRAP_BUILT.append(1)
        super().__init__(**data)


def _plant(backend: Any, wf: nf.WorkflowDefinition, task_id: str, value: Any, model: str) -> None:
    io = CheckpointIO(backend, "u-1", JsonCodec())  # no types: writes exactly what it is given
    io.write(task_id, wf.node(task_id).fingerprint, value, extra={"model": model})


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_planted_json_record_cannot_pick_the_class(tmp_path: Path, kind: str) -> None:
    backend = make_backend(kind, tmp_path)
    seen: list[Any] = []
    wf = shop(seen)
    runner = nf.CheckpointingRunner(backend, codec=JsonCodec(), echo_output=False)
    runner.run(wf, "u-1", RAW)
    seen.clear()
    # a record of a typed task naming another class: rebuilt through the annotation (Quote)
    for model in (f"{MODULE}:Trap", "os:system", "nbflow_planted_module:Boom"):
        _plant(backend, wf, "price", {"order_id": 9, "total": 1.0}, model)
        status = runner.rerun_from(wf, "u-1", "done")
        assert status.state == "completed" and type(status.output) is Quote and status.output.order_id == 9
    assert TRAP_BUILT == [] and "nbflow_planted_module" not in sys.modules
    assert seen == [("done", Quote)] * 3
    # a record of an untyped task claiming a model: its plain data, no class at all
    _plant(backend, wf, "load", {"id": 1}, f"{MODULE}:Trap")
    assert CheckpointIO(backend, "u-1", JsonCodec()).read(backend.get_record("u-1", "load")) == {"id": 1}
    records = dict(backend.get_records("u-1"))
    io = CheckpointIO(backend, "u-1", JsonCodec())
    io.types = typed.record_types(wf)
    assert io.read(records["load"]) == {"id": 1} and TRAP_BUILT == []
    # data that does not fit the annotation: an error naming the task and the field
    _plant(backend, wf, "price", {"order_id": "nine", "total": 1.0}, f"{MODULE}:Quote")
    with pytest.raises(nf.TaskOutputError, match=r"checkpoint of task 'price' .* field 'order_id'"):
        runner.rerun_from(wf, "u-1", "done")
