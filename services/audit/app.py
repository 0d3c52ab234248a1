"""audit stage: every stage's lineage records and every answer in; rows of the on-disk audit
store out. It publishes no lineage about itself (its own records would feed it forever)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from faststream import FastStream
from faststream.kafka import KafkaRouter

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, LineageRecordV1
from services.audit.store import AuditStore, audit_db_path
from services.runtime.batches import validate_batch
from services.runtime.broker import subscribe_batches
from services.runtime.loop_context import KafkaBroker, KafkaMessage, LoopContext
from services.runtime.settings import RuntimeSettings
from services.runtime.stage import stage_app

STAGE = "audit"
#: How long start-up waits for a reader (`ragstream audit …`) to let go of the file.
LOCK_WAIT_S = 30.0
#: How long a fetch gathers records before the stage stores them. The store's cost is mostly
#: per write (~6 ms for one record, ~16 ms for 200: bench/README.md), so the audit stage
#: takes a batch a second rather than the answers topic's 40 small ones: the store lags up to
#: this much behind the answers, which nobody waits for.
GATHER_MS = 1000
#: Kafka answers a fetch once this much has arrived (Tansu only when `GATHER_MS` ran out).
GATHER_BYTES = 256 * 1024


@dataclass
class AuditResources:
    store: AuditStore
    #: One writer at a time: both subscribers share the store, writes run in a thread.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(
        self, records: Sequence[LineageRecordV1], answers: Sequence[AnswerV1] = ()
    ) -> None:
        async with self.lock:
            await asyncio.to_thread(self.store.write, records, answers)


Audit = Annotated[AuditResources, LoopContext("audit")]


async def store_lineage(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, audit: Audit
) -> None:
    """A batch of lineage records into the store in one transaction (a replayed batch
    changes nothing: rows are keyed by event id); bad records to the DLQ."""
    batch = validate_batch(message, TOPICS.audit)
    await audit.write(batch.events)
    await batch.dead_letter_invalid(broker, STAGE)


async def store_answers(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, audit: Audit
) -> None:
    """Answers map request ids to correlations and carry what the user got."""
    batch = validate_batch(message, TOPICS.answers)
    await audit.write((), batch.events)
    await batch.dead_letter_invalid(broker, STAGE)


def build_router() -> KafkaRouter:
    router = KafkaRouter()
    gather = {"fetch_wait_ms": GATHER_MS, "fetch_min_bytes": GATHER_BYTES}
    subscribe_batches(
        router, STAGE, TOPICS.audit, store_lineage, max_records=2048, wait_ms=50, **gather
    )
    subscribe_batches(
        router, STAGE, TOPICS.answers, store_answers, max_records=1024, wait_ms=50, **gather
    )
    return router


def create_app(settings: RuntimeSettings | None = None) -> FastStream:
    settings = settings or RuntimeSettings()
    router = build_router()

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        path = audit_db_path(settings.data_dir)
        store = await asyncio.to_thread(AuditStore, path, False, LOCK_WAIT_S)
        try:
            yield {"audit": AuditResources(store)}
        finally:
            store.close()

    return stage_app(STAGE, settings, router, resources)
