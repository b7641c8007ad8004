"""The engine's words are enums whose values are the strings nbflow always stored and
showed: shape lines (so definition hashes), RunStarted.kinds, runner.plan()."""

from __future__ import annotations

import json
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.fingerprint import stable_digest
from nbflow.core.graph import Node
from nbflow.core.task import TaskSpec
from nbflow.core.vocabulary import NodeKind, PassMode, PlanStep

# Written out apart from the module: a changed value would change stored data.
STORED = {
    NodeKind: ["task", "route", "merge", "collect", "loop", "map", "delay", "signal"],
    PassMode: ["value", "dict", "kwargs", "none", "first"],
    PlanStep: ["restore", "stale", "run", "skip"],
}


@pytest.mark.parametrize("enum", list(STORED), ids=lambda e: e.__name__)
def test_values_are_the_stored_strings(enum: type) -> None:
    assert [member.value for member in enum] == STORED[enum]
    for member in enum:
        assert member == member.value and str(member) == member.value and f"{member}" == member.value
        assert repr(member) == repr(member.value) and json.dumps(member) == json.dumps(member.value)


def test_a_definition_hash_is_made_of_the_plain_words() -> None:
    wf = nf.Workflow("w").then("a", lambda x: x).map("m", lambda i: i).delay("nap", 1).build()
    assert [n.kind for n in wf.nodes] == [NodeKind.TASK, NodeKind.MAP, NodeKind.DELAY]
    lines = wf.shape()
    assert [line.split("|")[1:3] for line in lines] == [["task", "value"], ["map", "value"], ["delay", "value"]]
    assert wf.definition_hash == stable_digest("w", *lines)


def test_plans_and_events_carry_words_that_read_as_strings() -> None:
    wf = nf.Workflow("w").then("a", lambda x: x + 1).then("b", lambda x: x * 2).build()
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    seen: list[Any] = []
    runner.subscribe(seen.append)
    assert runner.run(wf, "i", 1).output == 4
    assert repr(runner.plan(wf, "i")) == "{'a': 'restore', 'b': 'restore'}"
    started = next(e for e in seen if type(e).__name__ == "RunStarted")
    assert json.dumps(started.kinds) == '{"a": "task", "b": "task"}'
    assert json.dumps(started.plan) == '{"a": "run", "b": "run"}'


def test_a_misspelt_kind_or_mode_fails_when_the_node_is_made() -> None:
    node = Node("a", "task", len, TaskSpec(), "value", (), "fp")  # the strings are read as the words
    assert node.kind is NodeKind.TASK and node.mode is PassMode.VALUE
    with pytest.raises(ValueError, match="'tsak' is not a valid NodeKind"):
        Node("a", "tsak", len, TaskSpec(), "value", (), "fp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'kwarg' is not a valid PassMode"):
        Node("a", "task", len, TaskSpec(), "kwarg", (), "fp")  # type: ignore[arg-type]
