"""S3's error documents: ``<Error><Code>NoSuchKey</Code><Message>...</Message>...</Error>``."""

from __future__ import annotations

from xml.sax.saxutils import escape

from squall.errors import SquallError

# S3's code -> HTTP status (https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html)
STATUS: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "PreconditionFailed": 412,
    "QuotaExceeded": 403,
    "RequestTimeTooSkewed": 403,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(SquallError):
    """An error S3 clients understand: ``code`` is S3's, the status follows from it."""

    def __init__(self, code: str, message: str, **details: str) -> None:
        super().__init__(message, code=code, status=STATUS.get(code, 400), details=details)


def error_xml(code: str, message: str, resource: str, request_id: str,
              details: dict[str, object] | None = None) -> bytes:
    extra = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in (details or {}).items()
                    if k.isalnum())
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
            f"<Message>{escape(message)}</Message><Resource>{escape(resource)}</Resource>"
            f"{extra}<RequestId>{request_id}</RequestId></Error>").encode()
