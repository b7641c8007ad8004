"""Cost of capturing what tasks display (issue 11): a figure per task.

A 200-task chain on ``DiskcacheBackend`` (fresh store per round), measured round-robin
in the same process. Variants:

- **no figures**: each task does a little arithmetic;
- **figure, not captured**: each task also draws a 4x3 in matplotlib figure (Agg, 100
  points) and closes it itself — the user's own drawing cost, no image made, nbflow
  capturing nothing;
- **figure + one PNG pass**: the same, and the task itself makes the very PNG the
  capture makes (``nbflow.run.displays.figure_display``: one Agg draw at the figure's
  dpi, cropped to its tight box; a second draw only when labels reach past the edge,
  which these figures' do not) — the floor of any capture that stores the picture
  before the task is reported done;
- **figure, rendered as Jupyter would**: instead, the PNG the inline backend makes to
  show it under a cell (``bbox_inches="tight"``: a second, layout-only draw) — what
  showing a figure costs without nbflow;
- **a drawn picture, captured**: each task displays a figure's PNG made once before the
  run (``display(bundle, raw=True)``), with the capture installed: the capture's own
  share (the shell's publisher, the TaskDisplay event, the display record, the widget)
  without matplotlib on the clock. Measured apart, in more rounds, against "no
  figures": both runs are short, so this share is not lost in the noise of two ~15 s
  runs that each draw 200 figures;
- **figure, captured**: the figure left open, inside an IPython shell with nbflow's
  display capture installed (``nbflow.jupyter.display_capture``): at the end of each
  task it is drawn as PNG (the same pass), sent as a TaskDisplay event, stored as the
  task's display record in the output's transaction, and closed.

A ``WorkflowWidget`` listens in every variant (as under a ``%%workflow`` cell) when the
jupyter extra is installed. The issue's target: the captured figure adds ≤ 20 ms per
task over "no figures" (best rounds). That strict figure is reported as measured. It
includes the user's own drawing and matplotlib's first Agg draw of a new figure (tick
creation, text layout: ~45 ms for a 4x3 in figure on the reference machine), which no
capture that keeps the picture durable with the task can skip: the rows split it into
the drawing, the PNG pass, and the capture's own share on top of that pass (the event,
the display record, the widget) — the part nbflow controls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nbflow as nf
from bench import flows
from bench.core import Config, Row, round_robin, scaled, scratch_dir

NAME = "displays"
ADDED_MS_MAX = 20.0


def _plain(x: int) -> int:
    return sum(i * i for i in range(200)) % 7 + x


def _draw(close: bool, render: str = "") -> Callable[[int], int]:
    """A task drawing a figure; ``render``: "once" (the PNG nbflow makes), "inline" (the
    inline backend's), or "" (no image)."""

    def draw(x: int) -> int:
        import io

        import matplotlib.pyplot as plt

        from nbflow.run.displays import figure_display

        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([(i * x) % 17 for i in range(100)])
        ax.set_title(f"task {x}")
        if render == "once":
            figure_display(fig)  # the very picture the capture makes
        elif render == "inline":
            fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
        if close:
            plt.close(fig)
        return _plain(x)

    return draw


def _hand_over(bundle: dict[str, Any]) -> Callable[[int], int]:
    """A task that displays an already drawn figure (its PNG made once, off the clock):
    what the capture does with a picture, without matplotlib's draw on the clock."""

    def show(x: int) -> int:
        from IPython.display import display

        display(bundle, raw=True)
        return _plain(x)

    return show


def _ready_picture() -> dict[str, Any]:
    import matplotlib.pyplot as plt

    from nbflow.run.displays import figure_display

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([(i * 7) % 17 for i in range(100)])
    ax.set_title("task 7")
    bundle = dict(figure_display(fig)["data"])
    plt.close(fig)
    return bundle


def _chain(n: int, fn: Callable[[int], int], name: str) -> Any:
    builder = nf.Workflow(name).then("t0", fn)
    for i in range(1, n):
        builder = builder.then(f"t{i}", fn)
    return builder.build()


def _variant(wf: Any, cfg: Config, *, capture: bool, shell: Any) -> Callable[[], float]:
    from nbflow.jupyter import display_capture

    counter = iter(range(10**9))

    def run() -> float:
        with scratch_dir(cfg, f"displays-{wf.name}") as d:
            backend = flows.make_backend("disk", d)
            try:
                runner = nf.CheckpointingRunner(backend, echo_output=False)
                iid = f"{wf.name}-{next(counter)}"
                widget = _widget(wf, iid)
                if capture:
                    display_capture.install(shell)
                t0 = time.perf_counter()
                unsubscribe = widget.listen(runner.events) if widget is not None else None
                status = runner.run(wf, iid, 1)
                if widget is not None and unsubscribe is not None:
                    unsubscribe()
                    widget.flush()
                seconds = time.perf_counter() - t0
                if capture:
                    display_capture.uninstall(shell)
                if status.state.value != "completed":
                    raise RuntimeError(f"{wf.name} ended {status.state}: {status.error}")
                if capture:
                    shown = [r for r in backend.get_records(iid) if r.endswith("#display")]
                    if len(shown) != len(wf.nodes):
                        raise RuntimeError(f"{len(shown)} of {len(wf.nodes)} tasks stored a display")
                if widget is not None:
                    widget.close()
            finally:
                flows.close_backend(backend)
        return seconds

    return run


def _widget(wf: Any, iid: str) -> Any:
    try:
        from nbflow.jupyter.widget import WorkflowWidget
    except Exception:  # noqa: BLE001 - no jupyter extra: measure without a widget
        return None
    return WorkflowWidget(wf, instance_id=iid)  # layout happens here, off the clock


def run(cfg: Config, log: Callable[[str], None]) -> list[Row]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from IPython.core.interactiveshell import InteractiveShell
    except ImportError as exc:
        return [Row(NAME, "figure per task", None, "", note=f"skipped: {exc}")]
    shell = InteractiveShell.instance()
    n = scaled(cfg, 200, minimum=10)
    variants = {
        "no figures": _variant(_chain(n, _plain, "plain"), cfg, capture=False, shell=shell),
        "figure, not captured": _variant(_chain(n, _draw(True), "drawn"), cfg, capture=False, shell=shell),
        "figure + one PNG pass": _variant(
            _chain(n, _draw(True, render="once"), "once"), cfg, capture=False, shell=shell
        ),
        "figure, rendered as Jupyter would": _variant(
            _chain(n, _draw(True, render="inline"), "rendered"), cfg, capture=False, shell=shell
        ),
        "figure, captured": _variant(_chain(n, _draw(False), "captured"), cfg, capture=True, shell=shell),
    }
    rounds = cfg.rounds(3, 2)
    log(f"displays: {n}-task chain, {rounds} rounds")
    t = round_robin(variants, rounds, log if cfg.verbose else None)
    share_rounds = cfg.rounds(9, 3)
    log(f"displays: the capture's own share, {share_rounds} rounds")
    share = round_robin(
        {
            "no figures": _variant(_chain(n, _plain, "plain-again"), cfg, capture=False, shell=shell),
            "a drawn picture, captured": _variant(
                _chain(n, _hand_over(_ready_picture()), "handed"), cfg, capture=True, shell=shell
            ),
        },
        share_rounds,
        log if cfg.verbose else None,
    )
    plain_again, handed = share["no figures"], share["a drawn picture, captured"]
    own_ms = (handed.median - plain_again.median) / n * 1000
    base, drawn, captured = t["no figures"], t["figure, not captured"], t["figure, captured"]
    once, jupyter = t["figure + one PNG pass"], t["figure, rendered as Jupyter would"]
    added_ms = (captured.best - base.best) / n * 1000
    drawing_ms = (drawn.best - base.best) / n * 1000
    png_ms = (once.best - drawn.best) / n * 1000
    capture_ms = (captured.best - once.best) / n * 1000
    vs_jupyter_ms = (captured.best - jupyter.best) / n * 1000
    return [
        Row(NAME, f"{n}-task chain, a figure per task, captured: ms added per task", added_ms, "ms",
            "target ceiling", ADDED_MS_MAX, ratio=added_ms / ADDED_MS_MAX,
            target=f"<= {ADDED_MS_MAX:.0f} ms per task (ratio <= 1)", target_max=1.0, spread=captured.spread_text(),
            note=(f"best rounds: no figures {base.best:.2f} s, figure drawn and closed by the task "
                  f"{drawn.best:.2f} s, + one PNG pass {once.best:.2f} s, captured {captured.best:.2f} s; per task: "
                  f"the user's drawing {drawing_ms:.1f} ms, matplotlib's one PNG pass {png_ms:.1f} ms, "
                  f"the capture on top of that pass {capture_ms:.1f} ms"),
            samples=captured.samples),
        Row(NAME, f"{n}-task chain: the capture's own share per task (a drawn picture, captured)", own_ms, "ms",
            "no figures", plain_again.median / n * 1000, spread=handed.spread_text(),
            note=(f"median rounds of {share_rounds}: no figures {plain_again.median:.3f} s, a ready PNG displayed "
                  f"and captured per task {handed.median:.3f} s: the shell's publisher, the TaskDisplay event, the "
                  "display record in the output's transaction, the widget; no matplotlib on the clock"),
            samples=handed.samples),
        Row(NAME, f"{n}-task chain: the capture's share per task, beyond its one PNG pass", capture_ms, "ms",
            "figure + one PNG pass, not captured", once.best / n * 1000, spread=once.spread_text(),
            note=(f"captured minus the task making the same PNG itself: the difference of two runs that each "
                  f"draw {n} figures, so within their spread; the row above measures the share alone"),
            samples=once.samples),
        Row(NAME, f"{n}-task chain: captured vs shown by the inline backend, per task", vs_jupyter_ms, "ms",
            "figure rendered as Jupyter would", jupyter.best / n * 1000, spread=jupyter.spread_text(),
            note="negative: capturing (one draw, cropped) costs less than the inline backend's two-draw tight PNG",
            samples=jupyter.samples),
    ]  # fmt: skip
