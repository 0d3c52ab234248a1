"""The broker factory: a stage's KafkaBroker, with tracing, metrics, dead letters, strict JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiokafka.client
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import IllegalStateError
from aiokafka.protocol.metadata import MetadataRequest
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.message import StreamMessage

from contracts.registry import TOPICS, TopicSpec
from services.runtime.dead_letters import DeadLetterMiddleware, header_problem
from services.runtime.kafka_security import faststream_security
from services.runtime.metrics import (
    ConsumedEventsMiddleware,
    OwnedPartitions,
    prometheus_middleware,
)
from services.runtime.publishing import strict_json_decoder
from services.runtime.runstate import resolve_bootstrap
from services.runtime.settings import RuntimeSettings

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def make_broker(settings: RuntimeSettings, stage: str, **kwargs: Any) -> KafkaBroker:
    return KafkaBroker(
        resolve_bootstrap(settings),
        client_id=f"ragstream-{stage}",
        # The first is outermost: the consumer span covers the retries and the dead letter;
        # FastStream's metrics see each record once, however often it is retried.
        middlewares=[
            KafkaTelemetryMiddleware(),
            prometheus_middleware(stage),
            ConsumedEventsMiddleware.for_stage(stage),
            DeadLetterMiddleware.for_stage(
                stage, attempts=settings.handler_attempts, broker_wait_s=settings.broker_wait_s
            ),
        ],
        decoder=strict_json_decoder,
        parser=batch_parser,
        security=faststream_security(settings),
        logger=logging.getLogger(f"ragstream.{stage}"),
        # A dead letter carries its original base64-encoded (4/3 larger) plus its metadata.
        max_request_size=MAX_REQUEST_BYTES,
        **kwargs,
    )


async def batch_parser(
    message: ConsumerRecord[Any, Any] | tuple[ConsumerRecord[Any, Any], ...],
    original: Callable[[Any], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's parser, except that in a batch a header that is absent or not UTF-8 no
    longer fails the whole batch: the batch is parsed with such headers blanked, its raw
    records kept as they came, and `validate_batch` dead-letters the record that has one
    (`not_utf8`) while its neighbours go on. A single record's parse error already reaches
    the dead-letter middleware as that record's own."""
    if not isinstance(message, tuple) or not any(header_problem(r.headers or ()) for r in message):
        return await original(message)
    blanked = tuple(
        dataclasses.replace(r, headers=[] if header_problem(r.headers or ()) else r.headers)
        for r in message
    )
    parsed = await original(blanked)
    parsed.raw_message = message
    return parsed


def consumer_group(stage: str, spec: TopicSpec) -> str:
    """One consumer group per stage and topic: scale a stage on one topic independently."""
    return f"ragstream.{stage}.{spec.short_name}"


#: How long the broker may hold a fetch that finds nothing new. Tansu answers when this runs
#: out, not when a record arrives, so it is the latency of every hop when a consumer is idle
#: (aiokafka's default, 500 ms, cost ~250 ms a hop: bench/README.md). Idle consumers then ask
#: 40 times a second each: the topics a question crosses use it.
FETCH_MAX_WAIT_MS = 25
#: The same for the document path and lineage, where a hop's latency matters less than the
#: CPU that asking 40 times a second costs: an idle pipeline polling at 25 ms everywhere kept
#: the broker at ~45% of a core and the stages at ~45% more (bench/README.md).
BACKGROUND_FETCH_MAX_WAIT_MS = 250
#: The topics a question crosses, from its publication to its answer being cached.
QUESTION_PATH = frozenset(
    spec.name
    for spec in (
        TOPICS.queries,
        TOPICS.queries_accepted,
        TOPICS.query_vectors,
        TOPICS.generation_requests,
        TOPICS.generations,
        TOPICS.answers,
    )
)


def fetch_max_wait_ms(spec: TopicSpec) -> int:
    """How long a consumer of `spec`'s topic lets the broker hold an empty fetch."""
    return FETCH_MAX_WAIT_MS if spec.name in QUESTION_PATH else BACKGROUND_FETCH_MAX_WAIT_MS


def subscriber_options(
    stage: str, spec: TopicSpec, fetch_wait_ms: int | None = None
) -> dict[str, Any]:
    """At-least-once: commit after the handler (and its publishes) finished; on an error that
    escapes the dead-letter middleware, seek back so the event is consumed again.
    `fetch_wait_ms` replaces the topic's fetch wait (`fetch_max_wait_ms`) for this consumer."""
    return {
        "group_id": consumer_group(stage, spec),
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": fetch_wait_ms or fetch_max_wait_ms(spec),
        "listener": OwnedPartitions(stage),
    }


