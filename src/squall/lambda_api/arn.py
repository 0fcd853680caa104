"""Function names and ARNs as Lambda clients write them (pure).

A tenant appears to AWS clients as an account: a 12-digit id derived from the tenant's name
(SHA-256, first 12 decimal digits of the number), stable across restarts and machines. An ARN
naming another account is answered like a missing function: another tenant's resource is a 404.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from squall.errors import BadRequest, FunctionNotFound

DEFAULT_REGION = "us-east-1"
# Lambda's NamespacedFunctionName: a name, name:qualifier, ACCOUNT:function:name[:qualifier] or
# arn:PARTITION:lambda:REGION:ACCOUNT:function:name[:qualifier].
_FULL = re.compile(r"^arn:(aws[a-zA-Z-]*):lambda:([a-z0-9-]+):(\d{12}):function:([^:]+)(?::(.+))?$")
_PARTIAL = re.compile(r"^(\d{12}):function:([^:]+)(?::(.+))?$")
_PLAIN = re.compile(r"^([^:]+)(?::(.+))?$")


def account_id(tenant: str) -> str:
    number = int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big")
    return f"{number % 10**12:012d}"


def function_arn(region: str, tenant: str, name: str, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{account_id(tenant)}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


@dataclass(frozen=True)
class FunctionRef:
    name: str
    qualifier: str | None


def parse_function_name(raw: str, tenant: str, qualifier: str | None = None) -> FunctionRef:
    """``FunctionName`` (path) and ``Qualifier`` (query) -> name and qualifier.

    Raises BadRequest when the two qualifiers disagree or the text is not a function name, and
    FunctionNotFound for another account's ARN."""
    account: str | None = None
    m = _FULL.match(raw)
    if m:
        account, name, named = m.group(3), m.group(4), m.group(5)
    elif (m := _PARTIAL.match(raw)) is not None:
        account, name, named = m.group(1), m.group(2), m.group(3)
    elif (m := _PLAIN.match(raw)) is not None and not raw.startswith("arn:"):
        name, named = m.group(1), m.group(2)
    else:
        raise BadRequest(f"{raw!r} is not a function name or ARN "
                         f"(arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])",
                         code="invalid_function_name")
    if account is not None and account != account_id(tenant):
        raise FunctionNotFound(f"Function not found: {raw}")
    if named and qualifier and named != qualifier:
        raise BadRequest("The derived qualifier from the function name does not match the "
                         "specified qualifier.", code="qualifier_mismatch")
    return FunctionRef(name, named or qualifier or None)
