"""Lambda's function fields -> a Squall bundle: the code plus a squall.toml written from them.

Squall reads a function's configuration from the squall.toml inside its bundle, so a Lambda
call that sets configuration produces a bundle with that file: CreateFunction merges the Lambda
fields over the zip's own squall.toml (if it has one; other keys such as triggers stay);
UpdateFunctionCode keeps the function's current configuration (a squall.toml in the new zip is
replaced, as Lambda keeps configuration apart from code); UpdateFunctionConfiguration re-packs
the current code with the changed configuration. Every result is a new content hash, hence a
new immutable version (see the package docstring).

Field support (anything else is rejected with InvalidParameterValueException naming it):
``Role`` is accepted and ignored (the API requires it; Squall has no IAM: a function's rights
are its tenant's). ``Runtime`` must be a python3 runtime (Squall runs the handler on its own
Python). ``PackageType`` must be Zip, ``Architectures`` the host's, ``Code`` a ``ZipFile``.
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from squall.bundle import archive
from squall.bundle.spec import config_from_api
from squall.errors import BadRequest, InvalidBundle, InvalidConfig
from squall.lambda_api.shapes import ARCHITECTURE, RUNTIME

CREATE_FIELDS = frozenset({"FunctionName", "Runtime", "Role", "Handler", "Code", "Description",
                           "Timeout", "MemorySize", "Publish", "PackageType", "Environment",
                           "Architectures", "EphemeralStorage"})
CONFIG_FIELDS = frozenset({"Role", "Handler", "Description", "Timeout", "MemorySize",
                           "Environment", "Runtime", "RevisionId", "EphemeralStorage"})
CODE_FIELDS = frozenset({"ZipFile", "Publish", "RevisionId", "Architectures"})
_RUNTIME_RE = re.compile(r"^python3\.\d+$")
# squall.toml key -> the Lambda field a message should name
_LAMBDA_NAMES = {"handler": "Handler", "memory_mb": "MemorySize", "timeout_s": "Timeout",
                 "env": "Environment.Variables", "ephemeral_mb": "EphemeralStorage.Size"}


def unsupported(fields: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    """Reject fields Squall does not implement, by name, rather than ignore them."""
    extra = sorted(set(fields) - allowed)
    if extra:
        raise BadRequest(f"{what}: Squall does not support {', '.join(extra)}; supported "
                         f"fields are {', '.join(sorted(allowed))}", code="unsupported_field",
                         details={"fields": extra})


def config_changes(body: dict[str, Any]) -> dict[str, Any]:
    """The squall.toml keys a Create/UpdateFunctionConfiguration body sets (checked later by
    ``merged_config``); Runtime, PackageType and Architectures are checked here."""
    runtime = body.get("Runtime")
    if runtime is not None and not (isinstance(runtime, str) and _RUNTIME_RE.match(runtime)):
        raise BadRequest(f"Runtime {runtime!r} is not supported here: Squall runs Python "
                         f"handlers ({RUNTIME}); give a python3.x runtime",
                         code="unsupported_runtime")
    if body.get("PackageType", "Zip") != "Zip":
        raise BadRequest("PackageType Image is not supported: upload a Zip",
                         code="unsupported_field")
    arch = body.get("Architectures")
    if arch is not None and arch != [ARCHITECTURE]:
        raise BadRequest(f"Architectures {arch!r}: this Squall runs on {ARCHITECTURE} only",
                         code="unsupported_field")
    out: dict[str, Any] = {}
    for field, key in (("Handler", "handler"), ("MemorySize", "memory_mb"),
                       ("Timeout", "timeout_s")):
        if field in body:
            out[key] = body[field]
    if "Environment" in body:
        env = body["Environment"]
        variables = env.get("Variables", {}) if isinstance(env, dict) else env
        out["env"] = variables
    if "EphemeralStorage" in body:
        storage = body["EphemeralStorage"]
        out["ephemeral_mb"] = storage.get("Size") if isinstance(storage, dict) else storage
    return out


def decode_zip(value: object) -> bytes:
    """``ZipFile`` arrives base64-encoded in the JSON body (botocore encodes blobs)."""
    if not isinstance(value, str) or not value:
        raise BadRequest("Code.ZipFile is required (base64 of a .zip); S3 and image code "
                         "locations are not supported", code="unsupported_field")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Code.ZipFile is not valid base64", code="invalid_zip") from None


def merged_config(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` (squall.toml keys) with ``changes`` over it, validated; errors name the Lambda
    field ("MemorySize: must be between 128 and 10240")."""
    merged = {k: v for k, v in {**base, **changes}.items() if v is not None and k != "name"}
    try:
        config_from_api(merged)
    except InvalidConfig as exc:
        key = str(exc.details.get("key") or "")
        head, _, rest = key.partition(".")
        field = _LAMBDA_NAMES.get(head, head) + (f".{rest}" if rest else "")
        message = exc.message.split(": ", 1)[-1]
        raise InvalidConfig(f"{field}: {message}" if field else exc.message,
                            details={"key": field or None}) from None
    return merged


def _read_toml(root: Path) -> dict[str, Any]:
    path = root / "squall.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidBundle(f"the zip's squall.toml cannot be read: {exc}") from None


def _write_and_pack(root: Path, config: dict[str, Any], max_bytes: int) -> bytes:
    (root / "squall.toml").write_text(tomli_w.dumps(config), encoding="utf-8")
    return archive.pack_dir(root, max_bytes=max_bytes)


def zip_with_config(zip_bytes: bytes, changes: dict[str, Any], base: dict[str, Any] | None, *,
                    staging: Path, max_bytes: int, max_files: int) -> bytes:
    """Unpack the uploaded zip (with the deployer's safety rules), write squall.toml from
    ``base`` (None: the zip's own squall.toml) and ``changes``, pack it for the deployer."""
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        root = Path(tmp) / "code"
        archive.unpack(zip_bytes, root, max_bytes=max_bytes, max_files=max_files)
        config = merged_config(_read_toml(root) if base is None else base, changes)
        return _write_and_pack(root, config, max_bytes)


def bundle_with_config(bundle_dir: Path, config: dict[str, Any], *, staging: Path,
                       max_bytes: int) -> bytes:
    """The deployed code of a version, re-packed with a new squall.toml."""
    staging.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        root = Path(tmp) / "code"
        shutil.copytree(bundle_dir, root, symlinks=True)
        return _write_and_pack(root, config, max_bytes)


def code_size(bundle_dir: Path) -> int:
    """Bytes of the deployed code (Lambda's CodeSize is the zip's size; this is unpacked)."""
    return sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file()
               and not p.is_symlink())
