"""Lambda's function calls: List/Get/Create/Delete, UpdateFunctionCode/Configuration,
PublishVersion, ListVersionsByFunction (the version mapping is in the package docstring)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from squall.errors import BadRequest, Conflict, FunctionNotFound
from squall.lambda_api import bundle
from squall.lambda_api.arn import FunctionRef, parse_function_name
from squall.lambda_api.edge import Call
from squall.lambda_api.shapes import code_sha256, function_configuration, revision_id
from squall.platform import Platform
from squall.registry import FunctionRecord
from squall.routing import LATEST
from squall.store import aliases as store_aliases
from squall.store import functions as store_fn

MAX_ITEMS = 10_000
T = TypeVar("T")


def create_limit(p: Platform, request: Request) -> int:
    # base64 makes the zip a third bigger; the JSON around it is small.
    return p.settings.max_bundle_bytes * 4 // 3 + 64 * 1024


def _ref(request: Request, call: Call) -> FunctionRef:
    return parse_function_name(request.path_params["FunctionName"], call.tenant,
                               request.query_params.get("Qualifier"))


async def _record(call: Call, ref: FunctionRef) -> FunctionRecord:
    """The record a qualifier names, without rolling an alias's dice: an alias is its primary
    version here (describing, not invoking)."""
    p = call.platform
    qualifier = ref.qualifier
    if qualifier and not qualifier.isdigit() and qualifier != LATEST:
        alias = await p.invoker.aliases.get(call.tenant, ref.name, qualifier)
        if alias is None:
            raise FunctionNotFound(f"Function not found: {ref.name}:{qualifier}")
        qualifier = None if alias.version is None else str(alias.version)
    return await p.invoker.resolve(ref.name, qualifier, call.tenant)


async def _describe(call: Call, rec: FunctionRecord, qualifier: str | None) -> dict[str, Any]:
    p = call.platform
    notes = await p.db.run(lambda c: store_aliases.descriptions(c, rec.namespace, rec.name))
    size = await asyncio.to_thread(bundle.code_size, p.registry.bundles_dir / rec.sha256)
    return function_configuration(rec, region=call.region, qualifier=qualifier,
                                  description=notes.get(rec.version, ""), code_size=size)


async def get_function(request: Request, call: Call) -> Response:
    ref = _ref(request, call)
    rec = await _record(call, ref)
    label = None if ref.qualifier in (None, LATEST) else str(rec.version)
    config = await _describe(call, rec, label)
    return JSONResponse({"Configuration": config, "Code": {"RepositoryType": "Squall"}})


def _page(items: list[T], keys: list[str], marker: str | None,
          max_items: int) -> tuple[list[T], str | None]:
    """A page of ``items`` after ``marker`` (the key of the previous page's last item)."""
    start = 0
    if marker:
        if marker not in keys:
            raise BadRequest(f"Marker {marker[:64]!r} is not from a previous page",
                             code="invalid_query")
        start = keys.index(marker) + 1
    page = items[start:start + max_items]
    more = start + max_items < len(items)
    return page, keys[start + max_items - 1] if more else None


def _max_items(request: Request) -> int:
    raw = request.query_params.get("MaxItems", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_ITEMS:
        raise BadRequest(f"MaxItems must be an integer from 1 to {MAX_ITEMS}",
                         code="invalid_query")
    return int(raw)


async def list_functions(request: Request, call: Call) -> Response:
    p = call.platform
    version = request.query_params.get("FunctionVersion")
    if version not in (None, "ALL"):
        raise BadRequest("FunctionVersion must be ALL", code="invalid_query")
    recs = [r for r in p.registry.all() if r.namespace == call.tenant]
    page, marker = _page(recs, [r.name for r in recs], request.query_params.get("Marker"),
                         _max_items(request))
    out: list[dict[str, Any]] = []
    for rec in page:
        out.append(await _describe(call, rec, None))
        if version == "ALL":
            rows = await p.db.run(partial(store_fn.versions, namespace=rec.namespace,
                                          name=rec.name))
            for row in rows:
                out.append(await _describe(call, FunctionRecord.from_row(row), str(row.version)))
    body: dict[str, Any] = {"Functions": out}
    if marker:
        body["NextMarker"] = marker
    return JSONResponse(body)


async def list_versions(request: Request, call: Call) -> Response:
    p = call.platform
    ref = _ref(request, call)
    latest = await _record(call, FunctionRef(ref.name, None))
    rows = await p.db.run(lambda c: store_fn.versions(c, call.tenant, ref.name))
    items: list[tuple[str, FunctionRecord]] = [(LATEST, latest)] + [
        (str(r.version), FunctionRecord.from_row(r)) for r in rows]
    page, marker = _page(items, [label for label, _ in items],
                         request.query_params.get("Marker"), _max_items(request))
    body: dict[str, Any] = {"Versions": [
        await _describe(call, rec, None if label == LATEST else label) for label, rec in page]}
    if marker:
        body["NextMarker"] = marker
    return JSONResponse(body)


async def _deploy(call: Call, name: str, payload: bytes, description: str | None,
                  publish: bool, status: int, action: str) -> Response:
    p = call.platform
    result = await p.deployer.deploy(payload, name=name, namespace=call.tenant)
    rec = result.record
    if result.created:
        await call.audit(action, rec.name, {"version": rec.version, "sha256": rec.sha256})
    if description is not None:
        await p.db.run(lambda c: store_aliases.set_description(
            c, rec.namespace, rec.name, rec.version, description))
    config = await _describe(call, rec, str(rec.version) if publish else None)
    return JSONResponse(config, status_code=status)


def _check_revision(rec: FunctionRecord, body: dict[str, Any]) -> None:
    wanted = body.get("RevisionId")
    if wanted is not None and wanted != revision_id(rec):
        raise BadRequest(f"RevisionId {wanted!r} is not the function's current revision: read "
                         f"it again", code="revision_mismatch", status=412)


def _description(body: dict[str, Any]) -> str | None:
    value = body.get("Description")
    if value is not None and (not isinstance(value, str) or len(value) > 256):
        raise BadRequest("Description must be a string of at most 256 characters",
                         code="invalid_description")
    return value


async def create_function(request: Request, call: Call) -> Response:
    p = call.platform
    body = call.json()
    bundle.unsupported(body, bundle.CREATE_FIELDS, "CreateFunction")
    code = body.get("Code")
    if not isinstance(code, dict):
        raise BadRequest("Code is required: {\"ZipFile\": base64 of a .zip}",
                         code="unsupported_field")
    bundle.unsupported(code, frozenset({"ZipFile"}), "CreateFunction Code")
    name = body.get("FunctionName")
    if not isinstance(name, str):
        raise BadRequest("FunctionName is required", code="invalid_function_name")
    ref = parse_function_name(name, call.tenant)
    if p.registry.get(ref.name, call.tenant) is not None:
        raise Conflict(f"Function already exist: {ref.name}", code="function_exists")
    changes = bundle.config_changes(body)
    description = _description(body)
    zip_bytes = bundle.decode_zip(code.get("ZipFile"))
    payload = await asyncio.to_thread(
        bundle.zip_with_config, zip_bytes, changes, None, staging=p.settings.data_dir /
        "staging", max_bytes=p.settings.max_bundle_bytes,
        max_files=p.settings.max_bundle_files)
    return await _deploy(call, ref.name, payload, description or "",
                         bool(body.get("Publish")), 201, "CreateFunction")


async def update_code(request: Request, call: Call) -> Response:
    p = call.platform
    body = call.json()
    bundle.unsupported(body, bundle.CODE_FIELDS, "UpdateFunctionCode")
    bundle.config_changes({"Architectures": body.get("Architectures")})
    rec = await _record(call, FunctionRef(_ref(request, call).name, None))
    _check_revision(rec, body)
    zip_bytes = bundle.decode_zip(body.get("ZipFile"))
    payload = await asyncio.to_thread(
        bundle.zip_with_config, zip_bytes, {}, rec.config.to_dict(),
        staging=p.settings.data_dir / "staging", max_bytes=p.settings.max_bundle_bytes,
        max_files=p.settings.max_bundle_files)
    notes = await p.db.run(lambda c: store_aliases.descriptions(c, rec.namespace, rec.name))
    return await _deploy(call, rec.name, payload, notes.get(rec.version),
                         bool(body.get("Publish")), 200, "UpdateFunctionCode")


async def update_configuration(request: Request, call: Call) -> Response:
    p = call.platform
    body = call.json()
    bundle.unsupported(body, bundle.CONFIG_FIELDS, "UpdateFunctionConfiguration")
    rec = await _record(call, FunctionRef(_ref(request, call).name, None))
    _check_revision(rec, body)
    config = bundle.merged_config(rec.config.to_dict(), bundle.config_changes(body))
    description = _description(body)
    if description is None:
        notes = await p.db.run(lambda c: store_aliases.descriptions(c, rec.namespace, rec.name))
        description = notes.get(rec.version)
    payload = await asyncio.to_thread(
        bundle.bundle_with_config, p.registry.bundles_dir / rec.sha256, config,
        staging=p.settings.data_dir / "staging", max_bytes=p.settings.max_bundle_bytes)
    return await _deploy(call, rec.name, payload, description, False, 200,
                         "UpdateFunctionConfiguration")


async def publish_version(request: Request, call: Call) -> Response:
    """Every deploy already made an immutable numbered version: publishing names the version
    $LATEST is now, and creates nothing."""
    p = call.platform
    body = call.json()
    bundle.unsupported(body, frozenset({"CodeSha256", "Description", "RevisionId"}),
                       "PublishVersion")
    rec = await _record(call, FunctionRef(_ref(request, call).name, None))
    _check_revision(rec, body)
    wanted = body.get("CodeSha256")
    if wanted is not None and wanted != code_sha256(rec):
        raise BadRequest(f"CodeSha256 {wanted!r} does not match the code of $LATEST "
                         f"({code_sha256(rec)})", code="code_sha256_mismatch")
    description = _description(body)
    if description is not None:
        await p.db.run(lambda c: store_aliases.set_description(
            c, rec.namespace, rec.name, rec.version, description))
    return JSONResponse(await _describe(call, rec, str(rec.version)), status_code=201)


async def delete_function(request: Request, call: Call) -> Response:
    p = call.platform
    ref = _ref(request, call)
    if ref.qualifier not in (None, LATEST):
        raise BadRequest("deleting one version is not supported: Squall keeps every version of "
                         "a function; delete the function, or move aliases off the version",
                         code="unsupported_qualifier")
    await _record(call, FunctionRef(ref.name, None))
    await p.deployer.remove(ref.name, call.tenant)
    await call.audit("DeleteFunction", ref.name)
    return Response(status_code=204)
