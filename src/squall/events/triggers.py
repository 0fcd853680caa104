"""The trigger manager: persists triggers, syncs the ones declared in squall.toml on deploy, runs
one supervised task per connector trigger, and keeps each trigger's status.

A trigger is {id, function, name, type, config, origin}; ``origin`` is "api" (created with the
API/CLI, left alone by deploys) or "toml" (declared as ``[[triggers]]``: created, updated and
removed on each deploy to match the file). Names are unique per function; a missing name
defaults to the function's name for a webhook and to ``<type>-<n>`` otherwise.

Connector trigger configs may carry ``batch_size`` (1..10000), ``batch_window_s`` (0..300) and
``concurrency`` (1..1000); the rest is the connector's own config, checked by its validator.
A connector task that raises is restarted with capped exponential backoff: a broken broker shows
up as status "error" in ``squall trigger ls`` and never takes the platform down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from squall.errors import BadRequest, Conflict, InvalidConfig, NotFound
from squall.events.delivery import make_deliver
from squall.events.retry import backoff_s
from squall.events.scheduler import parse_schedule
from squall.events.webhooks import validate_webhook_config
from squall.store import queue

if TYPE_CHECKING:
    from squall.events.connectors.base import Deliver, TriggerSpec
    from squall.events.service import EventService

log = logging.getLogger("squall.events.triggers")

BUILTIN_TYPES = ("schedule", "webhook", "storage")
CONNECTOR_TYPES = ("nats", "amqp", "mqtt", "redis", "postgres")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_BATCH_KEYS = ("batch_size", "batch_window_s", "concurrency")
_SECRET_KEYS = ("secret", "password", "token")
RESTART_CAP_S = 60.0


class UnknownTriggerType(BadRequest):
    code = "unknown_trigger_type"


def _number(config: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    v = config.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise InvalidConfig(f"{key} must be a number between {lo:g} and {hi:g}, got {v!r}",
                            details={"key": key})
    return float(v)


def validate_trigger(type: str, config: dict[str, Any]) -> None:
    """Check a trigger definition. Raises UnknownTriggerType, InvalidSchedule, InvalidConfig."""
    if not isinstance(config, dict):
        raise InvalidConfig("trigger config must be an object", details={"key": "config"})
    if type == "schedule":
        parse_schedule(config)
    elif type == "webhook":
        validate_webhook_config(config)
    elif type == "storage":  # fired by the object store's commits (squall.storage.events)
        from squall.storage.events import validate_storage_config

        validate_storage_config(config)
    elif type in CONNECTOR_TYPES:
        from squall.events.connectors import validate_trigger_config

        for key, lo, hi in (("batch_size", 1, 10000), ("batch_window_s", 0, 300),
                            ("concurrency", 1, 1000)):
            _number(config, key, lo, lo, hi)
        validate_trigger_config(type, {k: v for k, v in config.items() if k not in _BATCH_KEYS})
    else:
        raise UnknownTriggerType(f"unknown trigger type {type!r}; known:"
                                 f" {', '.join(BUILTIN_TYPES + CONNECTOR_TYPES)}")


def is_hook(type: str, config: dict[str, Any]) -> bool:
    """Served at /hooks/<name>: a webhook, or a storage trigger fed by a store's webhook."""
    return type == "webhook" or (type == "storage" and config.get("source") == "webhook")


def spec_of(t: dict[str, Any]) -> TriggerSpec:
    from squall.events.connectors.base import TriggerSpec

    c = t["config"]
    return TriggerSpec(id=t["id"], function=t["function"], type=t["type"],
                       config={k: v for k, v in c.items() if k not in _BATCH_KEYS},
                       batch_size=int(c.get("batch_size", 1)),
                       batch_window_s=float(c.get("batch_window_s", 0.0)),
                       concurrency=int(c.get("concurrency", 1)),
                       namespace=t.get("namespace", "default"))


