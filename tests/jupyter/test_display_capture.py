"""Displays made in tasks go to their task, through a real IPython shell's display
publisher (``nbflow.jupyter.display_capture``): sync tasks in threads, async tasks, map
items; figures left open; ``update_display`` and ``clear_output``; stored with the
checkpoint and shown again when the task is restored; and nothing captured (nor
broken) outside IPython.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.display import HTML, clear_output, display, update_display
from IPython.terminal.interactiveshell import TerminalInteractiveShell
from IPython.testing import tools

import nbflow as nf
from nbflow.core.keys import display_id
from nbflow.jupyter import display_capture
from nbflow.run import displays
from nbflow.run import events as ev

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")


def make_shell() -> Any:
    """The process's test shell, as IPython.testing.globalipapp makes it, without calling
    its ``start_ipython`` (which runs once per process: a test module that imported its
    ``get_ipython`` before would then get None)."""
    if TerminalInteractiveShell.initialized():
        return TerminalInteractiveShell.instance()
    config = tools.default_config()
    config.TerminalInteractiveShell.simple_prompt = True
    return TerminalInteractiveShell.instance(config=config)


@pytest.fixture
def loose() -> Iterator[list[dict[str, Any]]]:
    """A real shell with nbflow's capture installed; yields what reached the cell's
    output (the publisher's own method) instead of a task."""
    shell = make_shell()
    published: list[dict[str, Any]] = []
    pub = shell.display_pub
    original = pub.publish

    def record(data: Any, metadata: Any = None, *args: Any, **kwargs: Any) -> None:
        published.append(dict(data))

    pub.publish = record
    formats = shell.display_formatter.active_types
    shell.display_formatter.active_types = [*formats, "text/html", "image/png"]  # as a kernel's shell
    assert display_capture.install(shell)
    try:
        yield published
    finally:
        display_capture.uninstall(shell)
        pub.publish = original
        shell.display_formatter.active_types = formats
        plt.close("all")
    assert displays.provider() is None


def run(
    wf: nf.WorkflowDefinition, backend: Any = None, *, use_existing: bool = False, **kwargs: Any
) -> list[ev.RunEvent]:
    runner = nf.CheckpointingRunner(backend or nf.InMemoryBackend(), echo_output=False, **kwargs)
    if use_existing:  # a re-run of the cell: finished tasks are restored
        runner = runner.with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    runner.run(wf, "i-1")
    return events


def finished(events: list[ev.RunEvent], kind: type = ev.TaskFinished) -> dict[str, Any]:
    return {e.task_id: e for e in events if isinstance(e, kind)}


def html_of(event: Any) -> list[str]:
    return [d["data"].get("text/html", "") for d in event.displays]


def test_tasks_in_threads_each_keep_their_own_displays(loose: list[dict[str, Any]]) -> None:
    def start() -> int:
        return 1

    def left(start: int) -> str:
        for i in range(3):
            display(HTML(f"<b>left {i}</b>"))
        return "l"

    def right(start: int) -> str:
        for i in range(3):
            display(HTML(f"<i>right {i}</i>"))
        return "r"

    wf = nf.Workflow("threads").then(start).fork().branch(left).branch(right).join(lambda left, right: 0).build()
    events = run(wf, inline_sync=False)  # sync branches run in pool threads
    done = finished(events)
    assert html_of(done["left"]) == [f"<b>left {i}</b>" for i in range(3)]
    assert html_of(done["right"]) == [f"<i>right {i}</i>" for i in range(3)]
    live = [(e.task_id, e.bundle.get("text/html")) for e in events if isinstance(e, ev.TaskDisplay)]
    assert sorted(live) == sorted([("left", f"<b>left {i}</b>") for i in range(3)] + [
        ("right", f"<i>right {i}</i>") for i in range(3)
    ])  # fmt: skip
    assert loose == []  # not published under the cell
    display(HTML("<p>outside a task</p>"))  # outside a task nothing changes
    assert loose == [{"text/plain": "<IPython.core.display.HTML object>", "text/html": "<p>outside a task</p>"}]


def test_concurrent_async_tasks_each_keep_their_own_displays(loose: list[dict[str, Any]]) -> None:
    import asyncio

    async def one() -> int:
        for i in range(3):
            display({"text/plain": f"one {i}"}, raw=True)
            await asyncio.sleep(0.001)  # the other task displays in between
        return 1

    async def two() -> int:
        for i in range(3):
            display({"text/plain": f"two {i}"}, raw=True)
            await asyncio.sleep(0.001)
        return 2

    wf = nf.Workflow("aio").fork().branch(one).branch(two).join(lambda one, two: one + two).build()
    done = finished(run(wf))
    assert [d["data"]["text/plain"] for d in done["one"].displays] == ["one 0", "one 1", "one 2"]
    assert [d["data"]["text/plain"] for d in done["two"].displays] == ["two 0", "two 1", "two 2"]
    assert loose == []


def test_map_items_displays_are_stored_per_item_and_shown_again(loose: list[dict[str, Any]], tmp_path: Path) -> None:
    def items() -> list[int]:
        return [0, 1, 2, 3, 4]

    def square(x: int) -> int:
        display({"text/plain": f"item {x}"}, raw=True)
        return x * x

    wf = nf.Workflow("mapped").then(items).map(square, concurrency=2).build()
    backend = nf.DiskcacheBackend(tmp_path / "store")
    events = run(wf, backend)
    live = sorted((e.task_id, e.bundle["text/plain"]) for e in events if isinstance(e, ev.TaskDisplay))
    assert live == [(f"square[{i}]", f"item {i}") for i in range(5)]
    records = backend.get_records("i-1")
    assert all(display_id(f"square[{i}]") in records for i in range(5))
    backend.close()

    restored = finished(run(wf, nf.DiskcacheBackend(tmp_path / "store"), use_existing=True), ev.TaskRestored)
    shown = [(d["metadata"]["nbflow_item"], d["data"]["text/plain"]) for d in restored["square"].displays]
    assert shown == [(f"square[{i}]", f"item {i}") for i in range(5)]
    assert loose == []


def test_figures_a_task_leaves_open_are_its_own_and_closed(loose: list[dict[str, Any]]) -> None:
    before = plt.figure()  # opened outside the task: not the task's
    before_number = before.number

    def draw() -> int:
        _, ax = plt.subplots(figsize=(2, 2))
        ax.plot([1, 3, 2])
        plt.show()  # Agg: a no-op; the figure stays open and the task keeps it
        return 1

    done = finished(run(nf.Workflow("figs").then(draw).build()))
    (shown,) = done["draw"].displays
    assert base64.b64decode(shown["data"]["image/png"]).startswith(b"\x89PNG")
    assert plt.get_fignums() == [before_number]  # the task's figure is closed, the other one left alone
    assert loose == []


def _image(png_b64: str) -> Any:
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))


