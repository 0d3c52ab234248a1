"""Tracing: one OpenTelemetry trace per request, from `ragstream ask` through every Kafka hop.

FastStream's `KafkaTelemetryMiddleware` (in `make_broker`) puts the trace context in each
record's headers and continues it in the consumer. A batch subscriber's span starts a trace of
its own (linked to its records'), so batch handlers run each event's work in `event_span`, back
in the trace the event came with. Spans are exported with personal data redacted: to OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set, else to `<data dir>/traces/<service>-<pid>.jsonl`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, TraceFlags

from services import __version__
from services.runtime.settings import RuntimeSettings
from services.runtime.trace_export import (
    JsonLinesSpanExporter,
    PiiRedactingSpanExporter,
    install_log_redaction,
)

_tracer = trace.get_tracer("ragstream")
#: Ids for an unsampled context where there is no current span (`untraced`).
_IDS = RandomIdGenerator()
_provider: TracerProvider | None = None


def trace_file(service_name: str, settings: RuntimeSettings) -> Path:
    return settings.data_dir.resolve() / "traces" / f"{service_name}-{os.getpid()}.jsonl"


def span_exporter(service_name: str, settings: RuntimeSettings) -> SpanExporter:
    """OTLP over HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the exporter reads the OTEL_*
    variables itself), else the process's JSON-lines file; either way behind PII redaction."""
    inner: SpanExporter
    if settings.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        inner = OTLPSpanExporter()
    else:
        inner = JsonLinesSpanExporter(trace_file(service_name, settings))
    return PiiRedactingSpanExporter(inner)


def setup_tracing(service_name: str, settings: RuntimeSettings) -> TracerProvider:
    """Make spans of this process `ragstream-<service_name>` spans, exported (redacted) in the
    background, and redact log records too. Once per process: later calls return the first
    provider, since OpenTelemetry's global provider cannot be replaced."""
    global _provider
    if _provider is None:
        resource = Resource.create(
            {"service.name": f"ragstream-{service_name}", "service.version": __version__}
        )
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(span_exporter(service_name, settings)))
        trace.set_tracer_provider(provider)
        _provider = provider
    install_log_redaction()
    return _provider


@contextmanager
def traced_process(service_name: str, settings: RuntimeSettings) -> Iterator[TracerProvider]:
    """`setup_tracing` for a block (a stage's lifespan, a CLI command); exports what is
    buffered at its end."""
    provider = setup_tracing(service_name, settings)
    try:
        yield provider
    finally:
        provider.force_flush()  # the provider shuts down (and closes its file) at exit


def inject_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """`headers` plus the current trace context (`traceparent`…), for a plain Kafka producer."""
    propagate.inject(headers)
    return headers


def trace_context_of(headers: Sequence[tuple[str, bytes]] | None) -> Context | None:
    """The trace context a consumed record's headers carry, or None."""
    carrier = {key: value.decode("latin-1") for key, value in headers or () if value is not None}
    context = propagate.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def _event_attributes(stage: str, event: Any) -> dict[str, str]:
    attributes = {"ragstream.stage": stage}
    for field in ("event_id", "correlation_id", "tenant_id", "request_id"):
        value = getattr(event, field, None)
        if isinstance(value, str):
            attributes[f"ragstream.{field}"] = value
    if "ragstream.correlation_id" in attributes:
        attributes["messaging.message.conversation_id"] = attributes["ragstream.correlation_id"]
    return attributes


@contextmanager
def event_span(name: str, stage: str, event: Any, parent: Context | None) -> Iterator[Span]:
    """A span for one event's work, child of `parent` (the context its record carried) and
    linked to the current (batch) span; without a parent, a child of the current span."""
    current = trace.get_current_span().get_span_context()
    links = [Link(current)] if parent is not None and current.is_valid else None
    with _tracer.start_as_current_span(
        name, context=parent, links=links, attributes=_event_attributes(stage, event)
    ) as span:
        yield span


@contextmanager
def untraced() -> Iterator[None]:
    """What runs inside records no span, and what it publishes carries the current trace's ids
    with the sampled flag off, so its consumers record none either (the default sampler
    follows the parent's flag). For work that is counted and has its lineage record, and
    whose spans would flood the trace store: turning a tenant's flood away, where FastStream
    records a create and a publish span for each record sent (bench/README.md, "Tenant flood,
    2026-12-07 06:00-06:25 UTC": ingest's CPU a refused question 1.5-1.6 → 1.3 ms)."""
    current = trace.get_current_span().get_span_context()
    unsampled = SpanContext(
        trace_id=current.trace_id if current.is_valid else _IDS.generate_trace_id(),
        span_id=current.span_id if current.is_valid else _IDS.generate_span_id(),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.DEFAULT),
    )
    with trace.use_span(NonRecordingSpan(unsampled)):
        yield


@contextmanager
def shared_span(name: str, stage: str, parents: Sequence[Context]) -> Iterator[Span]:
    """A span for work a batch's events share (one model call for all): in their trace when
    they all came with one, else in the batch's own, linked to each event's."""
    contexts = [trace.get_current_span(c).get_span_context() for c in parents]
    one_trace = len({c.trace_id for c in contexts}) == 1
    with _tracer.start_as_current_span(
        name,
        context=parents[0] if one_trace else None,
        links=[Link(c) for c in contexts],
        attributes={"ragstream.stage": stage, "ragstream.batch_events": len(parents)},
    ) as span:
        yield span
