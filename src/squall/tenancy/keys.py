"""API key format, hashing and constant-time checks (pure functions).

A key is ``sq_<id>_<secret>``: ``id`` is 16 hex digits, public (shown by ``squall key ls``, written
in the audit log); ``secret`` is 256 random bits in URL-safe base64 (43 characters). The store
keeps only SHA-256 of the secret: a 256-bit random secret cannot be guessed from its hash, so a
slow password hash would only add latency to every request.

The same key is an AWS-style pair for SigV4 clients (boto3, the AWS CLI):
``access_key_id = "SQIA" + id.upper()`` (20 characters, like AWS's) and
``secret_access_key = secret``. SigV4 is an HMAC scheme: verifying a signature needs the secret
itself, so that half is also kept sealed (AES-GCM under the master key, see ``crypto``), never in
plaintext; bearer tokens are checked against the hash alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "sq_"
ACCESS_KEY_PREFIX = "SQIA"
_TOKEN_RE = re.compile(r"^sq_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_AKID_RE = re.compile(r"^SQIA([0-9A-F]{16})$")
_DUMMY_HASH = hashlib.sha256(b"squall-no-such-key").hexdigest()


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        return f"{PREFIX}{self.key_id}_{self.secret}"

    @property
    def access_key_id(self) -> str:
        return access_key_id(self.key_id)


def generate() -> NewKey:
    return NewKey(secrets.token_hex(8), secrets.token_urlsafe(32))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    m = _TOKEN_RE.match(token.strip())
    return None if m is None else (m.group(1), m.group(2))


def access_key_id(key_id: str) -> str:
    return ACCESS_KEY_PREFIX + key_id.upper()


def key_id_of_access_key(akid: str) -> str | None:
    m = _AKID_RE.match(akid)
    return None if m is None else m.group(1).lower()


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Constant time in the secret; an unknown key (None) costs the same as a wrong one."""
    expected = stored_hash if stored_hash is not None else _DUMMY_HASH
    ok = hmac.compare_digest(hash_secret(secret), expected)
    return ok and stored_hash is not None
