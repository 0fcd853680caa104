"""Metering: billed milliseconds, GB-seconds and cost, from invocation records."""
