"""Reading topics without a consumer group: whole topics for the CLI and tests, or their tail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.runtime.kafka_admin import partition_counts

DRAIN_MS = 1000


async def _assigned_consumer(
    bootstrap_servers: str, topic: str
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    counts = await asyncio.to_thread(partition_counts, bootstrap_servers)
    assigned = [TopicPartition(topic, p) for p in range(counts.get(topic, 0))]
    consumer.assign(assigned)
    return consumer, assigned


async def read_topic(
    bootstrap_servers: str, topic: str, timeout_s: float = 30.0
) -> list[ConsumerRecord[Any, Any]]:
    """Every record now in `topic`, partition by partition in offset order."""
    consumer, assigned = await _assigned_consumer(bootstrap_servers, topic)
    try:
        if not assigned:
            return []
        end = await consumer.end_offsets(assigned)
        await consumer.seek_to_beginning(*assigned)
        records: list[ConsumerRecord[Any, Any]] = []
        deadline = time.monotonic() + timeout_s
        pending = {tp for tp in assigned if end[tp] > 0}
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=500)
            for recs in batch.values():
                # Tansu 0.6 reports a partition's end as its last batch's base offset + 1, so
                # the tail batch may hold records past `end`: they are published, keep them.
                records.extend(recs)
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
        if pending:
            raise TimeoutError(f"could not read {topic} to its end within {timeout_s:.0f} s")
        # Tansu's end offsets can lag its log (and a loaded machine answers slowly): drain
        # until a fetch stays empty for a whole second.
        while tail := await consumer.getmany(*assigned, timeout_ms=DRAIN_MS):
            for recs in tail.values():
                records.extend(recs)
        return records
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
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False, group_id=None
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
