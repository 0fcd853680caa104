"""Replay and the local dev loop.

- ``capture``: the platform keeps the events of recorded invocations (by default the failed
  ones) for a bounded time, batched off the hot path, so that one can be run again;
- ``local``: a function folder run on this machine in the platform's own runtime (zygote, fork,
  the Lambda context object), which ``squall replay --local`` and ``squall dev`` drive;
- ``dev``: ``squall dev``: reload on save, feed it a file or a recorded event, serve it over HTTP.

Replaying on the platform is ``POST /api/v1/invocations/{request_id}/replay`` (squall.api.replay).
"""
