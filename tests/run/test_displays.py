"""The run layer's half of display capture (``nbflow.run.displays``, ``LiveTask.display``,
``CheckpointIO``): one attempt's displays are bounded, stored with the output in the
same transaction (big ones through the blob path), read back for the restored task,
ignored when damaged, and brought back from executor processes.

The notebook layer is stood in for by a provider with the same contract as
``nbflow.jupyter.display_capture`` (figures left open) and by calls to the attempt's
hooks, which is what the shell's display publisher does inside a task.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.keys import display_id
from nbflow.run import displays
from nbflow.run import events as ev
from nbflow.store.base import CheckpointRecord


class FigureProvider:
    """The notebook layer's provider minus IPython: figures left open become displays."""

    def begin(self) -> Any:
        return displays.figure_numbers()

    def end(self, token: Any, sink: Any) -> None:
        for fig in displays.new_figures(token):
            shown = displays.figure_display(fig)
            displays.close_figure(fig)
            sink.display(shown["data"], shown["metadata"])


@pytest.fixture
def provider() -> Iterator[FigureProvider]:
    p = FigureProvider()
    before = displays.provider()
    displays.set_provider(p)
    try:
        yield p
    finally:
        displays.set_provider(before)


def show(data: dict[str, Any]) -> None:
    """What the shell's display publisher does inside a task."""
    nf.get_task_context().hooks.display(data, {})


