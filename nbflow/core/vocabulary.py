"""The engine's words: kinds of step, how a step receives its inputs, and what a run
plans for each step.

Each is a ``StrEnum`` whose values are the strings nbflow has always stored and shown
(shape lines and definition hashes, ``RunStarted.kinds``, ``runner.plan()``), so
``NodeKind.MAP == "map"`` and stored data and hashes are unchanged; a word's ``repr``
is its string's, so a plan prints as ``{'a': 'run'}`` as it always did. Comparing with
the enum instead of a literal lets a type checker and a reader find every place that
handles one kind (a misspelt literal would silently never match).

The run states are :class:`nbflow.core.status.RunState`.
"""

from __future__ import annotations

import enum

__all__ = ["NodeKind", "PassMode", "PlanStep", "Word"]


class Word(enum.StrEnum):
    """A StrEnum that reads as its string (``repr(PlanStep.RUN) == "'run'"``)."""

    def __repr__(self) -> str:
        return repr(self.value)


class NodeKind(Word):
    """What a step of a workflow does (``Node.kind``).

    >>> NodeKind("map") is NodeKind.MAP, NodeKind.MAP == "map", f"{NodeKind.MAP}"
    (True, True, 'map')
    """

    TASK = "task"  # a plain task; fork branches and joins are tasks too
    ROUTE = "route"  # a task whose output picks the branch that runs
    MERGE = "merge"  # where a route's branches meet: passes on the branch that ran
    COLLECT = "collect"  # gathers the outputs of a composed child workflow's final tasks
    LOOP = "loop"
    MAP = "map"
    DELAY = "delay"
    SIGNAL = "signal"

    @property
    def waits(self) -> bool:
        """A step that waits (a delay or a signal) and holds no work: a pause or a
        parked run stops it at once."""
        return self in (NodeKind.DELAY, NodeKind.SIGNAL)


class PassMode(Word):
    """How a step receives what its inputs produced (``Node.mode``)."""

    VALUE = "value"  # the one input, as the only positional argument
    DICT = "dict"  # {name: value} as the only positional argument (a join)
    KWARGS = "kwargs"  # name=value keyword arguments (a notebook task, a join by names)
    NONE = "none"  # no arguments
    FIRST = "first"  # a merge: the input of the branch that ran


class PlanStep(Word):
    """What a (re)run does with a step, decided before anything runs."""

    RESTORE = "restore"  # a valid checkpoint: its output is reused
    STALE = "stale"  # a checkpoint whose code (or an upstream step) changed: runs again
    RUN = "run"  # no checkpoint yet
    SKIP = "skip"  # a route chose another branch