def redact(config: dict[str, Any]) -> dict[str, Any]:
    """Config for display: secrets masked, credentials in URLs dropped."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k in _SECRET_KEYS and v:
            out[k] = "***"
        elif isinstance(v, str) and "://" in v and "@" in v:
            out[k] = re.sub(r"://[^/@]*@", "://***@", v)
        else:
            out[k] = v
    return out


def split_definition(body: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    """(type, name, config) from an API body ({type, name?, config?}) or a [[triggers]] table
    (type, name? and the config keys inline)."""
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise InvalidConfig("a trigger needs a string 'type'", details={"key": "type"})
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME_RE.match(name)):
        raise InvalidConfig(f"trigger name {name!r} must be 1..63 of a-z 0-9 '-' '_'",
                            details={"key": "name"})
    if "config" in body:
        extra = set(body) - {"type", "name", "config"}
        if extra:
            raise InvalidConfig(f"unknown keys {sorted(extra)} beside 'config'",
                                details={"key": sorted(extra)[0]})
        config = body["config"]
    else:
        config = {k: v for k, v in body.items() if k not in ("type", "name")}
    return body["type"], name, config


class TriggerManager:
    def __init__(self, service: EventService) -> None:
        self.svc = service
        self.status: dict[str, dict[str, Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._lock = asyncio.Lock()  # serialises create/update/delete (name checks, sync)
        self._seen: dict[str, float] = {}  # trigger id -> updated_at, for reconcile
        service.registry.add_listener(self._on_registry)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for t in await self.svc.db.run(queue.list_triggers):
                    self._start(t)
                await asyncio.Event().wait()  # keep the group open until cancelled
            finally:
                self._tg = None

    def _start(self, t: dict[str, Any]) -> None:
        self.status.setdefault(t["id"], {"state": "running", "detail": "", "since": time.time(),
                                         "last_fired": None, "last_error": None})
        if t["type"] == "schedule":
            self.svc.scheduler.changed.set()
        if self._tg is None or t["id"] in self._tasks:
            return
        if t["type"] in CONNECTOR_TYPES:
            spec = spec_of(t)
            found: tuple[TriggerSpec, Deliver] | None = (spec, make_deliver(self.svc, spec))
        elif t["type"] == "storage":  # another store's notifications through a broker
            from squall.storage.external import broker_connector

            found = broker_connector(self.svc, t)
        else:
            found = None
        if found is None:
            return
        self.set_status(t["id"], "connecting")
        self._tasks[t["id"]] = self._tg.create_task(self._supervise(*found),
                                                    name=f"trigger-{t['id']}")

    async def reconcile(self) -> None:
        """Follow triggers another gateway of a shared store created, changed or removed: run a
        consumer for each connector trigger (under its lease), stop the ones that are gone."""
        rows = {t["id"]: t for t in await self.svc.db.run(queue.list_triggers)}
        for tid, t in rows.items():
            seen = self._seen.get(tid)
            if seen is not None and seen != t["updated_at"] and tid in self._tasks:
                self._stop(t)  # its config changed: start over with the new one
            self._seen[tid] = t["updated_at"]
            self._start(t)
        for tid in [tid for tid in self._tasks if tid not in rows]:
            self._stop({"id": tid, "type": ""})
            self._seen.pop(tid, None)

    def _stop(self, t: dict[str, Any]) -> None:
        task = self._tasks.pop(t["id"], None)
        if task is not None:
            task.cancel()
        self.status.pop(t["id"], None)
        if t["type"] == "schedule":
            self.svc.scheduler.changed.set()

    async def _supervise(self, spec: TriggerSpec, deliver: Deliver) -> None:
        """Run the trigger's consumer, restarting it when it fails; with gateways sharing a
        store, only on the gateway that holds the trigger's lease (squall.events.leases)."""
        held = getattr(self.svc, "leases", None)
        if held is None:
            await self._consume(spec, deliver)
            return
        await held.run_held(f"trigger/{spec.id}", lambda: self._consume(spec, deliver),
                            lambda: self.set_status(spec.id, "standby",
                                                    "another gateway of this store runs it"))

    async def _consume(self, spec: TriggerSpec, deliver: Deliver) -> None:
        from squall.events.connectors import CONNECTORS

        failures = 0
        while True:
            def report(state: str, detail: str = "", _id: str = spec.id) -> None:
                self.set_status(_id, state, detail)
                self.svc.obs.metrics.connector_status(_id, spec.type, state)

            try:
                connector = CONNECTORS[spec.type](spec, deliver, report)
                await connector.run()
                detail = "connector stopped unexpectedly"
            except Exception as e:  # the contract says run() never raises; be safe anyway
                log.exception("connector %s (%s) crashed", spec.id, spec.type)
                detail = f"connector crashed: {type(e).__name__}: {e}"
            failures += 1
            wait = 1.0 + backoff_s(failures, base_s=1.0, cap_s=RESTART_CAP_S, rand=random.random())
            self.set_status(spec.id, "error", f"{detail}; restarting in {wait:.0f}s")
            await asyncio.sleep(wait)

    # --- status ------------------------------------------------------------------------------

    def set_status(self, trigger_id: str, state: str, detail: str = "") -> None:
        st = self.status.setdefault(trigger_id, {"last_fired": None, "last_error": None})
        if st.get("state") != state or st.get("detail") != detail:
            st.update(state=state, detail=detail, since=time.time())

    def note(self, trigger_id: str, error: str | None = None) -> None:
        """A firing/delivery happened (``error`` set when it failed)."""
        st = self.status.setdefault(trigger_id, {"state": "running", "detail": "",
                                                 "since": time.time(), "last_error": None})
        st["last_fired"] = time.time()
        if error is not None:
            st["last_error"] = error
            st["last_error_at"] = time.time()

    def view(self, t: dict[str, Any]) -> dict[str, Any]:
        out = {k: t[k] for k in ("id", "function", "name", "type", "origin", "created_at",
                                 "updated_at")}
        out["config"] = redact(t["config"])
        out["status"] = dict(self.status.get(t["id"], {"state": "stopped"}))
        return out

    # --- CRUD --------------------------------------------------------------------------------

    async def list(self, function: str | None = None,
                   namespace: str | None = "default") -> list[dict[str, Any]]:
        rows = await self.svc.db.run(lambda c: queue.list_triggers(c, function=function,
                                                                   namespace=namespace))
        return [self.view(t) for t in rows]

    async def create(self, function: str, body: dict[str, Any], origin: str = "api",
                     namespace: str = "default") -> dict[str, Any]:
        self.svc.record(function, namespace)
        type_, name, config = split_definition(body)
        validate_trigger(type_, config)
        config = await self.svc.seal_trigger_secrets(namespace, function, name or type_, config)
        async with self._lock:
            t = await self._insert(function, type_, name, config, origin, namespace)
        self._start(t)
        return self.view(t)

    async def _insert(self, function: str, type_: str, name: str | None,
                      config: dict[str, Any], origin: str,
                      namespace: str = "default") -> dict[str, Any]:
        existing = await self.svc.db.run(lambda c: queue.list_triggers(c, namespace=namespace))
        mine = {t["name"] for t in existing if t["function"] == function}
        if name is None:
            name = function if is_hook(type_, config) else next(
                f"{type_}-{n}" for n in range(1, 10_000) if f"{type_}-{n}" not in mine)
        if name in mine:
            raise Conflict(f"function {function!r} already has a trigger named {name!r}",
                           code="trigger_exists")
        if is_hook(type_, config) and any(is_hook(t["type"], t["config"]) and t["name"] == name
                                          for t in existing):
            raise Conflict(f"the webhook name {name!r} (/hooks/{name}) is taken",
                           code="webhook_name_taken")
        t = {"id": uuid.uuid4().hex[:16], "function": function, "namespace": namespace,
             "name": name, "type": type_, "config": config, "origin": origin}
        now = time.time()
        await self.svc.db.run(lambda c: queue.insert_trigger(c, t, now=now))
        return {**t, "created_at": now, "updated_at": now}

    async def delete(self, function: str, ref: str,
                     namespace: str = "default") -> dict[str, Any]:
        """Delete by id or name. Raises NotFound (trigger_not_found)."""
        async with self._lock:
            rows = await self.svc.db.run(lambda c: queue.list_triggers(
                c, function=function, namespace=namespace))
            t = next((t for t in rows if ref in (t["id"], t["name"])), None)
            if t is None:
                raise NotFound(f"function {function!r} has no trigger {ref!r}",
                               code="trigger_not_found")
            await self.svc.db.run(lambda c: queue.delete_trigger(c, t["id"]))
        self._stop(t)
        await self._uninstall(t)
        return self.view(t)

    async def _uninstall(self, t: dict[str, Any]) -> None:
        """Remove what a connector installed outside Squall (the postgres capture trigger and
        its outbox rows), best effort: a database that is down must not block the removal."""
        if t["type"] != "postgres":
            return
        from squall.events.connectors.postgres import uninstall

        try:
            await asyncio.wait_for(uninstall(spec_of(t)), 10)
        except Exception as exc:  # unreachable database, dropped table: say so, carry on
            self.svc.logs.append(t["function"], "", f"[squall] trigger {t['name']!r}: could not "
                                 f"remove its database trigger: {type(exc).__name__}: {exc}",
                                 t.get("namespace", "default"))

    async def find_webhook(self, name: str, namespace: str = "default") -> dict[str, Any]:
        rows = await self.svc.db.run(lambda c: queue.list_triggers(c, namespace=namespace))
        for t in rows:
            if is_hook(t["type"], t["config"]) and t["name"] == name:
                return t
        raise NotFound(f"no webhook named {name!r}", code="webhook_not_found")

    # --- squall.toml sync --------------------------------------------------------------------

    async def _on_registry(self, event: str, rec: Any) -> None:
        ns = rec.namespace
        if event == "deployed":
            await self.sync_declared(rec.name, rec.config.triggers, ns)
        elif event == "removed":
            rows = await self.svc.db.run(lambda c: queue.list_triggers(c, function=rec.name,
                                                                       namespace=ns))
            for t in rows:
                await self.delete(rec.name, t["id"], ns)

    async def sync_declared(self, function: str, declared: tuple[dict[str, Any], ...],
                            namespace: str = "default") -> None:
        """Make the function's toml-origin triggers match ``declared``. An invalid entry is
        skipped with a line in the function's logs (deploy-time checks belong to the deployer:
        ``validate_declared``)."""
        desired: dict[str, tuple[str, dict[str, Any]]] = {}
        for i, raw in enumerate(declared):
            try:
                type_, name, config = split_definition(raw)
                validate_trigger(type_, config)
            except BadRequest as e:
                self.svc.logs.append(function, "", f"[squall] triggers[{i}] ignored: {e.message}",
                                     namespace)
                continue
            default = function if is_hook(type_, config) else f"{type_}-{i + 1}"
            desired[name or default] = (type_, config)
        rows = await self.svc.db.run(lambda c: queue.list_triggers(c, function=function,
                                                                   namespace=namespace))
        for t in rows:
            if t["origin"] != "toml":
                if desired.pop(t["name"], None) is not None:
                    self.svc.logs.append(function, "", f"[squall] trigger {t['name']!r} in"
                                         " squall.toml ignored: an API trigger has that name",
                                         namespace)
                continue
            want = desired.pop(t["name"], None)
            if want is None:
                await self.delete(function, t["id"], namespace)
            elif want != (t["type"], t["config"]):
                async with self._lock:
                    await self.svc.db.run(functools.partial(
                        queue.update_trigger, id=t["id"], type=want[0], config=want[1],
                        now=time.time()))
                self._stop(t)
                await self._uninstall(t)  # the old tables' capture must not go on
                self._start({**t, "type": want[0], "config": want[1]})
        for name, (type_, config) in desired.items():
            try:
                async with self._lock:
                    t = await self._insert(function, type_, name, config, "toml", namespace)
                self._start(t)
            except Conflict as e:
                self.svc.logs.append(function, "",
                                     f"[squall] trigger {name!r} ignored: {e.message}", namespace)


def validate_declared(declared: tuple[dict[str, Any], ...]) -> None:
    """For the deployer: reject a squall.toml whose [[triggers]] are invalid (400, the key in
    details as ``triggers[i]``)."""
    for i, raw in enumerate(declared):
        try:
            type_, _name, config = split_definition(raw)
            validate_trigger(type_, config)
        except BadRequest as e:
            e.details = {**e.details, "key": f"triggers[{i}]"}
            e.message = f"triggers[{i}]: {e.message}"
            raise
