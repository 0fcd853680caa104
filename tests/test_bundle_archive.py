"""Archive safety (real files): traversal, links, devices, bombs, limits; packing; tree hashes."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from squall.bundle.archive import pack_dir, tree_hash, unpack
from squall.errors import InvalidBundle

MB = 1024 * 1024


def make_tree(root: Path) -> Path:
    root.mkdir()
    (root / "handler.py").write_text("def handler(event, context):\n    return event\n")
    (root / "lib").mkdir()
    (root / "lib" / "util.py").write_text("X = 1\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "data.bin").write_bytes(bytes(range(256)) * 100)
    os.symlink("lib/util.py", root / "alias.py")
    return root


def zip_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in sorted(filenames):
                p = Path(dirpath) / fn
                rel = p.relative_to(root).as_posix()
                info = zipfile.ZipInfo(rel)
                st = os.lstat(p)
                info.external_attr = (st.st_mode & 0xFFFF) << 16
                data = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
                zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


def zip_of(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def test_zip_and_targz_of_same_folder_hash_the_same(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    unpack(zip_dir(src), tmp_path / "from-zip", max_bytes=10 * MB, max_files=100)
    unpack(pack_dir(src), tmp_path / "from-tgz", max_bytes=10 * MB, max_files=100)
    h = tree_hash(src)
    assert tree_hash(tmp_path / "from-zip") == h
    assert tree_hash(tmp_path / "from-tgz") == h
    for d in ("from-zip", "from-tgz"):
        out = tmp_path / d
        assert (out / "handler.py").read_text().startswith("def handler")
        assert os.access(out / "bin" / "tool", os.X_OK)
        assert not os.access(out / "handler.py", os.X_OK)
        assert os.readlink(out / "alias.py") == "lib/util.py"
        assert (out / "alias.py").read_text() == "X = 1\n"
    # no temp siblings left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["from-tgz", "from-zip", "src"]


def test_tree_hash_sees_content_mode_and_names_not_mtime(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    h = tree_hash(src)
    os.utime(src / "handler.py", (1, 1))
    assert tree_hash(src) == h
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (src / "lib" / "y.pyc").write_bytes(b"junk")
    assert tree_hash(src) == h
    (src / "handler.py").chmod(0o755)
    assert tree_hash(src) != h
    (src / "handler.py").chmod(0o644)
    assert tree_hash(src) == h
    (src / "lib" / "util.py").write_text("X = 2\n")
    assert tree_hash(src) != h
    (src / "lib" / "util.py").write_text("X = 1\n")
    (src / "lib" / "util.py").rename(src / "lib" / "util2.py")
    assert tree_hash(src) != h


def test_pack_dir_is_deterministic_and_skips_junk(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    for junk in ("__pycache__", ".git", ".venv", ".squall"):
        (src / junk).mkdir()
        (src / junk / "f").write_text("junk")
    (src / "lib" / "m.pyc").write_bytes(b"junk")
    first = pack_dir(src)
    os.utime(src / "handler.py", (12345, 12345))
    assert pack_dir(src) == first
    with tarfile.open(fileobj=io.BytesIO(first)) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert not any(n.startswith((".git", ".venv", ".squall", "__pycache__")) or n.endswith(".pyc")
                   for n in names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)


def test_pack_dir_rejects_symlink_outside(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    (tmp_path / "secret").write_text("s")
    os.symlink("../secret", src / "leak")
    with pytest.raises(InvalidBundle, match=r"leak.*outside"):
        pack_dir(src)
    os.unlink(src / "leak")
    os.symlink("/etc/passwd", src / "leak")
    with pytest.raises(InvalidBundle, match=r"outside"):
        pack_dir(src)


def test_pack_dir_max_bytes(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src")
    with pytest.raises(InvalidBundle, match=r"more than 1000 bytes"):
        pack_dir(src, max_bytes=1000)
    assert pack_dir(src, max_bytes=MB)


BAD_TARS: list[tuple[str, list[tuple[tarfile.TarInfo, bytes | None]], str]] = [
    ("dotdot", [(tar_member("ok.py"), b"1"), (tar_member("../x"), b"evil")],
     r"'\.\./x'.*'\.\.'"),
    ("dotdot-inner", [(tar_member("a/../../x"), b"evil")], r"'\.\.'"),
    ("absolute", [(tar_member("/etc/x"), b"evil")], "'/etc/x': absolute"),
    ("symlink-out", [(tar_member("l", tarfile.SYMTYPE, "../../etc/passwd"), None)],
     "'l'.*outside"),
    ("symlink-abs", [(tar_member("l", tarfile.SYMTYPE, "/etc/passwd"), None)], "'l'.*absolute"),
    ("symlink-chain", [(tar_member("x", tarfile.SYMTYPE, "."), None),
                       (tar_member("y", tarfile.SYMTYPE, "x/.."), None)],
     "'y'.*resolves outside"),
    ("through-link", [(tar_member("x", tarfile.SYMTYPE, "."), None),
                      (tar_member("y", tarfile.SYMTYPE, "x/.."), None),
                      (tar_member("y/sub/evil", tarfile.SYMTYPE, "f"), None)],
     "through a symlink"),
    ("hardlink", [(tar_member("a.py"), b"1"), (tar_member("b.py", tarfile.LNKTYPE, "a.py"), None)],
     "'b.py': hard links"),
    ("chardev", [(tar_member("dev", tarfile.CHRTYPE), None)], "'dev': device"),
    ("fifo", [(tar_member("p", tarfile.FIFOTYPE), None)], "'p': device files, FIFOs"),
    ("duplicate", [(tar_member("a.py"), b"1"), (tar_member("a.py"), b"2")], "twice"),
    ("file-and-dir", [(tar_member("a"), b"1"), (tar_member("a/b"), b"2")], "conflict"),
]


@pytest.mark.parametrize(("label", "members", "pattern"), BAD_TARS, ids=[b[0] for b in BAD_TARS])
def test_bad_tar_members_rejected_and_nothing_left(
        tmp_path: Path, label: str, members: list[tuple[tarfile.TarInfo, bytes | None]],
        pattern: str) -> None:
    dest = tmp_path / "out" / "bundle"
    with pytest.raises(InvalidBundle, match=pattern):
        unpack(tar_of(members), dest, max_bytes=MB, max_files=100)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "out" / "x").exists()


def test_symlink_inside_is_allowed(tmp_path: Path) -> None:
    data = tar_of([(tar_member("pkg/mod.py"), b"A = 1\n"),
                   (tar_member("pkg/alias.py", tarfile.SYMTYPE, "mod.py"), None),
                   (tar_member("top", tarfile.SYMTYPE, "pkg"), None)], gz=False)
    unpack(data, tmp_path / "b", max_bytes=MB, max_files=10)
    assert (tmp_path / "b" / "top" / "alias.py").read_text() == "A = 1\n"


@pytest.mark.parametrize(("label", "entries", "pattern"), [
    ("dotdot", [("../x", b"evil", 0o100644)], r"'\.\.'"),
    ("absolute", [("/etc/x", b"evil", 0o100644)], "absolute"),
    ("backslash-dotdot", [("..\\x", b"evil", 0o100644)], r"'\.\.'"),
    ("symlink-out", [("l", b"../../etc/passwd", 0o120777)], "'l'.*outside"),
    ("device", [("d", b"", 0o020644)], "'d': device"),
])
def test_bad_zip_members(tmp_path: Path, label: str, entries: list[tuple[str, bytes, int]],
                         pattern: str) -> None:
    dest = tmp_path / "bundle"
    with pytest.raises(InvalidBundle, match=pattern):
        unpack(zip_of(entries), dest, max_bytes=MB, max_files=100)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_zip_bomb_stopped_and_dest_absent(tmp_path: Path) -> None:
    zeros = zip_of([("ok.py", b"x = 1\n", 0o100644), ("zeros.bin", bytes(50 * MB), 0o100644)])
    assert len(zeros) < MB  # it really is a bomb: tiny archive, huge content
    dest = tmp_path / "bundle"
    with pytest.raises(InvalidBundle, match=r"'zeros.bin'.*more than 10485760 bytes"):
        unpack(zeros, dest, max_bytes=10 * MB, max_files=100)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_targz_bomb_stopped_and_dest_absent(tmp_path: Path) -> None:
    bomb = tar_of([(tar_member("zeros.bin"), bytes(50 * MB))])
    assert len(bomb) < MB
    dest = tmp_path / "bundle"
    with pytest.raises(InvalidBundle, match=r"'zeros.bin'.*more than"):
        unpack(bomb, dest, max_bytes=10 * MB, max_files=100)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_limits_are_inclusive(tmp_path: Path) -> None:
    data = tar_of([(tar_member("a"), b"x" * 1000), (tar_member("b"), b"y" * 24)])
    unpack(data, tmp_path / "ok", max_bytes=1024, max_files=2)
    with pytest.raises(InvalidBundle, match=r"'b'.*more than 1023 bytes"):
        unpack(data, tmp_path / "no", max_bytes=1023, max_files=2)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_too_many_files(tmp_path: Path, fmt: str) -> None:
    names = [f"f{i}.py" for i in range(5)]
    if fmt == "zip":
        data = zip_of([(n, b"1", 0o100644) for n in names])
    else:
        data = tar_of([(tar_member(n), b"1") for n in names])
    with pytest.raises(InvalidBundle, match=r"more than 3 files"):
        unpack(data, tmp_path / "b", max_bytes=MB, max_files=3)
    assert not (tmp_path / "b").exists()
    unpack(data, tmp_path / "b", max_bytes=MB, max_files=5)
    assert len(list((tmp_path / "b").iterdir())) == 5


@pytest.mark.parametrize("data", [b"", b"hello world", b"\x1f\x8bgarbage", b"PK\x03\x04junk",
                                  b"Rar!\x1a\x07\x00" + bytes(600)])
def test_unsupported_or_corrupt(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(InvalidBundle, match=r"unsupported archive format|corrupt"):
        unpack(data, tmp_path / "b", max_bytes=MB, max_files=10)
    assert list(tmp_path.iterdir()) == []


def test_truncated_targz(tmp_path: Path) -> None:
    data = tar_of([(tar_member("a.bin"), os.urandom(200_000))])
    with pytest.raises(InvalidBundle, match=r"corrupt tar.gz"):
        unpack(data[: len(data) // 2], tmp_path / "b", max_bytes=MB, max_files=10)
    assert list(tmp_path.iterdir()) == []


def test_dest_must_not_exist(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        unpack(tar_of([(tar_member("a"), b"1")]), tmp_path / "b", max_bytes=MB, max_files=10)


def test_modes_are_normalised(tmp_path: Path) -> None:
    setuid = tar_member("s")
    setuid.mode = 0o4777
    unpack(tar_of([(setuid, b"#!/bin/sh\n")]), tmp_path / "b", max_bytes=MB, max_files=10)
    assert stat.S_IMODE(os.stat(tmp_path / "b" / "s").st_mode) == 0o755
