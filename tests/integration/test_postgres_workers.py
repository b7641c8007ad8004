"""``nbflow worker`` processes sharing one PostgreSQL store (a real server the test
starts): a SIGKILLed worker's unit is taken over and nothing commits twice; a slow
heartbeat commits exactly one result; a server restart mid-run is survived; and a pool
spanning two network namespaces (two "hosts") drains one queue."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import nbflow as nf
from nbflow.store.postgres import PostgresBackend
from tests import pg_server
from tests.integration.test_worker_pool import BODIES, FLOWS, N_INSTANCES, _load_flows, _marks

reason = pg_server.unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(reason is not None, reason=f"no PostgreSQL test server: {reason}")]


def _worker(
    dsn: str, flows: Path, name: str, env: dict[str, str], *prefix: str, ttl: str = "2s"
) -> subprocess.Popen[str]:
    cmd = [
        *prefix,
        sys.executable,
        "-m",
        "nbflow",
        "--dsn",
        dsn,
        "worker",
        "--module",
        str(flows),
        "--id",
        name,
        "--concurrency",
        "2",
        "--claim-ttl",
        ttl,
        "--heartbeat",
        "0.5s",
        "--poll-interval",
        "0.1s",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(procs: dict[str, subprocess.Popen[str]]) -> dict[str, str]:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)  # graceful: finish what is in hand, release
    return {name: p.communicate(timeout=60)[0] for name, p in procs.items()}


def _wait_completed(client: nf.WorkflowClient, ids: list[str], timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [client.status(i, output=False).state for i in ids]
        if all(s == "completed" for s in states):
            return
        assert not any(s == "failed" for s in states), [client.status(i, output=False) for i in ids]
        time.sleep(0.2)
    pytest.fail(f"instances stuck: {[client.status(i, output=False) for i in ids]}")


def _pool_setup(tmp_path: Path, dsn: str) -> tuple[Path, Path, dict[str, str], nf.WorkflowClient, Any]:
    """The 200-unit pool of test_worker_pool.py (5 instances of 40 units), submitted."""
    marks = tmp_path / "marks"
    marks.mkdir()
    flows_path = tmp_path / "pool_flows.py"
    flows_path.write_text(textwrap.dedent(FLOWS))
    env = {**os.environ, "POOL_MARKS": str(marks), "PYTHONPATH": os.getcwd()}
    os.environ["POOL_MARKS"] = str(marks)
    flows = _load_flows(flows_path, "pool_flows_pg")
    client = nf.WorkflowClient(PostgresBackend(dsn))
    for n in range(N_INSTANCES):
        client.submit(flows.pool, f"pool-{n}", n)
    assert (len(flows.pool.task_ids) + 30) * N_INSTANCES == 200  # 40 units per instance
    return marks, flows_path, env, client, flows


def _check_exactly_once(
    client: nf.WorkflowClient, marks: Path, rerun_allowed: set[int], dead: frozenset[str] = frozenset()
) -> Counter[tuple[str, str]]:
    """Every unit's committed output came from one execution; only units that were in the
    hands of ``rerun_allowed`` processes (killed, or cut off) ran more than once. Only a
    ``dead`` worker (killed between a commit and the release) may leave a claim behind."""
    store = client.backend
    executions = Counter((iid, task) for iid, task, _, _ in _marks(marks))
    by_key: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for iid, task, pid, token in _marks(marks):
        by_key.setdefault((iid, task), []).append((pid, token))
    assert set(executions) == {(f"pool-{n}", t) for n in range(N_INSTANCES) for t in BODIES}
    for n in range(N_INSTANCES):
        iid = f"pool-{n}"
        assert client.status(iid).output == sum(range(30))
        left = store.get_claims(iid)
        assert {c.worker for c in left.values()} <= dead, left  # the live workers released every claim
        for task in BODIES:
            value = client.get_task_result(iid, task)
            token = value["tok"] if task == "start" else value[1] if task.startswith("items[") else value
            if isinstance(token, str):  # the committed output is one execution's
                assert token in [t for _, t in by_key[(iid, task)]], (iid, task)
    for key, count in executions.items():
        if count > 1:
            assert rerun_allowed & {pid for pid, _ in by_key[key]}, (key, by_key[key])
    return executions


def test_four_workers_on_postgres_survive_a_sigkill(tmp_path: Path, dsn: str) -> None:
    marks, flows_path, env, client, _ = _pool_setup(tmp_path, dsn)
    procs = {f"w{w}": _worker(dsn, flows_path, f"w{w}", env) for w in range(1, 5)}
    pids = {p.pid: name for name, p in procs.items()}
    try:
        victim = None
        deadline = time.time() + 90
        while victim is None and time.time() < deadline:
            victim = next(((iid, pid) for iid, task, pid, _ in _marks(marks) if task == "b0" and pid in pids), None)
            time.sleep(0.05)
        assert victim is not None, "no worker started the slow branch"
        victim_iid, victim_pid = victim
        os.kill(victim_pid, signal.SIGKILL)  # mid-task: the slow branch sleeps 3 s
        procs[pids[victim_pid]].wait(10)
        _wait_completed(client, [f"pool-{n}" for n in range(N_INSTANCES)], 180)
    finally:
        outputs = _stop(procs)
    for name, p in procs.items():
        if p.pid != victim_pid:
            assert p.returncode == 0 and "stopped" in outputs[name], outputs[name]
    executions = _check_exactly_once(client, marks, {victim_pid}, frozenset({pids[victim_pid]}))
    assert executions[(victim_iid, "b0")] == 2  # the killed unit ran again elsewhere ...
    b0 = client.backend.get_record(victim_iid, "b0")
    assert b0 is not None and b0.worker != pids[victim_pid]  # ... and that worker's result is the one kept
    workers = {client.backend.get_record(f"pool-{n}", t).worker for n in range(N_INSTANCES) for t in BODIES}  # type: ignore[union-attr]
    assert len(workers - {pids[victim_pid]}) >= 2  # the work spread over the live workers


class _CountingStore(PostgresBackend):
    commits: ClassVar[Counter[str]] = Counter()

    def commit_claimed(self, instance_id, task_id, token, items, **kw):  # type: ignore[no-untyped-def]
        stored = super().commit_claimed(instance_id, task_id, token, items, **kw)
        if stored is not None:
            type(self).commits[f"{instance_id}/{task_id}"] += 1
        return stored


def test_slow_heartbeat_on_postgres_commits_exactly_one_result(tmp_path: Path, dsn: str) -> None:
    """The slow worker's claim expires (on the server's clock) while its task runs; the
    fast worker takes the task over. Both executions finish; one result is committed."""
    marks = tmp_path / "marks"
    marks.mkdir()

    def body(x: int) -> str:
        (marks / f"run-{time.monotonic_ns()}").write_text("")
        if len(list(marks.iterdir())) == 1:  # first execution: outlive the claim until taken over
            end = time.time() + 30
            while len(list(marks.iterdir())) < 2 and time.time() < end:
                time.sleep(0.02)
            return "slow result"
        return "fast result"

    wf = nf.Workflow("hb").then("t", body).then("after", lambda s: s + "!").build()
    _CountingStore.commits.clear()
    nf.WorkflowClient(_CountingStore(dsn)).submit(wf, "hb-1", 1)
    slow = nf.PooledWorker("slow", _CountingStore(dsn), [wf], claim_ttl=0.5, heartbeat=60, poll_interval=0.05)
    fast = nf.PooledWorker("fast", _CountingStore(dsn), [wf], claim_ttl=30, heartbeat=1, poll_interval=0.05)
    slow_handle = slow.start()
    deadline = time.time() + 30
    while not list(marks.iterdir()) and time.time() < deadline:
        time.sleep(0.02)
    fast_handle = fast.start(until_idle=True)
    fast_handle.join(60)
    deadline = time.time() + 30
    while slow.stats["lost"] == 0 and time.time() < deadline:
        time.sleep(0.05)
    slow_handle.shutdown(timeout=30)

    store = PostgresBackend(dsn)
    assert len(list(marks.iterdir())) == 2  # the task ran twice (at-least-once) ...
    assert _CountingStore.commits["hb-1/t"] == 1  # ... and committed once
    assert slow.stats["lost"] == 1
    record = store.get_record("hb-1", "t")
    assert record is not None and record.worker == "fast"
    status = nf.WorkflowClient(store).status("hb-1")
    assert status.state == "completed" and status.output == "fast result!"


@pytest.fixture
def own_server() -> Iterator[pg_server.PgServer]:
    """A server of this test's own: it is restarted under the workers."""
    server = pg_server.PgServer.start()
    yield server
    server.stop()


