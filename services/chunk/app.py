"""chunk stage: accepted documents in; chunks and each version's chunk set out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from faststream import FastStream
from faststream.kafka import KafkaRouter
from pydantic import JsonValue

from contracts.registry import TOPICS
from contracts.v1 import (
    AcceptedDocumentEventV1,
    ChunkSetV1,
    ChunkV1,
    DocumentRemovedV1,
)
from contracts.v1.envelope import utc_now
from services.chunk.chunker import Chunker, chunk_id, load_tokenizer
from services.runtime.broker import subscriber_options
from services.runtime.lineage import lineage_record
from services.runtime.loop_context import KafkaBroker, LoopContext
from services.runtime.outbox import Outbox
from services.runtime.publishing import derived_event_id, derived_from
from services.runtime.settings import ChunkSettings
from services.runtime.stage import stage_app

STAGE = "chunk"
router = KafkaRouter()
chunks = router.publisher(TOPICS.chunks.name, title="chunks")

ChunkerDep = Annotated[Chunker, LoopContext("chunker")]


@router.subscriber(
    TOPICS.documents_accepted.name, **subscriber_options(STAGE, TOPICS.documents_accepted)
)
async def chunk_document(
    event: AcceptedDocumentEventV1, broker: KafkaBroker, chunker: ChunkerDep
) -> None:
    """Publish a version's chunks, then its chunk set (the ids that stay; none after a delete)."""
    started = utc_now()
    common = {
        **derived_from(event, STAGE),  # each event gets its own id below
        "doc_id": event.doc_id,
        "doc_version": event.doc_version,
    }
    published: list[ChunkV1] = []
    if not isinstance(event, DocumentRemovedV1):
        for draft in chunker.chunk(event.text, markdown=event.content_type == "text/markdown"):
            published.append(
                ChunkV1(
                    **common
                    | {"event_id": derived_event_id(event, STAGE, f"chunk/{draft.position}")},
                    chunk_id=chunk_id(
                        event.tenant_id,
                        event.doc_id,
                        event.doc_version,
                        draft.position,
                        draft.content_hash,
                    ),
                    position=draft.position,
                    text=draft.text,
                    heading_path=list(draft.heading_path),
                    token_count=draft.token_count,
                    content_hash=draft.content_hash,
                    title=event.title,
                    source_uri=event.source_uri,
                )
            )
    chunk_set = ChunkSetV1(
        **common | {"event_id": derived_event_id(event, STAGE, "chunk-set")},
        chunk_ids=[c.chunk_id for c in published],
        deleted=isinstance(event, DocumentRemovedV1),
    )
    details: dict[str, JsonValue] = {
        "doc_version": event.doc_version,
        "chunks": len(published),
        "tokens": sum(c.token_count for c in published),
        "deleted": chunk_set.deleted,
    }
    async with Outbox(broker, STAGE) as outbox:  # the chunk set after its chunks
        for out in [*published, chunk_set]:
            await outbox.event(chunks, TOPICS.chunks, out)
        await outbox.lineage(
            lineage_record(STAGE, event, "ok", started, [*published, chunk_set], details)
        )


def create_app(settings: ChunkSettings | None = None) -> FastStream:
    settings = settings or ChunkSettings()

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        tokenizer = load_tokenizer(settings.tokenizer_path)
        yield {"chunker": Chunker(tokenizer, settings.chunk_tokens, settings.chunk_overlap)}

    return stage_app(STAGE, settings, router, resources)
