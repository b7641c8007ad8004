"""Dependencies point one way: core <- store <- run <- jupyter, and ``import nbflow``
pulls in no notebook library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import nbflow

PACKAGE = Path(nbflow.__file__).parent


def test_import_nbflow_pulls_in_no_notebook_library() -> None:
    code = "import nbflow, sys; bad = {'IPython','ipywidgets','graphviz'} & set(sys.modules); assert not bad, bad"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # Relative imports: resolve against the module's package.
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
            base = ".".join(parts + ((node.module,) if node.module else ()))
            names.add(base)
    return names


FORBIDDEN = {
    "core": ("nbflow.store", "nbflow.run", "nbflow.jupyter", "IPython", "ipywidgets", "graphviz"),
    "store": ("nbflow.run", "nbflow.jupyter", "IPython", "ipywidgets", "graphviz"),
    "run": ("nbflow.jupyter", "IPython", "ipywidgets", "graphviz"),
}


def test_layers_import_only_downwards() -> None:
    problems = []
    for layer, forbidden in FORBIDDEN.items():
        files = sorted((PACKAGE / layer).rglob("*.py"))
        assert files, layer
        for path in files:
            for name in _imports(path):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    problems.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert problems == []
