"""Sealing secrets at rest: AES-256-GCM (the ``cryptography`` package) under a master key kept
outside the database (``<data-dir>/master-key``, mode 0600, or ``SQUALL_MASTER_KEY``).

A sealed value is ``version byte || 12-byte nonce || ciphertext+tag``; the associated data binds
it to where it belongs (``tenant/name``), so a ciphertext copied to another row fails to open.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from squall.errors import SquallError

_VERSION = b"\x01"


class MasterKeyError(SquallError):
    code = "master_key_error"
    status = 500


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise MasterKeyError("the master key must be 32 bytes (base64 of 32 random bytes)")
        self.key = key  # the cluster channel derives its own key from it (squall.cluster)
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        if blob[:1] != _VERSION:
            raise MasterKeyError("sealed value has an unknown format")
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], aad.encode())
        except InvalidTag:
            raise MasterKeyError(
                "a sealed value does not open with this master key: was SQUALL_MASTER_KEY or "
                "<data-dir>/master-key changed without `squall secret rotate-master`?") from None


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise MasterKeyError("the master key is not valid base64") from None
    if len(key) != 32:
        raise MasterKeyError("the master key must be base64 of 32 random bytes")
    return key


def load_master_key(data_dir: Path, env_value: str | None) -> bytes:
    """``SQUALL_MASTER_KEY`` if set, else ``<data-dir>/master-key``, created (0600) if absent."""
    if env_value:
        return decode_key(env_value)
    path = data_dir / "master-key"
    if path.exists():
        return decode_key(path.read_text())
    key = AESGCM.generate_key(bit_length=256)
    write_private(path, encode_key(key) + "\n")
    return key


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (no moment with wider permissions)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
