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
* ``nbflow_instances.lease`` — the token of the runner lease that took the instance
  last, written when its advisory lock is taken. A runner's writes carry its token and
  are refused (SQLSTATE ``NBLCK``) under another, in the statement that writes: the
  advisory lock alone leaves a gap after a cut session, before the runner's process
  notices, in which another runner takes the lock while the first still writes.

The schema version is one row of ``nbflow_schema``; a store of another version is
refused (``StoreSchemaError``) rather than changed.
"""

from __future__ import annotations

__all__ = [
    "CHECK_VERSION",
    "CREATE",
    "LEASE_TAKEN_SQLSTATE",
    "LIST_SUMMARIES",
    "PUT_ONE",
    "SCHEMA_LOCK",
    "SCHEMA_VERSION",
    "STALE_SQLSTATE",
]

SCHEMA_VERSION = 2
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
# checks the generation and moves the change stamp; no row back means the generation
# moved, the instance is gone or another runner's lease has it, and the caller takes
# ``nbflow_put``, which says which.
PUT_ONE = """
WITH inst AS (
    UPDATE nbflow_instances SET stamp = nextval('nbflow_stamps')
    WHERE instance_id = %(iid)s AND generation = %(gen)s
      AND (%(lease)s::text IS NULL OR lease IS NULL OR lease = %(lease)s)
    RETURNING generation, control
), replaced AS (
    DELETE FROM nbflow_chunks c USING nbflow_records r, inst
    WHERE r.instance_id = %(iid)s AND r.task_id = %(tid)s AND r.blob IS NOT NULL
      AND c.instance_id = %(iid)s AND c.blob = r.blob
), stored AS (
    INSERT INTO nbflow_records (instance_id, task_id, generation, finished_at, blob, data)
    SELECT %(iid)s, %(tid)s, inst.generation, %(fin)s, NULL, %(data)s FROM inst
    ON CONFLICT (instance_id, task_id) DO UPDATE
        SET generation = excluded.generation, finished_at = excluded.finished_at,
            blob = excluded.blob, data = excluded.data
)
SELECT generation, control FROM inst
"""

CREATE = r"""
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

-- Lock the instance row (creating it if needed) and check the caller's generation and,
-- for a runner, its lease: a runner whose lock was taken by another while its session
-- was cut finds another token in ``lease`` and may not write.
CREATE FUNCTION nbflow_lock_instance(
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

CREATE FUNCTION nbflow_put(
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

CREATE FUNCTION nbflow_claim(
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

CREATE FUNCTION nbflow_commit_claimed(
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
    PERFORM pg_notify('nbflow_work', p_iid);  -- a unit is done: idle workers look again
    ok := true;
END $$;

CREATE FUNCTION nbflow_release_claim(p_iid text, p_tid text, p_token text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM nbflow_claims c WHERE c.instance_id = p_iid AND c.task_id = p_tid AND c.token = p_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('nbflow_work', p_iid);  -- the unit is free for another worker
    RETURN true;
END $$;

CREATE FUNCTION nbflow_delete_instance(p_iid text) RETURNS boolean LANGUAGE plpgsql AS $$
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
    DELETE FROM nbflow_instances WHERE instance_id = p_iid;
    RETURN coalesce(had, false);
END $$;
"""
