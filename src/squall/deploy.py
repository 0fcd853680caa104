"""Deploy: archive -> validated, content-addressed bundle -> dependencies -> import -> version.

Nothing is half-written: the bundle is unpacked into a staging dir and moved into place only when
it is valid; the version row is written last, in one transaction; the previous version stays live
until the new one has passed every check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from squall.agent.node import Agent, VersionSpec
from squall.bundle import archive
from squall.bundle.deps import ensure_env, requirements_key
from squall.bundle.npm import ensure_node_modules, has_dependencies
from squall.bundle.shared import publish as publish_bundle
from squall.bundle.spec import FunctionConfig, parse_config, runtime_kind, validate_name
from squall.config import Settings
from squall.errors import Forbidden, FunctionNotFound, InvalidBundle, InvalidConfig, InvalidName
from squall.registry import FunctionRecord, Registry
from squall.store import bundles as store_bundles
from squall.store import functions as store_fn
from squall.store import logs as store_logs

if TYPE_CHECKING:
    from squall.tenancy.service import Identity

log = logging.getLogger("squall.deploy")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DeployResult:
    record: FunctionRecord
    created: bool

    def to_dict(self) -> dict[str, Any]:
        rec = self.record
        return {"name": rec.name, "namespace": rec.namespace, "version": rec.version,
                "sha256": rec.sha256, "created": self.created,
                "config": rec.config.to_dict()}


class Deployer:
    def __init__(self, settings: Settings, registry: Registry, agent: Agent) -> None:
        self.settings = settings
        self.registry = registry
        self.agent = agent
        self.staging_dir = settings.data_dir / "staging"
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.identity: Identity | None = None  # tenants' quotas and secrets, set by the server

    def _check_function_quota(self, namespace: str) -> None:
        limit = None if self.identity is None else \
            self.identity.limits(namespace).max_functions
        count = sum(1 for r in self.registry.all() if r.namespace == namespace)
        if limit is not None and count >= limit:
            raise Forbidden(f"tenant {namespace!r} has {count} functions, its limit: remove one "
                            f"or raise it (`squall tenant update {namespace} --max-functions`)",
                            code="quota_exceeded")

    async def _move_trigger_secrets(self, staging: Path, config: FunctionConfig, name: str,
                                    namespace: str, progress: Progress) -> FunctionConfig:
        """A webhook ``secret`` written in squall.toml is stored as a tenant secret and the
        bundle keeps a ``secret:NAME`` reference instead, so the bundle store never holds it."""
        assert self.identity is not None
        path = staging / "squall.toml"
        literals = [(i, t) for i, t in enumerate(config.triggers)
                    if isinstance(t.get("secret"), str) and not t["secret"].startswith("secret:")]
        if not literals:
            return config
        text = path.read_text(encoding="utf-8")
        for i, t in literals:
            ref = f"trigger.{name}.{t.get('name') or (name if t.get('type') == 'webhook' else i)}"
            await self.identity.secrets.put(namespace, ref, t["secret"].encode())
            for quoted in (json.dumps(t["secret"]), f"'{t['secret']}'"):
                text = text.replace(quoted, json.dumps(f"secret:{ref}"))
            progress(f"triggers[{i}]: secret moved to the tenant's secrets as {ref!r}")
        moved = parse_config(text)
        if any(isinstance(t.get("secret"), str) and not t["secret"].startswith("secret:")
               for t in moved.triggers):
            raise InvalidConfig("a trigger secret in squall.toml could not be moved out of the "
                                "bundle: write it as secret = \"secret:NAME\" after `squall "
                                "secret set NAME`", details={"key": "triggers"})
        path.write_text(text, encoding="utf-8")
        return moved

    async def deploy(self, payload: bytes, *, name: str | None = None,
                     default_name: str | None = None, namespace: str = "default",
                     progress: Progress = lambda _msg: None) -> DeployResult:
        if name is not None:
            validate_name(name)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        staging = self.staging_dir / uuid.uuid4().hex
        try:
            progress("unpacking bundle")
            await asyncio.to_thread(
                archive.unpack, payload, staging, max_bytes=self.settings.max_bundle_bytes,
                max_files=self.settings.max_bundle_files)
            config = _read_config(staging)
            if config.triggers:
                from squall.events.triggers import validate_declared

                validate_declared(config.triggers)  # a bad [[triggers]] fails the deploy (400)
            fn_name = name or config.name or default_name
            if not fn_name:
                raise InvalidName("no function name: pass --name, set `name` in squall.toml, "
                                  "or deploy a folder (its name is used)")
            fn_name = validate_name(fn_name)
            if self.identity is not None:
                # Every `secret:NAME` must exist; literal webhook secrets leave the bundle.
                self.identity.secrets.check_refs(namespace, config.env)
                config = await self._move_trigger_secrets(staging, config, fn_name, namespace,
                                                          progress)
            async with self._locks.setdefault((namespace, fn_name), asyncio.Lock()):
                return await self._deploy_staged(staging, config, fn_name, namespace, progress)
        finally:
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)

    async def _deploy_staged(self, staging: Path, config: FunctionConfig, name: str,
                             namespace: str, progress: Progress) -> DeployResult:
        sha = await asyncio.to_thread(archive.tree_hash, staging)
        latest = self.registry.get(name, namespace)
        if latest is not None and latest.sha256 == sha:
            progress(f"unchanged: {name} version {latest.version} has the same content")
            return DeployResult(latest, False)
        if latest is None:
            self._check_function_quota(namespace)
        deps_key: str | None = None
        dep_paths: list[Path] = []
        req = staging / "requirements.txt"
        content = await asyncio.to_thread(_read_if_file, req)
        pkg = await asyncio.to_thread(_read_if_file, staging / "package.json")
        if runtime_kind(config.runtime) == "nodejs20":
            content = None  # a Node bundle's dependencies are its package.json's
            if pkg is not None and has_dependencies(pkg):
                progress("installing package.json dependencies")
                lock = await asyncio.to_thread(_read_if_file, staging / "package-lock.json")
                deps_key, site = await ensure_node_modules(pkg, lock, self.registry.envs_dir,
                                                           progress)
                dep_paths = [site]
        if content is not None:
            progress("installing requirements.txt")
            site = await ensure_env(content, self.registry.envs_dir, progress)
            deps_key = requirements_key(content)
            dep_paths = [site]
        bundle_dir = self.registry.bundles_dir / sha
        await asyncio.to_thread(_move_into_place, staging, bundle_dir)
        progress(f"importing handler {config.handler}")
        # Validation is the real thing: the new version's zygote, built in its sandbox, imports
        # the handler. It stays up as the prewarmed zygote of the version (first request warm).
        number = 1 if latest is None else latest.version + 1
        uid, secret_env = None, {}
        if self.identity is not None:  # as Registry.version_spec: the tenant's uid and secrets
            uid = self.identity.uid(namespace)
            secret_env = self.identity.instance_env(namespace, name, config.env,
                                                    self.registry.s3_endpoint)
        probe = VersionSpec(namespace, name, number, sha, bundle_dir, dep_paths, config, uid=uid,
                            secret_env=secret_env)
        try:
            await self.agent.zygote(probe)
            # A shared store gets the bundle before the version: a gateway that sees the version
            # can always fetch it (squall.bundle.shared).
            await publish_bundle(self.registry.db, bundle_dir, sha)
            row, created = await self.registry.db.run(
                lambda c: store_fn.add_version(c, namespace, name, sha, config.to_dict(),
                                               deps_key))
        except BaseException:
            await self.agent.retire(probe.key)
            raise
        rec = FunctionRecord.from_row(row)
        await self.registry.set_latest(rec)
        if latest is not None:
            # The old version keeps serving what it has in flight, then goes.
            await self.agent.retire(self.registry.version_spec(latest).key)
        progress(f"deployed {name} version {rec.version}")
        return DeployResult(rec, created)

    async def remove(self, name: str, namespace: str = "default") -> FunctionRecord:
        rec = self.registry.get(name, namespace)
        if rec is None:
            raise FunctionNotFound(f"function '{name}' does not exist")
        async with self._locks.setdefault((namespace, name), asyncio.Lock()):
            versions = await self.registry.db.run(
                lambda c: store_fn.versions(c, namespace, name))
            for row in versions:
                vs = self.registry.version_spec(FunctionRecord.from_row(row))
                await self.agent.retire(vs.key)

            # Invocation records stay: they are the billing history.
            def delete(conn: Any) -> list[str]:
                store_fn.delete_function(conn, namespace, name)
                store_logs.delete_function(conn, namespace, name)
                if self.registry.bundles is not None:  # bundles travel through the store
                    store_bundles.delete_unused(conn)
                return [r.sha256 for r in versions if not store_fn.bundle_in_use(conn, r.sha256)]

            unused = await self.registry.db.run(delete)
            await self.registry.remove(rec)
            for sha in unused:
                await asyncio.to_thread(shutil.rmtree, self.registry.bundles_dir / sha, True)
        return rec


def _read_config(staging: Path) -> FunctionConfig:
    path = staging / "squall.toml"
    if not path.exists():
        return FunctionConfig()
    if not path.is_file():
        raise InvalidBundle("squall.toml is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidBundle(f"squall.toml is not UTF-8: {exc}") from None
    return parse_config(text)


def _read_if_file(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _move_into_place(staging: Path, bundle_dir: Path) -> None:
    """Content-addressed: a bundle dir that exists already holds exactly this content."""
    if not bundle_dir.exists():
        bundle_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(bundle_dir)
