"""PooledWorker in-process: every step kind, on both backends, several workers at once."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import pytest

import nbflow as nf
from nbflow.core.status import LoopResult
from nbflow.run.worker_units import claim_order, place
from nbflow.store.base import CheckpointRecord, ReadyIndex
from tests.store.implementations import IMPLEMENTATIONS, close_store, make_store


@pytest.fixture(params=IMPLEMENTATIONS)
def store(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    backend = make_store(request.param, tmp_path)
    yield backend
    close_store(backend)


def _drain(store, wfs, n: int = 2, **kw) -> list[nf.PooledWorker]:  # type: ignore[no-untyped-def]
    workers = [nf.PooledWorker(f"w{i}", store, wfs, poll_interval=0.05, concurrency=2, **kw) for i in range(n)]
    handles = [w.start(until_idle=True) for w in workers]
    for h in handles:
        h.join(60)
        assert not h.is_alive()
    return workers


def _grow(x: int) -> LoopResult:
    return LoopResult.done(x) if x >= 20 else LoopResult.again(x + 6)


def _child() -> nf.WorkflowDefinition:
    return (
        nf.Workflow("child")
        .fork()
        .branch("lo", lambda x: x - 1)
        .branch("hi", lambda x: x + 1)
        .join("pair", lambda d: d)
        .build()
    )


def test_every_step_kind(store) -> None:  # type: ignore[no-untyped-def]
    def area(w: int, h: int) -> int:
        return w * h

    wf = (
        nf.Workflow("kinds")
        .then("start", lambda x: x)
        .fork()
        .branch("dbl", lambda x: 2 * x)
        .branch("tri", lambda x: 3 * x)
        .join("join", lambda d: d["dbl"] + d["tri"])
        .then("items", lambda s: list(range(s)))
        .map("sq", lambda i: i * i)
        .then("total", sum)
        .loop("grow", _grow)
        .route(lambda x: "big" if x > 100 else "small", keys=["big", "small"])
        .branch("big", ("b", lambda x: f"big {x}"))
        .branch("small", ("s", lambda x: f"small {x}"))
        .done()
        .delay("nap", 0.2)
        .then_flow(nf.Workflow("c2").fork().branch("up", str.upper).branch("ln", len).join("both", lambda d: d).build())
        .build()
    )
    wf2 = (
        nf.Workflow("kw")
        .add("w", lambda: 3)
        .add("h", lambda x: x, inputs={"x": nf.InputRef("h")})
        .add("area", area, inputs={"w": "w", "h": "h"})
        .build()
    )
    client = nf.WorkflowClient(store)
    for i in range(3):
        client.submit(wf, f"k-{i}", i + 1)
    client.submit(wf2, "kw-1", {"h": 7})
    workers = _drain(store, [wf, wf2])
    expected = nf.CheckpointingRunner(nf.InMemoryBackend()).run(wf, "ref", 2).output
    assert client.status("k-1").output == expected
    for i in range(3):
        status = client.status(f"k-{i}")
        assert status.state == "completed", status
        records = store.get_records(f"k-{i}")
        assert "s" not in records or "b" not in records  # one route branch ran, the other was skipped
        ran = [t for t in records if t in wf or t.startswith("sq[")]
        assert ran and all(records[t].worker in ("w0", "w1") for t in ran), {t: records[t].worker for t in ran}
    assert client.status("kw-1").output == 21
    assert sum(w.stats["committed"] for w in workers) > 40


def test_big_map_is_chunked_over_workers(store) -> None:  # type: ignore[no-untyped-def]
    wf = nf.Workflow("big").then("items", lambda n: list(range(n))).map("m", lambda i: i * 2).then("total", sum).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "big-1", 300)
    _drain(store, [wf], n=3)
    assert client.status("big-1").output == sum(range(0, 600, 2))
    records = store.get_records("big-1")
    assert all(f"m[{i}]" in records for i in range(300))
    chunks = [t for t in records if t.startswith("m[") and ":" in t]
    assert chunks and all(records[c].codec == "ref" for c in chunks)
    assert client.get_task_result("big-1", "m") == [i * 2 for i in range(300)]
    assert store.get_claims("big-1") == {}  # each unit's last commit dropped its claim


def test_unchanged_instance_is_not_re_read(store) -> None:  # type: ignore[no-untyped-def]
    """Between scans a worker keeps an instance's records while its change stamp holds."""
    wf = nf.Workflow("nap").then("a", lambda x: x).delay("nap", 3600).then("b", lambda x: x).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "nap-1", 1)
    calls = {"get_records": 0, "load_instance": 0}

    def counting(name: str, counted: str | None = None):  # type: ignore[no-untyped-def]
        method = getattr(store, name)

        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[counted or name] += 1
            return method(*args, **kwargs)

        return wrapper

    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.02)
    handle = worker.start()
    deadline = time.time() + 20

    def wait_for(name: str, count: int) -> None:
        while calls[name] < count and time.time() < deadline:
            time.sleep(0.01)
        assert calls[name] >= count

    try:
        while client.status("nap-1").state != "waiting" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("nap-1").state == "waiting"
        store.get_records, store.load_instance = counting("get_records"), counting("load_instance")
        if hasattr(store, "records_since"):  # reading the records written since a stamp reads records too
            store.records_since = counting("records_since", "get_records")
        if isinstance(store, ReadyIndex):  # the worker does not even look at a settled instance
            while store.ready_instances(["nap"], 10).due and time.time() < deadline:
                time.sleep(0.01)
            assert store.ready_instances(["nap"], 10).due == []  # put off until the delay is due
            calls.update(get_records=0, load_instance=0)
            time.sleep(0.3)  # about 15 polls
            assert calls == {"get_records": 0, "load_instance": 0}
            store.push_signal("nap-1", "unrelated", b"")  # a write that may make a unit ready
            wait_for("load_instance", 1)  # looked at again ...
            assert calls["get_records"] == 0  # ... and its unchanged records not re-read
            return
        # The claim of the parked step is released just after the state says "waiting",
        # and a claim may move the change stamp (one allowed re-read): let that settle.
        wait_for("load_instance", 2)
        calls.update(get_records=0, load_instance=0)
        wait_for("load_instance", 5)  # several scans ...
        assert calls["get_records"] == 0  # ... and not one re-read of the unchanged records
        sink = store.new_sink("nap-1")
        sink.write(b"")
        store.put_record("nap-1", CheckpointRecord(task_id="note", fingerprint="", codec="pickle"), sink)
        wait_for("get_records", 1)  # a new record: read again
    finally:
        handle.shutdown(timeout=10)


