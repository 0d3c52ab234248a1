"""One consumer, a worker per partition, on the real broker: a busy partition holds up no
other, what a partition had queued is handled as one run and committed once handled, and a
stopped worker loses nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from itertools import chain
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from services.runtime.embedded_broker import EmbeddedBroker
from services.runtime.metrics import OwnedPartitions
from services.runtime.partition_workers import PartitionWorkers, WorkersListener
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _topic(kafka: EmbeddedBroker) -> str:
    """A new topic of PARTITIONS partitions (its consumer group: the name + ".group")."""
    topic = f"ragstream-test.workers.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(10)
    return topic


async def _publish(producer: AIOKafkaProducer, topic: str, counts: dict[int, int]) -> None:
    for partition, count in counts.items():
        for n in range(count):
            await producer.send(topic, f"{partition}:{n}".encode(), partition=partition)
    await producer.flush()


@asynccontextmanager
async def _consuming(
    kafka: EmbeddedBroker, topic: str, workers: PartitionWorkers, handle: Any
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer of `topic` in its group whose fetched records go to `workers`, as a batch
    subscriber's handler hands them; its workers closed before it stops."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"{topic}.group",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=25,
    )
    consumer.subscribe([topic], listener=WorkersListener("test", workers))
    await consumer.start()

    async def loop() -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=20, max_records=64)
            await workers.dispatch(list(chain(*fetched.values())), consumer, handle)

    task = asyncio.create_task(loop())
    try:
        yield consumer
    finally:
        await workers.close()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await consumer.stop()
        # The partitions-owned gauge is the process's: leave none of this test's behind.
        await OwnedPartitions("test").on_partitions_revoked(
            {TopicPartition(topic, p) for p in range(PARTITIONS)}
        )


def _handled(handled: Counter[bytes], count: int) -> Any:
    """A probe for `eventually`: `count` records handled in all."""
    return lambda: asyncio.sleep(0, result=sum(handled.values()) >= count or None)


async def _committed(consumer: AIOKafkaConsumer, topic: str) -> dict[int, int | None]:
    return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}


async def test_a_busy_partition_holds_up_no_other_and_stopping_loses_nothing(
    kafka: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    topic = _topic(kafka)
    handled: Counter[bytes] = Counter()
    release = asyncio.Event()
    blocked = asyncio.Event()
    held: list[int] = []  # the held run's length

    async def slow_first_partition(run: Any) -> None:
        for record in run:
            if record.partition == 0 and not release.is_set():
                held.append(len(run))
                blocked.set()
                await release.wait()
            handled[record.value] += 1

    workers = PartitionWorkers("test", queue_limit=4)
    await _publish(producer, topic, {0: 12, 1: 10, 2: 10, 3: 10})
    async with _consuming(kafka, topic, workers, slow_first_partition) as consumer:
        # Partition 0's first run is held: every other partition is handled and committed.
        async def others_committed() -> bool | None:
            committed = await _committed(consumer, topic)
            return committed[1] == committed[2] == committed[3] == 10 or None

        await eventually(others_committed, 60, "partitions 1-3 committed while 0 is held")
        assert blocked.is_set()
        assert (await _committed(consumer, topic))[0] is None
        assert sum(handled.values()) == 30
        assert TopicPartition(topic, 0) in consumer.paused()  # its queue reached the limit
        assert workers.queued[TopicPartition(topic, 0)] <= 12

        # Stopped while handling its first run: it finishes and commits that run only (at most
        # the queue limit: what was queued when the worker took it).
        stopping = asyncio.create_task(workers.stop([TopicPartition(topic, 0)]))
        await asyncio.sleep(0.2)
        assert not stopping.done()  # waits for the run being handled
        release.set()
        await stopping
        assert 1 <= held[0] <= 4 and (await _committed(consumer, topic))[0] == held[0]
    assert handled[b"0:0"] == 1 and sum(handled.values()) == 30 + held[0]

    # The next consumer of the group takes the dropped records from the committed offset.
    async with _consuming(kafka, topic, PartitionWorkers("test"), slow_first_partition):
        await eventually(_handled(handled, 42), 60, "partition 0's other records")
    assert set(handled.values()) == {1}  # each record handled once: none lost, none twice


async def test_a_failing_handler_is_retried_and_not_committed_past(
    kafka: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    topic = _topic(kafka)
    tries: Counter[bytes] = Counter()

    async def fails_twice(run: Any) -> None:
        for record in run:
            tries[record.value] += 1
            if record.value == b"1:0" and tries[record.value] < 3:
                raise ConnectionError("the broker refused a publish")

    await _publish(producer, topic, {1: 2})
    workers = PartitionWorkers("test", retry_wait_s=0.01)
    async with _consuming(kafka, topic, workers, fails_twice) as consumer:

        async def both_committed() -> bool | None:
            return (await _committed(consumer, topic))[1] == 2 or None

        await eventually(both_committed, 60, "both records committed")
    assert tries == {b"1:0": 3, b"1:1": 1}  # the second waited for the first's success


async def test_a_second_consumer_takes_partitions_over_mid_stream_each_record_once(
    kafka: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    topic = _topic(kafka)
    handled: Counter[bytes] = Counter()
    by: dict[str, int] = Counter()

    def handler(name: str) -> Any:
        async def handle(run: Any) -> None:
            for record in run:
                await asyncio.sleep(0.05)  # in flight when the rebalance comes
                handled[record.value] += 1
                by[name] += 1

        return handle

    await _publish(producer, topic, {p: 200 for p in range(PARTITIONS)})  # 10 s a partition
    first = PartitionWorkers("test", queue_limit=8)
    async with _consuming(kafka, topic, first, handler("first")):
        await eventually(_handled(handled, 40), 60, "40 handled")
        second = PartitionWorkers("test", queue_limit=8)
        async with _consuming(kafka, topic, second, handler("second")):
            await eventually(_handled(handled, 800), 120, "all 800 handled")
    assert by["first"] and by["second"]  # both had partitions
    assert set(handled.values()) == {1}  # revoked workers committed what they handled


async def test_what_a_partition_had_queued_is_one_run_and_one_commit(
    kafka: EmbeddedBroker, producer: AIOKafkaProducer
) -> None:
    """A flooded partition's records are handled in runs (their publishes share a round trip
    and the run one commit), each run at most the queue limit, in order, each record once."""
    topic = _topic(kafka)
    runs: list[list[bytes]] = []

    async def handle(run: Any) -> None:
        runs.append([record.value for record in run])

    await _publish(producer, topic, {2: 100})
    async with _consuming(kafka, topic, PartitionWorkers("test", queue_limit=16), handle) as c:

        async def all_committed() -> bool | None:
            return (await _committed(c, topic))[2] == 100 or None

        await eventually(all_committed, 60, "the partition's 100 records committed")
    assert [value for run in runs for value in run] == [f"2:{n}".encode() for n in range(100)]
    assert max(map(len, runs)) <= 16 and len(runs) < 50  # runs, not a record at a time
    print(f"100 records of one partition in {len(runs)} runs: {[len(r) for r in runs]}")
