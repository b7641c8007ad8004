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


# -- underscore names stay in their module ------------------------------------------------
# A name that starts with one underscore belongs to the module (or class) that defines it.
# Another module may not import it, read it off one of the module's objects
# (``sched._arguments``, ``steps._deadline``), or reach it through getattr/hasattr. Inside
# its own module a class's private attributes are reached through ``self``/``cls`` only,
# never through the class name from outside the class (``Channel._instance``).
#
# Third-party private APIs are used in one wrapped, documented place at most, listed here
# with the reason; so are the few places still waiting for their owner's fix.
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
    ("nbflow/jupyter/kernel_busy.py", "_publish_status"): "ipykernel has no public hook for status messages; "
    "only _Keeper touches it, tests/jupyter/test_kernel_busy.py checks its signature",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """The names a module defines (module and class level, and attributes it sets on
    ``self``/``cls``), and the names of its classes."""
    names: set[str] = set()
    classes: set[str] = set()

    def scan(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(stmt.name)
            elif isinstance(stmt, ast.ClassDef):
                names.add(stmt.name)
                classes.add(stmt.name)
                scan(stmt.body)
            elif isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(stmt, ast.If | ast.Try | ast.With):
                scan(stmt.body)
                scan(getattr(stmt, "orelse", []))
                scan(getattr(stmt, "finalbody", []))
                for handler in getattr(stmt, "handlers", []):
                    scan(handler.body)

    scan(tree.body)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return names, classes


class _PrivateUse(ast.NodeVisitor):
    def __init__(self, own: set[str], classes: set[str]) -> None:
        self.own, self.classes = own, classes
        self.inside: list[str] = []  # the classes being visited
        self.found: list[tuple[int, str, str]] = []  # (line, private name, code)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.inside.append(node.name)
        self.generic_visit(node)
        self.inside.pop()

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if _private(alias.name):
                self.found.append((node.lineno, alias.name, f"from {node.module} import {alias.name}"))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            for part in alias.name.split("."):
                if _private(part):
                    self.found.append((node.lineno, part, f"import {alias.name}"))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _private(node.attr):
            owner = node.value
            mine = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            mine = mine or (
                isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super"
            )
            from_outside = isinstance(owner, ast.Name) and owner.id in self.classes and owner.id not in self.inside
            if not mine and (node.attr not in self.own or from_outside):
                self.found.append((node.lineno, node.attr, ast.unparse(node)))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Name)
            and func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) > 1
        ):
            target, name = node.args[0], node.args[1]
            mine = isinstance(target, ast.Name) and target.id in ("self", "cls")
            literal = isinstance(name, ast.Constant) and isinstance(name.value, str)
            if literal and _private(name.value) and not mine and name.value not in self.own:
                self.found.append((node.lineno, name.value, ast.unparse(node)))
        self.generic_visit(node)


def private_uses(source: str, path: str) -> list[tuple[int, str, str]]:
    """(line, name, code) of every use of another module's (or class's) underscore name."""
    tree = ast.parse(source, path)
    visitor = _PrivateUse(*_own_names(tree))
    visitor.visit(tree)
    return sorted(set(visitor.found))


def test_no_module_uses_another_modules_underscore_names() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for line, name, code in private_uses(path.read_text(), rel):
            if (rel, name) not in ALLOWED_PRIVATE:
                problems.append(f"{rel}:{line}: {code}")
    assert problems == []


SAMPLES = {
    "from nbflow.run.steps import _deadline": ["_deadline"],
    "import os._private": ["_private"],
    "def f(sched):\n    return sched._arguments(node)": ["_arguments"],
    "from nbflow.run import steps\nsteps._deadline(1)": ["_deadline"],
    "def f(k):\n    return hasattr(k, '_publish_status')": ["_publish_status"],
    "class C:\n    _instance = None\n\ndef get():\n    return C._instance": ["_instance"],
    # allowed: a module's own names, through self/cls, or objects of its own classes
    "class C:\n    _instance = None\n    @classmethod\n    def get(cls):\n        return cls._instance": [],
    "class C:\n    def __init__(self):\n        self._n = 1\n    def same(self, other):\n        return other._n == self._n": [],
    "def _helper():\n    pass\n\n_helper()\nx = __name__": [],
}


def test_the_underscore_rule_catches_what_it_says() -> None:
    for source, expected in SAMPLES.items():
        assert [name for _, name, _ in private_uses(source, "<sample>")] == expected, source
