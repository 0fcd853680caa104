"""Safe bundle archives: unpack zip / tar(.gz) uploads, pack a folder, hash a tree.

Symlink policy: symlinks are allowed when their target is relative and, once every member is in
place, resolves inside the bundle. They are created after all files and directories, never
through another symlink, so a link cannot be used to write outside the bundle. Hard links,
devices, FIFOs, absolute names and '..' components are rejected.

Sizes are counted on the bytes actually written, as they stream, so an archive bomb stops at
``max_bytes`` rather than when its headers say so.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from squall.errors import InvalidBundle

_CHUNK = 1024 * 1024
SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv", ".squall"})
SKIP_SUFFIXES = (".pyc",)


class _Extractor:
    """Writes members under ``root`` (a fresh temp dir), enforcing the limits and path rules."""

    def __init__(self, root: Path, max_bytes: int, max_files: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.written = 0
        self.files = 0
        self.seen: set[str] = set()
        self.links: list[tuple[str, str]] = []

    def check_name(self, raw: str) -> str:
        name = raw
        while name.startswith("./"):
            name = name[2:]
        name = name.rstrip("/")
        if not raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
            raise InvalidBundle(f"member {raw!r}: absolute paths are not allowed")
        parts = name.split("/")
        if ".." in parts:
            raise InvalidBundle(f"member {raw!r}: '..' path components are not allowed")
        if "\0" in name:
            raise InvalidBundle(f"member {raw!r}: NUL in name")
        parts = [p for p in parts if p not in ("", ".")]
        return "/".join(parts)

    def claim(self, name: str, raw: str, *, counts: bool) -> Path:
        # Directories may repeat (tar tools list them more than once); files and links may not.
        # No symlink exists on disk while files are written (they come last), so no file can be
        # written through one.
        if counts:
            if name in self.seen:
                raise InvalidBundle(f"member {raw!r}: appears twice in the archive")
            self.seen.add(name)
            self.files += 1
            if self.files > self.max_files:
                raise InvalidBundle(f"member {raw!r}: more than {self.max_files} files")
        return self.root / name

    def directory(self, raw: str) -> None:
        name = self.check_name(raw)
        if not name:
            return
        self.claim(name, raw, counts=False).mkdir(parents=True, exist_ok=True)

    def file(self, raw: str, src: IO[bytes], executable: bool) -> None:
        name = self.check_name(raw)
        if not name:
            raise InvalidBundle(f"member {raw!r}: a file needs a name")
        target = self.claim(name, raw, counts=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:
            # Never read more than one byte past the limit, so the error names this member.
            while chunk := src.read(min(_CHUNK, self.max_bytes - self.written + 1)):
                self.written += len(chunk)
                if self.written > self.max_bytes:
                    raise InvalidBundle(
                        f"member {raw!r}: bundle unpacks to more than {self.max_bytes} bytes")
                out.write(chunk)
        target.chmod(0o755 if executable else 0o644)

    def symlink(self, raw: str, link_target: str) -> None:
        name = self.check_name(raw)
        if not name:
            raise InvalidBundle(f"member {raw!r}: a symlink needs a name")
        if not link_target or link_target.startswith("/"):
            raise InvalidBundle(
                f"member {raw!r}: symlink target {link_target!r} is absolute or empty")
        lexical = os.path.normpath(os.path.join(os.path.dirname(name), link_target))
        if lexical == ".." or lexical.startswith("../"):
            raise InvalidBundle(
                f"member {raw!r}: symlink target {link_target!r} points outside the bundle")
        self.claim(name, raw, counts=True)
        self.links.append((name, link_target))

    def finish_links(self) -> None:
        root_real = os.path.realpath(self.root)
        for name, link_target in self.links:
            path = self.root / name
            # Refuse to create anything through a symlink made earlier in this loop: a chain of
            # links that are each "inside" on paper can still lead out (x -> ., y -> x/..).
            for parent in reversed(Path(name).parents[:-1]):
                if (self.root / parent).is_symlink():
                    raise InvalidBundle(f"member {name!r}: path goes through a symlink")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(link_target, path)
        for name, link_target in self.links:
            real = os.path.realpath(self.root / name)
            if real != root_real and not real.startswith(root_real + os.sep):
                raise InvalidBundle(
                    f"member {name!r}: symlink target {link_target!r} resolves outside the bundle")


class _LimitedReader(io.RawIOBase):
    """Caps the decompressed tar stream, so huge headers/padding cannot run away either."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self.inner = inner
        self.left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(min(len(b), self.left + 1))
        if len(data) > self.left:
            raise InvalidBundle("archive decompresses to more data than the limits allow")
        self.left -= len(data)
        b[: len(data)] = data
        return len(data)


def _unpack_tar(src: bytes, ex: _Extractor, compressed: bool) -> None:
    raw: IO[bytes] = io.BytesIO(src)
    if compressed:
        raw = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    # Headers are 512 bytes plus up to 511 of padding per member; allow pax headers generously.
    # The reader buffers ahead, hence the extra chunks.
    limit = ex.max_bytes + 4096 * (ex.max_files + 16) + 4 * _CHUNK
    stream = io.BufferedReader(_LimitedReader(raw, limit), _CHUNK)
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for m in tf:
            if m.isdir():
                ex.directory(m.name)
            elif m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                ex.file(m.name, f, bool(m.mode & 0o111))
            elif m.issym():
                ex.symlink(m.name, m.linkname)
            elif m.islnk():
                raise InvalidBundle(f"member {m.name!r}: hard links are not allowed")
            else:
                raise InvalidBundle(
                    f"member {m.name!r}: device files, FIFOs and other special files are not"
                    " allowed")


