"""Why a task is stale, from what its checkpoint record keeps, and ``accept``.

Each test runs a workflow, changes one thing (the task's body, a helper in the same
namespace, a helper in a real module file, a closure value, a default, an input, a
pinned package), and checks the reason the plan gives, and the diff when the source
is known. Executions are counted (DBOS-style) where a run must not repeat work.
"""

from __future__ import annotations

import importlib
import linecache
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import nbflow as nf
from nbflow.cli import main
from nbflow.core import fingerprint as fp
from nbflow.run import events as ev
from nbflow.run.stale import PreviousRun, explain_plan, input_facts, previous_run, stored_breakdown
from nbflow.store.base import INPUT_KEY, CheckpointRecord


def define(src: str, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``src`` like a notebook cell: a fresh ``__main__`` namespace whose source
    Python can find again (IPython registers cells with linecache the same way)."""
    text = textwrap.dedent(src)
    filename = f"<cell-{uuid.uuid4().hex}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__", **(env or {})}
    exec(compile(text, filename, "exec"), namespace)
    return namespace


CELL = """
def clean(x):
    calls.append("clean")
    return helper(x) + 1

def helper(x):
    return x * 2

def stats(clean):
    calls.append("stats")
    return clean * 10
"""


def build(ns: dict[str, Any]) -> nf.WorkflowDefinition:
    return nf.Workflow("w").then(ns["clean"]).then(ns["stats"]).build()


@pytest.fixture
def backend() -> nf.InMemoryBackend:
    return nf.InMemoryBackend()


def reasons_after(backend: nf.Backend, wf: nf.WorkflowDefinition, iid: str = "i") -> dict[str, Any]:
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    return explain_plan(wf, backend.get_records(iid), runner.plan(wf, iid))


def first_run(backend: nf.Backend, ns: dict[str, Any], x: Any = 1) -> list[str]:
    calls: list[str] = ns["calls"]
    status = nf.CheckpointingRunner(backend, echo_output=False).run(build(ns), "i", x)
    assert status.state == "completed"
    return calls


def test_a_checkpoint_keeps_its_fingerprint_breakdown_and_sources(backend: nf.InMemoryBackend) -> None:
    ns = define(CELL, {"calls": []})
    first_run(backend, ns)
    record = backend.get_record("i", "clean")
    assert record is not None
    kept = record.extra["fp"]
    assert set(kept["parts"]) == {"body", "defaults", "helper:helper"}
    assert "return helper(x) + 1" in kept["src"]["body"] and "return x * 2" in kept["src"]["helper:helper"]
    assert len(str(kept)) < 4000  # bounded: digests and short sources only


def test_own_body_edit(backend: nf.InMemoryBackend) -> None:
    first_run(backend, define(CELL, {"calls": []}))
    edited = define(CELL.replace("return helper(x) + 1", "return helper(x) + 2"), {"calls": []})
    reasons = reasons_after(backend, build(edited))
    assert reasons["clean"].kind == "code" and reasons["clean"].text == "its own code changed"
    assert "-    return helper(x) + 1" in reasons["clean"].diff and "+    return helper(x) + 2" in reasons["clean"].diff
    assert reasons["clean"].diff.startswith("--- clean (checkpointed)")
    assert reasons["stats"].kind == "upstream" and reasons["stats"].text == "upstream `clean` changed"


def test_helper_edit_names_the_helper_and_diffs_it(backend: nf.InMemoryBackend) -> None:
    first_run(backend, define(CELL, {"calls": []}))
    edited = define(CELL.replace("return x * 2", "return x * 3"), {"calls": []})
    reason = reasons_after(backend, build(edited))["clean"]
    assert reason.text == "helper `helper` changed"
    assert "-    return x * 2" in reason.diff and "+    return x * 3" in reason.diff
    assert "helper(x) + 1" not in reason.diff.replace(" def", "")  # the task's body did not change


def test_closure_value_change(backend: nf.InMemoryBackend) -> None:
    def make(rate: float) -> Any:
        def scale(x: float) -> float:
            return x * rate

        return scale

    runner = nf.CheckpointingRunner(backend, echo_output=False)
    runner.run(nf.Workflow("w").then("scale", make(0.5)).build(), "i", 2)
    wf = nf.Workflow("w").then("scale", make(0.7)).build()
    assert reasons_after(backend, wf)["scale"].text == "closure value `rate` changed (0.5 -> 0.7)"


def test_default_value_change(backend: nf.InMemoryBackend) -> None:
    ns = define("def f(x, k=1):\n    return x + k\n")
    nf.CheckpointingRunner(backend, echo_output=False).run(nf.Workflow("w").then(ns["f"]).build(), "i", 1)
    ns2 = define("def f(x, k=2):\n    return x + k\n")
    assert (
        reasons_after(backend, nf.Workflow("w").then(ns2["f"]).build())["f"].text == "a default value changed (1 -> 2)"
    )


@pytest.fixture
def local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Path]]:
    """A real ``utils`` module file beside the "notebook", imported from tmp_path."""
    name = f"utils_{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{name}.py"
    path.write_text("def _scale(x):\n    return x * 2\n\n\ndef norm(x):\n    return _scale(x) + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module, path
    sys.modules.pop(name, None)


def test_a_helper_in_the_users_own_module_is_fingerprinted_transitively(
    backend: nf.InMemoryBackend, local_module: tuple[ModuleType, Path]
) -> None:
    module, path = local_module
    assert fp.is_local_module(module.__name__) and not fp.is_local_module("json")
    ns = define("def clean(x):\n    calls.append('clean')\n    return utils.norm(x)\n", {"utils": module, "calls": []})
    wf = nf.Workflow("w").then(ns["clean"]).build()
    assert nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 5).output == 11
    parts = backend.get_record("i", "clean").extra["fp"]["parts"]  # type: ignore[union-attr]
    assert {f"helper:{module.__name__}.norm", f"helper:{module.__name__}._scale"} <= set(parts)

    # edit the helper of the helper in the file (the size changes, so the import system reloads it)
    path.write_text(path.read_text().replace("return x * 2", "return x * 20  # ten times more"))
    importlib.reload(module)
    wf = nf.Workflow("w").then(ns["clean"]).build()
    reason = reasons_after(backend, wf)["clean"]
    assert reason.text == f"helper `{module.__name__}._scale` changed"
    assert "-    return x * 2" in reason.diff and "+    return x * 20  # ten times more" in reason.diff
    ns["calls"].clear()
    assert nf.CheckpointingRunner(backend, echo_output=False).resume(wf, "i").output == 101
    assert ns["calls"] == ["clean"]  # it ran again; unchanged code would have been restored


def test_library_functions_are_not_followed() -> None:
    import json

    ns = define("def f(x):\n    return json.dumps(x)\n", {"json": json})
    assert not [p for p in fp.explain(ns["f"]).parts if p.startswith("helper:")]


def test_input_change_names_the_input_for_a_new_instance(backend: nf.InMemoryBackend) -> None:
    ns = define(
        """
        def load(path):
            return [path]
        def count(load):
            return len(load)
        """
    )
    wf = (
        nf.Workflow("w")
        .add("load", ns["load"], inputs={"path": nf.InputRef("path")})
        .add("count", ns["count"], inputs={"load": "load"})
    )
    wf = wf.build()
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    runner.run(wf, "w-a", {"path": "a.csv"})
    assert backend.get_record("w-a", INPUT_KEY).extra["inputs"]["path"]["preview"] == "'a.csv'"  # type: ignore[union-attr]
    previous = previous_run(backend, wf, "w-b")
    assert isinstance(previous, PreviousRun) and previous.instance_id == "w-a"
    upcoming = {INPUT_KEY: CheckpointRecord(INPUT_KEY, "", "", extra=input_facts({"path": "b.csv"}))}
    reasons = explain_plan(wf, upcoming, dict.fromkeys(wf.task_ids, "run"), previous=previous)
    assert reasons["load"].kind == "input"
    assert reasons["load"].text == "input `path` changed ('a.csv' -> 'b.csv') since instance 'w-a'"
    assert reasons["count"].text == "upstream `load` changed"
    same = {INPUT_KEY: CheckpointRecord(INPUT_KEY, "", "", extra=input_facts({"path": "a.csv"}))}
    assert explain_plan(wf, same, dict.fromkeys(wf.task_ids, "run"), previous=previous) == {}


def test_rerun_from_is_its_own_reason(backend: nf.InMemoryBackend) -> None:
    ns = define(CELL, {"calls": []})
    first_run(backend, ns)
    seen: list[ev.RunEvent] = []
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    runner.subscribe(seen.append)
    runner.rerun_from(build(ns), "i", "clean")
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    assert started.reasons == {"clean": "re-run requested", "stats": "upstream `clean` changed"}


def test_a_run_keeps_its_reasons_in_the_event_and_the_records(backend: nf.InMemoryBackend) -> None:
    first_run(backend, define(CELL, {"calls": []}))
    edited = define(CELL.replace("return x * 2", "return x * 3"), {"calls": []})
    seen: list[ev.RunEvent] = []
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    runner.subscribe(seen.append)
    assert runner.resume(build(edited), "i").state == "completed"
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    assert started.reasons["clean"].startswith("helper `helper` changed\n--- helper (checkpointed)")
    assert started.reasons["stats"] == "upstream `clean` changed"
    record = backend.get_record("i", "clean")
    assert record is not None and record.extra["stale"] == "helper `helper` changed"
    assert record.extra["fp"]["src"]["helper:helper"].strip().endswith("return x * 3")


def test_accept_keeps_the_checkpoint_and_the_next_run_restores_it(backend: nf.InMemoryBackend) -> None:
    ns = define(CELL, {"calls": []})
    calls = first_run(backend, ns)
    assert calls == ["clean", "stats"]
    old = backend.get_record("i", "clean")
    assert old is not None
    # a cosmetic edit: a renamed local variable
    cosmetic = define(
        CELL.replace("    return helper(x) + 1", "    doubled = helper(x)\n    return doubled + 1"), {"calls": []}
    )
    wf = build(cosmetic)
    runner = nf.CheckpointingRunner(backend, echo_output=False)
    assert runner.plan(wf, "i") == {"clean": "stale", "stats": "stale"}
    accepted = runner.accept(wf, "w", "clean")  # by workflow name
    assert accepted.fingerprint == wf.node("clean").fingerprint != old.fingerprint
    assert accepted.extra["accepted"]["from"] == old.fingerprint and accepted.extra["accepted"]["at"] > 0
    assert runner.plan(wf, "i") == {"clean": "restore", "stats": "restore"}
    status = runner.resume(wf, "i")
    assert status.output == 30 and cosmetic["calls"] == []  # neither task ran again
    assert runner.get_task_result("i", "clean") == 3  # the payload was copied as is
    with pytest.raises(nf.UnknownTaskError):
        runner.accept(wf, "i", "nope")


def test_pinned_package_versions_count(monkeypatch: pytest.MonkeyPatch, backend: nf.InMemoryBackend) -> None:
    @nf.task(pin=["pandas"])
    def load(x: int) -> int:
        return x

    wf = nf.Workflow("w").then(load).build()
    parts = fp.explain(load, None, ("pandas",))
    assert parts.values["pin:pandas"] == fp._installed_version("pandas") != "not installed"
    nf.CheckpointingRunner(backend, echo_output=False).run(wf, "i", 1)
    real = fp._installed_version
    monkeypatch.setattr(fp, "_installed_version", lambda name: "99.0" if name == "pandas" else real(name))
    wf2 = nf.Workflow("w").then(load).build()
    assert wf2.node("load").fingerprint != wf.node("load").fingerprint
    reason = reasons_after(backend, wf2)["load"]
    assert reason.text == f"package `pandas` changed version ({real('pandas')} -> 99.0)"
    with pytest.raises(nf.ConfigurationError, match="pin"):
        nf.task(pin=[3])  # type: ignore[list-item]
    with pytest.raises(nf.ConfigurationError, match="Did you mean pin="):
        nf.task(pins=["pandas"])


def test_nbflow_status_shows_why_from_a_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "flows_stale.py"
    source = "def clean(x):\n    return x * 2\n\ndef stats(clean):\n    return clean + 1\n\n"
    source += "import nbflow as nf\nwf = nf.Workflow('w').then(clean).then(stats).build()\n"
    module.write_text(source)
    store = str(tmp_path / "store")
    assert main(["--dir", store, "resume", "nothing-yet", "--module", str(module)]) == 2
    from nbflow.cli import find_workflows, load_module

    wf = find_workflows(load_module(str(module)))["w"]
    nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False).run(wf, "w-1", 4)
    module.write_text(source.replace("return x * 2", "return x * 3"))
    sys.modules.pop("flows_stale", None)
    capsys.readouterr()
    assert main(["--dir", store, "status", "w", "--module", str(module)]) == 0
    out = capsys.readouterr().out
    assert "clean  run again (stale): its own code changed" in out
    assert "-    return x * 2" in out and "+    return x * 3" in out
    assert "stats  run again (stale): upstream `clean` changed" in out


def _chain_of(fn: Any, n: int) -> nf.WorkflowDefinition:
    builder = nf.Workflow("shared")
    for i in range(n):
        builder.then(f"t{i}", fn)
    return builder.build()


def test_tasks_sharing_code_store_its_breakdown_once_and_all_explain_a_change(backend: nf.InMemoryBackend) -> None:
    ns = define("def step(x):\n    return x + 1\n")
    nf.CheckpointingRunner(backend, echo_output=False).run(_chain_of(ns["step"], 50), "i", 0)
    records = backend.get_records("i")
    holders = [tid for tid in (f"t{i}" for i in range(50)) if "fp" in records[tid].extra]
    assert holders == ["t0"]  # the first keeps it, the other 49 name it
    assert all(records[f"t{i}"].extra.get("fp_at") == "t0" for i in range(1, 50))
    edited = define("def step(x):\n    return x + 2\n")
    reasons = reasons_after(backend, _chain_of(edited["step"], 50))
    for i in (0, 1, 49):
        assert reasons[f"t{i}"].kind == "code" and reasons[f"t{i}"].text == "its own code changed"
        assert "-    return x + 1" in reasons[f"t{i}"].diff and "+    return x + 2" in reasons[f"t{i}"].diff


def test_a_holder_accepted_under_new_code_still_explains_the_others(backend: nf.InMemoryBackend) -> None:
    """t0 accepted under new code: t1 (old code) is explained with the old breakdown, not t0's new one."""
    ns = define("def step(x):\n    return x + 1\n")
    nf.CheckpointingRunner(backend, echo_output=False).run(_chain_of(ns["step"], 3), "i", 0)
    edited = _chain_of(define("def step(x):\n    return x + 2\n")["step"], 3)
    nf.CheckpointingRunner(backend, echo_output=False).accept(edited, "i", "t0")
    reasons = reasons_after(backend, edited)
    assert "t0" not in reasons  # accepted: valid for today's code
    assert reasons["t1"].kind == "code" and reasons["t1"].text == "its own code changed"
    assert "-    return x + 1" in reasons["t1"].diff


def test_a_named_breakdown_whose_holder_changed_otherwise_is_not_used(backend: nf.InMemoryBackend) -> None:
    """A holder re-run under other code (not accepted): its breakdown is not the others'."""
    ns = define("def step(x):\n    return x + 1\n")
    nf.CheckpointingRunner(backend, echo_output=False).run(_chain_of(ns["step"], 3), "i", 0)
    records = backend.get_records("i")
    holder = records["t0"]
    assert "fp" in holder.extra and records["t1"].extra.get("fp_at") == "t0"
    changed = CheckpointRecord.from_dict({**holder.to_dict(), "fingerprint": "f" * 16})
    assert stored_breakdown(records["t1"], {**records, "t0": changed}) is None
    assert stored_breakdown(records["t1"], records) == holder.extra["fp"]
    assert stored_breakdown(records["t1"], {k: v for k, v in records.items() if k != "t0"}) is None
