"""Tracing: redaction of spans and logs, the JSON-lines exporter, trace context across Kafka
hops (single and batch subscribers) and the GenAI spans of Triton calls."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaBroker as Broker
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.registry import TOPICS
from contracts.v1 import QueryV1
from inference import client as triton_client
from inference.generation import ChatMessage, GenerationRequest
from services.cli.ask_cmd import query_event
from services.runtime.batches import validate_batch
from services.runtime.broker import make_broker
from services.runtime.publishing import event_bytes, event_headers, publish_event, send_bare
from services.runtime.settings import RuntimeSettings
from services.runtime.trace_export import (
    JsonLinesSpanExporter,
    PiiRedactingFilter,
    PiiRedactingSpanExporter,
    install_log_redaction,
    redact_text,
)
from services.runtime.tracing import inject_trace_context, span_exporter, untraced

EMAIL = "jane.doe@corp.example"
PHONE = "+44 20 7946 0958"
_RECORDED = InMemorySpanExporter()


@pytest.fixture(scope="module")
def global_spans() -> Iterator[InMemorySpanExporter]:
    """Spans of the process-wide provider (FastStream's and ragstream's tracers use it)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)  # once per process: OpenTelemetry keeps the first
        provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        pytest.skip("another, non-SDK tracer provider is installed in this process")
    provider.add_span_processor(SimpleSpanProcessor(_RECORDED))
    yield _RECORDED


@pytest.fixture
def spans(global_spans: InMemorySpanExporter) -> InMemorySpanExporter:
    global_spans.clear()
    return global_spans


def _local_provider(exporter: Any) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_redact_text_replaces_each_kind_of_personal_data() -> None:
    assert redact_text(f"write {EMAIL} or call {PHONE}.") == (
        "write [REDACTED:email] or call [REDACTED:phone]."
    )
    assert redact_text("ragstream.queries.v1") == "ragstream.queries.v1"


def test_span_attributes_events_and_status_are_redacted_before_export() -> None:
    memory = InMemorySpanExporter()
    tracer = _local_provider(PiiRedactingSpanExporter(memory)).get_tracer("test")
    with pytest.raises(ValueError), tracer.start_as_current_span("ask") as span:
        span.set_attribute("question", f"is {EMAIL} on leave?")
        span.set_attribute("contacts", [EMAIL, "nobody"])
        span.set_attribute("messaging.kafka.message.key", f"call {PHONE}".encode())
        span.set_attribute("ragstream.tenant_id", "acme")
        raise ValueError(f"no such user {EMAIL}")
    [exported] = memory.get_finished_spans()
    attributes = dict(exported.attributes or {})
    assert attributes["question"] == "is [REDACTED:email] on leave?"
    assert attributes["contacts"] == ("[REDACTED:email]", "nobody")
    assert attributes["messaging.kafka.message.key"] == "call [REDACTED:phone]"
    assert attributes["ragstream.tenant_id"] == "acme"
    [exception] = exported.events
    assert EMAIL not in str(dict(exception.attributes or {}))
    assert exported.status.description and EMAIL not in exported.status.description
    assert "[REDACTED:email]" in exported.status.description


def test_log_filter_redacts_message_arguments_and_exception_text() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(PiiRedactingFilter())
    log = logging.getLogger("test.tracing.redaction")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("question from %s: call %s", EMAIL, PHONE)
        try:
            raise RuntimeError(f"rejected {EMAIL}")
        except RuntimeError:
            log.exception("handler failed")
    finally:
        log.removeHandler(handler)
    text = out.getvalue()
    assert EMAIL not in text and PHONE not in text
    assert "question from [REDACTED:email]: call [REDACTED:phone]" in text
    assert "RuntimeError: rejected [REDACTED:email]" in text


def test_installed_redaction_covers_records_propagated_from_child_loggers() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        redacting = install_log_redaction()
        assert install_log_redaction() is redacting  # idempotent
        logging.getLogger("ragstream.test.child").warning("asked by %s", EMAIL)
    finally:
        root.removeHandler(handler)
        root.removeFilter(redacting)
        for other in root.handlers:
            other.removeFilter(redacting)
    assert out.getvalue() == "asked by [REDACTED:email]\n"


def test_json_lines_exporter_writes_one_object_per_span_with_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "traces" / "embed-1.jsonl"
    tracer = _local_provider(PiiRedactingSpanExporter(JsonLinesSpanExporter(path))).get_tracer("t")
    with tracer.start_as_current_span("outer", attributes={"who": EMAIL}) as outer:
        with tracer.start_as_current_span("inner", attributes={"n": 3, "key": b"acme"}):
            pass
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    inner, parent = lines
    assert (inner["name"], parent["name"]) == ("inner", "outer")
    assert (
        inner["trace_id"] == parent["trace_id"] == format(outer.get_span_context().trace_id, "032x")
    )
    assert inner["parent_span_id"] == parent["span_id"] and parent["parent_span_id"] is None
    assert inner["attributes"] == {"n": 3, "key": "acme"}
    assert parent["attributes"] == {"who": "[REDACTED:email]"}
    assert inner["status"]["code"] == "UNSET"
    assert inner["start_time"] <= inner["end_time"] and inner["duration_ms"] >= 0
    assert EMAIL not in path.read_text()


