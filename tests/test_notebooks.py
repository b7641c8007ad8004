"""The lesson notebooks are their own source: what a contributor edits is what a reader opens.

nbval (``scripts/test.sh``: ``pytest notebooks --nbval-lax ...``) runs every lesson and compares
the cells tagged ``nbval-check-output``; these tests check what nbval does not: that each lesson
says what it teaches, carries the reference outputs of one clean top-to-bottom run (made by
``scripts/execute_notebooks.py``), and that no script writes notebooks any more. The last tests
run that script on small notebooks of their own in real kernels.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
SCRIPT = REPO / "scripts" / "execute_notebooks.py"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_six_lessons_are_there() -> None:
    names = {p.name for p in LESSONS}
    assert {
        "01-quickstart.ipynb",
        "02-resume-after-restart.ipynb",
        "03-visual-inspection.ipynb",
        "04-control-flow.ipynb",
        "05-scaling-out.ipynb",
        "06-long-tasks.ipynb",
    } <= names


def test_no_script_writes_the_notebooks() -> None:
    """A generator next to the notebooks would make the .ipynb files a build product again."""
    writers = []
    for script in NOTEBOOKS.rglob("*.py"):
        if ".nbflow" in script.parts:
            continue
        tree = ast.parse(script.read_text(), filename=str(script))
        names = {
            n.attr if isinstance(n, ast.Attribute) else n.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Name | ast.Attribute)
        }
        imports = {
            alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
        } | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "nbformat" in imports or names & {"new_notebook", "new_code_cell", "new_markdown_cell", "write_notebook"}:
            writers.append(script.name)
    assert not writers, f"notebooks/ holds scripts that build notebooks: {writers}; edit the .ipynb files instead"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_is_a_valid_python3_notebook(path: Path) -> None:
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3", "run it with the default python3 kernel (binder, nbval, CI)"
    assert nb.metadata.kernelspec.language == "python"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_opens_with_a_title_that_says_what_it_teaches(path: Path) -> None:
    first = _read(path).cells[0]
    assert first.cell_type == "markdown", "the first cell is the lesson's title"
    title, _, body = first.source.partition("\n")
    assert title.startswith("# ") and len(title) > 10, f"first line should be a '# ' title, not {title!r}"
    assert len(body.split()) >= 15, "below the title, a paragraph says what the lesson teaches"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_holds_the_outputs_of_one_clean_run(path: Path) -> None:
    """Reference outputs come from one top-to-bottom run (scripts/execute_notebooks.py): every
    code cell ran, in order, and only a cell tagged ``raises-exception`` shows an error."""
    cells = _code_cells(_read(path))
    counts = [c.execution_count for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"execution counts {counts}: run scripts/execute_notebooks.py"
    for i, cell in enumerate(cells):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" not in cell.metadata.get("tags", []):
            assert not errors, f"code cell {i + 1} stored an error: {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_cell_magics_open_their_cell(path: Path) -> None:
    """A ``%%workflow`` line must be a cell's first line (nbval markers are tags, not comments)."""
    for i, cell in enumerate(_code_cells(_read(path))):
        lines = cell.source.splitlines()
        later = [line for line in lines[1:] if line.startswith("%%")]
        assert not later, f"code cell {i + 1}: {later[0]!r} is not the first line, so IPython will not run it"


# -- scripts/execute_notebooks.py, on notebooks of the tests' own -------------------------------


def _write(path: Path, *cells: nbformat.NotebookNode) -> Path:
    nb = nbformat.v4.new_notebook(
        cells=list(cells),
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)
    return path


def _run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--timeout", "120", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
@pytest.mark.kernel
def test_execute_writes_outputs_in_place_from_a_temporary_folder(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("ANSWER = 42\n")
    new_code = nbformat.v4.new_code_cell
    path = _write(
        tmp_path / "lesson.ipynb",
        nbformat.v4.new_markdown_cell("# A lesson\n\nwhat it teaches"),
        new_code("import os, tempfile, helper\nopen('made-by-the-lesson.txt', 'w').close()\nprint(helper.ANSWER)"),
        new_code("raise ValueError('on purpose')", metadata={"tags": ["raises-exception"]}),
        new_code("print(os.getcwd() == os.path.dirname(tempfile.mkdtemp()))\nprint(os.getcwd())"),
    )
    result = _run_script(path)
    assert result.returncode == 0, result.stderr
    cells = _code_cells(_read(path))
    assert [c.execution_count for c in cells] == [1, 2, 3]
    assert cells[0].outputs[0].text == "42\n"  # the helper beside the notebook was importable
    assert cells[1].outputs[0].ename == "ValueError"  # a tagged cell may fail, the run goes on
    same, workdir = cells[2].outputs[0].text.splitlines()
    assert same == "True"  # it ran in a folder of its own, which was also its TMPDIR
    assert not Path(workdir).exists(), "the lesson's working folder was left behind"
    assert not (tmp_path / "made-by-the-lesson.txt").exists(), "the lesson wrote into the notebooks folder"
    assert _read(path).cells[0].source == "# A lesson\n\nwhat it teaches"


@pytest.mark.slow
@pytest.mark.kernel
def test_check_fails_on_an_error_and_writes_nothing(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.ipynb", nbformat.v4.new_code_cell("print('fine')"))
    bad = _write(tmp_path / "bad.ipynb", nbformat.v4.new_code_cell("1 / 0"))
    before = {p: p.read_text() for p in (good, bad)}
    result = _run_script("--check", good, bad)
    assert result.returncode == 1
    assert "bad.ipynb" in result.stderr and "ZeroDivisionError" in result.stderr
    assert "good.ipynb" not in result.stderr
    assert {p: p.read_text() for p in (good, bad)} == before, "--check must not write"
