"""The bad-input catalogue: every invalid call gets an NbflowError subclass whose
message names the problem (and, where there is one, the fix)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.graph import InputRef


def a(x):
    return x


def b(x):
    return x


def _check(call: Callable[[], Any], error: type[nf.NbflowError], *words: str) -> nf.NbflowError:
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, nf.NbflowError)
    text = str(info.value)
    for word in words:
        assert word in text, f"{word!r} not in message: {text}"
    return info.value


# -- builder ----------------------------------------------------------------------------
BUILDER_CASES: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "empty workflow": (lambda: nf.Workflow("w").build(), ("no tasks", "'w'")),
    "duplicate id": (lambda: nf.Workflow("w").then(a).then(a), ("'a'", "used twice")),
    "duplicate named id": (lambda: nf.Workflow("w").then("s", a).then("s", b), ("'s'", "used twice")),
    "name without function": (lambda: nf.Workflow("w").then("step1"), ("'step1'", "no function")),
    "not callable": (lambda: nf.Workflow("w").then(42), ("needs a function", "42")),
    "two functions": (lambda: nf.Workflow("w").then(a, b), ("two functions",)),
    "slash in id": (lambda: nf.Workflow("w").then("x/y", a), ("invalid task id", "x/y")),
    "join without branches": (lambda: nf.Workflow("w").then(a).fork().join(b), ("no branches",)),
    "empty branch": (lambda: nf.Workflow("w").then(a).fork().branch(), ("at least one function",)),
    "branch name without fn": (
        lambda: nf.Workflow("w").then(a).fork().branch("x"),
        ("'x'", "not followed by a function"),
    ),
    "branch non-callable": (lambda: nf.Workflow("w").then(a).fork().branch(3), ("3", "not a function")),
    "branch duplicate id": (lambda: nf.Workflow("w").then(a).fork().branch(a), ("'a'", "used twice")),
    "unknown dependency": (
        lambda: nf.WorkflowBuilder("w").add(b, inputs={"x": "ghost"}).build(),
        ("'ghost'", "'b'", "not a task"),
    ),
    "cycle": (
        lambda: nf.WorkflowBuilder("w").add(a, inputs={"x": "b"}).add(b, inputs={"x": "a"}).build(),
        ("cycle", "a -> b", "-> a"),
    ),
    "self cycle": (lambda: nf.WorkflowBuilder("w").add(a, inputs={"x": "a"}).build(), ("cycle", "a -> a")),
    "bad add input": (lambda: nf.WorkflowBuilder("w").add(a, inputs={"x": 5}), ("'x'", "InputRef")),
    "bad builder context": (lambda: nf.WorkflowBuilder(42), ("WorkflowContext",)),
}


@pytest.mark.parametrize("case", list(BUILDER_CASES))
def test_bad_builder_calls(case: str) -> None:
    call, words = BUILDER_CASES[case]
    _check(call, nf.WorkflowDefinitionError, *words)


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: nf.Workflow(""), ("workflow name",)),
        (lambda: nf.Workflow("a/b"), ("workflow name", "'/'")),
        (lambda: nf.Workflow(5), ("workflow name",)),  # type: ignore[arg-type]
        (lambda: nf.WorkflowContext("w", codec="json"), ("codec", "JsonCodec")),
        (lambda: nf.WorkflowContext("w", metadata=[1]), ("metadata", "dict")),
    ],
)
def test_bad_workflow_context(call: Callable[[], Any], words: tuple[str, ...]) -> None:
    _check(call, nf.ConfigurationError, *words)


# -- task options -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"retries": -1}, ("max_retries=-1", ">= 0")),
        ({"retries": "3"}, ("retries='3'",)),
        ({"retries": True}, ("retries=True",)),
        ({"timeout": "abc"}, ("timeout='abc'", "duration")),
        ({"timeout": -1}, ("timeout=-1",)),
        ({"timeout": 0}, ("timeout=0", "positive")),
        ({"timeout": "5 parsecs"}, ("timeout",)),
        ({"priority": "x"}, ("priority='x'", "whole number")),
        ({"priority": 1.5}, ("priority=1.5",)),
        ({"tags": [1, 2]}, ("tags",)),
        ({"description": 3}, ("description=3",)),
        ({"name": ""}, ("name=''",)),
    ],
)
def test_bad_task_options(options: dict[str, Any], words: tuple[str, ...]) -> None:
    _check(lambda: nf.task(**options), nf.ConfigurationError, *words)
    # The same options on a builder step are refused the same way.
    _check(lambda: nf.Workflow("w").then(a, **options), nf.ConfigurationError, *words)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_retries": -1}, ("max_retries",)),
        ({"max_retries": 2.5}, ("max_retries",)),
        ({"initial_delay": "soon"}, ("initial_delay='soon'",)),
        ({"backoff": 0.5}, ("backoff", ">= 1")),
        ({"max_delay": -3}, ("max_delay",)),
    ],
)
def test_bad_retry_policy(kwargs: dict[str, Any], words: tuple[str, ...]) -> None:
    _check(lambda: nf.RetryPolicy(**kwargs), nf.ConfigurationError, *words)


def test_task_on_non_callable() -> None:
    _check(lambda: nf.task(retries=1)(5), nf.ConfigurationError, "@task target")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"tags": 5}, ("tags=5", "list of strings")),
        ({"tags": {"io": 1}}, ("tags=", "list of strings")),
        ({"tags": ["io", 2]}, ("tags=", "list of strings")),
        ({"priority": None}, ("priority=None", "whole number")),
        ({"priority": True}, ("priority=True", "whole number")),
        ({"version": [1]}, ("version=[1]", "string or a whole number")),
        ({"version": True}, ("version=True",)),
        ({"version": ""}, ("version=''", "non-empty")),
        ({"version": 1.5}, ("version=1.5",)),
    ],
)
def test_bad_task_option_types(options: dict[str, Any], words: tuple[str, ...]) -> None:
    _check(lambda: nf.task(**options), nf.ConfigurationError, *words)
    _check(lambda: nf.Workflow("w").then(a, **options), nf.ConfigurationError, *words)


# -- misspelt options: named, with the closest valid one -------------------------------
@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: nf.task(retry=3), ("retry=3", "Did you mean retries=3?")),
        (lambda: nf.task(timeuot="1s"), ("timeuot='1s'", "Did you mean timeout='1s'?")),
        (lambda: nf.task(tag=["io"]), ("tag=['io']", "Did you mean tags=['io']?")),
        (lambda: nf.task(colour="red"), ("colour='red'", "@task", "Its options are name, retries")),
        (lambda: nf.Workflow("w").then(a, retry=3), ("retry=3", ".then()", "retries=3")),
        (lambda: nf.Workflow("w").add(a, inputz={}), ("inputz={}", ".add()", "inputs={}")),
        (lambda: nf.Workflow("w").then(a).map(b, concurency=4), ("concurency=4", ".map()", "concurrency=4")),
        (lambda: nf.Workflow("w").loop(a, max_iteration=3), ("max_iteration=3", ".loop()", "max_iterations=3")),
        (lambda: nf.Workflow("w").then(a).fork().branch(b).join(b, retires=2), (".join()", "retries=2")),
    ],
)
def test_misspelt_options_are_refused(call: Callable[[], Any], words: tuple[str, ...]) -> None:
    _check(call, nf.ConfigurationError, *words)


# -- a step whose function cannot take what it will be given ---------------------------
def two(x, y):
    return x


def report(a, c):
    return a


def no_args():
    return 1


def keyword_only(*, x):
    return x


CALL_CASES: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "then with two required": (
        lambda: nf.Workflow("w").then(a).then(two),
        ("task 'two'", "one value, the output of 'a'", "two(x, y)", "'y'", ".fork()"),
    ),
    "first step with two required": (
        lambda: nf.Workflow("w").then(two),
        ("task 'two'", "the workflow input", "two(x, y)"),
    ),
    "then with keyword-only required": (
        lambda: nf.Workflow("w").then(keyword_only),
        ("task 'keyword_only'", "no arguments", "keyword_only(*, x)", "defaults"),
    ),
    "join not matching the branch keys": (
        lambda: nf.Workflow("w").then(no_args).fork().branch(a).branch(b).join(report),
        ("task 'report'", "one dict {'a': ..., 'b': ...}", "report(a, c)", "branch keys (a, b)"),
    ),
    "join taking nothing": (
        lambda: nf.Workflow("w").then(no_args).fork().branch(a).branch(b).join("r", no_args),
        ("task 'r'", "one dict", "no_args()", "too many positional arguments"),
    ),
    "map with two required": (
        lambda: nf.Workflow("w").then(no_args).map(two),
        ("map 'two'", "one item", "two(x, y)"),
    ),
    "loop body taking nothing": (
        lambda: nf.Workflow("w").loop("body", no_args),
        ("loop 'body'", "one value", "no_args()"),
    ),
    "route key function with two required": (
        lambda: nf.Workflow("w").then(a).route("pick", two, keys=[1]),
        ("route 'pick'", "one value, the output of 'a'", "two(x, y)"),
    ),
}


@pytest.mark.parametrize("case", list(CALL_CASES))
def test_step_that_cannot_take_its_input(case: str) -> None:
    call, words = CALL_CASES[case]
    _check(call, nf.WorkflowDefinitionError, "'w'", "will be called with", "signature", *words)


def test_steps_whose_signature_fits_or_cannot_be_read_are_accepted() -> None:
    import functools

    def session_wrapped(fn):
        @functools.wraps(fn)
        def wrapper(x):  # supplies the first argument itself
            return fn("session", x)

        return wrapper

    @session_wrapped
    def uses_session(session, x):
        return x

    def stats(a, b):
        return a + b

    def varargs(*args, **kwargs):
        return args

    def with_default(x, y=2):
        return x

    wf = (
        nf.Workflow("w")
        .then(with_default)
        .then(varargs)
        .then(uses_session)
        .then("length", len)  # (obj, /)
        .then("dictionary", dict)  # no signature to read: not checked
        .fork()
        .branch(a)
        .branch(b)
        .join("both", lambda a, b: (a, b))  # parameters named after the branch keys: keywords
        .build()
    )
    assert wf.node("both").mode == "kwargs"
    assert nf.WorkflowBuilder("w").add(stats, inputs={"a": InputRef("a"), "b": InputRef("b")}).build()


# -- branch methods outside a fork or route --------------------------------------------
@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: nf.Workflow("w").then(a).join(b), (".join() without .fork()", ".fork().branch(f)", ".then(fn)")),
        (lambda: nf.Workflow("w").then(a).branch(b), (".branch() outside a fork or route", ".fork()", ".route(")),
        (
            lambda: nf.Workflow("w").then(a).fork().branch(b).join("j", a).branch(b),
            (".branch() outside a fork or route",),
        ),
        (lambda: nf.Workflow("w").then(a).default_branch(b), (".default_branch() outside a route", ".route(")),
        (lambda: nf.Workflow("w").then(a).done(), (".done() without .route()", ".join(fn)")),
    ],
)
def test_branch_methods_outside_a_fork_say_how_to_fork(call: Callable[[], Any], words: tuple[str, ...]) -> None:
    _check(call, nf.WorkflowDefinitionError, "'w'", *words)


# -- runner options, store paths, instance ids ------------------------------------------
@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: nf.CheckpointingRunner("not a backend"), ("backend",)),  # type: ignore[arg-type]
        (lambda: nf.CheckpointingRunner(nf.InMemoryBackend(), on_change="maybe"), ("on_change", "'rerun'")),
        (lambda: nf.CheckpointingRunner(nf.InMemoryBackend(), max_threads=0), ("max_threads",)),
        (lambda: nf.CheckpointingRunner(nf.InMemoryBackend(), conflict_policy="sometimes"), ("conflict_policy",)),
        (
            lambda: nf.CheckpointingRunner(nf.InMemoryBackend()).with_conflict_policy("x"),
            ("conflict_policy", "USE_EXISTING"),
        ),
        (lambda: nf.DiskcacheBackend(42), ("directory",)),  # type: ignore[arg-type]
        (lambda: nf.WorkflowClient(object()), ("backend",)),  # type: ignore[arg-type]
        (lambda: nf.CheckpointingRunner(nf.InMemoryBackend()).run("wf", "i"), ("workflow",)),  # type: ignore[arg-type]
    ],
)
def test_bad_runner_and_store_options(call: Callable[[], Any], words: tuple[str, ...]) -> None:
    _check(call, nf.ConfigurationError, *words)


def test_store_path_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    _check(lambda: nf.DiskcacheBackend(path), nf.ConfigurationError, "directory", str(path))


@pytest.mark.parametrize(
    ("bad", "why"), [("", "empty"), (5, "not a string"), ("x" * 300, "300 characters"), ("a\x00b", "control")]
)
def test_bad_instance_ids(bad: Any, why: str) -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    wf = nf.Workflow("w").then(a).build()
    err = _check(lambda: runner.run(wf, bad, 1), nf.InvalidInstanceIdError, "invalid instance id", why)
    assert isinstance(err, ValueError)


# -- policy conflicts and run-time refusals ---------------------------------------------
def test_instance_exists_under_fail_policy() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    wf = nf.Workflow("w").then(a).build()
    runner.run(wf, "i-1", 1)
    _check(
        lambda: runner.run(wf, "i-1", 1), nf.InstanceExistsError, "'i-1'", "already exists", "resume", "USE_EXISTING"
    )


def test_resume_unknown_instance() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    wf = nf.Workflow("w").then(a).build()
    err = _check(lambda: runner.resume(wf, "nope"), nf.UnknownInstanceError, "no instance 'nope'")
    assert isinstance(err, KeyError)


def test_unknown_task_in_rerun_from() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    wf = nf.Workflow("w").then(a).then(b).build()
    runner.run(wf, "i", 1)
    _check(lambda: runner.rerun_from(wf, "i", "ghost"), nf.UnknownTaskError, "'ghost'", "'a'", "'b'")


def test_workflow_mismatch() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    runner.run(nf.Workflow("one").then(a).build(), "i", 1)
    _check(lambda: runner.resume(nf.Workflow("two").then(a).build(), "i"), nf.WorkflowMismatchError, "'one'", "'two'")


def test_missing_input_key() -> None:
    def stats(path, sep):
        return path

    wf = nf.WorkflowBuilder("w").add(stats, inputs={"path": InputRef("path"), "sep": InputRef("sep")}).build()
    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    _check(lambda: runner.run(wf, "i", {"path": "x"}), nf.ConfigurationError, "'sep'", "stats")
    _check(lambda: runner.run(wf, "j", "not a dict"), nf.ConfigurationError, "input", "'path'", "'sep'")
    # Refused before anything was stored.
    assert runner.backend.load_instance("i") is None


def test_get_task_context_outside_a_task() -> None:
    _check(nf.get_task_context, nf.NbflowError, "outside a running task")


def test_get_task_result_of_unfinished_task() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)

    def boom(x):
        raise RuntimeError("no")

    wf = nf.Workflow("w").then(a).then(boom).build()
    runner.run(wf, "i", 1)
    _check(lambda: runner.get_task_result("i", "boom"), nf.UnknownTaskError, "boom", "no checkpoint")


def test_codec_refuses_output() -> None:
    runner = nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False)
    wf = nf.Workflow("w", codec=nf.JsonCodec()).then("s", lambda x: {1, 2}).build()
    status = runner.run(wf, "i", 1)
    assert status.state == "failed"
    assert status.error.task_id == "s" and status.error.type == "CodecError"
    assert "json" in status.error.message and "PickleCodec" in status.error.message


def test_every_error_class_is_an_nbflow_error() -> None:
    for name in nf.errors.__all__:
        cls = getattr(nf.errors, name)
        assert issubclass(cls, nf.NbflowError), name
        assert getattr(nf, name) is cls