def _inline(fig: Any) -> Any:
    """The picture Jupyter's inline backend shows for ``fig`` (IPython's formatter call)."""
    from IPython.core.pylabtools import print_figure

    return _image(print_figure(fig, base64=True))


def _dark(image: Any) -> int:
    """Pixels of text and lines (dark on the white background)."""
    return int((image.max(axis=2) < 100).sum())


def _assert_looks_inline(shown: Any, inline: Any) -> None:
    h, w = shown.shape[:2]
    assert abs(h - inline.shape[0]) <= 4 and abs(w - inline.shape[1]) <= 4, (shown.shape, inline.shape)
    assert abs(_dark(shown) - _dark(inline)) <= 0.06 * _dark(inline)  # every label's ink is there


@pytest.mark.parametrize("labels_overflow", [False, True], ids=["inside", "rotated-labels-past-the-edge"])
def test_a_figure_left_open_is_shown_as_the_inline_backend_shows_it(
    loose: list[dict[str, Any]], labels_overflow: bool
) -> None:
    """The captured picture is the inline backend's (``bbox_inches="tight"``): margins
    trimmed, and long rotated tick labels that run past the figure's bottom edge kept
    whole, not cut at the edge."""
    drawn: list[Any] = []
    names = [f"region {name}" for name in ("north-east", "south-west", "central", "islands")]

    def draw() -> int:
        fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
        ax.bar(range(4), [3, 1, 2, 4])
        ax.set_title("sales")
        ax.set_xticks(range(4), names if labels_overflow else ["a", "b", "c", "d"], rotation=60)
        if not labels_overflow:
            fig.tight_layout()
        drawn.append(fig)
        return 1

    done = finished(run(nf.Workflow("whole").then(draw).build()))
    (shown,) = done["draw"].displays
    image = _image(shown["data"]["image/png"])
    inline = _inline(drawn[0])
    _assert_looks_inline(image, inline)
    if labels_overflow:  # the labels reach 300 px down: a one-pass draw at 4x3 in would cut them
        assert image.shape[0] > 300 + 20 and inline.shape[0] > 300 + 20
    else:  # trimmed margins: smaller than the 400x300 canvas
        assert image.shape[0] < 300 and image.shape[1] < 400
    assert loose == []


def test_update_display_replaces_and_clear_output_empties(loose: list[dict[str, Any]]) -> None:
    def step() -> int:
        display({"text/plain": "old"}, raw=True)
        clear_output()  # the task starts over
        handle = display({"text/plain": "0%"}, raw=True, display_id=True)
        assert handle is not None
        for p in (50, 100):
            update_display({"text/plain": f"{p}%"}, raw=True, display_id=handle.display_id)
        display({"text/plain": "done"}, raw=True)
        return 1

    done = finished(run(nf.Workflow("upd").then(step).build()))
    assert [d["data"]["text/plain"] for d in done["step"].displays] == ["100%", "done"]
    assert loose == []


