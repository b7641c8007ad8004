"""binder/ holds what mybinder needs to open notebooks/ with everything working.

- every third-party module a notebook imports (code cells parsed with ``ast``; a
  ``%%workflow`` cell's body is Python too) comes from a distribution listed in
  ``binder/requirements.txt``; so do nbflow's own dependencies, because ``postBuild``
  installs nbflow with ``--no-deps``;
- the requirements resolve against the package index (``pip install --dry-run``, slow);
- ``apt.txt`` installs graphviz (the ``dot`` binary) and ``postBuild`` installs nbflow.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
packaging_requirements = pytest.importorskip("packaging.requirements")

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> dict[str, packaging_requirements.Requirement]:
    out = {}
    for line in (BINDER / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = packaging_requirements.Requirement(line)
            out[_canon(req.name)] = req
    return out


def _covered() -> set[str]:
    """Distributions binder installs by name: the requirements plus what their extras pull
    in (``dask[distributed]`` -> ``distributed``), read from the installed metadata."""
    out = set()
    for name, req in _requirements().items():
        out.add(name)
        for extra in req.extras:
            try:
                requires = importlib.metadata.requires(req.name) or []
            except importlib.metadata.PackageNotFoundError:
                continue
            for line in requires:
                dep = packaging_requirements.Requirement(line)
                if dep.marker is not None and dep.marker.evaluate({"extra": extra}):
                    out.add(_canon(dep.name))
    return out


def _cell_python(source: str) -> str:
    """A code cell as plain Python: a ``%%workflow`` cell is its body; other magics and
    shell lines go through IPython's own input transformer."""
    if source.startswith("%%"):
        header, _, body = source.partition("\n")
        return body if header.startswith("%%workflow") else ""
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(source))


def _local_modules(nb_path: Path, nb: nbformat.NotebookNode) -> set[str]:
    """Modules the notebook brings itself: a .py file (or package) next to it, or a file
    ``NAME.py`` the notebook writes (``%%writefile flows.py``, ``open('flows.py', 'w')``)."""
    here = {p.stem for p in nb_path.parent.glob("*.py")} | {p.name for p in nb_path.parent.iterdir() if p.is_dir()}
    written = {m for cell in nb.cells if cell.cell_type == "code" for m in re.findall(r"\b(\w+)\.py\b", cell.source)}
    return here | written


def _imported_modules(nb_path: Path) -> set[str]:
    """Top-level names of every module imported by the notebook's code cells (not its own)."""
    nb = nbformat.read(nb_path, as_version=4)
    found: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(_cell_python(cell.source), filename=f"{nb_path.name} cell")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
        # %load_ext NAME imports NAME too
        found.update(re.findall(r"^\s*%(?:re)?load_ext\s+(\w+)", cell.source, flags=re.M))
    return found - _local_modules(nb_path, nb)


def _third_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m != "nbflow" and not m.startswith("_")}


def _distributions(module: str) -> list[str]:
    dists = importlib.metadata.packages_distributions().get(module)
    if not dists:
        pytest.fail(f"module {module!r} (imported by a notebook) is not installed here: cannot tell its distribution")
    return [_canon(d) for d in dists]


def test_there_are_notebooks() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"01-quickstart.ipynb", "02-resume-after-restart.ipynb", "03-visual-inspection.ipynb"} <= names


def test_parser_sees_imports_inside_workflow_cells() -> None:
    src = "%%workflow etl --input n=1\nimport numpy as np\nfrom dask import delayed\ndef a(n):\n    return n\n"
    assert _cell_python(src).startswith("import numpy")
    assert "get_ipython" in _cell_python("%load_ext nbflow\nimport os")


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_requirements_cover_notebook_imports(nb_path: Path) -> None:
    reqs = _covered()
    missing = {}
    for module in sorted(_third_party(_imported_modules(nb_path))):
        dists = _distributions(module)
        if not any(d in reqs for d in dists):
            missing[module] = dists
    assert not missing, f"{nb_path.name} imports modules not in binder/requirements.txt: {missing}"


def test_requirements_cover_nbflow_dependencies() -> None:
    """postBuild installs nbflow with --no-deps: its runtime and [jupyter] deps must be listed."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = [*meta["dependencies"], *meta["optional-dependencies"]["jupyter"]]
    reqs = _requirements()
    missing = [r for r in needed if _canon(packaging_requirements.Requirement(r).name) not in reqs]
    assert not missing, f"binder/requirements.txt lacks nbflow dependencies: {missing}"


def test_apt_installs_graphviz() -> None:
    packages = [line.split("#", 1)[0].strip() for line in (BINDER / "apt.txt").read_text().splitlines()]
    assert "graphviz" in packages


def test_postbuild_installs_nbflow() -> None:
    text = (BINDER / "postBuild").read_text()
    commands = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert re.search(r"pip install\b.*(\s|-e\s*)\.(\s|$|\[)", "\n".join(commands), flags=re.M), commands
    assert text.startswith("#!"), "postBuild needs a shebang line"


@pytest.mark.slow
def test_requirements_resolve() -> None:
    """What mybinder does, minus the download: resolve the whole set from the index."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--disable-pip-version-check", "-r", str(BINDER / "requirements.txt")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"pip could not resolve binder/requirements.txt:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
