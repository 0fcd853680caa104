"""Work that runs on one gateway at a time across gateways sharing a store.

A connector trigger's consumer must run once across the cluster: a broker that fans a message
out to every subscriber (MQTT, NATS core, Redis pub/sub, PostgreSQL LISTEN) would otherwise
deliver it once per gateway. The gateway that holds the trigger's lease (squall.store.leases)
runs the consumer and renews the lease every third of its life; the others stand by and take the
lease once it expires, so a dead gateway's triggers move within ``ttl_s``. A gateway that cannot
renew in time stops its consumer before the lease can pass to another.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from squall.store import leases
from squall.store.db import Database

log = logging.getLogger("squall.events.leases")

TTL_S = 15.0


class Leases:
    def __init__(self, db: Database, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock
        self.holder = uuid.uuid4().hex  # this gateway process

    async def _try(self, name: str) -> bool:
        now = self.clock()
        try:
            return await self.db.run(lambda c: leases.acquire(c, name, self.holder, now=now,
                                                              ttl_s=self.ttl_s))
        except Exception as exc:  # the store is down: we cannot know, so we do not hold it
            log.warning("lease %s: cannot reach the store (%s)", name, exc)
            return False

    async def run_held(self, name: str, work: Callable[[], Coroutine[Any, Any, None]],
                       standby: Callable[[], None]) -> None:
        """Forever: wait to hold ``name``, run ``work`` while it stays held, stop it as soon
        as a renewal fails (before the lease can expire and pass on)."""
        try:
            await self._run_held(name, work, standby)
        except asyncio.CancelledError:  # the trigger was removed or the gateway stops
            await asyncio.shield(self.release(name))  # another gateway takes over at once
            raise

    async def _run_held(self, name: str, work: Callable[[], Coroutine[Any, Any, None]],
                        standby: Callable[[], None]) -> None:
        while True:
            if not await self._try(name):
                standby()
                await asyncio.sleep(self.ttl_s / 3)
                continue
            task = asyncio.get_running_loop().create_task(work())
            try:
                while not task.done():
                    done, _ = await asyncio.wait({task}, timeout=self.ttl_s / 3)
                    if not done and not await self._try(name):
                        log.warning("lease %s lost: stopping its work here", name)
                        break
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def release(self, name: str) -> None:
        try:
            await self.db.run(lambda c: leases.release(c, name, self.holder))
        except Exception:  # it expires on its own
            pass
