"""The tables and functions of a PostgreSQL store, and the version that names them.

Every store-level value is data only, as on disk (``records.py``): instance meta, task
state and control requests are JSON text, a task record is ``encode_record``'s bytes
(JSON header + inline payload). A payload too large to keep inline is split into
``nbflow_chunks`` rows named like a disk blob (``<32 hex>.bin``), written in the same
transaction as the record that names them.

The write paths that must be atomic and fast are functions (one round trip each):

* ``nbflow_put`` — write records of an instance and a new change stamp, refusing a
  handle that knew another generation (SQLSTATE ``NBSTL``); returns the generation
  and the pending control request, so a runner learns of a cancel at no extra cost.
* ``nbflow_claim`` / ``nbflow_commit_claimed`` — claims on the server's clock. Both
  take a transaction-scoped advisory lock on (instance, step) first; statements after
  it see everything committed before, so a take-over can never miss the commit of the
  worker it replaces, and a commit can never land after a take-over.
* ``pg_notify('nbflow_work', instance)`` — sent by the commits that can make a unit
  ready for a PooledWorker (``postgres_notices.py``).
* ``nbflow_ready`` — the ready index: one row per instance in a state a PooledWorker
  may find work in (pending, running, waiting, awaiting a signal), written and deleted
  by ``save_instance`` in its transaction. What is ready inside an instance is decided
  by the DAG, so by the worker in Python; the row only says *when to look*: every
  write that can make a unit ready (a claimed commit, a released claim, a signal, a
  control request, deleted records) moves its ``version`` and makes it due now, in the
  same transaction, and a worker that looked and found nothing to claim puts it off
  (``SETTLE_READY``) — only if the version is still the one it read, and never past
  the expiry of a claim on the instance (a dead worker's unit is claimable again then).
  A free worker finds work with one statement (``READY_INSTANCES``) instead of reading
  every instance.
* ``nbflow_instances.lease`` — the token of the runner lease that took the instance
  last, written when its advisory lock is taken. A runner's writes carry its token and
  are refused (SQLSTATE ``NBLCK``) under another, in the statement that writes: the
  advisory lock alone leaves a gap after a cut session, before the runner's process
  notices, in which another runner takes the lock while the first still writes.

The schema version is one row of ``nbflow_schema``. A store of version 2 (before the
ready index) is upgraded in one transaction (``UPGRADES``: the table is added and
filled from the store index, the functions replaced); a store of any other version is
refused (``StoreSchemaError``) rather than changed.
"""

from __future__ import annotations

__all__ = [
    "CHECK_VERSION",
    "CREATE",
    "LEASE_TAKEN_SQLSTATE",
    "LIST_SUMMARIES",
    "PUT_ONE",
    "READY_DELETE",
    "READY_INSTANCES",
    "READY_TOUCH",
    "READY_UPSERT",
    "SCHEMA_LOCK",
    "SCHEMA_VERSION",
    "SETTLE_READY",
    "STALE_SQLSTATE",
    "UPGRADES",
]

SCHEMA_VERSION = 3
STALE_SQLSTATE = "NBSTL"  # raised by nbflow_lock_instance; message: "cleared" or "restarted"
# raised by nbflow_lock_instance when the instance's lease row names another runner's lease
LEASE_TAKEN_SQLSTATE = "NBLCK"
SCHEMA_LOCK = 0x6E62_666C_6F77  # advisory key held while the schema is created ("nbflow")

CHECK_VERSION = "SELECT version FROM nbflow_schema"

# The index rows a listing asks for, with the finished steps of each instance that is
# not completed counted now (an index lookup per step of a live instance).
LIST_SUMMARIES = """
SELECT x.instance_id, x.summary,
    CASE WHEN x.state = 'completed' THEN NULL ELSE (
        SELECT count(*) FROM nbflow_records r
        WHERE r.instance_id = x.instance_id AND r.task_id = ANY(x.steps)
          AND r.generation IN ('', (SELECT coalesce(i.generation, '') FROM nbflow_instances i
                                    WHERE i.instance_id = x.instance_id))
    ) END
FROM nbflow_index x
WHERE (%(w)s::text IS NULL OR x.workflow = %(w)s) AND (%(s)s::text IS NULL OR x.state = %(s)s)
ORDER BY x.instance_id
"""