class Transactions(nf.InMemoryBackend):
    """Records the ids of every write, per transaction (put_record is one put_records)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[str]] = []

    def put_records(self, instance_id: str, items: list[tuple[CheckpointRecord, Any]]) -> list[CheckpointRecord]:
        self.writes.append([r.task_id for r, _ in items])
        return super().put_records(instance_id, items)


def run(wf: nf.WorkflowDefinition, backend: Any, *, again: bool = False, **kw: Any) -> list[ev.RunEvent]:
    runner = nf.CheckpointingRunner(backend, echo_output=False, **kw)
    if again:
        runner = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    runner.run(wf, "i-1")
    return events


# -- one attempt's list ----------------------------------------------------------------------
def test_display_list_updates_clears_and_stays_bounded() -> None:
    items = displays.DisplayList()
    for i in range(displays.MAX_DISPLAYS + 10):
        items.add({"data": {"text/plain": str(i)}, "metadata": {}}, display_id="p" if i == 0 else None)
    kept = [d["data"]["text/plain"] for d in items.items()]
    assert kept == [str(i) for i in range(10, displays.MAX_DISPLAYS + 10)] and items.dropped == 10
    items.add({"data": {"text/plain": "new"}, "metadata": {}}, display_id="p", update=True)  # "p" is gone
    assert len(items.items()) == displays.MAX_DISPLAYS
    items.clear()
    items.add({"data": {"text/plain": "a"}, "metadata": {}}, display_id="bar")
    items.add({"data": {"text/plain": "b"}, "metadata": {}}, display_id="bar", update=True)
    assert [d["data"]["text/plain"] for d in items.items()] == ["b"]
    huge = {"data": {"text/html": "x" * (displays.MAX_BYTES + 1), "text/plain": "big table"}, "metadata": {}}
    items.add(huge)
    assert items.items()[-1]["data"] == {"text/plain": "big table"}  # too big alone: its text is kept


def test_normalize_keeps_json_and_turns_bytes_into_base64() -> None:
    shown = displays.normalize({"image/png": b"\x89PNG", "application/json": {"a": 1}, "x/y": object()}, {"w": 1})
    assert shown == {"data": {"image/png": "iVBORw==", "application/json": {"a": 1}}, "metadata": {"w": 1}}
    assert displays.normalize({"x/y": object()}) is None


def test_decode_leaves_out_what_is_not_a_display() -> None:
    assert displays.decode(b"not json") == ()
    assert displays.decode(json.dumps({"displays": [1, {"data": "x"}, {"data": {}}]}).encode()) == ()
    good = displays.encode([{"data": {"text/plain": "t"}, "metadata": {}}])
    assert displays.decode(good) == ({"data": {"text/plain": "t"}, "metadata": {}},)


# -- stored with the output ---------------------------------------------------------------------
def test_displays_are_written_in_the_output_transaction_and_only_when_shown() -> None:
    def quiet() -> int:
        return 1

    def loud(quiet: int) -> int:
        show({"text/plain": "hello"})
        return 2

    backend = Transactions()
    events = run(nf.Workflow("tx").then(quiet).then(loud).build(), backend)
    outputs = [w for w in backend.writes if "quiet" in w or "loud" in w]
    assert outputs == [["quiet"], ["loud", display_id("loud")]]
    records = backend.get_records("i-1")
    assert records["loud"].extra["displays"] == records[display_id("loud")].extra["for"]
    assert display_id("quiet") not in records
    finished = {e.task_id: e for e in events if isinstance(e, ev.TaskFinished)}
    assert finished["loud"].displays == ({"data": {"text/plain": "hello"}, "metadata": {}},)
    assert finished["quiet"].displays == ()


@pytest.fixture
def no_provider() -> Iterator[None]:
    """As outside a notebook (a notebook-layer test earlier in the session may have
    installed the shell's capture)."""
    before = displays.provider()
    displays.set_provider(None)
    try:
        yield
    finally:
        displays.set_provider(before)


def test_without_a_provider_a_task_runs_as_before(no_provider: None) -> None:
    assert displays.provider() is None

    def plain() -> int:
        hooks = nf.get_task_context().hooks
        return 1 if hasattr(hooks, "display") else 0  # the hooks take displays; nobody sends any

    events = run(nf.Workflow("plain").then(plain).build(), nf.InMemoryBackend())
    (done,) = [e for e in events if isinstance(e, ev.TaskFinished)]
    assert done.displays == () and done.preview == "1"


def test_big_displays_spill_to_a_blob_and_come_back(tmp_path: Path) -> None:
    table = "<table>" + "<tr><td>cell</td></tr>" * 200_000 + "</table>"  # ~4 MB

    def report() -> str:
        show({"text/html": table, "text/plain": "a big table"})
        return "ok"

    wf = nf.Workflow("big").then(report).build()
    run(wf, nf.DiskcacheBackend(tmp_path / "s"))
    backend = nf.DiskcacheBackend(tmp_path / "s")
    stored = backend.get_record("i-1", display_id("report"))
    assert stored is not None and stored.blob is not None and stored.payload is None
    restored = [e for e in run(wf, backend, again=True) if isinstance(e, ev.TaskRestored)]
    assert restored[0].displays[0]["data"]["text/html"] == table


def test_a_damaged_display_record_shows_nothing_and_the_resume_goes_on(tmp_path: Path) -> None:
    from tests.store.faults import cache_db, get_row, join_record, plant_record, row_keys, set_row, split_record

    def report() -> str:
        show({"text/plain": "chart"})
        return "ok"

    wf = nf.Workflow("dmg").then(report).build()
    run(wf, nf.DiskcacheBackend(tmp_path / "s"))
    db = cache_db(tmp_path / "s", "i-1")
    (key,) = [k for k in row_keys(db) if k.endswith(display_id("report"))]
    header, payload = split_record(get_row(db, key))
    set_row(db, key, join_record(header, payload.replace(b"chart", b"CHART")))  # a flipped byte
    events = run(wf, nf.DiskcacheBackend(tmp_path / "s"), again=True)
    (restored,) = [e for e in events if isinstance(e, ev.TaskRestored)]
    assert restored.displays == ()  # its checksum fails: nothing shown, nothing raised
    assert isinstance(events[-1], ev.RunFinished) and events[-1].state == "completed"

    plant_record(db, key, b'{"displays": [{"data": "<script>"}]}')  # checksummed, but not displays
    events = run(wf, nf.DiskcacheBackend(tmp_path / "s"), again=True)
    assert [e.displays for e in events if isinstance(e, ev.TaskRestored)] == [()]


def test_figures_a_local_task_leaves_open_are_kept(provider: FigureProvider) -> None:
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    def draw() -> int:
        _, ax = plt.subplots(figsize=(2, 2))
        ax.plot([1, 2])
        return 1

    events = run(nf.Workflow("figs").then(draw).build(), nf.InMemoryBackend())
    (done,) = [e for e in events if isinstance(e, ev.TaskFinished)]
    assert list(done.displays[0]["data"]) == ["image/png", "text/plain"]
    assert plt.get_fignums() == []


PROCESS_SCRIPT = """
import json, os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nbflow as nf
from nbflow.run import displays
from nbflow.run import events as ev


class FigureProvider:
    def begin(self):
        return displays.figure_numbers()

    def end(self, token, sink):
        for fig in displays.new_figures(token):
            shown = displays.figure_display(fig)
            displays.close_figure(fig)
            sink.display(shown["data"], shown["metadata"])


def draw():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([3, 1, 2])
    plt.show()  # a no-op in the worker: the figure stays open
    return os.getpid()


if __name__ == "__main__":
    displays.set_provider(FigureProvider())  # as a notebook's display capture does
    store = nf.DiskcacheBackend(os.path.join(sys.argv[1], "store"))
    seen = []
    with nf.ProcessExecutor(max_workers=1) as ex:
        runner = nf.CheckpointingRunner(store, executor=ex, echo_output=False)
        runner.subscribe(seen.append)
        status = runner.run(nf.Workflow("remote").then(draw).build(), "r-1")
    done = [e for e in seen if isinstance(e, ev.TaskFinished)][0]
    print("RESULT " + json.dumps({
        "state": str(status.state), "child": status.output, "parent": os.getpid(),
        "mimes": [sorted(d["data"]) for d in done.displays],
        "png": done.displays[0]["data"]["image/png"][:20] if done.displays else "",
        "records": sorted(store.get_records("r-1")),
    }))
"""


@pytest.mark.slow
def test_figures_left_open_in_an_executor_process_come_back(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    script = tmp_path / "remote_figs.py"
    script.write_text(textwrap.dedent(PROCESS_SCRIPT))
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    assert res["state"] == "completed" and res["child"] != res["parent"]
    assert res["mimes"] == [["image/png", "text/plain"]]
    assert res["png"].startswith("iVBORw0KGgo")  # base64 of the PNG signature
    assert "draw#display" in res["records"]


def test_loop_iterations_displays_are_shown_again_on_the_loops_restore(tmp_path: Path) -> None:
    def newton(x: float) -> nf.LoopResult:
        show({"text/plain": f"guess {x:.3f}"})
        better = (x + 2 / x) / 2
        return nf.LoopResult.done(better) if abs(better - x) < 1e-3 else nf.LoopResult.again(better)

    wf = nf.Workflow("sqrt2").then(lambda: 1.0).loop(newton, max_iterations=20).build()
    live = [e for e in run(wf, nf.DiskcacheBackend(tmp_path / "s")) if isinstance(e, ev.TaskDisplay)]
    assert [e.task_id for e in live] == [f"newton#{i}" for i in range(1, len(live) + 1)] and len(live) >= 3
    events = run(wf, nf.DiskcacheBackend(tmp_path / "s"), again=True)
    (restored,) = [e for e in events if isinstance(e, ev.TaskRestored) and e.task_id == "newton"]
    assert [(d["metadata"]["nbflow_item"], d["data"]["text/plain"]) for d in restored.displays] == [
        (e.task_id, e.bundle["text/plain"]) for e in live
    ]


def test_a_planted_preview_bundle_is_dropped_not_shown(tmp_path: Path) -> None:
    from tests.store.faults import cache_db, get_row, plant_record, row_keys, split_record

    wf = nf.Workflow("pl").then(lambda: list(range(100))).build()
    run(wf, nf.DiskcacheBackend(tmp_path / "s"))
    db = cache_db(tmp_path / "s", "i-1")
    (key,) = [k for k in row_keys(db) if k.endswith(wf.task_ids[0]) and "#" not in k]
    header, payload = split_record(get_row(db, key))
    assert header["preview_bundle"]["text/plain"].endswith("… 40 more]")  # what a real one looks like
    for planted in ([1, 2], {"text/html": 5}, "x"):
        plant_record(db, key, payload, preview_bundle=planted)
        record = nf.DiskcacheBackend(tmp_path / "s").get_record("i-1", wf.task_ids[0])
        assert record is not None and record.preview_bundle == {}
        assert record.to_dict()["preview_bundle"] == {}
