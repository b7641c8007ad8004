"""The progress model keeps what each task displayed and its rich preview, and its
``detail()`` hands them to the front end in the documented form (``displays``: a list of
``{mime: str}``; ``display_items``; ``preview_bundle``)."""

from __future__ import annotations

import json

from nbflow.jupyter.progress import ProgressModel
from nbflow.run import events as ev
from nbflow.run.displays import MAX_DISPLAYS

W = {"workflow": "w", "instance_id": "i"}
PNG = "iVBORw0KGgo="


def shown(text: str, **extra: str) -> dict[str, object]:
    return {"data": {"text/plain": text, **extra}, "metadata": {}}


def test_live_displays_then_the_finished_task_keeps_them() -> None:
    m = ProgressModel(["plot"])
    m.apply(ev.TaskStarted(**W, task_id="plot"))
    m.apply(ev.TaskDisplay(**W, task_id="plot", bundle={"image/png": PNG, "text/plain": "<Figure>"}))
    m.apply(ev.TaskDisplay(**W, task_id="plot", bundle={"text/plain": "0%"}, display_id="bar"))
    m.apply(ev.TaskDisplay(**W, task_id="plot", bundle={"text/plain": "100%"}, display_id="bar", update=True))
    detail = m.info("plot").detail("plot")
    assert detail["displays"] == [{"image/png": PNG, "text/plain": "<Figure>"}, {"text/plain": "100%"}]
    assert detail["live"] is True
    m.apply(ev.TaskFinished(**W, task_id="plot", preview_bundle={"text/html": "<table></table>"}))
    detail = m.info("plot").detail("plot")
    assert len(detail["displays"]) == 2  # the event had none of its own: the live ones stay
    assert detail["preview_bundle"] == {"text/html": "<table></table>"}
    json.dumps(detail)  # what the widget syncs must be JSON


def test_a_restored_task_shows_the_stored_displays_and_a_new_attempt_starts_empty() -> None:
    m = ProgressModel(["t"])
    m.apply(ev.TaskRestored(**W, task_id="t", displays=(shown("from the store", **{"text/html": "<b>x</b>"}),)))
    assert m.info("t").detail("t")["displays"] == [{"text/plain": "from the store", "text/html": "<b>x</b>"}]
    m.apply(ev.TaskStarted(**W, task_id="t", attempt=2))
    assert m.info("t").detail("t")["displays"] == []
    m.apply(ev.TaskDisplay(**W, task_id="t", bundle={"text/plain": "a"}))
    m.apply(ev.TaskDisplay(**W, task_id="t", clear=True))
    assert m.info("t").detail("t")["displays"] == []


def test_map_items_displays_fold_into_their_map_and_name_the_item() -> None:
    m = ProgressModel(["m"], kinds={"m": "map"})
    for i in range(3):
        m.apply(ev.TaskDisplay(**W, task_id=f"m[{i}]", bundle={"text/plain": f"item {i}"}))
    detail = m.info("m").detail("m")
    assert detail["displays"] == [{"text/plain": f"item {i}"} for i in range(3)]
    assert detail["display_items"] == ["m[0]", "m[1]", "m[2]"]
    restored = ProgressModel(["m"], kinds={"m": "map"})
    stored = {"data": {"text/plain": "item 1"}, "metadata": {"nbflow_item": "m[1]"}}
    restored.apply(ev.TaskRestored(**W, task_id="m", displays=(stored,)))
    assert restored.info("m").detail("m")["display_items"] == ["m[1]"]


def test_a_failed_task_shows_what_it_drew_and_the_list_stays_bounded() -> None:
    m = ProgressModel(["t"])
    m.apply(ev.TaskStarted(**W, task_id="t"))
    for i in range(MAX_DISPLAYS + 5):
        m.apply(ev.TaskDisplay(**W, task_id="t", bundle={"text/plain": str(i)}))
    assert len(m.info("t").detail("t")["displays"]) == MAX_DISPLAYS
    m.apply(ev.TaskFailed(**W, task_id="t", attempt=1, error="ValueError: x", displays=(shown("partial"),)))
    assert m.info("t").detail("t")["displays"] == [{"text/plain": "partial"}]


def test_json_mime_values_become_text_and_odd_stored_values_are_left_out() -> None:
    m = ProgressModel(["t"])
    m.apply(
        ev.TaskRestored(
            **W,
            task_id="t",
            displays=({"data": {"application/json": {"a": 1}}, "metadata": {}}, "not a display"),  # type: ignore[arg-type]
            preview_bundle={"text/plain": "ok", "bad": 3},  # type: ignore[dict-item]
        )
    )
    detail = m.info("t").detail("t")
    assert detail["displays"] == [{"application/json": '{"a": 1}'}]
    assert detail["preview_bundle"] == {"text/plain": "ok"}
