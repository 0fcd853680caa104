"""Object store benchmark: PUT/GET MB/s (1 MB and 100 MB objects) against copying the same bytes
on the same disk in the same run, and upload-to-function-start latency (p50/p99).

`make bench` runs it as a step (``run``; rows in bench/report.py ``_s3_rows``). Alone:
``.venv/bin/python bench/s3.py [--quick]`` starts its own ``squall up`` (free ports, temporary
data dir) and prints the measurements as JSON.

The disk baseline writes the same bytes into a new file beside the data dir and fsyncs it, as the
store does before it renames an object into place (squall.storage.layout), so both sides pay
for the same durability.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from platform_proc import Platform
from util import free_port, run_steps, summary, wait_for

from squall.tenancy.keys import access_key_id, parse_token

MB = 1024 * 1024
# The key and the wall clock at the handler's first line: the end of upload-to-function-start.
HANDLER = """import time
def handler(event, context):
    started = time.time()
    return {"key": event["Records"][0]["s3"]["object"]["key"], "t": started}
"""


class S3Platform(Platform):
    """A `squall up` whose S3 listener is on a free port (the default, 0, turns it off)."""

    def __init__(self) -> None:
        super().__init__()
        self.s3_port = free_port()

    def env(self) -> dict[str, str]:
        return {**super().env(), "SQUALL_S3_PORT": str(self.s3_port)}

    def s3(self) -> Any:
        parsed = parse_token(self.admin_key)
        assert parsed is not None, "the admin key is not a Squall key"
        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.s3_port}",
                            region_name="us-east-1", aws_access_key_id=access_key_id(parsed[0]),
                            aws_secret_access_key=parsed[1],
                            config=Config(retries={"max_attempts": 1}, signature_version="s3v4"))


def throughput(s3: Any, work: Path, size: int, rounds: int) -> dict[str, float]:
    """MB/s of PUT, GET and the disk baseline (write + fsync of the same bytes), ``rounds``
    objects of ``size`` bytes each."""
    body = os.urandom(size)
    t = {"put": 0.0, "get": 0.0, "copy": 0.0}
    for i in range(rounds):
        t0 = time.perf_counter()
        s3.put_object(Bucket="bench", Key=f"o{size}-{i}", Body=body)
        t1 = time.perf_counter()
        got = s3.get_object(Bucket="bench", Key=f"o{size}-{i}")["Body"].read()
        t2 = time.perf_counter()
        assert len(got) == size
        copy = work / f"copy{i}"
        with open(copy, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        t3 = time.perf_counter()
        copy.unlink()
        s3.delete_object(Bucket="bench", Key=f"o{size}-{i}")  # keep the disk use flat
        t["put"] += t1 - t0
        t["get"] += t2 - t1
        t["copy"] += t3 - t2
    return {**{k: size * rounds / MB / v for k, v in t.items()}, "n": rounds,
            "size_mb": size / MB}


def event_latency(p: S3Platform, s3: Any, work: Path, n: int) -> dict[str, Any]:
    """From the PUT request leaving the client to the handler's first line, one upload at a
    time (each waits for the previous event to have started: latency, not queueing)."""
    fn = work / "onupload"
    fn.mkdir()
    (fn / "handler.py").write_text(HANDLER)
    p.deploy(fn, "onupload")
    r = p.http.post("/api/v1/functions/onupload/triggers",
                    json={"type": "storage", "config": {"bucket": "bench", "prefix": "ev/"}})
    r.raise_for_status()
    sent: dict[str, float] = {}
    started: dict[str, float] = {}

    def collect(want: int) -> bool:
        rows = p.http.get("/api/v1/invocations",
                          params={"function": "onupload", "limit": n}).json()["invocations"]
        for row in rows:
            if row["status"] == "succeeded":
                started[row["result"]["key"]] = float(row["result"]["t"])
        return len(started) >= want

    for i in range(n):
        sent[f"ev/{i}"] = time.time()
        s3.put_object(Bucket="bench", Key=f"ev/{i}", Body=b"x")
        wait_for(functools.partial(collect, i + 1), 60, f"the event of upload {i}")
    samples = [(started[k] - sent[k]) * 1000 for k in sent]
    return summary(samples)


def run(quick: bool, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    p = S3Platform()
    with p:  # Platform.__enter__ is typed as the base class
        s3 = p.s3()
        s3.create_bucket(Bucket="bench")
        work = p.data_dir.parent / "work"  # beside the data dir: the same disk
        work.mkdir()
        run_steps([
            ("put_get_1mb", lambda: throughput(s3, work, MB, 10 if quick else 50)),
            ("put_get_100mb", lambda: throughput(s3, work, 100 * MB, 1 if quick else 3)),
            ("upload_to_start", lambda: event_latency(p, s3, work, 20 if quick else 100)),
        ], out, log, "s3")
    return out


if __name__ == "__main__":
    result = run("--quick" in sys.argv, lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=1))
