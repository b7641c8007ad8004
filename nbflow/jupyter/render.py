"""Lay a workflow's DAG out with graphviz, once per shape, as SVG text with stable ids.

Layout is the expensive step (it runs the ``dot`` binary), so it happens once per
``definition_hash`` and is cached; the widget then *paints* states onto the laid-out
nodes with CSS classes and never lays out again. Every node is a ``<g class="node
nbflow-node nbflow-kind-<kind>" id="nbflow-node-<dom id>" data-task="<task id>">``, every
group (``then_flow`` child) a ``cluster`` with ``id="nbflow-cluster-<group>"``, and a
``map`` step is one node however many items it has.

No ``dot`` binary (or no ``graphviz`` package): warn once with the install command and
return None; the widget still shows the progress bar and the table. Painting states and
the saved static view live in ``mimebundle.py`` / ``static_view.py``, not here.
"""

from __future__ import annotations

import html
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from nbflow.core.graph import WorkflowDefinition

__all__ = ["MAX_NODES", "Layout", "clear_cache", "dom_id", "layout"]

#: Above this many nodes the layout is skipped (dot takes minutes, the picture is a
#: hairball); the widget shows the progress bar and table instead.
MAX_NODES = 600
_CACHE_SIZE = 32

INSTALL_HINT = (
    "nbflow: the workflow graph cannot be drawn because graphviz's `dot` program is not "
    "installed; progress and the task table still work. Install it with "
    "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
    "`conda install graphviz`, then re-run the cell."
)
PACKAGE_HINT = (
    "nbflow: the workflow graph cannot be drawn because the `graphviz` Python package is "
    'not installed; progress and the task table still work. Install it with `pip install "nbflow[jupyter]"`.'
)

# Node shapes by kind: the reader tells a map or a route from a plain task at a glance.
_SHAPES: dict[str, dict[str, str]] = {
    "task": {"shape": "box", "style": "rounded,filled"},
    "map": {"shape": "box3d", "style": "filled"},
    "loop": {"shape": "box", "style": "rounded,filled", "peripheries": "2"},
    "route": {"shape": "diamond", "style": "filled"},
    "delay": {"shape": "hexagon", "style": "filled"},
    "signal": {"shape": "cds", "style": "filled"},
}


@dataclass(frozen=True)
class Layout:
    """A laid-out DAG: standalone SVG text and the task id → DOM id map."""

    svg: str
    node_ids: dict[str, str]
    definition_hash: str

    def __repr__(self) -> str:
        return f"<Layout {self.definition_hash}: {len(self.node_ids)} nodes, {len(self.svg)} chars>"


_cache: OrderedDict[tuple[str, str], Layout] = OrderedDict()
_cache_lock = threading.Lock()
_warned = False
_warn_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every cached layout (tests; a new graphviz install)."""
    with _cache_lock:
        _cache.clear()


def dom_id(task_id: str) -> str:
    """A DOM/CSS-safe, deterministic id fragment for a task id.

    >>> dom_id("load"), dom_id("load data"), dom_id("a.b")
    ('load', 'load_20data', 'a_2eb')
    """
    return re.sub(r"[^A-Za-z0-9-]|_", lambda m: f"_{ord(m.group()):02x}" if m.group() != "_" else "__", task_id)


def _warn_once(message: str) -> None:
    global _warned
    with _warn_lock:
        if _warned:
            return
        _warned = True
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def layout(wf: WorkflowDefinition, *, rankdir: str = "LR", max_nodes: int = MAX_NODES) -> Layout | None:
    """The DAG of ``wf`` as SVG, laid out once per ``definition_hash`` (cached).

    Returns None — with a one-time warning carrying the install command — when graphviz
    is unavailable, and None silently when the workflow has more than ``max_nodes``
    nodes (the caller says so in its own UI).
    """
    if len(wf.nodes) > max_nodes:
        return None
    key = (wf.definition_hash, rankdir)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    try:
        import graphviz
    except ImportError:
        _warn_once(PACKAGE_HINT)
        return None
    dot, node_ids = _digraph(graphviz, wf, rankdir)
    try:
        raw = dot.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        _warn_once(INSTALL_HINT)
        return None
    result = Layout(_clean(raw, node_ids, {n.id: n.kind for n in wf.nodes}), node_ids, wf.definition_hash)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def _digraph(graphviz: Any, wf: WorkflowDefinition, rankdir: str) -> tuple[Any, dict[str, str]]:
    """Build the graphviz.Digraph; node names are DOM ids so task ids need no quoting."""
    font = "Helvetica,Arial,sans-serif"
    dot = graphviz.Digraph(
        wf.name,
        graph_attr={
            "rankdir": rankdir,
            "bgcolor": "transparent",
            "nodesep": "0.25",
            "ranksep": "0.35",
            "fontname": font,
            "fontsize": "11",
        },
        node_attr={"fontname": font, "fontsize": "11", "fillcolor": "white", "color": "#555555", "height": "0.3"},
        edge_attr={"color": "#888888", "arrowsize": "0.6"},
    )
    node_ids: dict[str, str] = {}
    taken: set[str] = set()
    for node in wf.nodes:
        base = dom_id(node.id)
        did, n = base, 1
        while did in taken:  # dom_id is injective, but stay safe against future changes
            n += 1
            did = f"{base}-{n}"
        taken.add(did)
        node_ids[node.id] = did

    def add(target: Any, tid: str) -> None:
        node = wf.node(tid)
        attrs = dict(_SHAPES.get(node.kind, _SHAPES["task"]))
        attrs.update(id=f"nbflow-node-{node_ids[tid]}", label=tid if node.kind == "task" else f"{tid} [{node.kind}]")
        attrs["class"] = f"nbflow-node nbflow-kind-{node.kind}"
        target.node(node_ids[tid], **attrs)

    groups: dict[str, list[str]] = {}
    for node in wf.nodes:
        if node.group:
            groups.setdefault(node.group, []).append(node.id)
        else:
            add(dot, node.id)
    for group, members in groups.items():
        with dot.subgraph(name=f"cluster_{dom_id(group)}") as sub:
            sub.attr(label=group, id=f"nbflow-cluster-{dom_id(group)}", style="rounded,dashed", color="#999999")
            for tid in members:
                add(sub, tid)
    for up, down in wf.edges:
        dot.edge(node_ids[up], node_ids[down], id=f"nbflow-edge-{node_ids[up]}-{node_ids[down]}")
    return dot, node_ids


_COMMENT = re.compile(r"<!--.*?-->\s*", re.DOTALL)
_NODE_G = re.compile(r'<g id="nbflow-node-([^"]+)" class="([^"]*)">\s*<title>[^<]*</title>')


def _clean(raw: str, node_ids: dict[str, str], kinds: dict[str, str]) -> str:
    """Deterministic, embeddable SVG: no XML prolog, comments or version banner; plain
    hyphens; ``data-task`` and a ``<title>`` (the hover tooltip) holding the real task id."""
    svg = raw[raw.index("<svg") :]
    svg = _COMMENT.sub("", svg).replace("&#45;", "-")
    task_of = {did: tid for tid, did in node_ids.items()}

    def tag(m: re.Match[str]) -> str:
        did = m.group(1)
        tid = task_of.get(did, did)
        esc = html.escape(tid, quote=True)
        return f'<g id="nbflow-node-{did}" class="{m.group(2)}" data-task="{esc}">\n<title>{esc}</title>'

    return _NODE_G.sub(tag, svg).strip() + "\n"
