"""What upstream publishes in the benchmarks: document upserts, keyed as a producer would.

Light on purpose (no model, no torch): the tenant flood's flooder (`bench/flooder.py`) runs in
a process of its own and imports it.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import DocumentUpsertV1, ProducedBy
from services.runtime.publishing import event_bytes

BENCH = ProducedBy(service="bench", version="1")


def document_events(
    texts: list[str], tenant: str = "bench", doc_ids: list[str] | None = None
) -> list[DocumentUpsertV1]:
    """Upserts of `texts`; without `doc_ids` each document gets a fresh id (ingest drops a
    re-published document)."""
    run = time.time_ns()
    ids = doc_ids or [f"bench-{run}-{i}.txt" for i in range(len(texts))]
    return [
        DocumentUpsertV1(
            tenant_id=tenant, correlation_id=f"bench-{run}-{i}", produced_by=BENCH,
            doc_id=doc_id, content_type="text/plain", content=text,
        )
        for i, (doc_id, text) in enumerate(zip(ids, texts, strict=True))
    ]  # fmt: skip


async def publish_documents(bootstrap: str, documents: list[DocumentUpsertV1]) -> None:
    """Publish to the documents topic as upstream would, keyed by document id."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        sends = [
            await producer.send(TOPICS.documents.name, event_bytes(d), key=d.doc_id.encode())
            for d in documents
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