def test_spans_go_to_the_data_dir_unless_an_otlp_endpoint_is_set(tmp_path: Path) -> None:
    to_file = span_exporter("embed", RuntimeSettings(data_dir=tmp_path))
    assert isinstance(to_file, PiiRedactingSpanExporter)
    assert isinstance(to_file.inner, JsonLinesSpanExporter)
    assert to_file.inner.path == tmp_path.resolve() / "traces" / f"embed-{os.getpid()}.jsonl"
    settings = RuntimeSettings.model_validate(
        {"data_dir": tmp_path, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    )
    to_collector = span_exporter("embed", settings)
    assert isinstance(to_collector, PiiRedactingSpanExporter)
    assert isinstance(to_collector.inner, OTLPSpanExporter)


def _chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    """Names of `span` and its ancestors, nearest first."""
    names = []
    current: ReadableSpan | None = span
    while current is not None:
        names.append(current.name)
        parent = current.parent
        current = by_id.get(parent.span_id) if parent is not None else None
    return names


async def test_one_trace_crosses_single_and_batch_subscribers(
    spans: InMemorySpanExporter,
) -> None:
    """upstream → ingest (publisher object and broker.publish) → route (a batch) → end."""
    broker: KafkaBroker = make_broker(RuntimeSettings(bootstrap_servers="localhost:1"), "test")
    to_batch = broker.publisher("test.batch")
    to_end = broker.publisher("test.end")

    @broker.subscriber(TOPICS.queries.name)
    async def ingest(body: dict[str, Any], broker: Broker) -> None:
        event = QueryV1.model_validate(body)
        await publish_event(to_batch, TOPICS.queries, event, "ingest")
        await broker.publish(event_bytes(event), "test.direct")

    @broker.subscriber("test.batch", batch=True)
    async def route(values: list[Any], message: KafkaMessage) -> None:
        batch = validate_batch(message, TOPICS.queries)
        for event in batch.events:
            with batch.span(event, "route"):
                await publish_event(to_end, TOPICS.queries, event, "route")

    @broker.subscriber("test.end")
    async def end(body: dict[str, Any]) -> None: ...

    @broker.subscriber("test.direct")
    async def direct(body: dict[str, Any]) -> None: ...

    event = query_event("How many days of leave?", "acme")
    tracer = trace.get_tracer("test")
    async with TestKafkaBroker(broker) as test_broker:
        with tracer.start_as_current_span("ragstream ask") as ask:
            headers = inject_trace_context(event_headers(TOPICS.queries, event, "cli"))
            await test_broker.publish(event_bytes(event), TOPICS.queries.name, headers=headers)

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished if s.context is not None}
    trace_id = ask.get_span_context().trace_id
    end_span = next(s for s in finished if s.name == "test.end process")
    direct_span = next(s for s in finished if s.name == "test.direct process")
    for span in (end_span, direct_span):
        assert span.context is not None and span.context.trace_id == trace_id
    end_chain = _chain(end_span, by_id)
    assert end_chain[-1] == "ragstream ask"
    # The handler's span is an ancestor of what it publishes, across the batch hop too.
    assert end_chain.index("route queries") < end_chain.index(f"{TOPICS.queries.name} process")
    assert f"{TOPICS.queries.name} process" in _chain(direct_span, by_id)
    route_span = by_id[next(s.context.span_id for s in finished if s.name == "route queries")]
    assert dict(route_span.attributes or {})["ragstream.request_id"] == event.request_id
    assert dict(end_span.attributes or {})["messaging.message.conversation_id"] == (
        event.correlation_id
    )