# The common checkpoint — one record, inline, by a handle that knows the generation — as
# one plain statement (no function call, no arrays): the UPDATE locks the instance row,
# checks the generation and moves the change stamp, and the upsert writes the record.
# It replaces only a record without chunk rows (a record written inline before, or
# none): a task whose output was chunked before has chunks to drop, which the upsert
# leaves to ``nbflow_put`` (so the statement reads no chunk table on the common path).
# No row back means the generation moved, the instance is gone, another runner's lease
# has it, or the record had chunks, and the caller takes ``nbflow_put``, which says
# which or does it (the stamp this statement moved then moves again: only a change).
PUT_ONE = """
WITH inst AS (
    UPDATE nbflow_instances SET stamp = nextval('nbflow_stamps')
    WHERE instance_id = %(iid)s AND generation = %(gen)s
      AND (%(lease)s::text IS NULL OR lease IS NULL OR lease = %(lease)s)
    RETURNING generation, control
), stored AS (
    INSERT INTO nbflow_records (instance_id, task_id, generation, finished_at, blob, data)
    SELECT %(iid)s, %(tid)s, inst.generation, %(fin)s, NULL, %(data)s FROM inst
    ON CONFLICT (instance_id, task_id) DO UPDATE
        SET generation = excluded.generation, finished_at = excluded.finished_at,
            blob = excluded.blob, data = excluded.data
        WHERE nbflow_records.blob IS NULL
    RETURNING 1
)
SELECT generation, control FROM inst, stored
"""

_TABLES = r"""
CREATE TABLE nbflow_schema (version integer NOT NULL, written_by text NOT NULL);

CREATE SEQUENCE nbflow_stamps;

-- One row per instance id that holds anything: meta NULL means records only so far.
CREATE TABLE nbflow_instances (
    instance_id text PRIMARY KEY,
    meta text,
    generation text,
    stamp bigint,
    control text,
    -- the token of the runner lease that took the instance last (see below)
    lease text
);

-- The store index: what a listing shows, one row per instance with meta. ``steps``
-- (the ids of the instance's shape) lets a listing count a running instance's
-- finished steps as they are now, not as of its last state change.
CREATE TABLE nbflow_index (
    instance_id text PRIMARY KEY,
    workflow text NOT NULL,
    state text NOT NULL,
    summary text NOT NULL,
    steps text[] NOT NULL DEFAULT '{}'
);
CREATE INDEX nbflow_index_by_workflow ON nbflow_index (workflow, state);

CREATE TABLE nbflow_records (
    instance_id text NOT NULL,
    task_id text NOT NULL,
    generation text NOT NULL,
    finished_at double precision NOT NULL,
    blob text,
    data bytea NOT NULL,
    PRIMARY KEY (instance_id, task_id)
);
-- Payloads are codec output (often incompressible): store them as they are.
ALTER TABLE nbflow_records ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE nbflow_chunks (
    instance_id text NOT NULL,
    blob text NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (instance_id, blob, seq)
);
ALTER TABLE nbflow_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE nbflow_task_states (
    instance_id text NOT NULL,
    task_id text NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (instance_id, task_id)
);

CREATE TABLE nbflow_signals (
    id bigserial PRIMARY KEY,
    uid text NOT NULL UNIQUE,
    instance_id text NOT NULL,
    name text NOT NULL,
    payload bytea NOT NULL
);
CREATE INDEX nbflow_signals_queue ON nbflow_signals (instance_id, name, id);

CREATE TABLE nbflow_claims (
    instance_id text NOT NULL,
    task_id text NOT NULL,
    worker text NOT NULL,
    token text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (instance_id, task_id)
);

-- Who holds an instance's exclusive lock (the lock itself is an advisory lock).
CREATE TABLE nbflow_holders (instance_id text PRIMARY KEY, holder text NOT NULL);
"""

