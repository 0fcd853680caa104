"""Make a 128 px JPEG thumbnail of every image uploaded under uploads/ of the bucket.

Triggered by a storage event (S3's notification record format). boto3 finds the endpoint and
the credentials in the environment (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION), so the code is the same as on AWS Lambda.
"""

import io
import os
import urllib.parse

import boto3
from PIL import Image

SIZE = (128, 128)
s3 = boto3.client("s3")

def handler(event, context):
    made = []
    for record in event["Records"]:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])  # keys arrive URL-encoded
        original = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        image = Image.open(io.BytesIO(original))
        image.thumbnail(SIZE)
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=85)
        target = "thumbnails/" + key.removeprefix("uploads/")
        # thumbnails/ is outside the trigger's prefix: writing there cannot trigger us again
        s3.put_object(Bucket=bucket, Key=target, Body=out.getvalue(), ContentType="image/jpeg")
        print(f"thumbnail s3://{bucket}/{target}: {image.width}x{image.height}, "
              f"{len(out.getvalue())} bytes (from {len(original)} bytes)")
        made.append({"key": target, "width": image.width, "height": image.height,
                     "bytes": len(out.getvalue())})
    return made
