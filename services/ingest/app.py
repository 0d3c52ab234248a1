"""ingest stage: upstream documents and questions in; validated, normalised, versioned ones out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypeAlias

from aiokafka import ConsumerRecord
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaRouter
from pydantic import JsonValue

from contracts.registry import TOPICS, TopicSpec
from contracts.v1 import (
    AcceptedDocumentV1,
    AcceptedQueryV1,
    DocumentDeleteV1,
    DocumentEventV1,
    DocumentRemovedV1,
    Envelope,
    QueryV1,
)
from contracts.v1.envelope import utc_now
from contracts.v1.operations import DeadLetterKind
from services.ingest.acceptance import prepare_document, prepare_question
from services.ingest.headers import header_contradiction
from services.ingest.normalise import Rejection
from services.ingest.rate_limits import TenantRateLimits
from services.ingest.versions import DocumentVersions
from services.runtime.answers import refusal_answer
from services.runtime.batches import records_of, validate_records
from services.runtime.broker import subscriber_options
from services.runtime.dead_letters import dead_letter_for
from services.runtime.lineage import lineage_record, publish_lineage
from services.runtime.loop_context import KafkaBroker, KafkaMessage, LoopContext
from services.runtime.metrics import rate_limited
from services.runtime.outbox import Outbox
from services.runtime.partition_workers import PartitionWorkers, WorkersListener
from services.runtime.publishing import derived_from, publish_event
from services.runtime.settings import IngestSettings
from services.runtime.stage import stage_app
from services.runtime.tracing import untraced

STAGE = "ingest"
router = KafkaRouter()
accepted_documents = router.publisher(TOPICS.documents_accepted.name, title="documents-accepted")
accepted_queries = router.publisher(TOPICS.queries_accepted.name, title="queries-accepted")
answers = router.publisher(TOPICS.answers.name, title="answers")
#: A refused question is quoted in its refusal up to this many characters.
QUOTED_QUESTION_CHARS = 500
#: Questions are consumed by one consumer and handled by a worker per partition (each in
#: order, committed after handling). A tenant's questions share a partition (keyed by tenant),
#: so one tenant's flood holds up only the tenants that hash to its partition, not every
#: question behind it; and one consumer polls the broker, not one per partition.
QUESTIONS = PartitionWorkers(STAGE)
#: Records a fetch of questions hands the workers at most.
QUESTION_FETCH_RECORDS = 256
#: How long a fetch (of questions, of documents) waits to fill.
FETCH_WAIT_MS = 5
#: Documents, the same way (a document's partition is its id's): each partition's in order
#: and committed once a run of them is handled, not a round trip to commit each one; one
#: partition's large document (seconds to parse) holds up no other partition. Fewer queued a
#: partition than questions: a document may be ~1 MB.
DOCUMENTS = PartitionWorkers(STAGE, queue_limit=16)
DOCUMENT_FETCH_RECORDS = 128


def _by_workers(spec: TopicSpec, workers: PartitionWorkers, max_records: int) -> dict[str, Any]:
    """A batch subscriber's options for `spec`'s topic whose records `workers` handle and
    commit (`_hand_to_workers`): FastStream commits nothing (a manual ack policy)."""
    return {
        "batch": True,
        "max_records": max_records,
        "batch_timeout_ms": FETCH_WAIT_MS,
        **subscriber_options(STAGE, spec),
        "ack_policy": AckPolicy.MANUAL,
        "listener": WorkersListener(STAGE, workers),
    }


@dataclass
class IngestResources:
    settings: IngestSettings
    versions: DocumentVersions
    limits: TenantRateLimits
    #: A document's version is decided and recorded under one of these (by tenant and id):
    #: partitions' workers run at once, and an upstream that does not key a document by its
    #: id, as the registry asks, can put two versions of it in two partitions.
    document_locks: list[asyncio.Lock] = field(
        default_factory=lambda: [asyncio.Lock() for _ in range(64)]
    )

    def document_lock(self, tenant_id: str, doc_id: str) -> asyncio.Lock:
        return self.document_locks[hash((tenant_id, doc_id)) % len(self.document_locks)]

    @classmethod
    def open(cls, settings: IngestSettings) -> IngestResources:
        return cls(
            settings=settings,
            versions=DocumentVersions(settings.data_dir / "ingest" / "document_versions.sqlite3"),
            limits=TenantRateLimits(settings.tenant_rate_per_second, settings.tenant_burst),
        )


Ingest = Annotated[IngestResources, LoopContext("ingest")]


RawRecord: TypeAlias = ConsumerRecord[Any, Any]


def _headers(record: RawRecord) -> dict[str, str]:
    """A record's headers as FastStream hands them to a single-record handler."""
    return {key: value.decode("utf-8", "replace") for key, value in record.headers or ()}


