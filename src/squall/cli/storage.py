"""CLI: ``squall bucket create|ls|rm``, ``squall cp``, ``squall ls s3://bucket/prefix``.

boto3 does the transfers (multipart, retries) against the S3 API, signed with the CLI's API key
used as an AWS pair. The S3 endpoint is ``--s3-url`` / ``SQUALL_S3_URL``, else the platform URL's
host on port 9000.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from squall.cli.client import Client, table

S3_URL = click.option("--s3-url", envvar="SQUALL_S3_URL", default=None,
                      help="S3 endpoint (env SQUALL_S3_URL; default: the platform host, port "
                           "9000).")
PROGRESS_FROM = 8 * 1024 * 1024  # bytes: smaller transfers finish before a bar helps


def s3_client(ctx: click.Context, s3_url: str | None) -> Any:
    import boto3
    from botocore.config import Config

    from squall.tenancy.keys import access_key_id, parse_token

    client = Client.from_ctx(ctx)
    s3_url = s3_url or os.environ.get("SQUALL_S3_URL")
    parsed = parse_token(client.api_key or "")
    if parsed is None:
        raise click.ClickException("no API key: pass --api-key or set SQUALL_API_KEY")
    if s3_url is None:
        u = urlsplit(client.url)
        s3_url = f"{u.scheme}://{u.hostname}:9000"
    return boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1",
                        aws_access_key_id=access_key_id(parsed[0]),
                        aws_secret_access_key=parsed[1],
                        config=Config(signature_version="s3v4",
                                      s3={"addressing_style": "path"}))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not uri.startswith("s3://"):
        raise click.BadParameter(f"{uri!r} is not an s3://bucket/key address")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise click.BadParameter(f"{uri!r} names no bucket")
    return bucket, key


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import ClientError, EndpointConnectionError

    try:
        return fn(*args, **kwargs)
    except ClientError as e:
        err = e.response.get("Error", {})
        raise click.ClickException(f"{err.get('Message', e)} [{err.get('Code')}]") from None
    except EndpointConnectionError as e:
        raise click.ClickException(f"cannot reach the S3 API: {e}") from None


@click.group("bucket")
def bucket() -> None:
    """Buckets of the built-in S3-compatible object store."""


@bucket.command("create")
@click.argument("name")
@S3_URL
@click.pass_context
def bucket_create(ctx: click.Context, name: str, s3_url: str | None) -> None:
    _call(s3_client(ctx, s3_url).create_bucket, Bucket=name)
    click.echo(f"Created bucket {name}")


@bucket.command("ls")
@S3_URL
@click.pass_context
def bucket_ls(ctx: click.Context, s3_url: str | None) -> None:
    data = _call(s3_client(ctx, s3_url).list_buckets)
    table([{"name": b["Name"], "created": b["CreationDate"].strftime("%Y-%m-%d %H:%M:%S")}
           for b in data["Buckets"]], ["name", "created"])


@bucket.command("rm")
@click.argument("name")
@S3_URL
@click.pass_context
def bucket_rm(ctx: click.Context, name: str, s3_url: str | None) -> None:
    """Remove an empty bucket."""
    _call(s3_client(ctx, s3_url).delete_bucket, Bucket=name)
    click.echo(f"Removed bucket {name}")


def list_s3(ctx: click.Context, uri: str, s3_url: str | None = None) -> None:
    """``squall ls s3://bucket/prefix``: "folders" (PRE) and objects, one level deep."""
    name, prefix = split_s3(uri)
    paginator = s3_client(ctx, s3_url).get_paginator("list_objects_v2")
    pages = _call(lambda: list(paginator.paginate(Bucket=name, Prefix=prefix, Delimiter="/")))
    for page in pages:
        for cp in page.get("CommonPrefixes", []):
            click.echo(f"{'PRE':>30} {cp['Prefix']}")
        for o in page.get("Contents", []):
            when = o["LastModified"].strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{when} {o['Size']:>10} {o['Key']}")


class _Bar:
    """boto3's progress callback (bytes since last call, from worker threads) on a click bar."""

    def __init__(self, total: int, label: str) -> None:
        self.bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                     show_pos=False, show_percent=True, show_eta=True)
        self.bar.__enter__()

    def __call__(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.__exit__(None, None, None)


@click.command("cp")
@click.argument("src")
@click.argument("dst")
@S3_URL
@click.pass_context
def cp(ctx: click.Context, src: str, dst: str, s3_url: str | None) -> None:
    """Copy LOCAL s3://bucket/key, or s3://bucket/key LOCAL (multipart above 8 MiB, with a
    progress bar). A key ending in '/' (or none) takes the local file's name."""
    s3 = s3_client(ctx, s3_url)
    if dst.startswith("s3://") and not src.startswith("s3://"):
        path = Path(src)
        if not path.is_file():
            raise click.BadParameter(f"{src} is not a file")
        name, key = split_s3(dst)
        key = key + path.name if key == "" or key.endswith("/") else key
        _transfer(s3.upload_file, path.stat().st_size, f"upload {path.name}",
                  str(path), name, key)
        click.echo(f"upload: {src} to s3://{name}/{key}")
    elif src.startswith("s3://") and not dst.startswith("s3://"):
        name, key = split_s3(src)
        target = Path(dst)
        if target.is_dir() or dst.endswith(os.sep):
            target = target / key.rsplit("/", 1)[-1]
        size = int(_call(s3.head_object, Bucket=name, Key=key)["ContentLength"])
        _transfer(s3.download_file, size, f"download {key}", name, key, str(target))
        click.echo(f"download: s3://{name}/{key} to {target}")
    else:
        raise click.UsageError("copy between a local file and an s3:// address")


def _transfer(fn: Any, size: int, label: str, *args: str) -> None:
    bar = _Bar(size, label) if size >= PROGRESS_FROM else None
    try:
        _call(fn, *args, Callback=bar)
    finally:
        if bar is not None:
            bar.close()


COMMANDS = [bucket, cp]
