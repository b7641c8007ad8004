"""Record ids (nbflow.core.keys): internal ids can never be taken by a task or workflow.

A task id that looked like a map item (``m[0]``) or the stored input (``__input__``)
would overwrite that record: finished work would run again, or a resumed run would
read the wrong value. So every derived id form is refused as a user id, at the call.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import nbflow as nf
from nbflow.core import keys
from nbflow.core.keys import (
    ALLOWED_CHARACTERS,
    INPUT_ID,
    check_task_id,
    child_id,
    chunk_id,
    item_id,
    iteration_id,
    parse_item_id,
    parse_iteration_id,
    wait_id,
)


def f(x: Any) -> Any:
    return x


def g(x: Any) -> Any:
    return x


def items(x: Any) -> list[int]:
    return [1, 2, 3]


# Every form nbflow derives ids in, plus the characters reserved for them.
INTERNAL_FORMS = {
    "map item": ("m[0]", "'['"),
    "map chunk": ("m[0:10]", "'['"),
    "stored input": ("__input__", "'__'"),
    "reserved prefix": ("__anything", "'__'"),
    "child task": ("a/b", "'/'"),
    "idempotency separator": ("a:b", "':'"),
    "loop iteration": ("loop#2", "'#'"),
    "wait deadline": ("nap#wake", "'#'"),
    "closing bracket": ("m]", "']'"),
    "backslash": ("a\\b", "'\\\\'"),
    "control character": ("a\nb", "U+000A"),
    "tab": ("a\tb", "U+0009"),
    "empty": ("", "empty"),
    "blank": ("   ", "empty"),
    "too long": ("x" * 101, "101 characters"),
    "other punctuation": ("x@y", "'@'"),
}


# An empty name is a bad option value before it is a bad id (ConfigurationError "name=''").
@pytest.mark.parametrize("case", [c for c in INTERNAL_FORMS if INTERNAL_FORMS[c][0]])
def test_internal_id_forms_are_refused_by_the_builder(case: str) -> None:
    bad, why = INTERNAL_FORMS[case]
    with pytest.raises(nf.WorkflowDefinitionError) as info:
        nf.Workflow("w").then(bad, f)
    text = str(info.value)
    for word in ("'w'", "invalid task id", repr(bad), why, ALLOWED_CHARACTERS):
        assert word in text, f"{word!r} not in: {text}"


@pytest.mark.parametrize("case", list(INTERNAL_FORMS))
def test_internal_id_forms_are_refused_by_the_task_decorator(case: str) -> None:
    bad, why = INTERNAL_FORMS[case]
    with pytest.raises(nf.ConfigurationError) as info:
        nf.task(name=bad)
    text = str(info.value)
    for word in (f"name={bad!r}", why, ALLOWED_CHARACTERS):
        assert word in text, f"{word!r} not in: {text}"


@pytest.mark.parametrize(
    "add",
    [
        pytest.param(lambda wf: wf.then(f, name="m[0]"), id="then name="),
        pytest.param(lambda wf: wf.add("m[0]", f), id="add"),
        pytest.param(lambda wf: wf.then(items).map("m[0]", f), id="map"),
        pytest.param(lambda wf: wf.loop("m[0]", f), id="loop"),
        pytest.param(lambda wf: wf.then(f).fork().branch("m[0]", f), id="branch"),
        pytest.param(lambda wf: wf.then(f).fork().branch(f, name="m[0]"), id="branch name="),
        pytest.param(lambda wf: wf.then(f).fork().branch(g).join("m[0]", f), id="join"),
        pytest.param(lambda wf: wf.route("m[0]", f, keys=[1]), id="route"),
        pytest.param(lambda wf: wf.then(f).route(g, keys=[1]).branch(1, "h", f).done("m[0]"), id="route done"),
        pytest.param(lambda wf: wf.delay("m[0]", "1s"), id="delay"),
        pytest.param(lambda wf: wf.wait_for_signal("go", name="m[0]"), id="wait_for_signal"),
        pytest.param(lambda wf: wf.add_signal("m[0]"), id="add_signal"),
    ],
)
def test_every_step_kind_checks_its_id(add: Any) -> None:
    with pytest.raises(nf.WorkflowDefinitionError, match=r"id 'm\[0\]'.*reserves for map items"):
        add(nf.Workflow("w"))


def test_decorated_name_is_checked_before_the_workflow_sees_it() -> None:
    with pytest.raises(nf.ConfigurationError, match="reserves for"):

        @nf.task(name="__input__")
        def load(path: str) -> str:
            return path


@pytest.mark.parametrize("order", ["impostor first", "map first"])
def test_a_task_cannot_take_the_id_of_a_map_item(order: str) -> None:
    """The bug this module fixes: ``m[0]`` next to a map ``m`` shared a record with its item 0."""
    with pytest.raises(nf.WorkflowDefinitionError, match=r"invalid task id 'm\[0\]'"):
        if order == "impostor first":
            nf.WorkflowBuilder("w").add("m[0]", f).then(items).map("m", f).build()
        else:
            nf.WorkflowBuilder("w").then(items).map("m", f).add("m[0]", f).build()


def test_a_task_cannot_take_the_id_of_the_stored_input() -> None:
    with pytest.raises(nf.WorkflowDefinitionError, match="'__input__'"):
        nf.Workflow("w").then(INPUT_ID, f).build()


@pytest.mark.parametrize("bad", ["m[0]", "a/b", "a:b", "__w", "x#1", "x" * 101])
def test_workflow_names_follow_the_same_rule(bad: str) -> None:
    with pytest.raises(nf.ConfigurationError) as info:
        nf.Workflow(bad)
    assert "workflow name" in str(info.value) and ALLOWED_CHARACTERS in str(info.value)
    with pytest.raises(nf.ConfigurationError):
        nf.WorkflowContext(bad)


@pytest.mark.parametrize(
    "good", ["load", "step 1", "v1.2-final", "_private", "données", "नमस्ते", "数据", "x" * 100, "lambda_3fa2c1_2"]
)
def test_ordinary_ids_and_names_pass(good: str) -> None:
    assert check_task_id(good) is None
    wf = nf.Workflow(good).then(good, f).build()
    assert wf.task_ids == (good,)


def test_generated_ids_pass_the_rule() -> None:
    wf = nf.Workflow("w").then(lambda x: x).then(lambda x: x).build()
    assert all(t.startswith("lambda_") for t in wf.task_ids)
    assert all(check_task_id(t) is None for t in wf.task_ids)


def test_child_workflow_ids_are_built_by_child_id() -> None:
    child = nf.Workflow("kid").then(f).build()
    wf = nf.Workflow("parent").then("first", f).then_flow(child).build()
    assert wf.task_ids == ("first", child_id("kid", "f"))


def test_the_store_uses_the_same_input_id() -> None:
    from nbflow.store import base

    assert base.INPUT_KEY == INPUT_ID


def test_id_forms() -> None:
    assert item_id("m", 3) == "m[3]"
    assert chunk_id("m", 0, 64) == "m[0:64]"
    assert iteration_id("loop", 2) == "loop#2"
    assert wait_id("nap", "wake") == "nap#wake"
    assert child_id("kid", "load") == "kid/load"
    assert parse_item_id("m[0:64]") is None  # a chunk is not an item
    assert parse_item_id("m[-1]") is None
    assert parse_iteration_id("nap#wake") is None  # a deadline is not an iteration
    assert keys.ID_RULE.startswith(ALLOWED_CHARACTERS)


# Ids built only from ASCII letters, digits and the allowed punctuation...
PLAIN_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\- ]{0,99}", fullmatch=True)
# ...and from any letters and digits, filtered by the rule itself.
UNICODE_IDS = st.text(
    alphabet=st.characters(categories=("L", "Nd"), include_characters="_-. "), min_size=1, max_size=100
).filter(lambda s: check_task_id(s) is None)
INDEXES = st.integers(min_value=0, max_value=10**9)


@given(PLAIN_IDS)
def test_plain_ids_are_always_allowed(task_id: str) -> None:
    assert check_task_id(task_id) is None


@given(st.one_of(PLAIN_IDS, UNICODE_IDS), INDEXES)
def test_item_ids_round_trip(map_id: str, index: int) -> None:
    assert parse_item_id(item_id(map_id, index)) == (map_id, index)
    assert parse_iteration_id(iteration_id(map_id, index + 1)) == (map_id, index + 1)


@given(st.one_of(PLAIN_IDS, UNICODE_IDS), INDEXES, INDEXES)
def test_no_allowed_id_is_an_internal_id(task_id: str, i: int, j: int) -> None:
    """An allowed id never parses as an item, and no derived id is an allowed id."""
    assert parse_item_id(task_id) is None and parse_iteration_id(task_id) is None
    for derived in (
        item_id(task_id, i),
        chunk_id(task_id, i, j),
        iteration_id(task_id, i + 1),
        wait_id(task_id, "wake"),
        child_id(task_id, "x"),
        child_id("kid", task_id),
        INPUT_ID,
    ):
        assert check_task_id(derived) is not None, derived
