"""Documents through ingest, chunk, embed (real Triton) and route into Qdrant: exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import ChunkSetV1, ChunkV1, DocumentDeleteV1, LineageRecordV1
from services.route.index import VectorIndex
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import (
    UPSTREAM,
    StageProcesses,
    events_on,
    eventually,
    publish_events,
    tenant_name,
)
from tests.integration.test_document_flow import document

pytestmark = pytest.mark.integration


@asynccontextmanager
async def index_of(pipeline: StageProcesses) -> AsyncIterator[VectorIndex]:
    """Route owns the local index: stop it, open the index, then start route again."""
    pipeline.stop_stage("route")
    index = VectorIndex(path=pipeline.data_dir / "qdrant")
    await index.warm_up()
    try:
        yield index
    finally:
        await index.close()
        pipeline.restart("route")


async def indexed(pipeline: StageProcesses, correlation_ids: set[str]) -> list[LineageRecordV1]:
    """Wait for route's lineage of each upload (its chunk set is applied)."""

    async def probe() -> list[LineageRecordV1] | None:
        records = [
            TOPICS.audit.adapter.validate_json(r.value)
            for r in await read_topic(pipeline.bootstrap, TOPICS.audit.name)
        ]
        done = [r for r in records if r.stage == "route" and r.correlation_id in correlation_ids]
        return done if len({r.correlation_id for r in done}) >= len(correlation_ids) else None

    return await eventually(probe, timeout_s=300, what=f"{len(correlation_ids)} documents indexed")


async def test_documents_are_indexed_once_versioned_deleted_and_isolated(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenants = [tenant_name("alpha"), tenant_name("beta")]
    documents = [document(tenants[i % 2], 5000 + i) for i in range(200)]
    await publish_events(producer, TOPICS.documents, documents)
    await indexed(pipeline, {d.correlation_id for d in documents})

    chunk_events = [
        e
        for e in await events_on(pipeline.bootstrap, TOPICS.chunks, set(tenants))
        if isinstance(e, ChunkV1)
    ]
    async with index_of(pipeline) as index:
        for tenant in tenants:
            ids = await index.chunk_ids(tenant)
            assert len(ids) == len(set(ids))
            assert set(ids) == {c.chunk_id for c in chunk_events if c.tenant_id == tenant}
        # tenant isolation: the exact vector of an alpha chunk, searched as beta
        alpha_chunk = next(c for c in chunk_events if c.tenant_id == tenants[0])
        (hit,) = await index.client.retrieve(
            index.collection, [alpha_chunk.chunk_id], with_vectors=True
        )
        assert all(
            h.payload["tenant_id"] == tenants[1]
            for h in await index.search(tenants[1], hit.vector, limit=20)
        )
        assert (await index.search(tenants[0], hit.vector, limit=1))[
            0
        ].chunk_id == alpha_chunk.chunk_id
        before = {t: await index.count(t) for t in tenants}

    again = [
        d.model_copy(
            update={"event_id": f"re-{d.event_id}", "correlation_id": f"re-{d.correlation_id}"}
        )
        for d in documents
    ]
    reindexed = documents[2].model_copy(  # unchanged, as if lost downstream: indexed again
        update={
            "event_id": f"rx-{documents[2].event_id}",
            "correlation_id": f"rx-{documents[2].correlation_id}",
            "reindex": True,
        }
    )
    changed = document(tenants[0], 5000, revision=1)
    deleted = DocumentDeleteV1(
        tenant_id=tenants[1],
        correlation_id="del-5001",
        produced_by=UPSTREAM,
        doc_id=documents[1].doc_id,
    )
    await publish_events(producer, TOPICS.documents, [*again, reindexed, changed, deleted])
    await indexed(
        pipeline, {reindexed.correlation_id, changed.correlation_id, deleted.correlation_id}
    )

    async def ingest_dropped_all() -> bool:
        records = await events_on(pipeline.bootstrap, TOPICS.audit, set(tenants))
        return sum(
            r.stage == "ingest" and r.correlation_id.startswith("re-") for r in records
        ) >= len(again)

    await eventually(ingest_dropped_all, what="re-published documents dropped as unchanged")
    (accepted_again,) = [
        r
        for r in await events_on(pipeline.bootstrap, TOPICS.audit, set(tenants))
        if r.stage == "ingest" and r.correlation_id == reindexed.correlation_id
    ]
    assert (accepted_again.outcome, accepted_again.details) == (
        "ok",
        {"doc_version": 2, "version_kind": "reindex"},
    )
    sets = [
        e
        for e in await events_on(pipeline.bootstrap, TOPICS.chunks, set(tenants))
        if isinstance(e, ChunkSetV1)
    ]
    v2 = next(s for s in sets if s.doc_id == changed.doc_id and s.doc_version == 2)
    r1, r2 = (
        next(s for s in sets if s.doc_id == reindexed.doc_id and s.doc_version == v) for v in (1, 2)
    )
    assert len(r2.chunk_ids) == len(r1.chunk_ids) and not set(r1.chunk_ids) & set(r2.chunk_ids)
    async with index_of(pipeline) as index:
        assert set(await index.chunk_ids(tenants[0])) >= set(v2.chunk_ids)
        assert await index.count(tenants[0], changed.doc_id) == len(v2.chunk_ids)
        assert await index.count(tenants[1], documents[1].doc_id) == 0
        old_v1 = [
            c.chunk_id
            for c in chunk_events
            if c.doc_id == changed.doc_id and c.tenant_id == tenants[0]
        ]
        assert not set(old_v1) & set(await index.chunk_ids(tenants[0]))
        assert set(await index.chunk_ids(tenants[0])) >= set(r2.chunk_ids)
        assert not set(r1.chunk_ids) & set(await index.chunk_ids(tenants[0]))
        assert await index.count(tenants[0], reindexed.doc_id) == len(r2.chunk_ids)
        after = {t: await index.count(t) for t in tenants}
    removed = len(
        [c for c in chunk_events if c.tenant_id == tenants[1] and c.doc_id == documents[1].doc_id]
    )
    assert after[tenants[1]] == before[tenants[1]] - removed
    assert after[tenants[0]] == before[tenants[0]] - len(old_v1) + len(v2.chunk_ids)
