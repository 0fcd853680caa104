"""Fails on purpose, to show what errors look like: an exception, a timeout, or a crash."""

import os
import time


class PaymentDeclined(Exception):
    pass


def handler(event, context):
    query = event.get("queryStringParameters") or {}
    mode = query.get("mode") or (event.get("mode") if isinstance(event, dict) else None)
    if mode == "timeout":
        time.sleep(context.get_remaining_time_in_millis() / 1000 + 1)
    if mode == "crash":
        os._exit(3)
    raise PaymentDeclined("card 4242 was declined")
