"""The interface the edges use to turn a credential into a Principal (``Platform.identity``).

Implemented by ``squall.tenancy.service.Identity``; declared here so the gateway, the control API,
the SigV4 verifier (Lambda and S3 APIs) depend on this small contract only.
"""

from __future__ import annotations

from typing import Protocol

from squall.tenancy.model import Principal


class KeyResolver(Protocol):
    def authenticate(self, authorization: str | None) -> Principal:
        """``Authorization: Bearer sq_...`` -> the key's principal. Raises ``Unauthorized``
        (401 ``unauthorized``, one message for missing, malformed, unknown, revoked and expired
        keys). Never touches the disk: keys are cached in memory; revocation updates the cache
        at once. Records the key's last use (flushed to the store in the background)."""
        ...

    def signing_key(self, access_key_id: str) -> tuple[str, Principal] | None:
        """For SigV4: (secret_access_key, principal) of a live key, or None when the access key
        id is unknown, revoked or expired. The caller verifies the signature (constant time) and
        then calls ``touch(principal.key_id)``."""
        ...

    def touch(self, key_id: str) -> None:
        """Note a successful use of a key (``squall key ls`` shows last used)."""
        ...

    def tenant_exists(self, tenant: str) -> bool: ...