async def _turn_away(
    outbox: Outbox,
    record: RawRecord,
    event: Envelope,
    started: datetime,
    kind: DeadLetterKind,
    reason: str,
    dead_letter: bool = True,
    bare: bool = False,
) -> None:
    """A question's refusal to its asker and the lineage, sent to `outbox` (acked before the
    record is committed: a flood is mostly turned away, and a run of its questions shares one
    round trip), and the record to the DLQ unless `dead_letter` is false; `bare`, past
    FastStream's publish middlewares (`Outbox.event`)."""
    outputs: list[Envelope] = []
    if isinstance(event, QueryV1):  # the asker gets a refusal now, not a timeout
        question = event.question
        if len(question) > QUOTED_QUESTION_CHARS:
            question = question[:QUOTED_QUESTION_CHARS] + "…"
        refusal = refusal_answer(
            event,
            STAGE,
            request_id=event.request_id,
            question=question,
            reasons=[kind],
            message=reason,
            asked_at=event.produced_at,
        )
        await outbox.event(answers, TOPICS.answers, refusal, bare=bare)
        outputs.append(refusal)
    details: dict[str, JsonValue] = {"reason": reason}
    await outbox.lineage(lineage_record(STAGE, event, kind, started, outputs, details), bare=bare)
    if dead_letter:
        await outbox.dead_letter(dead_letter_for(record, STAGE, kind, reason), bare=bare)


async def _lying_headers(
    outbox: Outbox,
    record: RawRecord,
    spec: TopicSpec,
    event: Envelope,
    started: datetime,
) -> bool:
    reason = header_contradiction(_headers(record), spec, event)
    if reason is None:
        return False
    reason = f"event {event.event_id} of tenant {event.tenant_id}: {reason}"
    await _turn_away(outbox, record, event, started, "rejected", reason)
    return True


async def _over_rate(
    outbox: Outbox,
    record: RawRecord,
    event: Envelope,
    ingest: IngestResources,
    started: datetime,
) -> bool:
    if await ingest.limits.try_acquire(event.tenant_id, event.event_id):
        return False
    rate_limited(STAGE, record.topic)
    ingest.limits.refusals.add(event.tenant_id)
    rate, burst = ingest.limits.rate_per_second, ingest.limits.burst
    reason = f"tenant {event.tenant_id} is over its rate limit of {rate:g} events/s (burst {burst})"
    # A question's refusal is its answer (ask again later): no dead letter, whose replay would
    # give the request a second answer, and a flood costs the broker two records an event, not
    # four (the letter has its own lineage record).
    question = isinstance(event, QueryV1)
    reason += (
        "; ask again later"
        if question
        else "; replay it from the DLQ later or raise RAGSTREAM_TENANT_RATE_PER_SECOND"
    )
    # A flood's refusals: counted, summarised, in the lineage; neither traced nor sent through
    # FastStream's publish middlewares, which cost more than the rest of turning one away.
    with untraced():
        await _turn_away(
            outbox,
            record,
            event,
            started,
            "rate_limited",
            reason,
            dead_letter=not question,
            bare=True,
        )
    return True


@router.subscriber(
    TOPICS.documents.name, **_by_workers(TOPICS.documents, DOCUMENTS, DOCUMENT_FETCH_RECORDS)
)
async def ingest_documents(
    values: list[bytes],
    message: KafkaMessage,
    broker: KafkaBroker,
    ingest: Ingest,
) -> None:
    """Hand the fetched documents to their partitions' workers (`DOCUMENTS`), as
    `ingest_queries` does. Each document's outputs are acked before the next is decided, not
    with the run's (`ingest_document`)."""
    await _hand_to_workers(
        DOCUMENTS,
        TOPICS.documents,
        message,
        broker,
        ingest,
        lambda event, record, _: ingest_document(event, record, broker, ingest),
    )


async def ingest_document(
    event: DocumentEventV1, record: RawRecord, broker: KafkaBroker, ingest: IngestResources
) -> None:
    """Accept an upsert as a new version, drop an unchanged re-publish, propagate a delete.
    What each gives is acked before the next is decided: a version is recorded only once
    the broker holds it."""
    started = utc_now()
    async with Outbox(broker, STAGE) as outbox:
        if await _lying_headers(outbox, record, TOPICS.documents, event, started):
            return
        if await _over_rate(outbox, record, event, ingest, started):
            return
    async with ingest.document_lock(event.tenant_id, event.doc_id):
        await _new_version(event, record, broker, ingest, started)


