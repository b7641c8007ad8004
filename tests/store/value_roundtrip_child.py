"""Both halves of the cross-process value round trip, run in child processes by
``test_value_roundtrip.py`` (and in one process for the in-memory store).

The writer checkpoints every catalogue value twice: as the output of a task (one
workflow, one task per value) and as the input of a workflow whose only task fails
(an instance per value, left as a crash would leave it). The reader, another process,
reads the outputs with ``WorkflowClient.get_task_result`` and resumes each input
instance with a task that returns its input, so the input is decoded from the store.
Expected values are rebuilt from the deterministic catalogues, never sent across.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import traceback
from collections.abc import Callable
from typing import Any

import nbflow as nf
from tests.core.codec_values import assert_same, json_catalogue, pickle_catalogue

# Classes the way a notebook defines them: the writer runs this as ``__main__``; the
# reader never defines them, so they must come back from the checkpoint alone.
MAIN_SOURCE = """
import dataclasses
import numpy as np
import pandas as pd

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2

@dataclasses.dataclass
class Reading:
    sensor: str
    values: list

looped = Point(3, 4)
looped.me = looped
shared = Point(1, 1)
MAIN_VALUES = [
    looped,
    {"readings": [Reading("a", [1.5, float("nan")]), Reading("b", [])]},
    [shared, shared],
    np.array([Point(0, 2), None], dtype=object),
    pd.DataFrame({"obj": [Point(5, 12)], "n": [1]}),
]
"""


def check_main_values(values: list[Any]) -> None:
    """What the reader can check of values whose classes it does not have."""
    looped, readings, pair, array, frame = values
    assert type(looped).__name__ == "Point" and type(looped).__module__ == "__main__"
    assert looped.norm2() == 25 and looped.me is looped
    first: Any = readings["readings"][0]
    assert [f.name for f in dataclasses.fields(first)] == ["sensor", "values"]
    assert first.sensor == "a" and first.values[0] == 1.5 and math.isnan(first.values[1])
    assert readings["readings"][1].values == []
    assert pair[0] is pair[1] and pair[0].norm2() == 2
    assert array.dtype == object and array[0].norm2() == 4 and array[1] is None
    assert frame["obj"].iloc[0].norm2() == 169 and frame["n"].tolist() == [1]


PICKLE_TASKS, JSON_TASKS = "pickle-tasks", "json-tasks"


def tasks_workflow(name: str, values: list[Any], codec: Any = None) -> nf.WorkflowDefinition:
    """One task per value, each returning its value (``version`` pins the fingerprint,
    so the reader's own copy of the workflow matches)."""
    builder = nf.Workflow(name, codec=codec)
    for i, value in enumerate(values):
        builder.then(f"v{i:03d}", _constant(value), version="1")
    return builder.build()


def input_workflow(codec: Any, echo: Callable[[Any], Any]) -> nf.WorkflowDefinition:
    return nf.Workflow("inputs", codec=codec).then("echo", echo, version="1").build()


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def crash(value: Any) -> Any:
    raise RuntimeError("the kernel died here")


def echo(value: Any) -> Any:
    return value


def write(backend: Any, main_values: list[Any]) -> None:
    """Checkpoint every value as task outputs and as workflow inputs."""
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    pickled = [v for _, v in pickle_catalogue()] + main_values
    jsoned = [v for _, v in json_catalogue()]
    for name, values, codec in ((PICKLE_TASKS, pickled, None), (JSON_TASKS, jsoned, nf.JsonCodec())):
        status = runner.run(tasks_workflow(name, values, codec), name, None)
        assert status.state == "completed", status.error
        for i, value in enumerate(values):
            error = runner.run(input_workflow(codec, crash), f"{name}-input-{i:03d}", value).error
            assert error is not None and error.type == "RuntimeError", error


def check(backend: Any, main_values_checker: Callable[[list[Any]], None] = check_main_values) -> list[str]:
    """Read everything back; returns one line per value that did not come back."""
    client = nf.WorkflowClient(backend)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    failures: list[str] = []
    main_count = 5
    for name, catalogue, codec, extra in (
        (PICKLE_TASKS, pickle_catalogue(), None, main_count),
        (JSON_TASKS, json_catalogue(), nf.JsonCodec(), 0),
    ):
        got: dict[str, list[Any]] = {"output": [], "input": []}
        for i in range(len(catalogue) + extra):
            label = catalogue[i][0] if i < len(catalogue) else f"main-{i - len(catalogue)}"
            reads: dict[str, Callable[[], Any]] = {
                "output": functools.partial(client.get_task_result, name, f"v{i:03d}"),
                "input": functools.partial(_resumed_input, runner, codec, f"{name}-input-{i:03d}"),
            }
            for where, read in reads.items():
                try:
                    value = read()
                    got[where].append(value)
                    if i < len(catalogue):
                        assert_same(catalogue[i][1], value, identity=codec is None)
                except Exception as exc:  # noqa: BLE001 - report every value, not the first failure
                    failures.append(f"{name} {label} ({where}): {type(exc).__name__}: {exc}")
                    traceback.print_exc(file=sys.stderr)
        for where, values in got.items():
            if extra and len(values) == len(catalogue) + extra:
                try:
                    main_values_checker(values[len(catalogue) :])
                except Exception as exc:  # noqa: BLE001 - reported with the others
                    failures.append(f"{name} main classes ({where}): {type(exc).__name__}: {exc!r}")
                    traceback.print_exc(file=sys.stderr)
    return failures


def _resumed_input(runner: nf.CheckpointingRunner, codec: Any, instance_id: str) -> Any:
    status = runner.resume(input_workflow(codec, echo), instance_id)
    assert status.state == "completed", status.error
    return status.output


def value_count() -> int:
    return 2 * (len(pickle_catalogue()) + 5 + len(json_catalogue()))
