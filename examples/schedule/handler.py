"""A scheduled function: runs every 5 minutes and once a day at 09:00 Paris time.

Each firing is an async invocation whose event is EventBridge's scheduled-event shape:
{"version": "0", "id": <request id>, "detail-type": "Scheduled Event",
 "source": "squall.scheduler", "time": "2026-01-10T08:00:00Z", "resources": [<trigger id>],
 "detail": {}}
"""

import time


def handler(event, context):
    # event["id"] is also context.aws_request_id: a retried firing carries the same id.
    print(f"tick {event['time']} from {event['resources'][0]}")
    return {"tick": event["time"], "ran_at": time.time()}
