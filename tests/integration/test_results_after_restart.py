"""Back from the store with real kernels: a DataFrame by workflow name in a kernel that
never ran the cell, every task's status there and from a shell, papermill-style
``--dir $store``, and why a task is stale after a local module changed between kernels.

Uses the kernel helper of ``test_kernel_restart`` (shared/recipes: IPYTHONDIR and
JUPYTER_RUNTIME_DIR isolated in tmp, the venv's ``python3`` kernel).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.test_kernel_restart import Kernel, kernel_env, kernels, new_kernel

pytestmark = [pytest.mark.slow, pytest.mark.kernel]
__all__ = ["kernel_env", "kernels"]  # fixtures used by name below

pytest.importorskip("pandas")


def sales_cell(store: Path) -> str:
    return f"%%workflow sales --input path=sales.csv --dir {store} --no-widget\n" + textwrap.dedent(
        """
        import pandas as pd

        def load(path):
            return pd.DataFrame({"region": ["n", "s", None, "e"], "amount": [1.5, 2.5, 4.0, 8.0]})

        def clean(load):
            return load.dropna().reset_index(drop=True)

        def total(clean):
            return float(clean["amount"].sum())
        """
    )


EXPECTED = {"region": {"0": "n", "1": "s", "2": "e"}, "amount": {"0": 1.5, "1": 2.5, "2": 8.0}}


def test_a_new_kernel_gets_the_dataframe_and_every_tasks_status_by_name(
    kernels: list[Kernel], kernel_env: Path
) -> None:
    tmp = kernel_env
    store = tmp / "store"
    first = new_kernel(kernels, tmp)
    first.run("%load_ext nbflow")
    assert first.run(sales_cell(store))["result"] == "12.0"
    first.close()
    kernels.remove(first)

    second = new_kernel(kernels, tmp)  # never runs the cell
    second.run("%load_ext nbflow")
    out = second.run(f"df = %workflow result sales clean --dir {store}\nprint(df.to_json())")
    assert json.loads(out["stdout"]) == EXPECTED
    status = second.run(f"report = %workflow status sales --dir {store}\nprint(repr(report))")["stdout"]
    assert "sales [sales-" in status and "completed (3/3 tasks checkpointed)" in status
    for task in ("load", "clean", "total"):
        assert re.search(rf"^\s+{task}\s+done\s+1\s+\d", status, re.M), status
    assert "12.0" in status  # the output preview of total

    shell = subprocess.run(
        [sys.executable, "-m", "nbflow", "--dir", str(store), "status", "sales"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stderr
    assert "state     completed" in shell.stdout
    for task in ("load", "clean", "total"):
        assert re.search(rf"^\s+{task}\s+done\s+1\s+\d", shell.stdout, re.M), shell.stdout
    printed = subprocess.run(
        [sys.executable, "-m", "nbflow", "--dir", str(store), "result", "sales", "total"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert printed.returncode == 0 and printed.stdout.strip() == "12.0", printed.stderr


def test_papermill_style_dir_variable(kernels: list[Kernel], kernel_env: Path) -> None:
    tmp = kernel_env
    kernel = new_kernel(kernels, tmp)
    kernel.run("%load_ext nbflow")
    kernel.run(f"# parameters (papermill injects this cell)\nstore = {str(tmp / 'injected')!r}\n")
    out = kernel.run("%%workflow w --dir $store --no-widget\ndef one():\n    return 1\n")
    assert out["result"] == "1"
    assert (tmp / "injected" / "instances").is_dir()
    assert not any(p.name.startswith("$") for p in tmp.iterdir())
    bad = kernel.run("%%workflow w --dir $nope --no-widget\ndef one():\n    return 1\n", ok=False)
    assert bad["status"] == "error"
    assert "UsageError: $nope: there is no variable 'nope' in the notebook" in bad["stderr"] + bad["error"]
    assert not any(p.name.startswith("$") for p in tmp.iterdir())


UTILS_V1 = "def norm(x):\n    return x * 2\n"
UTILS_V2 = "def norm(x):\n    # now with an offset\n    return x * 2 + 100\n"
CELL = (
    "%%workflow scaling --dir {store} --no-widget {flags}\nimport utils\n\ndef scaled():\n    return utils.norm(21)\n"
)


def test_a_local_module_edit_between_kernels_is_the_stale_reason(kernels: list[Kernel], kernel_env: Path) -> None:
    tmp = kernel_env
    store = tmp / "store"
    (tmp / "utils.py").write_text(UTILS_V1)
    first = new_kernel(kernels, tmp)  # cwd is tmp: utils.py beside the notebook
    first.run("%load_ext nbflow")
    assert first.run(CELL.format(store=store, flags=""))["result"] == "42"
    first.close()
    kernels.remove(first)

    (tmp / "utils.py").write_text(UTILS_V2)
    second = new_kernel(kernels, tmp)
    second.run("%load_ext nbflow")
    second.run(CELL.format(store=store, flags="--no-run"))
    shown = second.run("shown = %workflow show scaling --no-widget\nprint(repr(shown))")["stdout"]
    assert "scaled: helper `utils.norm` changed" in shown, shown
    assert "-    return x * 2" in shown and "+    return x * 2 + 100" in shown, shown
    assert second.run(CELL.format(store=store, flags=""))["result"] == "142"
