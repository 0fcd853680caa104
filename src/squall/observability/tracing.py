"""OpenTelemetry traces: off by default, on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

The spans of one invocation, following the FaaS semantic conventions::

    POST /fn/{name}            SERVER  (the HTTP edge: continues an incoming W3C traceparent)
    └─ {function}              SERVER for http/api, CONSUMER for async and broker triggers;
       │                       faas.trigger, faas.invocation_id, faas.coldstart, faas.name,
       │                       faas.version, faas.max_memory
       ├─ init                 a cold start: sandbox, zygote, fork (children, from InitTiming)
       └─ run                  the handler; its context is what the function sees
                               (``context.trace_id``, ``traceparent`` in its environment)

An async event keeps the traceparent of the request that submitted it (queue column
``traceparent``); each attempt adds a ``queue`` span (time between due and claimed) and its
invocation span under that same parent, so retries and destinations stay in the original trace.
A broker message continues the CloudEvents ``traceparent`` extension its connector set.

The SDK (and its import time) is only loaded when tracing is on. The provider is the platform's
own, never the process-global one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from squall.agent.node import InitTiming, VersionSpec

_PROPAGATOR = TraceContextTextMapPropagator()
# squall trigger -> faas.trigger (semantic conventions: http, pubsub, datasource, timer, other)
FAAS_TRIGGER = {"http": "http", "api": "http", "schedule": "timer", "nats": "pubsub",
                "amqp": "pubsub", "mqtt": "pubsub", "redis": "pubsub", "postgres": "datasource",
                "webhook": "http"}
_SYNC_TRIGGERS = ("http", "api")
_UNTRACED_PATHS = ("/healthz", "/metrics")


def enabled_by_env(env: dict[str, str] | None = None) -> bool:
    e = os.environ if env is None else env
    if e.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(e.get("OTEL_EXPORTER_OTLP_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def context_from(traceparent: str | None,
                 tracestate: str | None = None) -> otel_context.Context | None:
    """The context a W3C traceparent names, or None when absent or malformed."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def traceparent_of(ctx: otel_context.Context | None = None) -> str | None:
    """The traceparent of ``ctx`` (default: the current context), or None without a span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def current_traceparent() -> str | None:
    """What an async event stores so that its attempts continue the submitting request's trace."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return traceparent_of()


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class Tracing:
    """The platform's tracer provider and the spans it makes."""

    def __init__(self, exporter: SpanExporter | None = None, *, batch: bool = True,
                 service_name: str = "squall") -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter is None:
            # Reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT like every SDK.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        service = os.environ.get("OTEL_SERVICE_NAME", service_name)
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": service}))
        # The batch processor exports from its own thread: the event loop never waits on it.
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("squall")

    @classmethod
    def from_env(cls) -> Tracing | None:
        return cls() if enabled_by_env() else None

    def shutdown(self) -> None:
        """Export what is buffered, then stop (server shutdown)."""
        self.provider.shutdown()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        return TracingMiddleware(app, self)

    # -- invocations ----------------------------------------------------------------------------

    def begin(self, vs: VersionSpec, trigger: str, request_id: str) -> InvocationTrace:
        """The invocation span, a child of the current context (HTTP span, async event)."""
        cfg = vs.config
        kind = SpanKind.SERVER if trigger in _SYNC_TRIGGERS else SpanKind.CONSUMER
        span = self.tracer.start_span(vs.function, kind=kind, attributes={
            "faas.trigger": FAAS_TRIGGER.get(trigger, "other"),
            "faas.invocation_id": request_id, "faas.name": vs.function,
            "faas.version": str(vs.version), "faas.max_memory": cfg.memory_mb * 1024 * 1024,
            "squall.trigger": trigger, "squall.tenant": vs.namespace})
        return InvocationTrace(self, span)

    @contextlib.contextmanager
    def consumed(self, traceparent: str | None, *, due_at: float, attempt: int,
                 name: str = "queue") -> Iterator[None]:
        """Around one delivery of a stored event: a ``queue`` span from when it was due until
        now, and the event's context made current so the invocation joins its trace."""
        parent = context_from(traceparent)
        now = time.time()
        queue_span = self.tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER,
                                            start_time=_ns(min(due_at, now)),
                                            attributes={"squall.attempt": attempt})
        queue_span.end(end_time=_ns(now))
        ctx = parent if parent is not None else trace.set_span_in_context(queue_span)
        token = otel_context.attach(ctx)
        try:
            yield
        finally:
            otel_context.detach(token)


