"""The notebook layer: the ``%%workflow`` / ``%workflow`` magics and the live widget.

This is the only package of nbflow that imports IPython, ipywidgets and graphviz; the
engine never imports it. ``%load_ext nbflow`` calls :func:`load_ipython_extension`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """Register the ``%%workflow`` cell magic and the ``%workflow`` line magic, and
    capture what tasks display (so it is stored with them, widget or not)."""
    from nbflow.jupyter import display_capture
    from nbflow.jupyter.magics import WorkflowMagics

    ipython.register_magics(WorkflowMagics)
    display_capture.install(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """Close the stores the magics opened and stop capturing displays
    (``%unload_ext nbflow``)."""
    from nbflow.jupyter import display_capture

    display_capture.uninstall(ipython)
    magics = ipython.magics_manager.registry.get("WorkflowMagics")
    if magics is not None:
        magics.close()