def test_signal_is_consumed_once(store) -> None:  # type: ignore[no-untyped-def]
    wf = nf.Workflow("sig").then("a", lambda x: x).wait_for_signal("go").then("b", lambda p: p["n"] * 2).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "s-1", 1)
    worker = nf.PooledWorker("w", store, [wf], poll_interval=0.05)
    handle = worker.start()
    deadline = time.time() + 20
    while client.status("s-1").state != "awaiting_signal" and time.time() < deadline:
        time.sleep(0.05)
    assert client.status("s-1").state == "awaiting_signal"
    client.send_signal("s-1", "go", {"n": 21})
    while client.status("s-1").state != "completed" and time.time() < deadline:
        time.sleep(0.05)
    handle.shutdown(timeout=10)
    assert client.status("s-1").output == 42
    assert store.pop_signal("s-1", "go") is None


def test_a_parked_signal_wait_is_looked_at_again_once_a_poll_not_at_every_scan(store) -> None:  # type: ignore[no-untyped-def]
    """A unit that just ended starts the next scan at once; the wait that parked must
    not be claimed and run again by it (it ran ~1,700 times in half a second)."""
    wf = nf.Workflow("sig").then("a", lambda x: x).wait_for_signal("go").then("b", lambda p: p["n"] * 2).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "s-1", 1)
    worker = nf.PooledWorker("w", store, [wf], poll_interval=2.0)
    handle = worker.start()
    try:
        deadline = time.time() + 20
        while client.status("s-1").state != "awaiting_signal" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("s-1").state == "awaiting_signal"
        time.sleep(0.5)  # a quarter of a poll interval
        assert worker.stats["units"] <= 3, worker.stats  # "a", the wait parking, at most one look more
        client.send_signal("s-1", "go", {"n": 21})
        while client.status("s-1").state != "completed" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("s-1").output == 42
    finally:
        handle.shutdown(timeout=10)


def test_failure_after_retries_marks_the_instance_failed(store) -> None:  # type: ignore[no-untyped-def]
    calls = []

    @nf.task(retries=1)
    def bad(x: int) -> int:
        calls.append(x)
        raise ValueError("nope")

    wf = nf.Workflow("bad").then(bad).then("after", lambda x: x).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "b-1", 1)
    _drain(store, [wf], n=1)
    status = client.status("b-1")
    assert status.state == "failed" and status.error.task_id == "bad" and status.error.type == "ValueError"
    assert len(calls) == 2  # the retry policy applies inside the worker


