"""Request bodies of PutObject/UploadPart: plain or aws-chunked, and every check on them.

What ``x-amz-content-sha256`` says decides the framing:

- a hex SHA-256 or ``UNSIGNED-PAYLOAD``: the body is the object (the digest is checked after);
- ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (botocore's default for uploads): aws-chunked, with a
  checksum in a trailer (``x-amz-checksum-crc32`` by default);
- ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]``: aws-chunked where every chunk is signed,
  chained from the request's signature.

aws-chunked framing: ``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`` ... ``0...\\r\\n``,
then trailer lines ``name:value\\r\\n`` and an empty line. Checksums verified: Content-MD5,
x-amz-checksum-{crc32,sha1,sha256} (header or trailer); crc32c and crc64nvme need native code
botocore only uses with awscrt, and are accepted unverified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from squall.storage.errors import S3Error
from squall.storage.layout import Layout, Sink, Written

UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
_EMPTY = hashlib.sha256(b"").hexdigest()
_MAX_LINE = 4096


@dataclass
class ChunkSigning:
    """What chains chunk signatures: the request's date, scope and signature, and the signer."""

    amz_date: str
    scope: str
    seed: str
    sign: Callable[[str], str]


@dataclass
class _Decoder:
    signing: ChunkSigning | None
    buf: bytearray = field(default_factory=bytearray)
    left: int = -1  # bytes of the current chunk still to come; -1: expecting a size line
    chunk_sig: str = ""
    chunk_hash: object = None
    trailers: dict[str, str] = field(default_factory=dict)
    in_trailer: bool = False
    done: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while not self.done:
            if self.left > 0:
                if not self.buf:
                    break
                piece = bytes(self.buf[:self.left])
                del self.buf[:len(piece)]
                self.left -= len(piece)
                if self.chunk_hash is not None:
                    self.chunk_hash.update(piece)  # type: ignore[attr-defined]
                out.append(piece)
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                if len(self.buf) > _MAX_LINE:
                    raise S3Error("IncompleteBody", "malformed aws-chunked body")
                break
            line = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[:end + 2]
            self._line(line)
        return out

    def _line(self, line: str) -> None:
        if self.in_trailer:
            if not line:
                self.done = True
            else:
                name, _, value = line.partition(":")
                self.trailers[name.strip().lower()] = value.strip()
            return
        if self.left == 0:  # the CRLF after a chunk's data
            if line:
                raise S3Error("IncompleteBody", "malformed aws-chunked body: chunk longer than "
                              "its declared size")
            self._check_chunk()
            self.left = -1
            return
        size_text, _, ext = line.partition(";")
        try:
            size = int(size_text, 16)
        except ValueError:
            raise S3Error("IncompleteBody", "malformed aws-chunked body: bad chunk size") from None
        self.chunk_sig = ext.partition("chunk-signature=")[2]
        self.chunk_hash = hashlib.sha256() if self.signing is not None else None
        if size == 0:
            self._check_chunk()
            self.in_trailer = True
        else:
            self.left = size

    def _check_chunk(self) -> None:
        s = self.signing
        if s is None:
            return
        digest = self.chunk_hash.hexdigest() if self.chunk_hash is not None else _EMPTY  # type: ignore[attr-defined]
        sts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", s.amz_date, s.scope, s.seed, _EMPTY, digest])
        expected = s.sign(sts)
        if expected != self.chunk_sig:
            raise S3Error("SignatureDoesNotMatch", "a chunk signature does not match")
        s.seed = expected


def checksum_algorithm(headers: dict[str, str]) -> str | None:
    """Which x-amz-checksum the request declares (header, trailer or SDK hint)."""
    declared = headers.get("x-amz-trailer", "") or next(
        (k for k in headers if k.startswith("x-amz-checksum-") and k != "x-amz-checksum-type"),
        "")
    if declared.startswith("x-amz-checksum-"):
        return declared.removeprefix("x-amz-checksum-")
    hint = headers.get("x-amz-sdk-checksum-algorithm")
    return hint.lower() if hint else None


async def receive(raw: AsyncIterator[bytes], headers: dict[str, str], layout: Layout, *,
                  max_bytes: int, signing: ChunkSigning | None) -> Written:
    """Stream the object of an upload into a temp file and check it. The caller publishes or
    discards the returned file. Raises S3Error (EntityTooLarge, IncompleteBody, BadDigest,
    InvalidDigest, XAmzContentSHA256Mismatch, SignatureDoesNotMatch)."""
    mode = headers.get("x-amz-content-sha256", UNSIGNED)
    chunked = mode.startswith("STREAMING-")
    if chunked and mode not in (STREAMING_UNSIGNED_TRAILER, STREAMING_SIGNED,
                                STREAMING_SIGNED_TRAILER):
        raise S3Error("InvalidArgument", f"unsupported x-amz-content-sha256 {mode!r}")
    declared = _declared_length(headers, chunked)
    if declared is not None and declared > max_bytes:
        raise S3Error("EntityTooLarge", f"Your proposed upload exceeds the maximum allowed size "
                      f"of {max_bytes} bytes.")
    alg = checksum_algorithm(headers)
    sink = Sink(layout, sha256=len(mode) == 64, checksum=alg)
    decoder = _Decoder(signing if mode.startswith("STREAMING-AWS4") else None) if chunked else None
    try:
        async for data in raw:
            for piece in (decoder.feed(data) if decoder is not None else [data]):
                if sink.size + len(piece) > max_bytes:
                    raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum "
                                  f"allowed size of {max_bytes} bytes.")
                await sink.write(piece)
        if decoder is not None and not decoder.done:
            raise S3Error("IncompleteBody", "the aws-chunked body ended before its last chunk")
        written = await sink.finish()
        _check(written, headers, mode, declared, decoder.trailers if decoder else {}, alg)
    except BaseException:
        sink.discard()
        raise
    return written


def _declared_length(headers: dict[str, str], chunked: bool) -> int | None:
    text = headers.get("x-amz-decoded-content-length" if chunked else "content-length")
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise S3Error("InvalidArgument", "the declared content length is not a number") from None
    if value < 0:
        raise S3Error("InvalidArgument", "the declared content length is negative")
    return value


def _check(w: Written, headers: dict[str, str], mode: str, declared: int | None,
           trailers: dict[str, str], alg: str | None) -> None:
    if declared is not None and w.size != declared:
        raise S3Error("IncompleteBody", f"You did not provide the number of bytes specified: "
                      f"{declared} declared, {w.size} received.")
    md5 = headers.get("content-md5")
    if md5 is not None:
        try:
            want = base64.b64decode(md5, validate=True)
        except binascii.Error:
            want = b""
        if len(want) != 16:
            raise S3Error("InvalidDigest", "The Content-MD5 you specified is not valid.")
        if want != w.md5:
            raise S3Error("BadDigest", "The Content-MD5 you specified did not match what we "
                          "received.")
    if len(mode) == 64 and w.sha256 != mode.lower():
        raise S3Error("XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header "
                      "does not match what was computed.")
    if alg is not None and w.checksum is not None:
        name = f"x-amz-checksum-{alg}"
        claimed = trailers.get(name) or headers.get(name)
        if claimed is not None and claimed != w.checksum:
            raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match the "
                          "calculated checksum.")
