"""A GitHub-style webhook receiver.

POST /hooks/gh-events with header X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body with the
secret>; a bad or missing signature gets 401 invalid_signature and nothing runs. The handler gets
a CloudEvent: type "squall.webhook", data = the JSON body (text, or data_base64 when binary),
and the useful headers as extensions (githubevent, githubdelivery, httpcontenttype, ...).
"""


def handler(event, context):
    kind = event.get("githubevent", "unknown")
    action = event["data"].get("action") if isinstance(event.get("data"), dict) else None
    print(f"{kind} {action} delivery={event.get('githubdelivery')}")
    return {"event": kind, "action": action}
