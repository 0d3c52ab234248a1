"""The runtime's dead-letter path on the real broker: retries, then DLQ, then commit."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from faststream import AckPolicy

from contracts.registry import TOPICS
from contracts.v1 import DeadLetterV1
from services.runtime.broker import make_broker
from services.runtime.embedded_broker import EmbeddedBroker
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration


async def test_a_failing_event_is_retried_dead_lettered_and_committed_past(
    kafka: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    topic = f"ragstream-test.flaky.{uuid.uuid4().hex[:8]}"
    group = f"{topic}.group"
    calls: Counter[int] = Counter()
    handled: list[int] = []
    dlq_before_next: list[bool] = []
    broker = make_broker(
        RuntimeSettings(bootstrap_servers=kafka.bootstrap_servers, handler_attempts=3), "flaky"
    )

    @broker.subscriber(
        topic, group_id=group, ack_policy=AckPolicy.NACK_ON_ERROR, auto_offset_reset="earliest"
    )
    async def flaky(payload: dict[str, int]) -> None:
        calls[payload["n"]] += 1
        if payload["n"] == 2:
            raise ValueError("event 2 always fails")
        if payload["n"] == 3:  # the next event: event 2 must be in the DLQ already
            letters = await read_topic(kafka.bootstrap_servers, TOPICS.dlq.name)
            dlq_before_next.append(any(topic.encode() in r.value for r in letters))
        handled.append(payload["n"])

    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    for n in (1, 2, 3):
        await producer.send_and_wait(topic, json.dumps({"n": n}).encode(), key=b"k")
    await broker.start()
    try:
        await eventually(
            lambda: asyncio.sleep(0, result={1, 3} <= set(handled) or None), 60, "events 1 and 3"
        )
    finally:
        await broker.stop()
    # At-least-once: a rebalance may redeliver, but each delivery of event 2 is tried 3 times.
    assert set(calls) == {1, 2, 3} and calls[2] % 3 == 0
    # The trap of ag2ai/faststream#2618: a later success committing past a failure that is not
    # yet dead-lettered. Here the next event runs (and so commits) only after the dead letter.
    assert dlq_before_next and all(dlq_before_next), "event 3 handled before event 2's letter"

    letters = [
        DeadLetterV1.model_validate_json(r.value)
        for r in await read_topic(kafka.bootstrap_servers, TOPICS.dlq.name)
    ]
    mine = [letter for letter in letters if letter.source_topic == topic]
    assert len(mine) == calls[2] // 3, "one dead letter per delivery of the failing event"
    letter = mine[0]
    assert (letter.error_kind, letter.attempts, letter.stage) == ("handler_error", 3, "flaky")
    assert letter.reason == "ValueError: event 2 always fails"
    assert json.loads(letter.original_value) == {"n": 2}

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        (committed,) = consumer.committed(
            [TopicPartition(topic, letter.source_partition)], timeout=10
        )
    finally:
        consumer.close()
    assert committed.offset == 3, (
        "committed past the dead-lettered event only after it was in the DLQ"
    )