async def test_a_dead_letter_continues_the_trace_of_the_event_that_failed(
    spans: InMemorySpanExporter,
) -> None:
    settings = RuntimeSettings(bootstrap_servers="localhost:1", handler_attempts=1)
    broker: KafkaBroker = make_broker(settings, "test")

    @broker.subscriber("test.fails")
    async def fails(body: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    @broker.subscriber(TOPICS.dlq.name)
    async def operators(body: dict[str, Any]) -> None: ...

    async with TestKafkaBroker(broker) as test_broker:
        with trace.get_tracer("test").start_as_current_span("upstream"):
            await test_broker.publish(b"{}", "test.fails")

    finished = spans.get_finished_spans()
    by_id = {s.context.span_id: s for s in finished if s.context is not None}
    dead_letter = next(s for s in finished if s.name == f"{TOPICS.dlq.name} process")
    failed = next(s for s in finished if s.name == "test.fails process")
    assert _chain(dead_letter, by_id)[-3:] == [
        "test.fails process",
        "test.fails create",
        "upstream",
    ]
    assert failed.status.status_code == trace.StatusCode.ERROR


async def test_work_done_untraced_records_no_span_and_hands_on_an_unsampled_context(
    spans: InMemorySpanExporter,
) -> None:
    """A flood's refusals (ingest's `_over_rate`): the handler's own span is kept, what it
    publishes untraced and what consumes that record are not recorded, and the record still
    carries the trace's id."""
    broker: KafkaBroker = make_broker(RuntimeSettings(bootstrap_servers="localhost:1"), "test")
    to_refused = broker.publisher("test.refused")
    seen: list[str] = []

    @broker.subscriber("test.flood")
    async def ingest(body: dict[str, Any]) -> None:
        with untraced():
            await to_refused.publish(b"{}")
        await broker.publish(b"{}", "test.accepted")

    @broker.subscriber("test.refused")
    async def refused(body: dict[str, Any], message: KafkaMessage) -> None:
        seen.append(message.headers["traceparent"])

    @broker.subscriber("test.accepted")
    async def accepted(body: dict[str, Any]) -> None: ...

    async with TestKafkaBroker(broker) as test_broker:
        with trace.get_tracer("test").start_as_current_span("flooder") as flooder:
            await test_broker.publish(b"{}", "test.flood")

    names = {s.name for s in spans.get_finished_spans()}
    assert {"flooder", "test.flood process", "test.accepted process"} <= names
    assert not {n for n in names if n.startswith("test.refused")}
    [traceparent] = seen
    trace_id = format(flooder.get_span_context().trace_id, "032x")
    assert traceparent.split("-")[1] == trace_id and traceparent.endswith("-00")


async def test_a_bare_send_skips_the_publish_spans_and_keeps_key_headers_and_trace(
    spans: InMemorySpanExporter,
) -> None:
    """`send_bare` (a flood's refusals): no create or publish span, yet the record has its key
    and headers, and its consumer goes on with the sender's trace."""
    broker: KafkaBroker = make_broker(RuntimeSettings(bootstrap_servers="localhost:1"), "test")
    seen: list[tuple[bytes | None, dict[str, str]]] = []

    @broker.subscriber("test.in")
    async def sender(body: dict[str, Any]) -> None:
        headers = {"ce_id": "e-1", "ce_tenant": "acme"}
        sent = await send_bare(broker, b"{}", topic="test.out", key=b"acme", headers=headers)
        assert sent is None  # the test broker delivers at once; a real producer's future

    @broker.subscriber("test.out")
    async def consumer(body: dict[str, Any], message: KafkaMessage) -> None:
        seen.append((message.raw_message.key, dict(message.headers)))

    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(b"{}", "test.in")

    [(key, headers)] = seen
    assert key == b"acme" and headers["ce_id"] == "e-1" and headers["ce_tenant"] == "acme"
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert not {n for n in finished if n.startswith("test.out") and not n.endswith("process")}
    sent_by, received = finished["test.in process"], finished["test.out process"]
    assert received.parent is not None
    assert received.parent.span_id == sent_by.get_span_context().span_id
    assert received.context.trace_id == sent_by.context.trace_id


class _FakeResult:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray:
        return self.outputs[name]


class _FakeTriton:
    def __init__(self, url: str) -> None:
        self.url = url

    async def infer(self, model: str, inputs: Any, **options: Any) -> _FakeResult:
        if model == "embedder":
            return _FakeResult({"embedding": np.ones((1, 384), dtype=np.float32)})
        return _FakeResult(
            {
                "text": np.array([[b'{"answer": "25 days"}']], dtype=np.object_),
                "input_tokens": np.array([[42]], dtype=np.int32),
                "output_tokens": np.array([[7]], dtype=np.int32),
                "finish_reason": np.array([[b"stop"]], dtype=np.object_),
            }
        )

    async def close(self) -> None: ...


async def test_triton_calls_are_client_spans_with_gen_ai_attributes(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(triton_client.grpcclient, "InferenceServerClient", _FakeTriton)
    client = triton_client.TritonClient("triton:8001")
    await client.warm_up()
    request = GenerationRequest(
        messages=[ChatMessage(role="user", content="hi")], max_new_tokens=64
    )
    with trace.get_tracer("test").start_as_current_span("generate requests") as parent:
        result = await client.generate(request)
        await client.embed(["hi"])
    assert result.output_tokens == 7
    by_name = {s.name: s for s in spans.get_finished_spans()}
    chat, embeddings = by_name["chat generator"], by_name["embeddings embedder"]
    for span in (chat, embeddings):
        assert span.kind == trace.SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
    assert (
        dict(chat.attributes or {}).items()
        >= {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": "triton",
            "gen_ai.request.model": "generator",
            "gen_ai.request.max_tokens": 64,
            "gen_ai.usage.input_tokens": 42,
            "gen_ai.usage.output_tokens": 7,
        }.items()
    )
    assert (
        dict(embeddings.attributes or {}).items()
        >= {
            "gen_ai.operation.name": "embeddings",
            "gen_ai.request.model": "embedder",
            "gen_ai.embeddings.dimension.count": 384,
        }.items()
    )