def test_events_carry_the_worker(store) -> None:  # type: ignore[no-untyped-def]
    wf = nf.Workflow("ev").then("a", lambda x: x + 1).map("m", lambda i: i).build()
    nf.WorkflowClient(store).submit(wf, "e-1", 1)
    seen = []
    worker = nf.PooledWorker("named", store, [wf], poll_interval=0.05)
    worker.subscribe(seen.append)
    worker.run(until_idle=True)
    finished = [e for e in seen if type(e).__name__ == "TaskFinished"]
    assert finished and {e.worker for e in finished} == {"named"}
    assert store.get_record("e-1", "a").worker == "named"


def test_unknown_shape_is_left_alone(store) -> None:  # type: ignore[no-untyped-def]
    wf = nf.Workflow("shape").then("a", lambda x: x).build()
    other = nf.Workflow("shape").then("a", lambda x: x).then("b", lambda x: x).build()
    nf.WorkflowClient(store).submit(other, "x-1", 1)
    nf.PooledWorker("w", store, [wf], poll_interval=0.05).run(until_idle=True)
    assert nf.WorkflowClient(store).status("x-1").state == "pending"


def test_worker_validates_options() -> None:
    store = nf.InMemoryBackend()
    wf = nf.Workflow("v").then(lambda x: x).build()
    with pytest.raises(nf.ConfigurationError):
        nf.PooledWorker("", store, [wf])
    with pytest.raises(nf.ConfigurationError):
        nf.PooledWorker("w", store, [wf], concurrency=0)
    with pytest.raises(nf.ConfigurationError):
        nf.PooledWorker("w", store, [])
    with pytest.raises(nf.ConfigurationError):
        nf.PooledWorker("w", store, [wf], claim_ttl="soon")


def test_workers_sharing_instances_run_every_item_once(store) -> None:  # type: ignore[no-untyped-def]
    """Workers pick units from views they keep between commits (a claim is refused when
    the unit's record changed since): every item still runs exactly once."""
    calls: collections.Counter[tuple[int, int]] = collections.Counter()
    lock = threading.Lock()

    def work(pair: tuple[int, int]) -> int:
        with lock:
            calls[pair] += 1
        return pair[0] * 1000 + pair[1]

    wf = nf.Workflow("share").then("pairs", lambda k: [(k, i) for i in range(120)]).map("work", work).build()
    client = nf.WorkflowClient(store)
    for k in range(6):
        client.submit(wf, f"s-{k}", k)
    workers = _drain(store, [wf], n=3)
    for k in range(6):
        assert client.status(f"s-{k}").output == [k * 1000 + i for i in range(120)]
    assert set(calls.values()) == {1} and len(calls) == 6 * 120
    assert sum(w.stats["committed"] for w in workers) == sum(w.stats["units"] for w in workers)


def test_a_busy_worker_takes_up_an_instance_submitted_meanwhile(store) -> None:  # type: ignore[no-untyped-def]
    """A worker with a unit in hand lists the store less often, but still finds new
    work for its free slot."""
    gate, entered = threading.Event(), threading.Event()

    def hold(x: int) -> int:
        entered.set()
        assert gate.wait(60)
        return x

    slow = nf.Workflow("slow").then("hold", hold).build()
    fast = nf.Workflow("fast").then("inc", lambda x: x + 1).build()
    client = nf.WorkflowClient(store)
    client.submit(slow, "slow-1", 1)
    handle = nf.PooledWorker("w", store, [slow, fast], poll_interval=0.02, concurrency=2).start()
    try:
        assert entered.wait(30)
        client.submit(fast, "fast-1", 41)
        deadline = time.time() + 30
        while client.status("fast-1").state != "completed" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("fast-1").output == 42
        assert client.status("slow-1").state == "running"  # the first unit is still in hand
        gate.set()
        while client.status("slow-1").state != "completed" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("slow-1").output == 1
    finally:
        gate.set()
        handle.shutdown(timeout=30)


def test_a_kept_view_saying_done_is_checked_against_the_stored_step_records(store) -> None:  # type: ignore[no-untyped-def]
    """The worker marks an instance completed from its kept view only once the step
    records stored now agree: a record deleted by someone else sends it to a re-read."""
    wf = nf.Workflow("many").then("items", lambda n: list(range(n))).map("m", lambda i: i).then("total", sum).build()
    client = nf.WorkflowClient(store)
    client.submit(wf, "many-1", 40)
    _drain(store, [wf], n=1)
    assert client.status("many-1").output == sum(range(40))
    worker = nf.PooledWorker("w", store, [wf])
    meta = store.load_instance("many-1")
    view, current = worker._view(meta, wf, current=True)
    assert current and worker._done(view.plan) and worker._done_as_stored(view)
    store.delete_records("many-1", ["total"])
    assert worker._done(view.plan)  # the kept view still says done ...
    assert not worker._done_as_stored(view)  # ... the store does not


