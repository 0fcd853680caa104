"""CloudEvents 1.0 envelopes for event-source deliveries, built with the CloudEvents SDK.

``make_cloudevent`` returns the *structured-mode JSON* form as a dict (what a handler receives as
its ``event``): ``{"specversion": "1.0", "id", "source", "type", "time", "datacontenttype",
"subject"?, <extensions>..., "data" | "data_base64"}``. The SDK's JSON format does the
serialisation (RFC 3339 ``time`` with ``Z``, ``data_base64`` for bytes), so the dict is exactly what
any CloudEvents consumer would parse.

Extension names follow the spec: lowercase a-z and 0-9 only, at most 20 characters
(``streamseq``, ``deliveryattempt``, ``redisid``, ``pgtable`` ...). Values must be strings,
integers or booleans (the spec's extension types that JSON can carry without a convention).
"""

from __future__ import annotations

import json
import re
from typing import Any

from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from squall.errors import BadRequest

_EXT_NAME_RE = re.compile(r"^[a-z0-9]{1,20}$")
# Context attributes and reserved members that an extension must not shadow.
_RESERVED = frozenset({"id", "source", "type", "specversion", "time", "subject",
                       "datacontenttype", "dataschema", "data", "data_base64"})
_FORMAT = JSONFormat()


class InvalidCloudEvent(BadRequest):
    code = "invalid_cloudevent"


def make_cloudevent(*, source: str, type: str, data: Any, subject: str | None = None,
                    extensions: dict[str, Any] | None = None, id: str | None = None,
                    datacontenttype: str = "application/json") -> dict[str, Any]:
    """Build a CloudEvent with the SDK and return its structured JSON dict.

    ``data`` may be any JSON value (with a JSON ``datacontenttype``), ``str`` or ``bytes``
    (the latter is carried as ``data_base64``). ``id`` defaults to a random UUID; pass a stable
    one (e.g. ``<stream>:<sequence>``) so that redeliveries carry the same id and handlers can
    deduplicate. Raises ``InvalidCloudEvent`` for an invalid attribute or extension.
    """
    attributes: dict[str, Any] = {"source": source, "type": type,
                                  "datacontenttype": datacontenttype}
    if id is not None:
        attributes["id"] = id
    if subject is not None:
        attributes["subject"] = subject
    for name, value in (extensions or {}).items():
        if not _EXT_NAME_RE.match(name) or name in _RESERVED:
            raise InvalidCloudEvent(
                f"extension name {name!r} is not valid: use 1..20 lowercase letters a-z and"
                " digits, not a context attribute name")
        if value is None:
            continue
        if not isinstance(value, str | int | bool):
            raise InvalidCloudEvent(
                f"extension {name!r} must be a string, integer or boolean,"
                f" got {value.__class__.__name__}")
        attributes[name] = value
    try:
        # The SDK types data as dict | str | bytes | None; lists and numbers serialise the same
        # way under a JSON content type, which is all the structured format needs.
        event = CloudEvent(attributes, data)
        out: dict[str, Any] = json.loads(_FORMAT.write(event))
    except BaseCloudEventException as exc:
        raise InvalidCloudEvent(f"invalid CloudEvent: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise InvalidCloudEvent(f"CloudEvent data is not JSON-serialisable: {exc}") from exc
    return out
