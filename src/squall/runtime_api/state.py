"""The Lambda Runtime API's rules for one instance, as a pure state machine (time passed in).

One runtime process, one invocation at a time, as in Lambda::

    init --/next--> idle --invoke--> (queued) --/next--> busy --/response|/error--> idle ...
     \\--/init/error--> failed

Answers follow Lambda's runtime API (and its emulator, aws-lambda-runtime-interface-emulator,
rapi/rendering): a response for a request id that is not the current one is 400
``InvalidRequestID``; a second response for the same id, or any call the state does not allow
(``/init/error`` after init, ``/next`` with an invocation still unanswered), is 403
``InvalidStateTransition``; a response after the invocation's deadline is 410
``InvocationExpired`` (Lambda has no such answer because it has already reset the environment;
Squall kills the instance too, this covers the moment in between); a body over 6 MB is 413
``RequestEntityTooLarge``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

Phase = Literal["init", "idle", "busy", "failed"]
MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous payload limit, both directions


class ApiError(Exception):
    """An answer other than success: HTTP status + Lambda's errorType."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass
class Invocation:
    request_id: str
    payload: bytes                  # the event, JSON
    deadline_ms: int                # Unix ms
    function_arn: str
    trace_id: str = ""
    answered: bool = field(default=False, compare=False)


@dataclass
class RuntimeState:
    phase: Phase = "init"
    queued: Invocation | None = None
    current: Invocation | None = None
    # recent answered / expired ids, so a late or repeated answer gets the right error
    answered: deque[str] = field(default_factory=lambda: deque(maxlen=64))
    expired: deque[str] = field(default_factory=lambda: deque(maxlen=64))

    def submit(self, inv: Invocation) -> None:
        """The platform hands over one invocation (the pool guarantees one at a time)."""
        if self.queued is not None or self.current is not None:
            raise ApiError(409, "InstanceBusy", "the instance already has an invocation")
        self.queued = inv

    def can_take(self) -> bool:
        return self.queued is not None

    def begin_next(self) -> None:
        """A /next request arrived (it may then wait for an invocation)."""
        if self.phase == "failed":
            raise ApiError(403, "InvalidStateTransition",
                           "the runtime reported an init error; this instance is finished")
        if self.current is not None:
            raise ApiError(403, "InvalidStateTransition",
                           f"invocation {self.current.request_id} has no response yet: post "
                           f"its /response or /error before asking for the next one")
        if self.phase == "init":
            self.phase = "idle"

    def take(self) -> Invocation:
        """Deliver the queued invocation to a waiting /next."""
        assert self.queued is not None
        inv, self.queued = self.queued, None
        self.current = inv
        self.phase = "busy"
        return inv

    def answer(self, request_id: str, now_ms: float, size: int) -> Invocation:
        """/response or /error for ``request_id``: the invocation to resolve, or ApiError."""
        cur = self.current
        if cur is not None and cur.request_id == request_id:
            if now_ms > cur.deadline_ms:
                self.expire(request_id)
                raise ApiError(410, "InvocationExpired",
                               f"invocation {request_id} passed its deadline "
                               f"({cur.deadline_ms}); the response is discarded")
            if size > MAX_PAYLOAD:
                raise ApiError(413, "RequestEntityTooLarge",
                               f"Exceeded maximum allowed payload size ({MAX_PAYLOAD} bytes).")
            cur.answered = True
            self.current = None
            self.phase = "idle"
            self.answered.append(request_id)
            return cur
        if request_id in self.expired:
            raise ApiError(410, "InvocationExpired",
                           f"invocation {request_id} passed its deadline")
        if request_id in self.answered:
            raise ApiError(403, "InvalidStateTransition",
                           f"invocation {request_id} already has a response")
        raise ApiError(400, "InvalidRequestID", "Invalid request ID")

    def expire(self, request_id: str) -> None:
        """The platform gave up on an invocation (timeout): later answers get 410."""
        if self.current is not None and self.current.request_id == request_id:
            self.current = None
        if self.queued is not None and self.queued.request_id == request_id:
            self.queued = None
        self.expired.append(request_id)

    def init_error(self) -> None:
        if self.phase != "init":
            raise ApiError(403, "InvalidStateTransition",
                           "/runtime/init/error is only allowed before the first /next")
        self.phase = "failed"
