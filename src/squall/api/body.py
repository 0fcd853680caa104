"""Reading request bodies with a size limit (413 before the whole body is buffered)."""

from __future__ import annotations

from starlette.requests import Request

from squall.errors import PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)