def subscribe_batches(
    router: KafkaRouter,
    stage: str,
    spec: TopicSpec,
    handler: Callable[..., Awaitable[None]],
    *,
    max_records: int,
    wait_ms: int,
    fetch_wait_ms: int | None = None,
    fetch_min_bytes: int = 1,
) -> None:
    """Register `handler` for batches of up to `max_records` records of `spec`'s topic
    (waiting at most `wait_ms` to fill one), in the stage's consumer group, at least once.

    A consumer that would rather take fewer, larger batches than take them soon names a
    longer `fetch_wait_ms` and a `fetch_min_bytes`: Kafka then holds a fetch until that many
    bytes arrived or the wait ran out, and Tansu holds every fetch until the wait runs out."""
    router.subscriber(
        spec.name,
        batch=True,
        max_records=max_records,
        batch_timeout_ms=wait_ms,
        fetch_min_bytes=fetch_min_bytes,
        title=f"{stage}:{spec.short_name}",
        **subscriber_options(stage, spec, fetch_wait_ms),
    )(handler)


#: How often a stage compares its consumers' positions with the ends of their partitions.
LOG_END_CHECK_S = 1.0


async def rewind_past_log_end(broker: KafkaBroker) -> None:
    """Run while the stage runs: a consumer position past its partition's end goes back to
    the partition's beginning, as `auto_offset_reset="earliest"` means.

    Kafka answers a fetch past the log end with OFFSET_OUT_OF_RANGE and the client resets.
    Tansu holds that fetch instead, so nothing would ever correct the position. It happens
    when the embedded broker restarts empty (its topics live in memory): an offset from before
    the restart, committed when an in-flight batch finished after it, would make the group skip
    every record of the new log up to that offset."""
    logger = logging.getLogger("ragstream.consumers")
    while True:
        await asyncio.sleep(LOG_END_CHECK_S)
        for subscriber in broker.subscribers:
            for consumer in subscriber_consumers(subscriber):
                await _rewind_consumer(consumer, logger)


def subscriber_consumers(subscriber: Any) -> list[AIOKafkaConsumer]:
    """A subscriber's running consumers: its one, or each of a `max_workers` subscriber's."""
    found = [getattr(subscriber, "consumer", None), *getattr(subscriber, "consumer_subgroup", ())]
    return [c for c in found if isinstance(c, AIOKafkaConsumer)]


async def _rewind_consumer(consumer: AIOKafkaConsumer, logger: logging.Logger) -> None:
    for tp in consumer.assignment():
        try:
            # The high watermark of the last fetch response: the true end (unlike Tansu's
            # ListOffsets); None until the partition was fetched since its assignment.
            end = consumer.highwater(tp)
            position = await asyncio.wait_for(consumer.position(tp), LOG_END_CHECK_S)
            if end is None or position <= end:
                continue
            logger.warning(
                "%s[%d]: position %d is past the partition's end %d (the broker lost its log: "
                "an embedded broker restarted empty?); consuming it from the beginning",
                tp.topic,
                tp.partition,
                position,
                end,
            )
            await consumer.seek_to_beginning(tp)
        except (IllegalStateError, AssertionError, TimeoutError):
            continue  # rebalancing: the next round sees the new assignment


class _MetadataRequestNoAutoCreate(MetadataRequest):
    """A metadata request that never asks the broker to create the topics it names."""

    def __init__(self, topics: list[str] | None = None, allow_auto_topic_creation: bool = False):
        super().__init__(topics, allow_auto_topic_creation)


def forbid_topic_auto_creation() -> None:
    """Make this process's Kafka clients stop creating topics as a side effect of metadata.

    aiokafka asks for auto-creation in every metadata refresh, and the broker then creates a
    missing topic with its default partitions (4 in Tansu, `num.partitions` in Kafka), not the
    registry's. After the embedded broker restarts empty, a stage's refresh would win that race
    against `ensure_topics`: the topic gets 4 partitions, and records the stage's producers send
    to the others (by their cached metadata) are never consumed. Topics are the registry's,
    created with their partition counts by `ensure_topics` only (every stage does at start)."""
    aiokafka.client.MetadataRequest = _MetadataRequestNoAutoCreate
