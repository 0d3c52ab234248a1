"""Publishing events: one way to serialise, key and head an event for its registry topic."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, Protocol

from faststream.kafka.response import KafkaPublishCommand
from faststream.message import StreamMessage
from faststream.response.publish_type import PublishType

from contracts.registry import TopicSpec
from contracts.v1 import Envelope, ProducedBy
from services import __version__
from services.runtime.metrics import event_published
from services.runtime.tracing import inject_trace_context


class Publisher(Protocol):
    async def publish(
        self,
        message: Any,
        *,
        key: bytes | None = ...,
        headers: Any = ...,
        correlation_id: str | None = ...,
        no_confirm: bool = ...,
    ) -> Any: ...


def produced_by(stage: str) -> ProducedBy:
    return ProducedBy(service=stage, version=__version__)


def derived_event_id(event: Envelope, stage: str, role: str = "") -> str:
    """The id of the event `stage` derives from `event` in `role`: the same every time.

    Delivery is at least once: a stage killed after publishing but before committing handles
    its input again, and republishes events with these same ids, which every consumer's
    idempotent write (index point, audit row, cache entry, budget charge, answer per request)
    counts once. Shaped as a UUIDv7 whose time is the input's (when the input's id is a UUIDv7),
    so ids still sort roughly by time; the rest is a hash of input id, stage and role."""
    digest = bytearray(hashlib.sha256(f"{event.event_id}|{stage}|{role}".encode()).digest()[:16])
    try:
        cause = uuid.UUID(event.event_id)
        if cause.version == 7:
            digest[:6] = cause.bytes[:6]
    except ValueError:
        pass
    digest[6] = 0x70 | (digest[6] & 0x0F)  # version 7
    digest[8] = 0x80 | (digest[8] & 0x3F)  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(digest)))


def derived_from(event: Envelope, stage: str, role: str = "") -> dict[str, Any]:
    """Envelope fields of the event that `stage` derives from `event` (in `role`, where one
    input gives several events): same tenant and correlation, caused by it, produced by the
    stage, with a deterministic id (`derived_event_id`)."""
    return {
        "event_id": derived_event_id(event, stage, role),
        "tenant_id": event.tenant_id,
        "correlation_id": event.correlation_id,
        "causation_id": event.event_id,
        "produced_by": produced_by(stage),
    }


def event_headers(spec: TopicSpec, event: Envelope, stage: str) -> dict[str, str]:
    """CloudEvents-style attributes (binary mode) for an event on `spec`'s topic."""
    return {
        "content-type": "application/json",
        "ce_specversion": "1.0",
        "ce_id": event.event_id,
        "ce_type": f"{spec.name}.{getattr(event, 'event_type', 'event')}",
        "ce_source": f"ragstream/{stage}",
        "ce_time": event.produced_at.isoformat(),
        "ce_tenant": event.tenant_id,
        "ce_correlationid": event.correlation_id,
    }


def event_bytes(event: Envelope) -> bytes:
    return event.model_dump_json().encode("utf-8")


def event_options(spec: TopicSpec, event: Envelope, stage: str) -> dict[str, Any]:
    """How `event` (`event_bytes`) is published on `spec`'s topic: keyed per the registry,
    with its headers. FastStream's correlation id is the event's, so every hop's messaging
    spans carry it (`messaging.message.conversation_id`); the broker's telemetry adds the
    trace context."""
    return {
        "key": spec.key_bytes(event),
        "headers": event_headers(spec, event, stage),
        "correlation_id": event.correlation_id,
    }


async def publish_event(publisher: Publisher, spec: TopicSpec, event: Envelope, stage: str) -> None:
    """Publish `event` on its topic (`event_options`) and wait for the broker's ack."""
    await publisher.publish(event_bytes(event), **event_options(spec, event, stage))
    event_published(stage, spec)


async def send_bare(
    broker: Any,
    body: bytes,
    *,
    topic: str,
    key: bytes | None,
    headers: dict[str, str],
    correlation_id: str | None = None,
) -> Any:
    """Send a record with the broker's producer itself, past FastStream's publish middlewares,
    and hand back what the producer does (its future: the ack is not awaited, as with
    `no_confirm`); FastStream's test broker delivers it as it does a publish.

    The middlewares cost ~60 µs a record even unsampled (`untraced`): OpenTelemetry's create
    and publish spans and FastStream's publish metrics. Without them, the current trace
    context still goes in the headers (`inject_trace_context`), so a consumer goes on with
    the trace, or records nothing under `untraced`; and ragstream's own counter
    (`event_published`) still counts the record. For records that come by the thousand and
    are worth little each: a tenant's flood turned away (bench/README.md, "Tenant flood,
    2026-12-07 08:20-09:45 UTC")."""
    command = KafkaPublishCommand(
        body,
        topic=topic,
        key=key,
        headers=inject_trace_context(dict(headers)),
        correlation_id=correlation_id,
        no_confirm=True,
        _publish_type=PublishType.PUBLISH,
    )
    return await broker.config.producer.publish(command)


async def strict_json_decoder(message: StreamMessage[Any], original_decoder: Any = None) -> Any:
    """Decode a record's value as UTF-8 JSON, whatever its content-type header claims.

    A batch is handed over as its raw values: a batch handler validates each record itself
    (`services.runtime.batches.valid_events`), so one bad record never fails the others."""
    if isinstance(message.raw_message, (tuple, list)):
        return [record.value for record in message.raw_message]
    return json.loads(message.body.decode("utf-8", errors="strict"))
