"""Executing workflows: runner, scheduler, events, client. Never imports ``jupyter``."""