def test_a_restored_task_shows_what_it_displayed_and_only_that(loose: list[dict[str, Any]], tmp_path: Path) -> None:
    show = {"on": True}

    def report() -> str:
        if show["on"]:
            display(HTML("<h3>quarterly</h3>"))
        return "ok"

    wf = nf.Workflow("rep").then(report).build()
    first = finished(run(wf, nf.DiskcacheBackend(tmp_path / "s")))
    restored = finished(run(wf, nf.DiskcacheBackend(tmp_path / "s"), use_existing=True), ev.TaskRestored)
    assert html_of(restored["report"]) == html_of(first["report"]) == ["<h3>quarterly</h3>"]

    # it runs again and shows nothing: the older display record is not its own any more
    show["on"] = False
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(tmp_path / "s"), echo_output=False)
    runner.rerun_from(wf, "i-1", "report")
    restored = finished(run(wf, nf.DiskcacheBackend(tmp_path / "s"), use_existing=True), ev.TaskRestored)
    assert restored["report"].displays == ()


def test_a_failed_task_keeps_what_it_drew(loose: list[dict[str, Any]]) -> None:
    def broken() -> int:
        display({"text/plain": "partial chart"}, raw=True)
        raise ValueError("no data")

    events = run(nf.Workflow("bad").then(broken).build())
    (failed,) = [e for e in events if isinstance(e, ev.TaskFailed)]
    assert [d["data"]["text/plain"] for d in failed.displays] == ["partial chart"]


def test_outside_ipython_nothing_is_captured_and_nothing_breaks(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from IPython.display import display
        import nbflow as nf

        def draw():
            display({{"text/plain": "printed, not captured"}}, raw=True)
            plt.subplots()
            return 1

        backend = nf.DiskcacheBackend({str(tmp_path / "store")!r})
        status = nf.CheckpointingRunner(backend).run(nf.Workflow("plain").then(draw).build(), "i-1")
        print("state", status.state, "records", sorted(backend.get_records("i-1")), "figures", plt.get_fignums())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "state completed records ['__input__', 'draw'] figures [1]" in out.stdout


def test_loading_the_extension_captures_displays_without_a_widget() -> None:
    """``%load_ext nbflow`` installs the capture itself, so a ``--no-widget`` run (or a
    runner of the user's own in a notebook) stores what its tasks display too; unloading
    stops it."""
    from nbflow.jupyter import load_ipython_extension, unload_ipython_extension

    shell = make_shell()
    display_capture.uninstall(shell)
    assert not display_capture.installed()
    formats = shell.display_formatter.active_types
    shell.display_formatter.active_types = [*formats, "text/html"]  # as a kernel's shell
    load_ipython_extension(shell)
    try:
        assert display_capture.installed()
        backend = nf.InMemoryBackend()

        def show(x: int) -> int:
            display(HTML("<b>shown by the task</b>"))
            return x

        run(nf.Workflow("ext").then(show).build(), backend)
        stored = backend.get_record("i-1", display_id("show"))
        assert stored is not None and b"shown by the task" in (stored.payload or b"")
    finally:
        unload_ipython_extension(shell)
        shell.display_formatter.active_types = formats
    assert not display_capture.installed()


def test_a_pooled_worker_stores_what_its_units_display(loose: list[dict[str, Any]], tmp_path: Path) -> None:
    """A PooledWorker in a notebook (its units run through the same step host) stores
    each unit's displays in the unit's claimed commit; a later resume shows them again."""
    backend = nf.DiskcacheBackend(tmp_path / "store")

    def draw(x: int) -> list[int]:
        display(HTML(f"<b>unit {x}</b>"))
        return list(range(3))

    def square(x: int) -> int:
        display(HTML(f"<i>item {x}</i>"))
        return x * x

    wf = nf.Workflow("pooled").then(draw).map(square).build()
    nf.WorkflowClient(backend).submit(wf, "p-1", 5)
    worker = nf.PooledWorker("w", backend, [wf], poll_interval=0.02)
    handle = worker.start(until_idle=True)
    handle.join(60)
    assert not handle.is_alive()
    assert nf.WorkflowClient(backend).status("p-1").state == nf.RunState.COMPLETED
    record = backend.get_record("p-1", display_id("draw"))
    assert record is not None and b"<b>unit 5</b>" in (record.payload or b"")
    runner = nf.CheckpointingRunner(backend, echo_output=False).with_conflict_policy(nf.ConflictPolicy.USE_EXISTING)
    events: list[ev.RunEvent] = []
    runner.subscribe(events.append)
    runner.run(wf, "p-1", 5)  # the cell re-run: every task restored from the store
    restored = finished(events, ev.TaskRestored)
    assert html_of(restored["draw"]) == ["<b>unit 5</b>"]
    assert loose == []
