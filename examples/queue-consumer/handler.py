"""Sum order totals from a Redis stream.

Every delivery is a CloudEvents 1.0 envelope; with batch_size > 1 the event is a list of them.
Entry fields arrive as text: XADD orders '*' sku A-1 qty 2 price 9.90
The CloudEvent id (<stream>/<entry id>) is the same on a redelivery: use it to deduplicate.
"""

import logging

log = logging.getLogger("queue-consumer")


def handler(event, context):
    events = event if isinstance(event, list) else [event]
    total = 0.0
    for ev in events:
        fields = ev["data"]
        qty, price = int(fields["qty"]), float(fields["price"])
        total += qty * price
        log.info("order %s (%s, attempt %s): %s x %s",
                 ev["redisid"], fields["sku"], ev.get("deliveryattempt"), qty, price)
    return {"orders": len(events), "total": round(total, 2)}