def test_claim_order_walks_on_from_the_cursor_else_splits_the_longest_free_run() -> None:
    keys = [f"u{i}" for i in range(8)]
    assert claim_order(keys, set(), None, 0.5) == [4, 5, 6, 7, 0, 1, 2, 3]  # nothing known taken: from `start`
    assert claim_order(keys, {"u0", "u1"}, "u5", 0.0) == [5, 6, 7, 2, 3, 4]  # the cursor's unit is free: walk on
    # the cursor's unit is taken (another worker got there): the middle of the longest free run
    assert claim_order(keys, {"u0", "u5"}, "u5", 0.0) == [3, 4, 6, 7, 1, 2]
    assert claim_order(keys, {"u2", "u3"}, None, 0.9) == [7, 0, 1, 4, 5, 6]
    assert claim_order(keys, set(keys), None, 0.3) == []
    assert claim_order([], set(), None, 0.3) == []
    assert place("w0", "i-1") == place("w0", "i-1") != place("w1", "i-1")
    assert 0.0 <= place("w0") < 1.0


def test_two_workers_split_one_instance_with_few_refused_claims(store) -> None:  # type: ignore[no-untyped-def]
    """Two workers in one instance take apart runs of its units (claim_order) and stop
    claiming from a kept view at the first refusal, instead of turning up, claim after
    claim, at units the other one finished since (each refusal a write transaction)."""
    calls: collections.Counter[tuple[int, int]] = collections.Counter()
    lock = threading.Lock()

    def work(pair: tuple[int, int]) -> int:
        time.sleep(0.0005)  # long enough for both workers to be in one instance at once
        with lock:
            calls[pair] += 1
        return pair[1]

    wf = nf.Workflow("halves").then("pairs", lambda k: [(k, i) for i in range(320)]).map("work", work).build()
    client = nf.WorkflowClient(store)
    for k in range(3):
        client.submit(wf, f"h-{k}", k)  # 16 chunks of 20 items each
    workers = _drain(store, [wf], n=2)
    for k in range(3):
        assert client.status(f"h-{k}").output == list(range(320))
    assert set(calls.values()) == {1} and len(calls) == 3 * 320
    units = [w.stats["units"] for w in workers]
    assert min(units) >= 8, units  # both took part (3 x (16 chunks + the map's own record) units in all)
    refused = sum(w.stats["refused"] for w in workers)
    assert refused <= 10, [w.stats for w in workers]


def test_an_instance_held_shared_is_not_probed_for_a_runner_lock(store) -> None:  # type: ignore[no-untyped-def]
    """While a worker has units of an instance in hand it holds the instance shared, so
    no runner can hold it locked: its scans skip the lock probe of that instance (but
    still probe the instances it does not hold)."""
    gate, entered = threading.Event(), threading.Event()

    def hold(x: int) -> int:
        entered.set()
        assert gate.wait(60)
        return x

    slow = nf.Workflow("slow").then("hold", hold).then("after", lambda x: x).build()
    client = nf.WorkflowClient(store)
    client.submit(slow, "slow-1", 1)
    probes: collections.Counter[str] = collections.Counter()
    is_locked = store.is_locked

    def counting(iid: str) -> bool:
        probes[iid] += 1
        return is_locked(iid)

    store.is_locked = counting
    worker = nf.PooledWorker("w", store, [slow], poll_interval=0.02, concurrency=2)
    handle = worker.start()
    try:
        assert entered.wait(30)
        time.sleep(0.05)  # the unit's claim and share are in place once its body runs
        before = probes["slow-1"]
        time.sleep(0.2)  # about ten scans with a free slot (poll_interval 0.02 s) ...
        assert worker.stats["units"] == 1
        assert probes["slow-1"] == before  # ... and no probe of the instance held shared
        deadline = time.time() + 30
        gate.set()
        while client.status("slow-1").state != "completed" and time.time() < deadline:
            time.sleep(0.02)
        assert client.status("slow-1").output == 1
        assert before >= 1  # probed before its first unit was claimed
    finally:
        gate.set()
        handle.shutdown(timeout=30)
