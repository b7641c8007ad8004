"""render.layout (graphviz once per shape) and the static, painted fallback SVG."""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nbflow as nf
from nbflow.core.graph import Node, Source, WorkflowDefinition
from nbflow.core.task import TaskSpec
from nbflow.jupyter import render
from nbflow.jupyter.mimebundle import STATE_COLORS, paint_svg, static_bundle
from nbflow.jupyter.progress import ProgressModel

graphviz = pytest.importorskip("graphviz")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` binary not installed")


def etl() -> WorkflowDefinition:
    return (
        nf.Workflow("etl")
        .then("extract", lambda x: x)
        .fork()
        .branch(("clean", lambda x: x))
        .branch(("load data", lambda x: x))
        .join("merge", lambda d: d)
        .build()
    )


def with_group_and_map() -> WorkflowDefinition:
    """Nodes the builder cannot make yet: a map step and a child-flow group."""
    spec = TaskSpec()
    return WorkflowDefinition(
        "shapes",
        [
            Node("extract", "task", None, spec, "none", (), "f1"),
            Node("items", "map", None, spec, "value", (("", Source("extract")),), "f2"),
            Node("child_a", "task", None, spec, "value", (("", Source("items")),), "f3", group="child"),
            Node("child_b", "task", None, spec, "value", (("", Source("child_a")),), "f4", group="child"),
        ],
    )


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    render.clear_cache()
    monkeypatch.setattr(render, "_warned", False)
    yield
    render.clear_cache()


@needs_dot
def test_every_node_gets_a_stable_id_class_and_task_attribute() -> None:
    lay = render.layout(etl())
    assert lay is not None
    svg = lay.svg
    assert svg.startswith("<svg") and "<?xml" not in svg and "<!--" not in svg and "&#45;" not in svg
    assert lay.node_ids == {"extract": "extract", "clean": "clean", "load data": "load_20data", "merge": "merge"}
    for tid, did in lay.node_ids.items():
        assert re.search(
            rf'<g id="nbflow-node-{did}" class="node nbflow-node nbflow-kind-task" data-task="{tid}">', svg
        )
        assert f"<title>{tid}</title>" in svg
    assert svg.count('class="edge"') == 4
    assert 'id="nbflow-edge-extract-clean"' in svg


@needs_dot
def test_groups_become_clusters_and_a_map_is_one_node() -> None:
    lay = render.layout(with_group_and_map())
    assert lay is not None
    assert 'id="nbflow-cluster-child" class="cluster"' in lay.svg
    assert lay.svg.count('class="node nbflow-node') == 4
    assert 'class="node nbflow-node nbflow-kind-map" data-task="items"' in lay.svg
    assert ">items [map]</text>" in lay.svg


@needs_dot
def test_layout_runs_once_per_definition_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_pipe = graphviz.Digraph.pipe

    def counting_pipe(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(self.name)
        return real_pipe(self, *args, **kwargs)

    monkeypatch.setattr(graphviz.Digraph, "pipe", counting_pipe)
    first = render.layout(etl())
    second = render.layout(etl())  # a new definition object with the same shape
    assert first is second
    assert calls == ["etl"]
    render.layout(with_group_and_map())
    assert calls == ["etl", "shapes"]


def test_missing_dot_warns_once_and_returns_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on an empty PATH
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert render.layout(etl()) is None
        assert render.layout(with_group_and_map()) is None
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "apt-get install graphviz" in messages[0] and "conda install graphviz" in messages[0]
    assert caught[0].category is RuntimeWarning


def test_too_many_nodes_are_not_laid_out() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert render.layout(etl(), max_nodes=3) is None


def test_dom_ids_are_injective_and_css_safe() -> None:
    ids = ["a b", "a_20b", "a-b", "a.b", "a_b", "ä"]
    dom = [render.dom_id(i) for i in ids]
    assert len(set(dom)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", d) for d in dom)


@needs_dot
def test_static_svg_has_inline_fill_colours_per_state() -> None:
    lay = render.layout(etl())
    assert lay is not None
    painted = paint_svg(lay.svg, {"extract": "restored", "clean": "done", "load data": "failed"})
    for did, state in [("extract", "restored"), ("clean", "done"), ("load_20data", "failed"), ("merge", "pending")]:
        block = re.search(
            rf'<g id="nbflow-node-{did}" class="([^"]*)"[^>]*>\s*<title>[^<]*</title>\s*<\w+ fill="([^"]+)"', painted
        )
        assert block is not None, did
        assert f"nbflow-state-{state}" in block.group(1).split()
        assert block.group(2) == STATE_COLORS[state]
    assert paint_svg(lay.svg, {}) == paint_svg(lay.svg, {})  # deterministic


@needs_dot
def test_static_bundle_is_text_plus_svg() -> None:
    wf = etl()
    model = ProgressModel(wf.task_ids, workflow="etl")
    bundle = static_bundle(model, render.layout(wf))
    assert bundle["text/plain"] == "etl: 0/4 done | extract pending | clean pending | load data pending | merge pending"
    assert bundle["image/svg+xml"].startswith("<svg")
    assert set(static_bundle(model, None)) == {"text/plain"}
