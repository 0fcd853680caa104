"""Events: the durable async queue, retries, dead letters, destinations, schedules, webhooks,
and the trigger manager that runs event-source connectors. ``EventService`` is the entry point."""

from __future__ import annotations

from squall.events.service import EventService

__all__ = ["EventService"]
