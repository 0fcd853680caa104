"""The audit log: every control-plane change, with who (key id), where (tenant, client address),
what (action, target) and when. Written before the response goes out, so a change that was
acknowledged is on record."""

from __future__ import annotations

import json
import time
from typing import Any

from squall.api.routes import Call
from squall.platform import Platform
from squall.store import tenants as store


async def audit(p: Platform, call: Call, action: str, target: str | None,
                detail: dict[str, Any] | None = None, *, tenant: str | None = None) -> None:
    row = (time.time(), call.key_id, tenant or call.tenant, action, target, call.client,
           None if detail is None else json.dumps(detail, default=str))
    await p.db.run(lambda c: store.audit_many(c, [row]))
