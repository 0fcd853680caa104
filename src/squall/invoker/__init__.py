"""The invoker: finds or starts an instance, enforces limits and timeout, records the invocation."""
