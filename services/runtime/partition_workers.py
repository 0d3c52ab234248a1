"""One consumer whose partitions are handled side by side: each partition's records in order,
by a worker of its own, in runs of what was queued, each run committed once it was handled.

FastStream's `max_workers` gives every partition a consumer of its own, and each consumer
asks the broker for records 40 times a second on the question path: ingest's eight question
consumers were more than half of an idle pipeline's polling (bench/README.md). Here one
consumer polls; its batch handler only queues each record for its partition's worker and
returns, so a partition with a long queue (one tenant's flood) holds up no other partition.
A worker takes every record its partition has queued (up to the queue limit) as one run: a
quiet partition's record is handled alone and at once, a flooded partition's records share
their publishes' round trip and one commit, not one of each a record. A partition whose
queue is full stops being fetched until its worker has drained half of it: memory stays
bounded, and the broker keeps what is not fetched yet.

At least once: a run's offset is committed only after its handling (and its publishes)
finished; broker trouble is retried (the whole run, whose derived ids make the repeat count
once), never committed past. A revoked partition's worker finishes and commits the run it
is handling; what it had queued is dropped, for the partition's next owner to consume from
the committed offset.

>>> QUESTIONS = PartitionWorkers("ingest")
>>> async def ingest_queries(values: list[bytes], message: KafkaMessage, ...) -> None:
...     await QUESTIONS.dispatch(records_of(message), message.consumer, handle)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from services.runtime.dead_letters import handler_retry_wait
from services.runtime.metrics import OwnedPartitions

logger = logging.getLogger("ragstream.consumers")

Record: TypeAlias = ConsumerRecord[Any, Any]
#: Handles a run of one partition's records, in order.
Handle: TypeAlias = Callable[[Sequence[Record]], Awaitable[None]]
#: Records queued for one partition before its fetching pauses; a run is at most this many.
QUEUE_LIMIT = 64
#: How long a revoked partition's worker may take to finish the run it is handling.
FINISH_WAIT_S = 10.0


@dataclass
class _Worker:
    partition: TopicPartition
    consumer: AIOKafkaConsumer
    handle: Handle
    queue: asyncio.Queue[Record] = field(default_factory=asyncio.Queue)
    #: Records of the run being handled (0: waiting for one).
    handling: int = 0
    stopping: bool = False
    task: asyncio.Task[None] | None = None


class PartitionWorkers:
    """The per-partition workers of one consumer (one batch subscriber) of a stage."""

    def __init__(self, stage: str, queue_limit: int = QUEUE_LIMIT, retry_wait_s: float = 0.2):
        self.stage = stage
        self.queue_limit = queue_limit
        self.retry_wait_s = retry_wait_s
        self._workers: dict[TopicPartition, _Worker] = {}
        self._closed = False

    def open(self) -> None:
        """Take records again (a stage opens its workers when it starts)."""
        self._closed = False

    @property
    def queued(self) -> dict[TopicPartition, int]:
        """Records waiting for each partition's worker, the run it is handling included."""
        return {tp: w.queue.qsize() + w.handling for tp, w in self._workers.items()}

    async def dispatch(self, records: Sequence[Record], consumer: Any, handle: Handle) -> None:
        """Queue `records` for their partitions' workers (`handle` handles a run of one
        partition's records).

        Without a real consumer (FastStream's in-memory test broker), they are handled at once,
        as one run."""
        if not isinstance(consumer, AIOKafkaConsumer):
            if records:
                await self._handle_until_done(handle, records)
            return
        if self._closed:  # stopping: not committed, so consumed again after the restart
            return
        owned = consumer.assignment()
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp not in owned:  # revoked since it was fetched: its next owner consumes it
                continue
            worker = self._workers.get(tp)
            if worker is None:
                worker = self._workers[tp] = _Worker(tp, consumer, handle)
                worker.task = asyncio.create_task(self._work(worker), name=f"worker {tp}")
            worker.queue.put_nowait(record)
            if worker.queue.qsize() >= self.queue_limit:
                consumer.pause(tp)

    async def _work(self, worker: _Worker) -> None:
        tp, consumer = worker.partition, worker.consumer
        while not worker.stopping:
            run = [await worker.queue.get()]
            while len(run) < self.queue_limit and not worker.queue.empty():
                run.append(worker.queue.get_nowait())
            worker.handling = len(run)
            await self._handle_until_done(worker.handle, run)
            await self._commit(consumer, tp, run[-1].offset + 1)
            worker.handling = 0
            if worker.queue.qsize() <= self.queue_limit // 2 and tp in consumer.paused():
                consumer.resume(tp)

    async def _handle_until_done(self, handle: Handle, run: Sequence[Record]) -> None:
        """`handle` `run`; what escapes the handler (broker trouble: the handler
        dead-letters the events' own faults) is tried again, never committed past."""
        async for attempt in AsyncRetrying(
            wait=handler_retry_wait(self.retry_wait_s),
            retry=retry_if_exception_type(Exception),
            before_sleep=self._log_retry(run),
        ):
            with attempt:
                await handle(run)

    def _log_retry(self, run: Sequence[Record]) -> Callable[[RetryCallState], None]:
        def log(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            first, last = run[0], run[-1]
            logger.warning(
                "stage %s: %s[%d]@%d-%d not handled (%s: %s); trying again (try %d)",
                self.stage, first.topic, first.partition, first.offset, last.offset,
                type(error).__name__, error, state.attempt_number + 1,
            )  # fmt: skip

        return log

    async def _commit(self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        """Commit `offset`; a failure is logged, not raised: the partition's next commit
        covers this run too, and if none comes (revoked meanwhile) its next owner consumes
        the run again."""
        try:
            await consumer.commit({tp: offset})
        except Exception as error:
            logger.warning(
                "stage %s: could not commit %s[%d] at %d (%s: %s)",
                self.stage, tp.topic, tp.partition, offset, type(error).__name__, error,
            )  # fmt: skip

    async def stop(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop the workers of `partitions`: each finishes (and commits) the run it is
        handling, within FINISH_WAIT_S; what they had queued is dropped, not committed."""
        workers = [w for tp in partitions if (w := self._workers.pop(tp, None)) is not None]
        for worker in workers:
            worker.stopping = True
            if not worker.handling and worker.task is not None:
                worker.task.cancel()  # waiting for a record: nothing to finish
        tasks = {w.task for w in workers if w.task is not None}
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=FINISH_WAIT_S)
        for task in late:
            logger.warning("stage %s: %s did not finish its run; cancelled", self.stage, task)
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Before the consumer stops: take no more records, let every worker finish its run."""
        self._closed = True
        await self.stop(list(self._workers))


class WorkersListener(OwnedPartitions):
    """`OwnedPartitions`, and a revoked partition's worker stopped before another consumer
    of the group may take the partition over."""

    def __init__(self, stage: str, workers: PartitionWorkers) -> None:
        super().__init__(stage)
        self.workers = workers

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await super().on_partitions_revoked(revoked)
        await self.workers.stop(revoked)
