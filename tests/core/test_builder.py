"""The fluent builder and the built model: ids, edges, validation at the offending call."""

from __future__ import annotations

import pytest

import nbflow as nf
from nbflow.core.graph import InputRef


def load(path):
    return [path]


def clean(rows):
    return rows


def train(rows):
    return "model"


def summarize(rows):
    return len(rows)


def plot(n):
    return f"plot of {n}"


def report(parts):
    return parts


def test_then_chain_and_named_form() -> None:
    wf = nf.Workflow("etl").then(load).then("tidy", clean).build()
    assert wf.task_ids == ("load", "tidy")
    assert wf.edges == (("load", "tidy"),)
    assert wf.sinks == ("tidy",)
    assert wf.name == wf.workflow_id == "etl"
    assert wf.node("tidy").fn is clean


def test_seed_spelling_with_context() -> None:
    ctx = nf.WorkflowContext("etl", codec=nf.JsonCodec(), metadata={"owner": "ana"})
    wf = nf.WorkflowBuilder(ctx).then("step1", load).then("step2", clean).build()
    assert wf.task_ids == ("step1", "step2")
    assert wf.codec.name == "json"
    assert wf.metadata["owner"] == "ana"


def test_fork_with_chained_branch_and_join() -> None:
    wf = nf.Workflow("etl").then(load).then(clean).fork().branch(train).branch(summarize, plot).join(report).build()
    assert set(wf.edges) == {
        ("load", "clean"),
        ("clean", "train"),
        ("clean", "summarize"),
        ("summarize", "plot"),
        ("train", "report"),
        ("plot", "report"),
    }
    # The join's keys are the branches' first task ids; values come from their last.
    join = wf.node("report")
    assert join.mode == "dict"
    assert [(k, src.task) for k, src in join.params] == [("train", "train"), ("summarize", "plot")]
    assert wf.sinks == ("report",)


def test_branch_forms() -> None:
    wf = (
        nf.Workflow("w")
        .then(load)
        .fork()
        .branch("a", clean)
        .branch(("b1", summarize), ("b2", plot))
        .branch(train, name="t")
        .join("all", report)
        .build()
    )
    assert [k for k, _ in wf.node("all").params] == ["a", "b1", "t"]
    assert ("b1", "b2") in wf.edges


def test_build_returns_an_immutable_definition() -> None:
    wf = nf.Workflow("w").then(load).build()
    with pytest.raises(AttributeError, match="immutable"):
        wf.name = "other"  # type: ignore[misc]


def test_builder_accepts_sync_and_async_functions() -> None:
    async def fetch(x):
        return x

    wf = nf.Workflow("w").then(fetch).then(clean).build()
    assert wf.task_ids == ("fetch", "clean")


def test_lambdas_get_stable_distinct_ids() -> None:
    def build() -> nf.WorkflowDefinition:
        return nf.Workflow("w").then(lambda x: x + 1).then(lambda x: x + 1).then(lambda x: x * 2).build()

    first, second = build(), build()
    assert first.task_ids == second.task_ids
    assert len(set(first.task_ids)) == 3
    assert all(t.startswith("lambda_") for t in first.task_ids)
    assert first.definition_hash == second.definition_hash


def test_add_with_inputs_in_any_order() -> None:
    def stats(clean):
        return clean

    wf = (
        nf.WorkflowBuilder("cell")
        .add(stats, inputs={"clean": "clean"})
        .add(clean, inputs={"rows": "load"})
        .add(load, inputs={"path": InputRef("path")})
        .build()
    )
    assert wf.task_ids == ("load", "clean", "stats")
    assert wf.node("load").input_keys == ("path",)
    assert wf.node("stats").mode == "kwargs"


def test_task_without_parameters_runs_after_previous_step() -> None:
    def tick():
        return 1

    wf = nf.Workflow("w").then(load).then(tick).build()
    assert wf.edges == (("load", "tick"),)
    assert wf.node("tick").mode == "none"


def test_descendants_and_children() -> None:
    wf = nf.Workflow("w").then(load).then(clean).fork().branch(train).branch(summarize).join(report).build()
    assert wf.descendants("clean") == {"train", "summarize", "report"}
    assert set(wf.children("clean")) == {"train", "summarize"}
    assert "load" in wf and "nope" not in wf
    assert len(wf) == 5


def test_definition_hash_covers_shape_not_code() -> None:
    a = nf.Workflow("w").then("x", lambda v: v).then("y", lambda v: v).build()
    b = nf.Workflow("w").then("x", lambda v: v + 1).then("y", lambda v: v * 3).build()
    c = nf.Workflow("w").then("x", lambda v: v).then("z", lambda v: v).build()
    d = nf.Workflow("w2").then("x", lambda v: v).then("y", lambda v: v).build()
    assert a.definition_hash == b.definition_hash
    assert len({a.definition_hash, c.definition_hash, d.definition_hash}) == 3


def test_options_on_then_override_task_decorator() -> None:
    @nf.task(retries=2, timeout="10s", tags=["io"], priority=1)
    def fetch(x):
        return x

    wf = nf.Workflow("w").then(fetch, retries=5, priority=3).build()
    spec = wf.node("fetch").spec
    assert spec.retry.max_retries == 5 and spec.priority == 3
    assert spec.timeout == 10.0 and spec.tags == ("io",)


def test_task_name_option_sets_id() -> None:
    @nf.task(name="loader")
    def fetch(x):
        return x

    assert nf.Workflow("w").then(fetch).build().task_ids == ("loader",)
    assert nf.Workflow("w").then(clean, name="cleaner").build().task_ids == ("cleaner",)


def test_workflow_definition_pickles() -> None:
    import pickle

    import cloudpickle

    wf = nf.Workflow("w").then(load).then(clean).build()
    clone = pickle.loads(cloudpickle.dumps(wf))
    assert clone.definition_hash == wf.definition_hash and clone.task_ids == wf.task_ids


def test_join_whose_parameters_are_the_branch_keys_gets_keywords() -> None:
    def load(path: str) -> list[int]:
        return [1, 2, 3]

    def stats(rows: list[int]) -> int:
        return len(rows)

    def plot(rows: list[int]) -> str:
        return "#" * len(rows)

    def report(stats: int, plot: str) -> dict[str, object]:  # notebook style: one parameter per branch
        return {"rows": stats, "plot": plot}

    def combine(parts: dict[str, object]) -> dict[str, object]:  # seed style: one dict
        return parts

    runner = nf.CheckpointingRunner(nf.InMemoryBackend())
    kw = nf.Workflow("kw").then(load).fork().branch(stats).branch(plot).join(report).build()
    assert kw.node("report").mode == "kwargs"
    assert runner.run(kw, "k", "x").output == {"rows": 3, "plot": "###"}
    seed = nf.Workflow("seed").then(load).fork().branch(stats).branch(plot).join(combine).build()
    assert seed.node("combine").mode == "dict"
    assert runner.run(seed, "s", "x").output == {"stats": 3, "plot": "###"}