# The ready index (see the module docstring). ``queued`` keeps the order of submission
# (oldest first, as instances finish in order); ``version`` moves at every write that
# may make a unit ready; ``not_before`` is when a worker should look again.
_READY_TABLE = r"""
CREATE TABLE nbflow_ready (
    instance_id text PRIMARY KEY,
    workflow text NOT NULL,
    state text NOT NULL,
    queued bigint NOT NULL,
    version bigint NOT NULL,
    not_before timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE INDEX nbflow_ready_due ON nbflow_ready (workflow, not_before);
"""

_FUNCTIONS = r"""
-- Lock the instance row (creating it if needed) and check the caller's generation and,
-- for a runner, its lease: a runner whose lock was taken by another while its session
-- was cut finds another token in ``lease`` and may not write.
CREATE OR REPLACE FUNCTION nbflow_lock_instance(
    p_iid text, p_known text, p_lease text, OUT generation text, OUT control text)
LANGUAGE plpgsql AS $$
DECLARE
    held text;
BEGIN
    SELECT i.generation, i.control, i.lease INTO generation, control, held
        FROM nbflow_instances i WHERE i.instance_id = p_iid FOR UPDATE;
    IF p_lease IS NOT NULL AND held IS NOT NULL AND held <> p_lease THEN
        RAISE EXCEPTION 'lease taken' USING ERRCODE = 'NBLCK';
    END IF;
    IF NOT FOUND THEN
        IF p_known IS NOT NULL THEN
            RAISE EXCEPTION 'cleared' USING ERRCODE = 'NBSTL';
        END IF;
        INSERT INTO nbflow_instances (instance_id) VALUES (p_iid) ON CONFLICT (instance_id) DO NOTHING;
        SELECT i.generation, i.control INTO generation, control
            FROM nbflow_instances i WHERE i.instance_id = p_iid FOR UPDATE;
    END IF;
    IF p_known IS NOT NULL AND generation IS DISTINCT FROM p_known THEN
        RAISE EXCEPTION '%', CASE WHEN generation IS NULL THEN 'cleared' ELSE 'restarted' END USING ERRCODE = 'NBSTL';
    END IF;
    generation := coalesce(generation, '');
END $$;

CREATE OR REPLACE FUNCTION nbflow_put(
    p_iid text, p_known text, p_lease text, p_tids text[], p_finished double precision[], p_blobs text[], p_datas bytea[],
    OUT generation text, OUT control text)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT l.generation, l.control INTO generation, control FROM nbflow_lock_instance(p_iid, p_known, p_lease) l;
    -- the chunks of the outputs these records replace (never of one they write: a call
    -- repeated after a lost answer writes the same blob again)
    DELETE FROM nbflow_chunks c USING nbflow_records r
        WHERE r.instance_id = p_iid AND r.task_id = ANY(p_tids) AND r.blob IS NOT NULL
          AND c.instance_id = p_iid AND c.blob = r.blob
          AND NOT EXISTS (SELECT 1 FROM unnest(p_blobs) AS b(name) WHERE b.name = r.blob);
    INSERT INTO nbflow_records (instance_id, task_id, generation, finished_at, blob, data)
        SELECT p_iid, t.tid, generation, t.fin, t.blob, t.data
        FROM unnest(p_tids, p_finished, p_blobs, p_datas) AS t(tid, fin, blob, data)
        ON CONFLICT (instance_id, task_id) DO UPDATE
            SET generation = excluded.generation, finished_at = excluded.finished_at,
                blob = excluded.blob, data = excluded.data;
    UPDATE nbflow_instances SET stamp = nextval('nbflow_stamps') WHERE instance_id = p_iid;
END $$;

CREATE OR REPLACE FUNCTION nbflow_claim(
    p_iid text, p_tid text, p_worker text, p_token text, p_ttl double precision, p_seen double precision)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    held text;
    live boolean;
    version double precision;
BEGIN
    PERFORM pg_advisory_xact_lock(1, hashtext(p_iid || E'\x1f' || p_tid));
    SELECT c.token, c.expires_at > clock_timestamp() INTO held, live
        FROM nbflow_claims c WHERE c.instance_id = p_iid AND c.task_id = p_tid;
    IF FOUND AND live THEN
        RETURN CASE WHEN held = p_token THEN p_token END;  -- a retried call gets its own claim back
    END IF;
    SELECT r.finished_at INTO version FROM nbflow_records r WHERE r.instance_id = p_iid AND r.task_id = p_tid;
    IF version IS DISTINCT FROM p_seen THEN
        RETURN NULL;
    END IF;
    INSERT INTO nbflow_claims (instance_id, task_id, worker, token, expires_at)
        VALUES (p_iid, p_tid, p_worker, p_token, clock_timestamp() + make_interval(secs => p_ttl))
        ON CONFLICT (instance_id, task_id) DO UPDATE
            SET worker = excluded.worker, token = excluded.token, expires_at = excluded.expires_at;
    RETURN p_token;
END $$;

CREATE OR REPLACE FUNCTION nbflow_commit_claimed(
    p_iid text, p_claim text, p_token text, p_release boolean, p_known text,
    p_tids text[], p_finished double precision[], p_blobs text[], p_datas bytea[],
    OUT ok boolean, OUT generation text, OUT control text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1, hashtext(p_iid || E'\x1f' || p_claim));
    PERFORM 1 FROM nbflow_claims c WHERE c.instance_id = p_iid AND c.task_id = p_claim AND c.token = p_token;
    IF NOT FOUND THEN
        -- not (or no longer) ours; unless this very commit landed before (a call repeated
        -- after a lost answer, its claim released with it): the same bytes are stored
        SELECT count(*) = cardinality(p_tids) INTO ok
            FROM nbflow_records r JOIN unnest(p_tids, p_datas) AS t(tid, data)
                ON r.instance_id = p_iid AND r.task_id = t.tid AND r.data = t.data;
        IF ok THEN
            SELECT i.generation, i.control INTO generation, control
                FROM nbflow_instances i WHERE i.instance_id = p_iid;
        END IF;
        RETURN;
    END IF;
    SELECT p.generation, p.control INTO generation, control
        FROM nbflow_put(p_iid, p_known, NULL, p_tids, p_finished, p_blobs, p_datas) p;
    IF p_release THEN
        DELETE FROM nbflow_claims c WHERE c.instance_id = p_iid AND c.task_id = p_claim;
    END IF;
    -- a unit is done: what depends on it may be ready, so the instance is due now
    UPDATE nbflow_ready SET version = nextval('nbflow_stamps'), not_before = '-infinity' WHERE instance_id = p_iid;
    PERFORM pg_notify('nbflow_work', p_iid);  -- and idle workers look again
    ok := true;
END $$;

CREATE OR REPLACE FUNCTION nbflow_release_claim(p_iid text, p_tid text, p_token text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM nbflow_claims c WHERE c.instance_id = p_iid AND c.task_id = p_tid AND c.token = p_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- the unit is free for another worker: due now
    UPDATE nbflow_ready SET version = nextval('nbflow_stamps'), not_before = '-infinity' WHERE instance_id = p_iid;
    PERFORM pg_notify('nbflow_work', p_iid);
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION nbflow_delete_instance(p_iid text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    had boolean;
BEGIN
    SELECT i.meta IS NOT NULL INTO had FROM nbflow_instances i WHERE i.instance_id = p_iid FOR UPDATE;
    DELETE FROM nbflow_chunks WHERE instance_id = p_iid;
    DELETE FROM nbflow_records WHERE instance_id = p_iid;
    DELETE FROM nbflow_task_states WHERE instance_id = p_iid;
    DELETE FROM nbflow_signals WHERE instance_id = p_iid;
    DELETE FROM nbflow_claims WHERE instance_id = p_iid;
    DELETE FROM nbflow_index WHERE instance_id = p_iid;
    DELETE FROM nbflow_ready WHERE instance_id = p_iid;
    DELETE FROM nbflow_instances WHERE instance_id = p_iid;
    RETURN coalesce(had, false);
END $$;
"""

