"""Finding an instance from what a user typed, and the one word for where it stands.

Users think in workflow names (``sales``); the store keys instances by id
(``sales-56c6c4e0e7``: the name plus a digest of the inputs). :func:`resolve_instance`
is the one place that turns either into an instance: an instance id wins; else the
name's instance; with several, ``AmbiguousInstanceError`` lists them (newest first)
unless ``latest=True`` asks for the most recent. The client, the ``nbflow`` command
and the ``%workflow`` magics all resolve through it.

:func:`live_state` is the state every front end shows: the stored one, except that an
instance stored as *running* that nobody runs any more — no runner holds its lock and
no worker holds a live claim — is ``interrupted`` (its process died), which is what a
resume will treat it as.
"""

from __future__ import annotations

import time

from nbflow.core.errors import AmbiguousInstanceError, UnknownInstanceError
from nbflow.core.status import RunState
from nbflow.store.base import Backend, InstanceMeta, validate_instance_id

__all__ = ["live_state", "resolve_instance"]


def resolve_instance(backend: Backend, ref: str, *, latest: bool = False) -> InstanceMeta:
    """The instance ``ref`` names: an instance id, or a workflow name (its only
    instance, or with ``latest`` its most recently updated one).

    Raises ``UnknownInstanceError`` when neither exists and ``AmbiguousInstanceError``
    (listing id, inputs digest, state and last update of each) when the name has
    several instances and ``latest`` is false.

    >>> from nbflow import InMemoryBackend, CheckpointingRunner, Workflow
    >>> backend = InMemoryBackend()
    >>> wf = Workflow("sales").then("clean", lambda x: x).build()
    >>> _ = CheckpointingRunner(backend).run(wf, "sales-1", 1)
    >>> resolve_instance(backend, "sales").instance_id
    'sales-1'
    """
    validate_instance_id(ref)
    meta = backend.load_instance(ref)
    if meta is not None:
        return meta
    listed = sorted(backend.list_summaries(workflow=ref), key=lambda row: -row.updated_at)  # the store index
    if len(listed) == 1 or (listed and latest):
        meta = backend.load_instance(listed[0].instance_id)
        if meta is not None:
            return meta
    named = [m for m in (backend.load_instance(row.instance_id) for row in listed) if m is not None]
    if not named:
        raise UnknownInstanceError(ref, repr(backend))
    if len(named) == 1 or latest:
        return named[0]
    rows = [(m.instance_id, m.input_digest, live_state(backend, m), m.updated_at) for m in named]
    raise AmbiguousInstanceError(ref, rows, repr(backend))


def live_state(backend: Backend, meta: InstanceMeta) -> str:
    """The state to show for ``meta``: ``interrupted`` for a *running* instance that no
    runner and no worker holds (a dead process), else the stored state."""
    if meta.state != RunState.RUNNING.value:
        return meta.state
    if backend.is_locked(meta.instance_id):
        return meta.state
    now = time.time()
    if any(claim.expires_at > now for claim in backend.get_claims(meta.instance_id).values()):
        return meta.state
    return RunState.INTERRUPTED.value
