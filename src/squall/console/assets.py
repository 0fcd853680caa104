"""The console's files, built into the package (``squall/console/static``), served from memory.

They are read once, on the first request, with their content type and an ETag (a hash of the
bytes), so a browser revalidates cheaply and an upgrade is picked up at once. Only files that
exist in the package can be named: a request path is a key in a dict, never a filesystem path,
so there is nothing to traverse.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

# The page holds no data and runs only its own scripts: no inline code, no other origin. uPlot
# sizes its elements through the CSSOM, which style-src does not restrict.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml",
          ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


class Assets:
    """The files under ``root`` (default: the package's ``static`` folder) by relative path,
    e.g. ``"app.js"`` or ``"vendor/uPlot.min.css"``."""

    def __init__(self, root: Traversable | None = None) -> None:
        self._root = root
        self._files: dict[str, Asset] | None = None

    def get(self, path: str) -> Asset | None:
        if self._files is None:
            root = self._root or resources.files("squall.console").joinpath("static")
            self._files = dict(_walk(root, ""))
        return self._files.get(path)


def _walk(folder: Traversable, prefix: str) -> list[tuple[str, Asset]]:
    out: list[tuple[str, Asset]] = []
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            out.extend(_walk(entry, f"{prefix}{entry.name}/"))
            continue
        body = entry.read_bytes()
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        media = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or \
            "application/octet-stream"
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        out.append((prefix + entry.name, Asset(body, media, etag)))
    return out