def test_workers_survive_a_server_restart_mid_run(tmp_path: Path, own_server: pg_server.PgServer) -> None:
    dsn = own_server.take_store()
    marks, flows_path, env, client, _ = _pool_setup(tmp_path, dsn)
    procs = {f"w{w}": _worker(dsn, flows_path, f"w{w}", env, ttl="20s") for w in range(1, 5)}
    try:
        deadline = time.time() + 90
        while len(_marks(marks)) < 60 and time.time() < deadline:  # well into the run
            time.sleep(0.05)
        done_before = {
            (f"pool-{n}", tid): rec.finished_at
            for n in range(N_INSTANCES)
            for tid, rec in client.backend.get_records(f"pool-{n}").items()
        }
        assert 0 < len(done_before) < 200
        own_server.restart()  # `pg_ctl restart -m fast`: every session is cut
        _wait_completed(client, [f"pool-{n}" for n in range(N_INSTANCES)], 240)
    finally:
        outputs = _stop(procs)
    for name, p in procs.items():
        assert p.returncode == 0 and "stopped" in outputs[name], outputs[name]
    # nothing committed before the restart was lost, or committed again after it
    for (iid, tid), finished in done_before.items():
        record = client.backend.get_record(iid, tid)
        assert record is not None and record.finished_at == finished, (iid, tid)
    # a unit in hand when the connections were cut may have run again (at-least-once);
    # whatever ran, one execution's output is the one kept
    _check_exactly_once(client, marks, {p.pid for p in procs.values()})