CREATE = _TABLES + _READY_TABLE + _FUNCTIONS

# How to bring a store of an older version to SCHEMA_VERSION, by the version found: run
# in the schema-creating transaction, under SCHEMA_LOCK, with the new version written
# after it. A version 2 store gets the ready index, filled with every instance a worker
# may find work in (due at once: the first look settles each), and the functions that
# keep it.
UPGRADES = {
    2: _READY_TABLE
    + """
INSERT INTO nbflow_ready (instance_id, workflow, state, queued, version)
    SELECT x.instance_id, x.workflow, x.state, nextval('nbflow_stamps'), nextval('nbflow_stamps')
    FROM nbflow_index x WHERE x.state IN ('pending', 'running', 'waiting', 'awaiting_signal')
    ORDER BY x.instance_id;
"""
    + _FUNCTIONS,
}

# save_instance, in its transaction: an instance a worker may find work in is due now
# (a new one queued last); any other leaves the index.
READY_UPSERT = """
INSERT INTO nbflow_ready (instance_id, workflow, state, queued, version)
VALUES (%(iid)s, %(w)s, %(s)s, nextval('nbflow_stamps'), nextval('nbflow_stamps'))
ON CONFLICT (instance_id) DO UPDATE
    SET workflow = excluded.workflow, state = excluded.state, version = excluded.version, not_before = '-infinity'
"""
READY_DELETE = "DELETE FROM nbflow_ready WHERE instance_id = %(iid)s"