async def _new_version(
    event: DocumentEventV1,
    record: RawRecord,
    broker: KafkaBroker,
    ingest: IngestResources,
    started: datetime,
) -> None:
    common = {**derived_from(event, STAGE), "doc_id": event.doc_id}
    if isinstance(event, DocumentDeleteV1):
        decision = ingest.versions.decide_delete(event.tenant_id, event.doc_id)
        if decision.kind == "already_deleted":
            await publish_lineage(broker, lineage_record(STAGE, event, "duplicate", started))
            return
        removed = DocumentRemovedV1(**common, doc_version=decision.version)
        await publish_event(accepted_documents, TOPICS.documents_accepted, removed, STAGE)
        ingest.versions.record(event.tenant_id, event.doc_id, None, decision.version)
        await publish_lineage(broker, lineage_record(STAGE, event, "ok", started, [removed]))
        return

    # Parsing a large HTML document takes seconds: off the loop, the consumer keeps heartbeating.
    prepared = await asyncio.to_thread(prepare_document, event, ingest.settings)
    if isinstance(prepared, Rejection):
        async with Outbox(broker, STAGE) as outbox:
            await _turn_away(outbox, record, event, started, "rejected", prepared.reason)
        return
    decision = ingest.versions.decide_upsert(
        event.tenant_id, event.doc_id, prepared.content_hash, reindex=event.reindex
    )
    if decision.kind == "unchanged":
        details: dict[str, JsonValue] = {
            "doc_version": decision.version,
            "content_hash": prepared.content_hash,
        }
        await publish_lineage(
            broker, lineage_record(STAGE, event, "duplicate", started, details=details)
        )
        return
    accepted = AcceptedDocumentV1(
        **common,
        doc_version=decision.version,
        content_hash=prepared.content_hash,
        title=event.title,
        source_uri=event.source_uri,
        content_type=prepared.content_type,
        text=prepared.text,
        metadata=event.metadata,
    )
    details = {"doc_version": decision.version, "version_kind": decision.kind}
    async with Outbox(broker, STAGE) as outbox:
        await outbox.event(accepted_documents, TOPICS.documents_accepted, accepted)
        await outbox.lineage(lineage_record(STAGE, event, "ok", started, [accepted], details))
    # Only once the broker holds the accepted version: else its redelivery would be dropped
    # as unchanged, and the version lost.
    ingest.versions.record(event.tenant_id, event.doc_id, prepared.content_hash, decision.version)


@router.subscriber(
    TOPICS.queries.name, **_by_workers(TOPICS.queries, QUESTIONS, QUESTION_FETCH_RECORDS)
)
async def ingest_queries(
    values: list[bytes],
    message: KafkaMessage,
    broker: KafkaBroker,
    ingest: Ingest,
) -> None:
    """Hand the fetched questions to their partitions' workers (`QUESTIONS`), which commit
    each run of a partition's questions after handling it: FastStream commits nothing here (a
    manual ack policy)."""
    await _hand_to_workers(
        QUESTIONS,
        TOPICS.queries,
        message,
        broker,
        ingest,
        lambda event, record, outbox: ingest_query(event, record, outbox, ingest),
    )


async def _hand_to_workers(
    workers: PartitionWorkers,
    spec: TopicSpec,
    message: KafkaMessage,
    broker: KafkaBroker,
    ingest: IngestResources,
    handle_event: Callable[[Any, RawRecord, Outbox], Awaitable[None]],
) -> None:
    """Queue a fetch's records for `workers`; a worker validates its run of them, dead-letters
    the invalid ones, and hands each event, its record and the run's outbox (acked before the
    run is committed: one round trip for the run's publishes) to `handle_event`."""

    async def handle(run: Sequence[RawRecord]) -> None:
        batch = validate_records(run, spec)
        async with Outbox(broker, STAGE) as outbox:
            await batch.handle_each(
                broker,
                STAGE,
                lambda event: handle_event(event, batch.record_of(event), outbox),
                # A flood's refusals never wait (sent unawaited, acked once for the run):
                # other partitions' workers, and the consumer fetching for them, get a turn
                # after each, not after the whole run.
                taking_turns=True,
                attempts=ingest.settings.handler_attempts,
            )
        await batch.dead_letter_invalid(broker, STAGE)

    await workers.dispatch(records_of(message), message.consumer, handle)


async def ingest_query(
    event: QueryV1, record: RawRecord, outbox: Outbox, ingest: IngestResources
) -> None:
    """Accept a question in normalised form, or turn it away with a reason; what it gives
    goes to `outbox`, acked before the question's offset is committed."""
    started = utc_now()
    if await _lying_headers(outbox, record, TOPICS.queries, event, started):
        return
    if await _over_rate(outbox, record, event, ingest, started):
        return
    prepared = prepare_question(event, ingest.settings)
    if isinstance(prepared, Rejection):
        await _turn_away(outbox, record, event, started, "rejected", prepared.reason)
        return
    accepted = AcceptedQueryV1(
        **derived_from(event, STAGE),
        request_id=event.request_id,
        question=prepared.question,
        question_hash=prepared.question_hash,
        options=event.options,
        asked_at=event.produced_at,
    )
    await outbox.event(accepted_queries, TOPICS.queries_accepted, accepted)
    await outbox.lineage(lineage_record(STAGE, event, "ok", started, [accepted]))


def create_app(settings: IngestSettings | None = None) -> FastStream:
    settings = settings or IngestSettings()

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        ingest = IngestResources.open(settings)
        QUESTIONS.open()
        DOCUMENTS.open()
        try:
            yield {"ingest": ingest}
        finally:
            ingest.versions.close()

    app = stage_app(STAGE, settings, router, resources)
    # Before the consumers stop: each worker finishes and commits its run.
    app.on_shutdown(QUESTIONS.close)
    app.on_shutdown(DOCUMENTS.close)
    return app
