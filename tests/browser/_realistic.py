"""A notebook as a user writes it, for the browser and headless tests: pandas, numpy,
matplotlib (``plt.show()`` on an Agg figure), ``tqdm.auto``, prints, a task that takes a
while (``features``: ``steps`` batches of ``delay`` seconds) and, in a second cell, a
workflow whose ``validate`` task fails in a helper function.

The first cell writes the kernel's pid to ``kernel.pid``, so a test can SIGKILL the very
process that runs the cell.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FAILING_CELL", "SALES_TASKS", "sales_cell", "write_notebook"]

SALES_TASKS = ("orders", "features", "chart", "report")

SETUP_CELL = """%load_ext nbflow
import os
with open("kernel.pid", "w") as f:
    f.write(str(os.getpid()))"""


def sales_cell(steps: int, delay: float) -> str:
    return f"""%%workflow sales --dir .nbflow/sales
import time
import numpy as np
import pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tqdm.auto import tqdm

STEPS, DELAY = {steps}, {delay}

def orders():
    print("reading 4830 orders")
    rng = np.random.default_rng(7)
    return pd.DataFrame({{
        "region": rng.choice(["north", "south", "east", "west"], 4830),
        "amount": rng.gamma(2.0, 50.0, 4830).round(2),
    }})

def features(orders):
    batches = []
    for i in tqdm(range(STEPS), desc="features"):
        print(f"batch {{i}}: {{len(orders)}} rows")
        time.sleep(DELAY)
        batches.append(i)
    return orders.assign(batch=len(batches))

def chart(features):
    fig, ax = plt.subplots(figsize=(5, 3))
    features.groupby("region")["amount"].sum().plot.bar(ax=ax, color="#60a5fa")
    ax.set_title("sales by region")
    plt.show()
    return "sales by region"

def report(features, chart):
    totals = features.groupby("region")["amount"].sum().round(2)
    print(totals.to_string())
    return totals
"""


FAILING_CELL = """%%workflow checks --dir .nbflow/checks
def _check_amounts(rows):
    bad = [r for r in rows if r < 0]
    if bad:
        raise ValueError(f"{len(bad)} orders have a negative amount")

def amounts():
    print("3 amounts to check")
    return [10.0, -3.5, 7.25]

def validate(amounts):
    _check_amounts(amounts)
    return True
"""


def write_notebook(path: Path, *, steps: int, delay: float, failing: bool = False, rerun: bool = False) -> int:
    """Write the notebook (no outputs); returns its number of cells. ``rerun`` adds the
    sales cell once more at the end (its tasks are then restored from their checkpoints)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [new_code_cell(SETUP_CELL), new_code_cell(sales_cell(steps, delay))]
    if failing:
        cells.append(new_code_cell(FAILING_CELL))
    if rerun:
        cells.append(new_code_cell(sales_cell(steps, delay)))
    nb = new_notebook(
        cells=cells,
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)
    return len(cells)