# A write that may make a unit ready (in the same statement or transaction as it).
READY_TOUCH = (
    "UPDATE nbflow_ready SET version = nextval('nbflow_stamps'), not_before = '-infinity' WHERE instance_id = %s"
)

# What a free worker reads instead of every instance: the due instances of its
# workflows, oldest first, and whether any of them (due or not; none of those it skips)
# is pending, running or waiting for a delay (a worker told to stop when idle keeps
# going then).
READY_INSTANCES = """
SELECT EXISTS (SELECT 1 FROM nbflow_ready b
        WHERE b.workflow = ANY(%(w)s) AND b.state = ANY(%(busy)s) AND b.instance_id <> ALL(%(skip)s)),
    coalesce(array_agg(d.instance_id ORDER BY d.queued), '{}'), coalesce(array_agg(d.version ORDER BY d.queued), '{}')
FROM (
    SELECT r.instance_id, r.version, r.queued FROM nbflow_ready r
    WHERE r.workflow = ANY(%(w)s) AND r.not_before <= clock_timestamp() AND r.instance_id <> ALL(%(skip)s)
    ORDER BY r.queued LIMIT %(n)s
) d
"""

# A worker found nothing to claim in an instance at ``version``: look again at ``until``
# (NULL: only after a change), or earlier when a claim on it expires (its holder may be
# dead), but not before ``least`` seconds from now (a claim that expired already — one
# left behind by a holder that died after its commit — brings it back once a poll
# interval, not at every scan). Refused when the version moved since it was read (a
# change the worker did not see), or when the signal the instance awaits is already
# buffered.
SETTLE_READY = """
UPDATE nbflow_ready SET not_before = greatest(
    clock_timestamp() + make_interval(secs => %(least)s),
    least(coalesce(to_timestamp(%(until)s::float8), 'infinity'),
          coalesce((SELECT min(c.expires_at) FROM nbflow_claims c WHERE c.instance_id = %(iid)s), 'infinity')))
WHERE instance_id = %(iid)s AND version = %(v)s
  AND (%(sig)s::text IS NULL OR NOT EXISTS (
      SELECT 1 FROM nbflow_signals g WHERE g.instance_id = %(iid)s AND g.name = %(sig)s))
"""
