"""A small JSON API with routes: GET /items, GET /items/<id>, POST /items (in-memory per instance).

State in an instance is only a cache: instances come and go. Real state lives in a backing service.
"""

import json

ITEMS = {"1": {"id": "1", "name": "umbrella"}}


def _reply(status, body):
    return {"statusCode": status, "headers": {"content-type": "application/json"},
            "body": json.dumps(body)}


def handler(event, context):
    method = event["requestContext"]["http"]["method"]
    path = event["requestContext"]["http"]["path"].rstrip("/") or "/"
    parts = [p for p in path.split("/") if p]
    if parts[:1] != ["items"]:
        return _reply(404, {"error": f"no route for {method} {path}"})
    if method == "GET" and len(parts) == 1:
        return _reply(200, {"items": list(ITEMS.values())})
    if method == "GET" and len(parts) == 2:
        item = ITEMS.get(parts[1])
        return _reply(200, item) if item else _reply(404, {"error": "no such item"})
    if method == "POST" and len(parts) == 1:
        try:
            data = json.loads(event.get("body") or "{}")
        except json.JSONDecodeError:
            return _reply(400, {"error": "body must be JSON"})
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return _reply(400, {"error": "body must be an object with a string 'name'"})
        item = {"id": str(len(ITEMS) + 1), "name": data["name"]}
        ITEMS[item["id"]] = item
        return _reply(201, item)
    return _reply(405, {"error": f"{method} not allowed on {path}"})
