"""What the rest of the platform (gateway, events, connectors) needs from the invoker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class InvokeOutcome:
    """The result of one invocation.

    ``error`` is Lambda's shape {errorType, errorMessage, stackTrace} when the function failed
    (exception, timeout, crash, out of memory); ``value`` is the handler's return value otherwise.
    """

    request_id: str
    function: str
    version: int
    value: Any = None
    error: dict[str, Any] | None = None
    cold: bool = False
    duration_ms: float = 0.0
    billed_ms: int = 0
    init_ms: float = 0.0
    logs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else str(self.error.get("errorType", "Error"))


class ResponseStream(Protocol):
    """An HTTP response a streaming function writes into as it produces (the gateway's).

    ``run_on`` is called once the instance is chosen; ``start`` and ``send`` only if the
    function streams (squall.agent.instance.StreamSink), before ``invoke`` returns.
    """

    def run_on(self, version: int, cold: bool) -> None: ...

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...

    async def send(self, chunk: bytes) -> None: ...


class Invoker(Protocol):
    async def invoke(self, function: str, event: Any, *, trigger: str = "api",
                     request_id: str | None = None, qualifier: str | None = None,
                     namespace: str = "default",
                     stream: ResponseStream | None = None) -> InvokeOutcome:
        """Run one invocation synchronously and return its outcome.

        A function that streams writes into ``stream`` as it produces, and its outcome's value
        is None; without a stream, the whole response becomes the value (a Lambda response
        dict). The time limit and the billed duration cover the whole stream.

        Raises FunctionNotFound for an unknown function (or version), TooManyRequests when no
        instance became free within the bounded wait. A failing function is not an exception:
        it is an outcome with ``error`` set.
        """
        ...
