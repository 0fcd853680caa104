"""The thumbnail pipeline of examples/thumbnails, end to end with a real JPEG."""

from __future__ import annotations

import io
from pathlib import Path

from botocore.exceptions import ClientError
from PIL import Image

from tests import s3_helpers
from tests.conftest import wait_for

EXAMPLE = Path(__file__).parent.parent / "examples" / "thumbnails"


def test_upload_makes_a_thumbnail(tmp_path: Path) -> None:
    """The example unchanged: its instances find the object store's endpoint and credentials of
    their own (scope storage, their tenant's buckets only) in their environment."""
    p = s3_helpers.start(tmp_path / "data")
    try:
        p.deploy(EXAMPLE)
        s3 = s3_helpers.client(p)
        s3.create_bucket(Bucket="images")
        photo = io.BytesIO()
        Image.new("RGB", (640, 480), (200, 30, 30)).save(photo, "JPEG")
        s3.put_object(Bucket="images", Key="uploads/red cat.jpg", Body=photo.getvalue(),
                      ContentType="image/jpeg")
        s3.put_object(Bucket="images", Key="uploads/notes.txt", Body=b"not an image")

        def thumbnail() -> bytes | None:
            try:
                body: bytes = s3.get_object(Bucket="images",
                                            Key="thumbnails/red cat.jpg")["Body"].read()
            except ClientError:
                return None
            return body

        thumb = Image.open(io.BytesIO(wait_for(thumbnail, timeout=90,
                                               message="the thumbnail")))
        assert thumb.format == "JPEG" and thumb.size == (128, 96)

        # The function prints after its put_object returns, and its log lines are shipped after
        # that: the object can be visible a moment before the line is.
        def logged() -> bool:
            logs = p.http.get("/api/v1/functions/thumbnails/logs").json()["lines"]
            return any("thumbnail s3://images/thumbnails/red cat.jpg: 128x96" in x["line"]
                       for x in logs)

        wait_for(logged, timeout=30, message="the function's log line")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="images")["Contents"]]
        assert keys == ["thumbnails/red cat.jpg", "uploads/notes.txt", "uploads/red cat.jpg"]
        # The function's own credentials reach its tenant's buckets and nothing else.
        who = p.http.get("/api/v1/keys").json()["keys"]
        assert all(not k["name"] or not k["name"].startswith("function:") for k in who)
    finally:
        p.close()
