"""Server-Sent Events from a generator: `curl -N localhost:8080/fn/ticker?n=5` prints one event
every half second, as it is produced. A browser reads it with `new EventSource(url)`."""

import json
import time


def handler(event, context):
    query = event.get("queryStringParameters") or {}
    n = int(query.get("n", "5"))
    every = float(query.get("every", "0.5"))

    def events():
        for i in range(n):
            payload = {"i": i, "remaining_ms": context.get_remaining_time_in_millis()}
            yield f"id: {i}\nevent: tick\ndata: {json.dumps(payload)}\n\n"
            if i < n - 1:
                time.sleep(every)

    return {"statusCode": 200,
            "headers": {"content-type": "text/event-stream", "cache-control": "no-cache"},
            "body": events()}
