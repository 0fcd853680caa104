"""`squall bucket|cp|ls` and the AWS CLI (`aws s3 cp/ls/sync`) against the S3 API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import s3_helpers
from tests.conftest import PlatformProc

AWS = str(Path(sys.executable).parent / "aws")


@pytest.fixture(scope="module")
def p(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PlatformProc]:
    proc = s3_helpers.start(tmp_path_factory.mktemp("s3cli") / "data")
    proc.env["SQUALL_S3_URL"] = proc.s3_url  # type: ignore[attr-defined]
    yield proc
    proc.close()


def test_squall_bucket_cp_and_ls(p: PlatformProc, tmp_path: Path) -> None:
    assert "Created bucket media" in p.cli("bucket", "create", "media").stdout
    assert "media" in p.cli("bucket", "ls").stdout
    src = tmp_path / "clip.bin"
    src.write_bytes(os.urandom(9 * 1024 * 1024))  # above the progress-bar and multipart size
    up = p.cli("cp", str(src), "s3://media/videos/")
    assert "upload:" in up.stdout and "s3://media/videos/clip.bin" in up.stdout
    listing = p.cli("ls", "s3://media/").stdout
    assert "PRE videos/" in " ".join(listing.split())
    assert "clip.bin" in p.cli("ls", "s3://media/videos/").stdout
    back = tmp_path / "back.bin"
    p.cli("cp", "s3://media/videos/clip.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    failed = p.cli("bucket", "rm", "media", check=False)
    assert failed.returncode != 0 and "BucketNotEmpty" in failed.stderr
    bad = p.cli("bucket", "create", "Bad_Name", check=False)
    assert bad.returncode != 0 and "InvalidBucketName" in bad.stderr


@pytest.mark.skipif(not Path(AWS).exists(), reason="the AWS CLI (awscli) is not installed")
def test_aws_cli_cp_ls_sync(p: PlatformProc, tmp_path: Path) -> None:
    akid, secret = s3_helpers.pair(p.admin_key)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": akid, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}

    def aws(*args: str) -> str:
        out = subprocess.run([AWS, "--endpoint-url", p.s3_url, *args],  # type: ignore[attr-defined]
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    aws("s3", "mb", "s3://from-aws")
    local = tmp_path / "site"
    (local / "css").mkdir(parents=True)
    (local / "index.html").write_text("<h1>hi</h1>")
    (local / "css" / "a b.css").write_text("body{}")
    aws("s3", "cp", str(local / "index.html"), "s3://from-aws/index.html")
    assert "index.html" in aws("s3", "ls", "s3://from-aws/")
    aws("s3", "sync", str(local), "s3://from-aws/site/")
    listed = aws("s3", "ls", "--recursive", "s3://from-aws/site/")
    assert "site/css/a b.css" in listed and "site/index.html" in listed
    out = tmp_path / "down"
    aws("s3", "sync", "s3://from-aws/site/", str(out))
    assert (out / "css" / "a b.css").read_text() == "body{}"
    assert aws("s3", "sync", str(local), "s3://from-aws/site/").strip() == ""  # up to date
    shutil.rmtree(out)