@contextlib.contextmanager
def delivery(tracing: Tracing | None, traceparent: str | None, *, due_at: float,
             attempt: int = 1, name: str = "queue") -> Iterator[None]:
    """``Tracing.consumed`` when tracing is on; nothing at all when it is off."""
    if tracing is None:
        yield
        return
    with tracing.consumed(traceparent, due_at=due_at, attempt=attempt, name=name):
        yield


def carry(follow_up: dict[str, Any] | None, row: dict[str, Any]) -> None:
    """A function destination enqueued for ``row`` continues ``row``'s trace."""
    if follow_up is not None and row.get("traceparent"):
        follow_up["traceparent"] = row["traceparent"]


class InvocationTrace:
    """The spans of one invocation; every method is harmless after ``end``."""

    def __init__(self, tracing: Tracing, span: trace.Span) -> None:
        self.tracing = tracing
        self.span = span
        self._ctx = trace.set_span_in_context(span)
        self._run: trace.Span | None = None

    def started(self, cold: bool, timing: InitTiming | None) -> None:
        """After the instance was acquired: the cold start's spans, placed back in time."""
        self.span.set_attribute("faas.coldstart", cold)
        if not cold or timing is None or timing.total_ms <= 0:
            return
        tracer = self.tracing.tracer
        end = time.time_ns()
        start = end - int(timing.total_ms * 1e6)
        init = tracer.start_span("init", context=self._ctx, start_time=start)
        ctx = trace.set_span_in_context(init)
        t = start
        for name, ms in (("sandbox", timing.sandbox_ms), ("zygote", timing.zygote_ms),
                         ("spare" if timing.spare else "fork", timing.fork_ms)):
            if ms > 0:
                part = tracer.start_span(name, context=ctx, start_time=t)
                t += int(ms * 1e6)
                part.end(end_time=t)
        init.end(end_time=end)

    def frame_ctx(self) -> dict[str, Any]:
        """Start the ``run`` span; its traceparent goes to the instance with the invoke frame."""
        self._run = self.tracing.tracer.start_span("run", context=self._ctx)
        return {"traceparent": traceparent_of(trace.set_span_in_context(self._run))}

    def end(self, status: str, error: dict[str, Any] | None, billed_ms: int) -> None:
        if self._run is not None:
            if error is not None:
                self._run.set_status(Status(StatusCode.ERROR, str(error.get("errorType"))))
            self._run.end()
            self._run = None
        self.span.set_attribute("squall.status", status)
        self.span.set_attribute("squall.billed_ms", billed_ms)
        if error is not None:
            self.span.set_attribute("error.type", str(error.get("errorType", "Error")))
            self.span.set_status(Status(StatusCode.ERROR, str(error.get("errorMessage", ""))))
        self.span.end()

    def fail(self, exc: BaseException) -> None:
        """The invocation never ran (429, sandbox failure)."""
        self.span.set_attribute("error.type", type(exc).__name__)
        self.span.set_status(Status(StatusCode.ERROR, str(exc)))
        self.span.end()


class TracingMiddleware:
    """The HTTP edge: one SERVER span per request, continuing an incoming traceparent."""

    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracer = tracing.tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in _UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k: v for k, v in scope["headers"] if k in (b"traceparent", b"tracestate")}
        parent = context_from(headers[b"traceparent"].decode("latin-1"),
                              headers.get(b"tracestate", b"").decode("latin-1")) \
            if b"traceparent" in headers else None
        method = scope.get("method", "GET")
        with self.tracer.start_as_current_span(
                span_name(method, path), context=parent, kind=SpanKind.SERVER,
                attributes={"http.request.method": method, "url.path": path}) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    code = int(message["status"])
                    span.set_attribute("http.response.status_code", code)
                    if code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, traced_send)


def span_name(method: str, path: str) -> str:
    """Low-cardinality names: ``GET /fn/{name}`` keeps the function, drops the sub-path;
    other routes keep two segments (``POST /hooks/github``, ``POST /api/v1/functions``)."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["fn"] and len(parts) > 1:
        return f"{method} /fn/{parts[1]}"
    if parts[:2] == ["api", "v1"]:
        return f"{method} /{'/'.join(parts[:4])}"
    return f"{method} /{'/'.join(parts[:2])}"
