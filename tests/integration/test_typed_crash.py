"""pydantic models across a real crash: a child process whose tasks take and return
models (defined in its ``__main__``, as a notebook defines them) is killed with SIGKILL
inside a task; a new process resumes, on both codecs. The restored model must come back
as the model the new process defines, through the task's annotation, and a third
process that only replays the finished instance gets the final model too."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.core.codecs import JsonCodec
from tests.integration.crash import finish, kill_when_marked, spawn, write_script

pytest.importorskip("pydantic")
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys, time
from datetime import date
from pathlib import Path

from pydantic import BaseModel

import nbflow as nf

codec_name, root, action = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
KILL_AT = os.environ.get("KILL_AT", "")
counts = root / "counts"
counts.mkdir(exist_ok=True)


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    id: int
    placed: date
    items: list[Item]


class Quote(BaseModel):
    order_id: int
    total: float
    lines: list[Item]


def count(tid):
    with open(counts / tid, "a") as f:
        f.write("1\n")


def parse(raw: dict) -> Order:
    count("parse")
    return raw  # a dict: validated into an Order by the return annotation


def price(order: Order) -> Quote:
    count("price")
    assert type(order) is Order, type(order)  # this process's Order, not a stored class
    assert type(order.items[0]) is Item and isinstance(order.placed, date)
    if KILL_AT == "price":
        (root / "marker").write_text("price")
        time.sleep(120)  # the parent kills us here
    return Quote(order_id=order.id, total=sum(i.qty * 2.5 for i in order.items), lines=order.items)


def check(quote: Quote) -> Quote:
    count("check")
    assert type(quote) is Quote and type(quote.lines[0]) is Item
    return quote


codec = nf.JsonCodec() if codec_name == "json" else nf.PickleCodec()
wf = nf.Workflow("typed").then(parse).then(price).then(check).build()
runner = nf.CheckpointingRunner(nf.DiskcacheBackend(root / "store"), codec=codec, echo_output=False)
raw = {"id": 7, "placed": "2026-11-25", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": "3"}]}
status = runner.run(wf, "inst", raw) if action == "run" else runner.resume(wf, "inst")
out = status.output
print(json.dumps({
    "state": str(status.state),
    "error": str(status.error) if status.error else None,
    "type": type(out).__name__,
    "current_class": type(out) is Quote,
    "lines": [type(line) is Item for line in out.lines] if type(out) is Quote else None,
    "data": out.model_dump(mode="json") if isinstance(out, BaseModel) else out,
}))
"""

QUOTE = {"order_id": 7, "total": 12.5, "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}]}


def _spawn(tmp_path: Path, codec: str, action: str, kill_at: str = "") -> subprocess.Popen[str]:
    script = write_script(tmp_path / "typed_flow.py", SCRIPT)
    return spawn(script, codec, tmp_path, action, env={"KILL_AT": kill_at})


def _counts(tmp_path: Path) -> dict[str, int]:
    return {p.name: len(p.read_text().splitlines()) for p in sorted((tmp_path / "counts").iterdir())}


@pytest.mark.parametrize("codec", ["json", "pickle"])
def test_models_survive_a_kill_9_and_a_resume_in_a_new_process(tmp_path: Path, codec: str) -> None:
    proc = _spawn(tmp_path, codec, "run", kill_at="price")
    kill_when_marked(proc, tmp_path / "marker")
    assert _counts(tmp_path) == {"parse": 1, "price": 1}

    backend = nf.DiskcacheBackend(tmp_path / "store")
    record = backend.get_record("inst", "parse")
    assert record is not None and record.codec == codec
    assert record.extra["model"] == "__main__:Order"  # the record says which model
    if codec == "json":  # stored as the model's JSON data, readable without nbflow or pydantic
        data = nf.WorkflowClient(backend, codec=JsonCodec()).get_task_result("inst", "parse")
        assert data == {"id": 7, "placed": "2026-11-25", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 3}]}
    backend.close()

    result = finish(_spawn(tmp_path, codec, "resume"))
    assert result == {
        "state": "completed",
        "error": None,
        "type": "Quote",
        "current_class": True,
        "lines": [True, True],
        "data": QUOTE,
    }
    assert _counts(tmp_path) == {"check": 1, "parse": 1, "price": 2}  # parse restored, not re-run

    # A third process replays the completed instance: every output is restored, and the
    # final one comes back as the model (rebuilt through check's return annotation).
    replay = finish(_spawn(tmp_path, codec, "resume"))
    assert replay == result
    assert _counts(tmp_path) == {"check": 1, "parse": 1, "price": 2}