def _unpack_zip(src: bytes, ex: _Extractor) -> None:
    with zipfile.ZipFile(io.BytesIO(src)) as zf:
        infos = zf.infolist()
        if sum(1 for i in infos if not i.is_dir()) > ex.max_files:
            raise InvalidBundle(f"archive has more than {ex.max_files} files")
        for info in infos:
            # Windows tools sometimes write '\' separators; the zip spec says '/'.
            name = info.filename.replace("\\", "/")
            mode = info.external_attr >> 16
            ftype = stat.S_IFMT(mode)
            if info.is_dir() or ftype == stat.S_IFDIR:
                ex.directory(name)
            elif ftype == stat.S_IFLNK:
                with zf.open(info) as f:
                    target = f.read(4097)
                if len(target) > 4096:
                    raise InvalidBundle(f"member {name!r}: symlink target too long")
                ex.symlink(name, target.decode("utf-8", "surrogateescape"))
            elif ftype in (0, stat.S_IFREG):
                with zf.open(info) as f:
                    ex.file(name, f, bool(mode & 0o111))
            else:
                raise InvalidBundle(
                    f"member {name!r}: device files, FIFOs and other special files are not"
                    " allowed")


def unpack(src: bytes, dest: Path, *, max_bytes: int, max_files: int) -> None:
    """Unpack a zip, tar or tar.gz into ``dest`` (which must not exist) atomically.

    Raises InvalidBundle naming the member and the rule; on any failure nothing is left behind.
    Raises FileExistsError if ``dest`` already exists (the caller's bug, not the upload's).
    """
    if src[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        kind = "zip"
    elif src[:2] == b"\x1f\x8b":
        kind = "tar.gz"
    elif src[257:262] == b"ustar":
        kind = "tar"
    else:
        raise InvalidBundle("unsupported archive format: expected .zip, .tar or .tar.gz")
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        ex = _Extractor(tmp, max_bytes, max_files)
        try:
            if kind == "zip":
                _unpack_zip(src, ex)
            else:
                _unpack_tar(src, ex, compressed=kind == "tar.gz")
            ex.finish_links()
        except InvalidBundle:
            raise
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, gzip.BadGzipFile,
                NotImplementedError, UnicodeError, ValueError, RuntimeError) as e:
            raise InvalidBundle(f"corrupt {kind} archive: {e}") from None
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as e:
            raise InvalidBundle(f"archive members conflict: {e.filename!r} is both a file and a"
                                " folder") from None
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of files, symlinks and dirs, sorted, skipping build junk."""
    def rec(d: Path, rel: str) -> Iterator[tuple[str, Path]]:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            r = f"{rel}{entry.name}"
            p = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                if entry.name in SKIP_DIRS:
                    continue
                yield r, p
                yield from rec(p, r + "/")
            elif entry.name.endswith(SKIP_SUFFIXES) and not entry.is_symlink():
                continue
            else:
                yield r, p
    yield from rec(root, "")


def _check_link(root: Path, rel: str, p: Path) -> str:
    target = os.readlink(p)
    real = os.path.realpath(p)
    root_real = os.path.realpath(root)
    if os.path.isabs(target) or not (real == root_real or real.startswith(root_real + os.sep)):
        raise InvalidBundle(f"{rel}: symlink to {target!r} points outside the folder")
    return target


def pack_dir(path: Path, *, max_bytes: int | None = None) -> bytes:
    """Deterministic tar.gz of ``path``: same content -> same bytes (mtime 0, uid/gid 0)."""
    buf = io.BytesIO()
    total = 0
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="", compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel, p in _walk(path):
            st = os.lstat(p)
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = _check_link(path, rel, p)
                info.mode = 0o777
                tf.addfile(info)
            elif stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if max_bytes is not None and total > max_bytes:
                    raise InvalidBundle(f"{path} holds more than {max_bytes} bytes (at {rel})")
                info.size = st.st_size
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(p, "rb") as f:
                    tf.addfile(info, f)
            else:
                raise InvalidBundle(f"{rel}: special files (devices, FIFOs, sockets) cannot be"
                                    " packed")
    return buf.getvalue()


def tree_hash(path: Path) -> str:
    """sha256 hex of the tree's files and symlinks: names, exec bits and contents only.

    Directories (and so empty ones), mtimes, owners and the archive format do not count; the
    same build junk as ``pack_dir`` is skipped, so hash(folder) == hash(unpack(pack_dir(folder))).
    """
    h = hashlib.sha256()
    for rel, p in _walk(path):
        st = os.lstat(p)
        name = rel.encode("utf-8", "surrogateescape")
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(p).encode("utf-8", "surrogateescape")
            h.update(b"L\0" + name + b"\0" + target + b"\0")
        elif stat.S_ISREG(st.st_mode):
            mode = b"x" if st.st_mode & 0o111 else b"-"
            # The length prefix keeps (name, content) pairs from running into each other.
            h.update(b"F\0" + name + b"\0" + mode + b"\0" + str(st.st_size).encode() + b"\0")
            with open(p, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
    return h.hexdigest()
