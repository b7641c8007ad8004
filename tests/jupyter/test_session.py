"""The per-kernel Session driven without IPython: results by name, "where was I?"
after a restart (a new Session is a fresh kernel), ``$var`` in every option, why a task
is stale, ``accept``, and what the widget is told."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.commands import MAGIC, CommandLineError, render_error
from nbflow.core.codecs import PickleCodec
from nbflow.jupyter.session import CellInterrupted, Session
from nbflow.run.results import BoundWorkflow, StoredResults

pd = pytest.importorskip("pandas")

SALES = textwrap.dedent(
    """
    import pandas as pd

    def load(path):
        calls.append("load")
        return pd.DataFrame({"region": ["n", "s", None], "amount": [1.5, 2.5, 4.0]})

    def clean(load):
        calls.append("clean")
        return load.dropna().reset_index(drop=True)

    def total(clean):
        calls.append("total")
        return float(clean["amount"].sum())
    """
)


@pytest.fixture(autouse=True)
def no_widget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nbflow.jupyter.widget", None)


def kernel(**names: Any) -> Session:
    """A fresh kernel: a new namespace and a new session (nothing defined yet)."""
    namespace: dict[str, Any] = {"__name__": "__main__", "calls": [], **names}
    return Session(namespace, display=lambda obj: None)


def test_results_by_name_in_the_kernel_and_in_a_fresh_one(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    first = kernel(store=store)
    assert first.cell("sales --input path=sales.csv --dir $store --no-widget", SALES) == 4.0
    sales = first.namespace["sales"]
    assert isinstance(sales, BoundWorkflow) and isinstance(sales, nf.WorkflowDefinition)
    expected = pd.DataFrame({"region": ["n", "s"], "amount": [1.5, 2.5]})
    pd.testing.assert_frame_equal(sales.result("clean"), expected)

    # a fresh kernel that never ran the cell: by name, from the store
    fresh = kernel()
    pd.testing.assert_frame_equal(fresh.line(f"result sales clean --dir {store}"), expected)
    assert nf.WorkflowClient(nf.DiskcacheBackend(store)).get_task_result("sales", "total") == 4.0
    # re-running the cell with --no-run binds the name: nothing runs, results come from the store
    fresh.cell(f"sales --input path=sales.csv --dir {store} --no-run --no-widget", SALES)
    assert fresh.namespace["calls"] == []
    pd.testing.assert_frame_equal(fresh.namespace["sales"].result("clean"), expected)
    with pytest.raises(nf.UnknownTaskError, match="no task 'nope'"):
        fresh.namespace["sales"].result("nope")


def test_results_mapping_is_read_only_and_decodes_only_what_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = kernel()
    session.cell(f"sales --input path=x --dir {tmp_path / 's'} --no-widget", SALES)
    decoded: list[int] = []
    real = PickleCodec.load

    def counting(self: PickleCodec, stream: Any) -> Any:
        decoded.append(1)
        return real(self, stream)

    monkeypatch.setattr(PickleCodec, "load", counting)
    results = session.namespace["sales"].results
    assert isinstance(results, StoredResults)
    assert list(results) == ["load", "clean", "total"] and len(results) == 3
    assert "'total': 4.0" in repr(results)  # previews, nothing decoded
    assert decoded == []
    assert results["total"] == 4.0 and results["total"] == 4.0
    assert decoded == [1]  # one decode, kept
    with pytest.raises(TypeError):
        results["total"] = 5  # type: ignore[index]


def test_status_after_a_restart_lists_every_task(tmp_path: Path) -> None:
    store = tmp_path / "store"
    kernel().cell(f"sales --input path=x --dir {store} --no-widget", SALES)
    report = kernel().line(f"status sales --dir {store}")
    assert report.status.state == "completed"
    assert [r.task for r in report.rows] == ["load", "clean", "total"]
    assert all(r.state == "done" and r.attempts == 1 and r.finished_at for r in report.rows)
    text = report.text
    assert "TASK" in text and "ATTEMPTS" in text and "FINISHED" in text and "OUTPUT" in text
    assert text.splitlines()[-1].split()[:3] == ["total", "done", "1"] and text.rstrip().endswith("4.0")


def test_a_dead_run_says_which_tasks_were_running(tmp_path: Path) -> None:
    store = tmp_path / "store"
    kernel().cell(f"sales --input path=x --dir {store} --no-widget", SALES)
    backend = nf.DiskcacheBackend(store)
    [meta] = backend.list_instances()
    backend.delete_records(meta.instance_id, ["clean", "total"])
    meta.state = "running"  # a kernel SIGKILLed inside clean leaves this behind
    backend.save_instance(meta)
    report = kernel().line(f"status sales --dir {store}")
    assert report.status.state == "interrupted"
    assert [(r.task, r.state) for r in report.rows] == [
        ("load", "done"),
        ("clean", "interrupted"),
        ("total", "pending"),
    ]
    assert "was running when the run stopped: clean" in report.text
    assert "continue it with %workflow resume" in report.text


def test_dollar_vars_expand_in_every_option_or_are_refused(tmp_path: Path) -> None:
    session = kernel(store=str(tmp_path / "expanded"), day="mon", rows=[1, 2])
    cell = "def first(rows):\n    return len(rows)\n"
    assert session.cell("w --dir $store --instance run-$day --input rows=$rows --no-widget", cell) == 2
    assert (tmp_path / "expanded" / "instances").is_dir()
    assert session.entries["w"].instance_id == "run-mon"
    assert not list(Path.cwd().glob("$*"))  # nothing written to a folder called "$store"
    for line, name in (
        ("w --dir $nope --no-widget", "nope"),
        ("w --dir $store --instance $missing --no-widget", "missing"),
        ("w --dir $store --input rows=$absent --no-widget", "absent"),
    ):
        with pytest.raises(CommandLineError, match=f"no variable '{name}' in the notebook"):
            session.cell(line, cell)
    with pytest.raises(CommandLineError, match="no variable 'nope'"):
        session.line("status w --dir $nope")
    # a line command: $var in a positional and an option
    session.namespace["which"] = "run-mon"
    assert session.line("status $which --dir ${store}").status.instance_id == "run-mon"
    # $$ is a literal $, and single quotes keep what is typed
    literal = tmp_path / "cash$"
    session.namespace["base"] = str(tmp_path)
    assert session.cell("w --dir $base/cash$$ --input rows='[1, 2, 3]' --no-widget", cell) == 3
    assert (literal / "instances").is_dir()


def test_papermill_style_parameters_reach_every_option(tmp_path: Path) -> None:
    session = kernel()
    # the "parameters" cell papermill injects, then the notebook's workflow cell
    exec(f"store = {str(tmp_path / 'injected')!r}\nregion = 'north'\n", session.namespace)
    cell = "def pick(region):\n    return region.upper()\n"
    assert session.cell("pick_wf --dir $store --input region=$region --no-widget", cell) == "NORTH"
    assert (tmp_path / "injected" / "instances").is_dir()


def test_show_says_why_each_task_is_stale(tmp_path: Path) -> None:
    session = kernel()
    line = f"sales --input path=x --dir {tmp_path / 's'} --no-widget"
    session.cell(line, SALES)
    session.cell(line + " --no-run", SALES.replace("reset_index(drop=True)", "reset_index(drop=False)"))
    shown = session.line("show sales --no-widget")
    assert shown.tasks == {"load": "restore", "clean": "stale (runs again)", "total": "stale (runs again)"}
    assert shown.reasons["clean"].startswith("its own code changed\n--- clean (checkpointed)")
    assert "-    return load.dropna().reset_index(drop=True)" in shown.reasons["clean"]
    assert shown.reasons["total"] == "upstream `clean` changed"
    text = shown.text
    assert "clean: its own code changed" in text and "total: upstream `clean` changed" in text
    # changed inputs: a new instance, and show says which input made it
    session.cell(f"sales --input path=y --dir {tmp_path / 's'} --no-widget --no-run", SALES)
    shown = session.line("show sales --no-widget")
    [before] = [m.instance_id for m in nf.DiskcacheBackend(tmp_path / "s").list_instances()]
    assert shown.reasons["load"] == f"input `path` changed ('x' -> 'y') since instance {before!r}"
    assert shown.reasons["clean"] == "upstream `load` changed"


def test_a_run_keeps_the_reasons_in_the_run_log(tmp_path: Path) -> None:
    session = kernel()
    line = f"sales --input path=x --dir {tmp_path / 's'} --no-widget"
    session.cell(line, SALES)
    session.cell(line, SALES.replace('["n", "s", None]', '["n", "s", "w"]'))
    report = session.line("status sales")
    assert report.reasons["load"].startswith("its own code changed\n--- load (checkpointed)")
    assert '+    return pd.DataFrame({"region": ["n", "s", "w"]' in report.reasons["load"]
    assert report.reasons["clean"] == "upstream `load` changed"
    assert "why stale:" in report.text
    rows = {r.task: r for r in report.rows}
    assert rows["load"].note == "ran again: its own code changed"


def test_accept_from_the_magic_keeps_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = kernel()
    line = f"sales --input path=x --dir {tmp_path / 's'} --no-widget"
    session.cell(line, SALES)
    cosmetic = SALES.replace(
        "return load.dropna().reset_index(drop=True)", "out = load.dropna()\n    return out.reset_index(drop=True)"
    )
    session.cell(line + " --no-run", cosmetic)
    session.line("accept sales clean")
    assert "is kept for its current code" in capsys.readouterr().out
    session.namespace["calls"].clear()
    assert session.cell(line, cosmetic) == 4.0
    assert session.namespace["calls"] == []  # clean and total restored, not run


def test_names_resolve_with_several_instances(tmp_path: Path) -> None:
    store = tmp_path / "s"
    for path in ("a", "b"):
        kernel().cell(f"sales --input path={path} --dir {store} --no-widget", SALES)
    fresh = kernel()
    with pytest.raises(nf.AmbiguousInstanceError) as info:
        fresh.line(f"status sales --dir {store}")
    text = render_error(info.value, MAGIC)
    assert "has 2 instances" in text and "--latest for the most recent one" in text
    latest = fresh.line(f"status sales --dir {store} --latest")
    assert latest.status.instance_id == info.value.instances[0][0]
    # in the kernel whose cell defined it, the name means that cell's instance
    here = kernel()
    here.cell(f"sales --input path=a --dir {store} --no-widget", SALES)
    assert here.line("status sales").status.instance_id == here.entries["sales"].instance_id


def test_an_interrupt_fails_the_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    session = kernel()

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(nf.CheckpointingRunner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        session.cell(f"sales --input path=x --dir {tmp_path / 's'} --no-widget", SALES)
    assert isinstance(info.value, CellInterrupted)
    assert "re-run the cell or %workflow resume sales to continue" in str(info.value)


def test_help_and_unknown_commands() -> None:
    session = kernel()
    with pytest.raises(CommandLineError, match="unknown %workflow command 'explode'"):
        session.line("explode x")
    with pytest.raises(CommandLineError, match="required: NAME"):
        session.line("result")


def test_re_running_the_cell_runs_a_cancelled_instance_again(tmp_path: Path) -> None:
    session = kernel()
    line = f"sales --input path=x --dir {tmp_path / 's'} --no-widget"
    session.cell(line, SALES)
    backend = nf.DiskcacheBackend(tmp_path / "s")
    iid = session.entries["sales"].instance_id
    backend.delete_records(iid, ["total"])
    meta = backend.load_instance(iid)
    assert meta is not None
    meta.state = "interrupted"  # stopped before total ran
    backend.save_instance(meta)
    nf.WorkflowClient(backend).cancel(iid)  # a stopped instance: marked cancelled at once
    assert nf.WorkflowClient(backend).status(iid).state == "cancelled"
    session.namespace["calls"].clear()
    assert session.line("resume sales --no-widget") is None  # a plain resume leaves it cancelled
    assert session.namespace["calls"] == []
    assert session.cell(line, SALES) == 4.0  # re-running its cell says "run it"
    assert session.namespace["calls"] == ["total"]


def test_the_load_line_names_a_store_inside_the_working_folder_relatively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 'load its output' line ends up in saved notebooks: a store inside the working
    folder is named relative to it (no machine-specific path), the default one not at all."""
    from nbflow.jupyter.session import _shown_dir

    monkeypatch.chdir(tmp_path)
    assert _shown_dir(tmp_path / ".nbflow") is None
    assert _shown_dir(tmp_path / ".nbflow" / "sales") == str(Path(".nbflow") / "sales")
    assert _shown_dir(tmp_path / "stores" / "a") == str(Path("stores") / "a")
    elsewhere = tmp_path.parent / "elsewhere"
    assert _shown_dir(elsewhere) == str(elsewhere)
    assert _shown_dir("postgresql://nbflow@db/nbflow") == "postgresql://nbflow@db/nbflow"
