"""Documents through the real broker, ingest and chunk: versions, deletes, no duplicates."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import (
    AcceptedDocumentV1,
    ChunkSetV1,
    ChunkV1,
    DocumentDeleteV1,
    DocumentUpsertV1,
    LineageRecordV1,
)
from tests.integration.conftest import (
    UPSTREAM,
    StageProcesses,
    events_on,
    eventually,
    publish_events,
    tenant_name,
)

pytestmark = pytest.mark.integration
WORDS = (
    "leave policy salary review onboarding laptop travel expense security badge office remote"
).split()


def document(tenant: str, index: int, revision: int = 0) -> DocumentUpsertV1:
    rng = random.Random(index * 7919 + revision)
    sections = []
    for s in range(rng.randint(1, 2)):  # about 1.2 chunks a document: embed runs behind
        paragraphs = [
            " ".join(rng.choices(WORDS, k=rng.randint(15, 60))) + "."
            for _ in range(rng.randint(1, 2))
        ]
        sections.append(f"## Section {s}\n\n" + "\n\n".join(paragraphs))
    return DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id=f"{tenant}-{index}-{revision}-{time.monotonic_ns()}",
        produced_by=UPSTREAM,
        doc_id=f"docs/doc-{index:04d}.md",
        title=f"Document {index}",
        content_type="text/markdown",
        content=f"# Document {index}\n\n" + "\n\n".join(sections),
    )


def by_document(
    events: list[Any],
) -> tuple[dict[tuple[str, str], list[ChunkV1]], dict[tuple[str, str], list[ChunkSetV1]]]:
    chunks: dict[tuple[str, str], list[ChunkV1]] = defaultdict(list)
    sets: dict[tuple[str, str], list[ChunkSetV1]] = defaultdict(list)
    for event in events:
        target = chunks if isinstance(event, ChunkV1) else sets
        target[(event.tenant_id, event.doc_id)].append(event)
    return chunks, sets


async def test_thousand_documents_are_chunked_once_and_versioned(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenants = [tenant_name(label) for label in ("acme", "globex", "initech")]
    documents = [document(tenants[i % 3], i) for i in range(1000)]
    started = time.monotonic()
    await publish_events(producer, TOPICS.documents, documents)

    async def all_chunked() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.chunks, set(tenants))
        done = sum(isinstance(e, ChunkSetV1) for e in events)
        return events if done >= len(documents) else None

    events = await eventually(all_chunked, 300, "1000 chunk sets")
    elapsed = time.monotonic() - started
    chunks, sets = by_document(events)
    print(f"\n1000 documents, {sum(map(len, chunks.values()))} chunks in {elapsed:.1f} s "
          f"({1000 / elapsed:.0f} documents/s through ingest and chunk)")  # fmt: skip
    assert set(sets) == {(d.tenant_id, d.doc_id) for d in documents}
    all_ids = [c.chunk_id for doc_chunks in chunks.values() for c in doc_chunks]
    assert len(all_ids) == len(set(all_ids)), "no chunk is emitted twice"
    for key, (chunk_set,) in sets.items():
        assert chunk_set.doc_version == 1 and not chunk_set.deleted
        assert chunk_set.chunk_ids == [
            c.chunk_id for c in sorted(chunks[key], key=lambda c: c.position)
        ]
        assert all(c.token_count <= 200 for c in chunks[key])

    # The same documents again: ingest drops them as unchanged, nothing new is chunked.
    again = [
        doc.model_copy(
            update={
                "event_id": f"again-{doc.event_id}",
                "correlation_id": f"again-{doc.correlation_id}",
            }
        )
        for doc in documents
    ]
    await publish_events(producer, TOPICS.documents, again)
    again_ids = {doc.correlation_id for doc in again}

    async def all_dropped() -> list[LineageRecordV1] | None:
        records = await events_on(pipeline.bootstrap, TOPICS.audit, set(tenants))
        dropped = [r for r in records if r.correlation_id in again_ids and r.stage == "ingest"]
        return dropped if len(dropped) >= len(again) else None

    dropped = await eventually(all_dropped, 300, "1000 unchanged documents dropped")
    assert Counter(r.outcome for r in dropped) == {"duplicate": 1000}

    # A changed document is a new version with new chunks; a delete empties its chunk set.
    changed = document(tenants[0], 0, revision=1)
    deleted = DocumentDeleteV1(
        tenant_id=tenants[1],
        correlation_id="del-1",
        produced_by=UPSTREAM,
        doc_id=documents[1].doc_id,
    )
    await publish_events(producer, TOPICS.documents, [changed, deleted])

    async def versions_landed() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.chunks, set(tenants))
        return (
            events if sum(isinstance(e, ChunkSetV1) for e in events) >= len(documents) + 2 else None
        )

    chunks_after, sets_after = by_document(
        await eventually(versions_landed, what="version 2 chunk sets")
    )
    assert len(chunks_after) == len(chunks) and sum(map(len, chunks_after.values())) > sum(
        map(len, chunks.values())
    )
    v2 = sets_after[(tenants[0], changed.doc_id)][-1]
    assert v2.doc_version == 2 and not v2.deleted and v2.chunk_ids
    assert not set(v2.chunk_ids) & set(sets[(tenants[0], changed.doc_id)][0].chunk_ids)
    tombstone = sets_after[(tenants[1], documents[1].doc_id)][-1]
    assert (tombstone.doc_version, tombstone.deleted, tombstone.chunk_ids) == (2, True, [])
    assert pipeline.alive("ingest") and pipeline.alive("chunk")


async def test_a_redelivered_document_yields_identical_chunk_ids(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    """At-least-once redelivery of an accepted document re-emits the very same chunk ids."""
    tenant = tenant_name("redelivery")
    accepted = AcceptedDocumentV1(
        tenant_id=tenant,
        correlation_id="c-redelivery",
        produced_by=UPSTREAM,
        doc_id="handbook.md",
        doc_version=1,
        content_hash="0" * 64,
        content_type="text/markdown",
        text=document(tenant, 7).content,
    )
    await publish_events(producer, TOPICS.documents_accepted, [accepted, accepted])

    async def twice() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.chunks, {tenant})
        return events if sum(isinstance(e, ChunkSetV1) for e in events) == 2 else None

    sets = [e for e in await eventually(twice, what="two chunk sets") if isinstance(e, ChunkSetV1)]
    assert sets[0].chunk_ids == sets[1].chunk_ids and sets[0].chunk_ids