# -- two hosts --------------------------------------------------------------------------
def _netns_unavailable() -> str | None:
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with the `ip` tool (iproute2)"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = subprocess.run(["ip", "netns", "add", "nbflow-probe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` is not allowed here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "nbflow-probe"], capture_output=True)
    return None


class _Hosts:
    """Two network namespaces, each joined to this one by a veth pair: two "machines"
    that reach the server only over their own link (no shared loopback)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.links: list[str] = []
        self.gateways: list[str] = []
        tag = os.getpid() % 10000
        for i in (1, 2):
            ns, host_end, ns_end = f"nbflow-{tag}-{i}", f"nbh{tag}{i}", f"nbn{tag}{i}"
            net = f"10.{200 + i}.{tag % 250}"
            for cmd in (
                ["ip", "netns", "add", ns],
                ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
                ["ip", "link", "set", ns_end, "netns", ns],
                ["ip", "addr", "add", f"{net}.1/30", "dev", host_end],
                ["ip", "link", "set", host_end, "up"],
                ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", ns_end],
                ["ip", "netns", "exec", ns, "ip", "link", "set", ns_end, "up"],
                ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
            ):
                subprocess.run(cmd, check=True, capture_output=True)
                if cmd[:3] == ["ip", "netns", "add"]:
                    self.names.append(ns)
                if cmd[:3] == ["ip", "link", "add"]:
                    self.links.append(host_end)
            self.gateways.append(f"{net}.1")

    def close(self) -> None:
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_pool_spans_two_hosts(tmp_path: Path) -> None:
    why = _netns_unavailable()
    if why:
        pytest.skip(f"two hosts from network namespaces: {why}")
    hosts = _Hosts()
    server = None
    try:
        server = pg_server.PgServer.start(listen=("127.0.0.1", *hosts.gateways))
        dsn = server.take_store()
        marks, flows_path, env, client, _ = _pool_setup(tmp_path, dsn)
        procs = {}
        for i, (ns, gateway) in enumerate(zip(hosts.names, hosts.gateways, strict=True)):
            remote = server.dsn(dsn.rsplit("/", 1)[1], host=gateway)  # the server as that host sees it
            for w in (1, 2):
                name = f"h{i + 1}w{w}"
                procs[name] = _worker(remote, flows_path, name, env, "ip", "netns", "exec", ns, ttl="20s")
        try:
            _wait_completed(client, [f"pool-{n}" for n in range(N_INSTANCES)], 240)
        finally:
            outputs = _stop(procs)
        for name, p in procs.items():
            assert p.returncode == 0 and "stopped" in outputs[name], outputs[name]
        _check_exactly_once(client, marks, set())  # nobody died: every unit ran exactly once
        by_host = Counter(
            client.backend.get_record(f"pool-{n}", t).worker[:2]  # type: ignore[union-attr]
            for n in range(N_INSTANCES)
            for t in BODIES
        )
        assert set(by_host) == {"h1", "h2"} and min(by_host.values()) >= 20, by_host  # both hosts took work
    finally:
        if server is not None:
            server.stop()
        hosts.close()
