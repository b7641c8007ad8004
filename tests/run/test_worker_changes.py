"""PooledWorker on the disk store: kept views brought up to date with only what changed,
and the lock probe it may skip (the share taken with a claim still excludes a runner)."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import nbflow as nf
from nbflow import InstanceLockedError
from tests.store.faults import cache_db, set_row


def test_kept_views_are_brought_up_to_date_with_the_records_written_since(tmp_path: Path) -> None:
    """Two workers on one big map: each re-reads what the other committed through
    ``records_since`` from its kept view's stamp (only those records), never every
    record again; every item still runs once and the output is whole."""
    store = nf.DiskcacheBackend(tmp_path)
    calls: collections.Counter[tuple[int, int]] = collections.Counter()
    lock = threading.Lock()

    def work(pair: tuple[int, int]) -> int:
        with lock:
            calls[pair] += 1
        return pair[0] * 1000 + pair[1]

    wf = nf.Workflow("big").then("pairs", lambda k: [(k, i) for i in range(400)]).map("work", work).build()
    reads: list[tuple[bool, bool, int]] = []  # (from a kept stamp, complete, records returned)
    since = store.records_since

    def counting(iid: str, stamp: Any, *rest: Any) -> Any:
        answer = since(iid, stamp, *rest)
        with lock:
            reads.append((stamp is not None, answer[2], len(answer[1])))
        return answer

    store.records_since = counting  # type: ignore[method-assign]
    client = nf.WorkflowClient(store)
    for k in range(3):
        client.submit(wf, f"b-{k}", k)
    workers = [nf.PooledWorker(f"w{i}", store, [wf], poll_interval=0.02, concurrency=2) for i in range(2)]
    handles = [w.start(until_idle=True) for w in workers]
    for h in handles:
        h.join(120)
        assert not h.is_alive()
    for k in range(3):
        assert client.status(f"b-{k}").output == [k * 1000 + i for i in range(400)]
    assert set(calls.values()) == {1} and len(calls) == 3 * 400
    partial = [n for kept, complete, n in reads if kept and not complete]
    assert partial, reads  # brought up to date from kept stamps ...
    assert all(kept is False for kept, complete, _ in reads if complete)  # ... and never read whole again


def test_a_worker_that_skips_the_lock_probe_still_leaves_a_runners_instance_alone(tmp_path: Path) -> None:
    """The lock probe only saves a claim: with every probe saying "free" while a runner
    holds the instance, the worker's claim is given back (its share is refused), nothing
    is written, and the instance runs once the runner lets go."""
    store = nf.DiskcacheBackend(tmp_path)
    wf = nf.Workflow("inc").then("a", lambda x: x + 1).then("b", lambda x: x * 2).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "held", 1)
    runner_side = nf.DiskcacheBackend(tmp_path)
    lease = runner_side.lock("held", "a runner")
    store.is_locked = lambda iid: False  # type: ignore[method-assign]
    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.02)
    handle = worker.start()
    try:
        time.sleep(0.3)  # about fifteen scans, each claiming and giving back
        assert store.get_records("held").keys() == {"__input__"}
        assert worker.stats["units"] == 0
        try:
            store.share("held", "probe")
        except InstanceLockedError:
            pass
        else:
            raise AssertionError("the runner's lock should refuse a share")
    finally:
        handle.shutdown(timeout=30)
    assert store.get_claims("held") == {}  # every claim was given back
    lease.release()
    nf.PooledWorker("w2", store, [wf], poll_interval=0.02).run(until_idle=True)
    assert client.status("held").output == 4


def test_an_instance_with_a_damaged_record_is_left_alone(tmp_path: Path) -> None:
    """The worker lists instances without reading their records (list_states), so it is
    its own view that finds a record the store cannot read: the instance is not run
    (nor failed, nor its damaged checkpoint overwritten), as a runner would refuse it;
    the healthy instance beside it runs."""
    store = nf.DiskcacheBackend(tmp_path)
    wf = nf.Workflow("inc").then("a", lambda x: x + 1).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "damaged", 1)
    set_row(cache_db(tmp_path, "damaged"), "t:__input__", b"not a record")
    client.submit(wf, "healthy", 1)
    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.02)
    handle = worker.start()
    try:
        deadline = time.time() + 30
        while client.status("healthy").state != "completed" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("healthy").output == 2
        time.sleep(0.2)  # about ten more scans
        meta = store.load_instance("damaged")
        assert meta is not None and meta.state == "pending"
        assert set(store.get_records("damaged")) == {"__input__"}
        assert worker.stats["units"] == 1 and worker.stats["failed"] == 0
    finally:
        handle.shutdown(timeout=30)


def test_a_worker_loads_the_lock_module_when_it_is_made_not_at_its_first_claim(tmp_path: Path) -> None:
    """The disk store's native locks load at the first lock or probe (a listing need not
    pay for them); a worker pays for them as it starts, not after work was submitted."""
    code = (
        "import sys; import nbflow as nf; store = nf.DiskcacheBackend(sys.argv[1]);"
        " wf = nf.Workflow('inc').then('a', lambda x: x + 1).build();"
        " before = 'filelock' in sys.modules; nf.PooledWorker('w', store, [wf]);"
        " print(before, 'filelock' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
