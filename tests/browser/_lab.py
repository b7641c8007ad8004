"""Shared helpers of the browser tests: a real ``jupyter lab`` / ``jupyter notebook`` server
on a free localhost port with isolated config, the readiness check, Run All.

Proven commands and gotchas: ``/work/shared/recipes/RECIPE.md`` (and the docstring of
``test_lab.py``). The ``browser`` fixture (system Chromium, never ``playwright install``)
is in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACTS", "CHROMIUM", "CHROMIUM_ARGS", "KERNEL_READY_JS", "REPO",
    "free_port", "known_page_error", "open_notebook", "run_all", "start_server", "stop_server",
]  # fmt: skip

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("NBFLOW_ARTIFACTS", REPO / "artifacts"))


KERNEL_READY_JS = """(nCells) => {
  const cells = document.querySelectorAll('.jp-Notebook .jp-Cell').length;
  const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const name = document.querySelector('.jp-Toolbar-kernelName');
  return cells === nCells && ind && ind.getAttribute('data-status') === 'idle'
         && name && /Python 3/.test(name.textContent);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    app: str, root: Path, tmp: Path, *, extra_args: tuple[str, ...] = (), env_extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, str, Any]:
    """``extra_args`` go on the server's command line; ``env_extra`` into its environment
    (e.g. a fresh ``JUPYTER_DATA_DIR``: a notebook signed elsewhere is then untrusted)."""
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(env_extra or {})
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "jcfg"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp / "jruntime"),
        IPYTHONDIR=str(tmp / "ipython"),
    )
    # No "get notified about Jupyter news?" toast over the screenshots (Notebook 7 too).
    notif = tmp / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True, exist_ok=True)
    (notif / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    log = open(tmp / f"jupyter-{app}.log", "w")  # noqa: SIM115 - closed by stop_server
    last_error: Exception | None = None
    for _attempt in range(3):  # a free port can be taken between bind and listen: retry
        port = free_port()
        cmd = [
            sys.executable, "-m", "jupyter", app, "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
            "--ServerApp.port_retries=0",
        ]  # fmt: skip
        if app == "lab":
            cmd += ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        cmd += list(extra_args)
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = RuntimeError(f"jupyter {app} exited: {(tmp / f'jupyter-{app}.log').read_text()[-2000:]}")
                break
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        return proc, base, token, log
            except OSError:
                time.sleep(0.25)
        else:
            stop_server(proc, None)
            last_error = TimeoutError(f"jupyter {app} did not start in 60 s")
    log.close()
    assert last_error is not None
    raise last_error


def stop_server(proc: subprocess.Popen[bytes], log: Any) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    if log is not None:
        log.close()


def known_page_error(app: str, exc: Any) -> bool:
    """Notebook 7.6 throws this while it loads its settings, as soon as the page opens and
    before any cell runs (so before any nbflow code is loaded), whatever the settings file
    says (checked by hand). Its stack is Notebook's own bundle only: reported, not failed."""
    stack = str(getattr(exc, "stack", "") or "")
    return (
        app == "notebook"
        and "reading 'schema'" in str(exc)
        and "/static/notebook/" in stack
        and "nbflow" not in stack
        and "anywidget" not in stack
    )


def run_all(page: Any) -> None:
    """Run > Run All Cells by its label (Lab 4.6 names the command runmenu:run-all)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator("li.lm-Menu-item[data-type=command]").filter(
        has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))
    ).click()


def open_notebook(page: Any, base: str, token: str, name: str, n_cells: int, app: str = "lab") -> None:
    """Open ``name`` and wait until all its cells are in the DOM and its kernel is idle
    (recipe gotcha 20: the idle indicator alone can match before the kernel exists)."""
    path = "lab/tree" if app == "lab" else "notebooks"
    url = f"{base}/{path}/{name}?token={token}" + ("&reset" if app == "lab" else "")
    page.goto(url)
    page.wait_for_function(KERNEL_READY_JS, arg=n_cells, timeout=90_000)
