"""Cell source -> workflow, without IPython: edges, inputs, decorators, every bad cell."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import nbflow as nf
from nbflow.jupyter.cell import analyze_cell, compile_cell, default_instance_id


def cell(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


ETL = cell(
    """
    import math
    SCALE = 10

    def load(path):
        return [path, path]

    def clean(load):
        return [p.upper() for p in load]

    def stats(clean):
        return len(clean) * SCALE

    def plot(clean):
        return "plot of " + clean[0]

    def report(stats, plot):
        return {"stats": stats, "plot": plot}
    """
)


def run(cw: object) -> object:
    wf = cw.workflow  # type: ignore[attr-defined]
    return nf.CheckpointingRunner(nf.InMemoryBackend(), echo_output=False).run(wf, cw.instance_id, cw.inputs)  # type: ignore[attr-defined]


def definition_error(name: str, source: str, inputs: dict[str, object] | None = None) -> nf.WorkflowDefinitionError:
    with pytest.raises(nf.WorkflowDefinitionError) as info:
        compile_cell(name, source, inputs)
    return info.value


# -- good cells ---------------------------------------------------------------------------
def test_parameters_named_after_functions_are_edges() -> None:
    cw = compile_cell("etl", ETL, {"path": "a.csv"})
    wf = cw.workflow
    assert wf.name == "etl"
    assert set(wf.task_ids) == {"load", "clean", "stats", "plot", "report"}
    assert set(wf.edges) == {
        ("load", "clean"),
        ("clean", "stats"),
        ("clean", "plot"),
        ("stats", "report"),
        ("plot", "report"),
    }
    assert wf.sinks == ("report",)
    assert cw.inputs == {"path": "a.csv"}
    status = run(cw)
    assert status.output == {"stats": 20, "plot": "plot of A.CSV"}  # type: ignore[attr-defined]


def test_tasks_may_be_defined_in_any_order() -> None:
    source = cell(
        """
        def total(double):
            return double + 1
        def double(x):
            return 2 * x
        """
    )
    cw = compile_cell("w", source, {"x": 20})
    assert cw.workflow.edges == (("double", "total"),)
    assert run(cw).output == 41  # type: ignore[attr-defined]


def test_several_sinks_give_a_dict_and_imports_and_constants_run() -> None:
    source = cell(
        """
        import math
        BASE = 2
        def a():
            return math.pow(BASE, 3)
        def b(a):
            return a + 1
        def c(a):
            return a - 1
        """
    )
    cw = compile_cell("w", source)
    assert cw.inputs == {}
    assert set(cw.workflow.sinks) == {"b", "c"}
    assert run(cw).output == {"b": 9.0, "c": 7.0}  # type: ignore[attr-defined]


def test_defaults_are_kept_unless_an_input_gives_them() -> None:
    source = cell(
        """
        def load(path, limit=2, *, sep=","):
            return path.split(sep)[:limit]
        """
    )
    assert run(compile_cell("w", source, {"path": "a,b,c"})).output == ["a", "b"]  # type: ignore[attr-defined]
    cw = compile_cell("w", source, {"path": "a;b;c", "limit": 3, "sep": ";"})
    assert run(cw).output == ["a", "b", "c"]  # type: ignore[attr-defined]


def test_one_input_may_feed_several_tasks() -> None:
    source = cell(
        """
        def a(n):
            return n + 1
        def b(a, n):
            return a * n
        """
    )
    assert run(compile_cell("w", source, {"n": 3})).output == 12  # type: ignore[attr-defined]


def test_task_decorator_sets_options_and_may_rename() -> None:
    source = cell(
        """
        import nbflow as nf

        @nf.task(retries=2, timeout="30s", tags=["io"], description="read it")
        def load(path):
            return path

        @nf.task(name="cleaned", version="1")
        def clean(load):
            return load.upper()
        """
    )
    cw = compile_cell("w", source, {"path": "x"})
    wf = cw.workflow
    assert wf.task_ids == ("load", "cleaned")
    assert wf.edges == (("load", "cleaned"),)
    assert cw.task_ids == {"load": "load", "clean": "cleaned"}
    spec = wf.node("load").spec
    assert (spec.retry.max_retries, spec.timeout, spec.tags, spec.description) == (2, 30.0, ("io",), "read it")
    assert wf.node("cleaned").spec.version == "1"
    assert run(cw).output == "X"  # type: ignore[attr-defined]


def test_async_functions_are_tasks_and_underscore_functions_are_helpers() -> None:
    source = cell(
        """
        import asyncio
        def _helper(x):
            return x * 3
        async def fetch(n):
            await asyncio.sleep(0)
            return _helper(n)
        def inc(fetch):
            return fetch + 1
        """
    )
    cw = compile_cell("w", source, {"n": 2})
    assert cw.workflow.task_ids == ("fetch", "inc")
    assert run(cw).output == 7  # type: ignore[attr-defined]


def test_functions_live_in_main() -> None:
    cw = compile_cell("w", "def a():\n    return 1\n")
    assert cw.workflow.node("a").fn.__module__ == "__main__"


def test_editing_a_body_keeps_the_shape_and_changes_its_fingerprint() -> None:
    one = compile_cell("etl", ETL, {"path": "p"}).workflow
    two = compile_cell("etl", ETL.replace("len(clean) * SCALE", "len(clean) * SCALE + 1"), {"path": "p"}).workflow
    assert one.definition_hash == two.definition_hash
    changed = {t for t in one.task_ids if one.node(t).fingerprint != two.node(t).fingerprint}
    assert changed == {"stats"}


def test_default_instance_id_is_the_name_plus_a_digest_of_the_inputs() -> None:
    a = default_instance_id("etl", {"path": "a.csv", "n": 1, "xs": [1, 2.5, None], "d": {"k": (1, 2)}})
    b = default_instance_id("etl", {"d": {"k": (1, 2)}, "xs": [1, 2.5, None], "n": 1, "path": "a.csv"})
    assert a == b and a.startswith("etl-")
    assert a != default_instance_id("etl", {"path": "b.csv", "n": 1, "xs": [1, 2.5, None], "d": {"k": (1, 2)}})
    assert default_instance_id("etl", {"n": 1}) != default_instance_id("etl", {"n": 1.0})
    assert default_instance_id("etl", {}) != default_instance_id("other", {})
    assert compile_cell("etl", ETL, {"path": "a.csv"}).instance_id == default_instance_id("etl", {"path": "a.csv"})


def test_default_instance_id_is_stable_across_processes() -> None:
    code = (
        "from nbflow.jupyter.cell import default_instance_id;"
        "print(default_instance_id('etl', {'path': 'a.csv', 'n': 3, 's': {1, 2}, 'f': 0.1}))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed}
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {default_instance_id("etl", {"path": "a.csv", "n": 3, "s": {1, 2}, "f": 0.1})}


def test_analysis_runs_nothing() -> None:
    analysis = analyze_cell("w", "raise SystemExit('ran')\ndef a(x):\n    return x\n")
    assert [f.name for f in analysis.functions] == ["a"]
    assert list(analysis.input_params) == ["x"]


def test_cell_module_does_not_import_ipython() -> None:
    code = "import nbflow.jupyter.cell, sys; print(sorted({'IPython', 'ipywidgets'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- bad cells: each names the problem and its line ----------------------------------------
def test_syntax_error_names_its_line() -> None:
    err = definition_error("w", "def a():\n    return 1\n\ndef b(a:\n    return a\n")
    assert err.line == 4
    assert "syntax error" in str(err) and "(line 4)" in str(err)


def test_no_functions() -> None:
    err = definition_error("w", "x = 1\nprint(x)\n")
    assert err.line == 1
    assert "defines no functions" in str(err)
    assert definition_error("w", "def _only_a_helper():\n    pass\n").line == 1


def test_function_defined_twice() -> None:
    err = definition_error("w", "def a():\n    return 1\n\ndef a():\n    return 2\n")
    assert err.line == 4
    assert "'a' is defined twice (first on line 1)" in str(err)


def test_cycle_is_named() -> None:
    source = cell(
        """
        def start():
            return 1
        def a(start, c):
            return 1
        def b(a):
            return 2
        def c(b):
            return 3
        """
    )
    err = definition_error("w", source)
    assert "cycle" in str(err)
    assert "a -> b -> c -> a" in str(err) or "b -> c -> a -> b" in str(err) or "c -> a -> b -> c" in str(err)
    assert err.line == 3  # the first function of the cycle


def test_self_reference_is_a_cycle() -> None:
    err = definition_error("w", "def a(a):\n    return a\n")
    assert err.line == 1
    assert "takes its own output" in str(err)


def test_missing_input_says_which_task_and_how_to_pass_it() -> None:
    source = "def a():\n    return 1\n\ndef load(a,\n         path):\n    return path\n"
    err = definition_error("etl", source)
    assert err.line == 5  # the parameter's own line
    text = str(err)
    assert "task 'load' needs the input 'path'" in text
    assert "--input path=VALUE" in text


def test_input_that_no_task_takes() -> None:
    err = definition_error("etl", "def a(x):\n    return x\n", {"x": 1, "y": 2})
    assert "--input 'y' is not a parameter of any task" in str(err)
    assert "the tasks take: x" in str(err)
    analysis = analyze_cell("etl", "def a(x):\n    return x\n", header_line=1)
    from nbflow.jupyter.cell import check_inputs

    with pytest.raises(nf.WorkflowDefinitionError) as info:
        check_inputs(analysis, {"x": 1, "a": 2})
    assert info.value.line == 1  # the %%workflow header
    assert "'a' is a task of this cell" in str(info.value)


def test_star_and_positional_only_parameters_are_refused() -> None:
    err = definition_error("w", "def a():\n    return 1\ndef b(a,\n      *rest):\n    return a\n")
    assert err.line == 4 and "*rest" in str(err)
    err = definition_error("w", "def a(**kw):\n    return kw\n")
    assert err.line == 1 and "**kw" in str(err)
    err = definition_error("w", "def a(x, /):\n    return x\n", {"x": 1})
    assert err.line == 1 and "positional-only" in str(err)


def test_bad_workflow_names() -> None:
    assert "identifier" in str(definition_error("my-flow", "def a():\n    return 1\n"))
    assert "identifier" in str(definition_error("class", "def a():\n    return 1\n"))
    err = definition_error("load", "def x():\n    return 1\n\ndef load(x):\n    return x\n")
    assert err.line == 4 and "workflow's name" in str(err)


def test_a_task_name_rebound_to_a_non_function() -> None:
    err = definition_error("w", "def a():\n    return 1\na = 3\n")
    assert err.line == 1 and "not a function" in str(err)


def test_renamed_tasks_that_collide_report_a_line() -> None:
    source = cell(
        """
        import nbflow as nf
        @nf.task(name="same")
        def a():
            return 1
        @nf.task(name="same")
        def b():
            return 2
        """
    )
    err = definition_error("w", source)
    assert "'same' is used twice" in str(err)
    assert err.line == 6  # the def line of the second one


# -- signal steps -------------------------------------------------------------------------
REVIEW = cell(
    """
    import nbflow as nf

    def train():
        return 0.93

    approval = nf.wait_for_signal("approval", after=["train"], timeout="1h")

    def deploy(train, approval):
        return (train, approval)
    """
)


def test_a_signal_step_gates_its_readers_and_waits_after_its_tasks() -> None:
    analysis = analyze_cell("review", REVIEW)
    step = analysis.function("approval")
    assert (step.kind, step.after, step.deps) == ("signal", ("train",), ("train",))
    assert analysis.function("deploy").deps == ("train", "approval")
    assert analysis.input_params == {}  # `approval` is an edge, not an input
    cw = compile_cell("review", REVIEW)
    node = cw.workflow.node("approval")  # type: ignore[attr-defined]
    assert (node.kind, node.deps, node.options["signal"], node.options["timeout"]) == (
        "signal",
        ("train",),
        "approval",
        3600.0,
    )
    backend = nf.InMemoryBackend()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    parked = runner.run(cw.workflow, cw.instance_id, cw.inputs)  # type: ignore[attr-defined]
    assert (parked.state, parked.signal) == ("awaiting_signal", "approval")
    nf.WorkflowClient(backend).send_signal(cw.instance_id, "approval", {"by": "ana"})  # type: ignore[attr-defined]
    assert runner.resume(cw.workflow, cw.instance_id).output == (0.93, {"by": "ana"})  # type: ignore[attr-defined]


def test_signal_step_errors_name_the_problem_and_line() -> None:
    err = definition_error("review", REVIEW.replace('after=["train"]', 'after=["trian"]'))
    assert "'trian'" in str(err) and err.line == 6
    err = definition_error("review", REVIEW.replace('after=["train"]', "after=names"))
    assert "after= must list task names" in str(err) and err.line == 6
    err = definition_error("review", REVIEW.replace("approval = nf", "train = nf"))
    assert "both a function and a signal step" in str(err)
    err = definition_error("review", REVIEW.replace("deploy(train, approval)", "deploy(train, approval, deploy)"))
    assert "cycle" in str(err)
