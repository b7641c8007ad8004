"""The ``nbflow`` command line over a temporary store: every subcommand, through
``nbflow.cli.main([...])`` (fast, capsys) and a couple through a real
``python -m nbflow`` process. Bad input exits 2 with one clear line on stderr.
(``nbflow worker`` belongs to the scale-out tests.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.cli import EXIT_READER_GONE, main

FLOWS = textwrap.dedent(
    """
    import nbflow as nf

    def prepare(x):
        return x + 1

    def ship(payload):
        return {"shipped": payload}

    approval = (
        nf.Workflow("approval")
        .then("prepare", prepare)
        .wait_for_signal("go")
        .then("ship", ship)
    )   # a builder: the CLI builds it

    def double(x):
        return 2 * x

    doubler = nf.Workflow("doubler").then("double", double).build()
    """
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "cli_flows_mod.py"
    path.write_text(FLOWS)
    return path


def load(module: Path) -> dict[str, nf.WorkflowDefinition]:
    from nbflow.cli import find_workflows, load_module

    return find_workflows(load_module(str(module)))


@pytest.fixture
def seeded(store: Path, module: Path) -> nf.CheckpointingRunner:
    """A store with one parked instance (awaiting a signal) and one completed one."""
    flows = load(module)
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    assert runner.run(flows["approval"], "appr-1", 1).state == "awaiting_signal"
    assert runner.run(flows["doubler"], "dbl-1", 21).output == 42
    return runner


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nbflow", "--dir", str(store), *args], capture_output=True, text=True, timeout=120
    )


# -- happy paths ----------------------------------------------------------------------------
def test_list_empty_store(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(store), "list"]) == 0
    assert "no instances" in capsys.readouterr().out


def test_list_and_filters(store: Path, seeded: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(store), "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["INSTANCE", "WORKFLOW", "STATE", "TASKS"]
    assert "appr-1" in out and "awaiting_signal" in out and "1/3" in out
    assert "dbl-1" in out and "completed" in out
    assert main(["--dir", str(store), "list", "--workflow", "doubler"]) == 0
    out = capsys.readouterr().out
    assert "dbl-1" in out and "appr-1" not in out
    assert main(["--dir", str(store), "list", "--state", "awaiting_signal"]) == 0
    out = capsys.readouterr().out
    assert "appr-1" in out and "dbl-1" not in out
    assert main(["--dir", str(store), "list", "--state", "failed"]) == 0
    assert "no instances" in capsys.readouterr().out


def test_list_is_newest_first_with_each_instances_age(
    store: Path, seeded: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(store), "list"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["dbl-1", "appr-1"]  # dbl-1 ran last
    assert all(row.endswith(" ago") and row.split()[-2][:-1].isdigit() for row in rows), rows


def test_list_marks_a_running_instance_whose_process_died(
    store: Path, seeded: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = seeded.backend.load_instance("dbl-1")
    assert meta is not None
    meta.state = "running"  # what a SIGKILLed runner leaves behind (no lock held)
    seeded.backend.save_instance(meta)
    assert main(["--dir", str(store), "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dbl-1"))
    assert row.split()[2] == "interrupted"  # the same word status uses
    assert main(["--dir", str(store), "status", "dbl-1"]) == 0
    assert "state     interrupted" in capsys.readouterr().out


def test_status(store: Path, seeded: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(store), "status", "appr-1"]) == 0
    out = capsys.readouterr().out
    assert "instance  appr-1" in out and "state     awaiting_signal" in out
    assert "waiting for 'go'" in out
    assert main(["--dir", str(store), "status", "dbl-1"]) == 0
    out = capsys.readouterr().out
    assert "state     completed" in out and "output    42" in out and "1/1" in out


def test_signal_then_resume_in_processes(store: Path, seeded: nf.CheckpointingRunner, module: Path) -> None:
    sent = cli(store, "signal", "appr-1", "go", '{"by": "ana", "ok": true}')
    assert sent.returncode == 0, sent.stderr
    assert "signal 'go' sent to appr-1" in sent.stdout
    done = cli(store, "resume", "appr-1", "--module", str(module))
    assert done.returncode == 0, done.stderr
    assert "state     completed" in done.stdout
    assert "{'shipped': {'by': 'ana', 'ok': True}}" in done.stdout
    assert "prepare restored" in done.stderr  # the progress lines: finished work was restored
    assert nf.WorkflowClient(seeded.backend).status("appr-1").output == {"shipped": {"by": "ana", "ok": True}}


def test_resume_still_waiting_exits_0(
    store: Path, seeded: nf.CheckpointingRunner, module: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(store), "resume", "appr-1", "--module", str(module)]) == 0
    assert "awaiting_signal" in capsys.readouterr().out


def test_signal_default_payload_is_null(store: Path, seeded: nf.CheckpointingRunner, module: Path) -> None:
    assert main(["--dir", str(store), "signal", "appr-1", "go"]) == 0
    assert seeded.resume(load(module)["approval"], "appr-1").output == {"shipped": None}


def test_cancel_pause_unpause_a_stopped_instance(
    store: Path, seeded: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    client = nf.WorkflowClient(seeded.backend)
    assert main(["--dir", str(store), "pause", "appr-1", "--reason", "lunch"]) == 0
    assert "pause requested for appr-1" in capsys.readouterr().out
    status = client.status("appr-1")
    assert status.state == "paused" and "lunch" in status.message and "nbflow CLI" in status.message
    assert main(["--dir", str(store), "unpause", "appr-1"]) == 0
    assert "unpaused appr-1" in capsys.readouterr().out
    assert client.status("appr-1").state != "paused"
    assert main(["--dir", str(store), "cancel", "appr-1", "--reason", "not needed"]) == 0
    assert "cancel requested" in capsys.readouterr().out
    status = client.status("appr-1")
    assert status.state == "cancelled" and "not needed" in status.message
    # a finished instance is not marked cancelled
    assert main(["--dir", str(store), "cancel", "dbl-1"]) == 0
    assert client.status("dbl-1").state == "completed"


def test_clear(store: Path, seeded: nf.CheckpointingRunner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(store), "clear", "dbl-1"]) == 0
    assert "cleared dbl-1" in capsys.readouterr().out
    assert [s.instance_id for s in nf.WorkflowClient(seeded.backend).list_instances()] == ["appr-1"]
    assert main(["--dir", str(store), "clear", "dbl-1"]) == 0
    assert "nothing stored for dbl-1" in capsys.readouterr().out


def test_list_in_a_process(store: Path, seeded: nf.CheckpointingRunner) -> None:
    done = cli(store, "list")
    assert done.returncode == 0, done.stderr
    assert "appr-1" in done.stdout and "dbl-1" in done.stdout


# -- bad input: exit 2 and one clear message ------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "nobody"], "nobody"),
        (["cancel", "nobody"], "nobody"),
        (["pause", "nobody"], "nobody"),
        (["unpause", "nobody"], "nobody"),
        (["signal", "nobody", "go"], "nobody"),
        (["signal", "appr-1", "go", "{not json"], "JSON"),
        (["resume", "nobody", "--module", "json"], "nobody"),
        (["resume", "appr-1", "--module", "no_such_module_xyz"], "no_such_module_xyz"),
        (["resume", "appr-1", "--module", "missing_file.py"], "missing_file.py"),
        (["resume", "appr-1", "--module", "json"], "'approval'"),
        (["status", ""], "instance id"),
    ],
    ids=[
        "status-unknown",
        "cancel-unknown",
        "pause-unknown",
        "unpause-unknown",
        "signal-unknown",
        "bad-json",
        "resume-unknown",
        "no-module",
        "no-file",
        "module-without-workflow",
        "empty-id",
    ],
)
def test_bad_input_exits_2_with_a_message(
    store: Path, seeded: nf.CheckpointingRunner, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dir", str(store), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nbflow: ") and needle in captured.err
    assert "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    "args",
    [[], ["frobnicate"], ["status"], ["resume", "x"], ["signal", "x"]],
    ids=["nothing", "unknown-command", "status-no-id", "resume-no-module", "signal-no-name"],
)
def test_usage_errors_exit_2(store: Path, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--dir", str(store), *args])
    assert info.value.code == 2
    assert "usage: nbflow" in capsys.readouterr().err


def test_bad_input_in_a_process(store: Path, seeded: nf.CheckpointingRunner) -> None:
    done = cli(store, "status", "nobody")
    assert done.returncode == 2
    assert done.stderr.startswith("nbflow: ") and "nobody" in done.stderr and "Traceback" not in done.stderr


def test_help_lists_the_subcommands() -> None:
    done = subprocess.run([sys.executable, "-m", "nbflow", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for cmd in ("list", "status", "resume", "cancel", "pause", "unpause", "signal", "clear"):
        assert cmd in done.stdout


# -- a reader that stops early (``nbflow ... | head``) --------------------------------------
def _with_a_gone_reader(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m nbflow ARGS`` writing into a pipe whose reader has already exited
    (``| head -0``, or ``| head -1`` once it has its line), without any race."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "nbflow", "--dir", str(store), *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["list"], EXIT_READER_GONE),
        (["status", "dbl-1"], EXIT_READER_GONE),
        (["result", "dbl-1", "double"], EXIT_READER_GONE),
        (["help"], EXIT_READER_GONE),
        # argparse itself drops what --help cannot write, and exits 0 as after any --help
        (["--help"], 0),
        (["list", "--help"], 0),
    ],
    ids=["list", "status", "result", "help", "--help", "list--help"],
)
def test_a_closed_pipe_ends_a_command_quietly(
    store: Path, seeded: nf.CheckpointingRunner, args: list[str], code: int
) -> None:
    done = _with_a_gone_reader(store, *args)
    assert done.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError" at exit
    assert done.returncode == code
    assert EXIT_READER_GONE == 141  # what a shell reports for `yes | head -1`


def test_a_reader_that_stops_mid_output_ends_the_command_quietly(store: Path) -> None:
    """``nbflow result … | head -c 100`` on an output far larger than a pipe holds: the
    reader goes while nbflow is still writing."""
    wf = nf.Workflow("big").then("text", lambda x: "x" * x).build()
    runner = nf.CheckpointingRunner(nf.DiskcacheBackend(store), echo_output=False)
    assert runner.run(wf, "big-1", 1 << 20).state == "completed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbflow", "--dir", str(store), "result", "big-1", "text"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(100) == b"'" + b"x" * 99
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_READER_GONE
    assert err == ""


def test_output_into_an_open_pipe_is_whole_and_exits_0(store: Path, seeded: nf.CheckpointingRunner) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nbflow", "--dir", str(store), "result", "dbl-1", "double"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "42\n", "")
