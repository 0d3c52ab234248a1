"""Reading topics without a consumer group: whole topics for the CLI and tests, or their tail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.runtime.kafka_admin import partition_counts
from services.runtime.kafka_security import aiokafka_security, librdkafka_security
from services.runtime.settings import RuntimeSettings

FETCH_WAIT_MS = 200
#: A tail (e.g. `ragstream ask` waiting for its answer) is idle until the record comes, and
#: Tansu holds an idle fetch this long: it is the tail's added latency (see broker.py).
TAIL_FETCH_MAX_WAIT_MS = 25


async def _assigned_consumer(
    bootstrap_servers: str, topic: str, settings: RuntimeSettings | None = None
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        group_id=None,
        **(aiokafka_security(settings) if settings is not None else {}),
    )
    await consumer.start()
    security = librdkafka_security(settings) if settings is not None else None
    counts = await asyncio.to_thread(partition_counts, bootstrap_servers, 10.0, security)
    assigned = [TopicPartition(topic, p) for p in range(counts.get(topic, 0))]
    consumer.assign(assigned)
    return consumer, assigned


async def read_topic(
    bootstrap_servers: str,
    topic: str,
    timeout_s: float = 60.0,
    settings: RuntimeSettings | None = None,
) -> list[ConsumerRecord[Any, Any]]:
    """Every record now in `topic`, partition by partition in offset order (with `settings`:
    over their TLS/SASL).

    The end of each partition is the high watermark of the fetch responses: Tansu 0.6
    answers ListOffsets with its last batch's base offset + 1, short of the real end."""
    consumer, assigned = await _assigned_consumer(bootstrap_servers, topic, settings)
    try:
        if not assigned:
            return []
        await consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord[Any, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(*assigned, timeout_ms=FETCH_WAIT_MS)
            for recs in batch.values():
                records.extend(recs)
            if await _caught_up(consumer, assigned):
                return records
        raise TimeoutError(f"could not read {topic} to its end within {timeout_s:.0f} s")
    finally:
        await consumer.stop()


async def _caught_up(consumer: AIOKafkaConsumer, assigned: list[TopicPartition]) -> bool:
    for tp in assigned:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


async def high_watermarks(
    bootstrap_servers: str,
    topic: str,
    timeout_s: float = 5.0,
    settings: RuntimeSettings | None = None,
) -> dict[int, int]:
    """Each partition's real end offset, from a fetch at its tail (see `read_topic`; with
    `settings`: over their TLS/SASL)."""
    consumer, assigned = await _assigned_consumer(bootstrap_servers, topic, settings)
    try:
        if not assigned:
            return {}
        await consumer.seek_to_end(*assigned)  # at or before the real end: only the tail is fetched
        deadline = time.monotonic() + timeout_s
        while not await _caught_up(consumer, assigned) and time.monotonic() < deadline:
            await consumer.getmany(*assigned, timeout_ms=FETCH_WAIT_MS)
        return {
            tp.partition: consumer.highwater(tp) or await consumer.position(tp) for tp in assigned
        }
    finally:
        await consumer.stop()


class TopicTail:
    """Records published to some topics from now on.

    >>> async with TopicTail(bootstrap, ["ragstream.audit.v1"]) as tail:  # doctest: +SKIP
    ...     async for record in tail.records(timeout_s=10): ...
    """

    def __init__(self, bootstrap_servers: str, topics: list[str]) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> TopicTail:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=TAIL_FETCH_MAX_WAIT_MS,
        )
        await consumer.start()
        counts = await asyncio.to_thread(partition_counts, self.bootstrap_servers)
        assigned = [
            TopicPartition(topic, p) for topic in self.topics for p in range(counts.get(topic, 0))
        ]
        consumer.assign(assigned)
        await consumer.seek_to_end(*assigned)
        for tp in assigned:  # pin the positions now, before anything is published
            await consumer.position(tp)
        self._consumer = consumer
        return self

    async def records(self, timeout_s: float) -> AsyncIterator[ConsumerRecord[Any, Any]]:
        assert self._consumer is not None, "use TopicTail as an async context manager"
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            batch = await self._consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for recs in batch.values():
                for record in recs:
                    yield record
            await asyncio.sleep(0)

    async def __aexit__(self, *exc: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
