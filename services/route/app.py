"""route stage: chunk vectors in, written to the vector index; stale versions removed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from faststream import Context, FastStream
from faststream.kafka import KafkaRouter
from faststream.kafka.annotations import KafkaBroker, KafkaMessage

from contracts.registry import TOPICS
from contracts.v1 import ChunkSetV1, ChunkVectorV1
from contracts.v1.envelope import utc_now
from services.route.index import VectorIndex
from services.runtime.batches import validate_batch
from services.runtime.broker import subscriber_options
from services.runtime.lineage import lineage_record, publish_lineage
from services.runtime.settings import RouteSettings
from services.runtime.stage import stage_app

STAGE = "route"


@dataclass
class RouteResources:
    settings: RouteSettings
    index: VectorIndex


Route = Annotated[RouteResources, Context("route")]


async def index_chunk_vectors(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, route: Route
) -> None:
    """Upsert a batch's vectors; at each chunk set, flush first, then drop the stale points.

    Idempotent: points are upserted by chunk id, deletes are by document and set, so a
    batch replayed after a crash leaves the index exactly as one pass would."""
    started = utc_now()
    batch = validate_batch(message, TOPICS.chunk_vectors)
    pending: list[ChunkVectorV1] = []
    for event in batch.events:
        if isinstance(event, ChunkVectorV1):
            pending.append(event)
            continue
        assert isinstance(event, ChunkSetV1)
        await route.index.upsert(pending)
        pending = []
        await route.index.apply_chunk_set(event)
    await route.index.upsert(pending)
    await batch.dead_letter_invalid(broker, STAGE)
    for event in batch.events:
        if isinstance(event, ChunkSetV1):
            details = {
                "doc_version": event.doc_version,
                "chunks": len(event.chunk_ids),
                "deleted": event.deleted,
            }
            await publish_lineage(
                broker, lineage_record(STAGE, event, "ok", started, details=details)
            )


def build_router(settings: RouteSettings) -> KafkaRouter:
    router = KafkaRouter()
    router.subscriber(
        TOPICS.chunk_vectors.name,
        batch=True,
        max_records=settings.index_batch_size,
        batch_timeout_ms=settings.index_batch_wait_ms,
        **subscriber_options(STAGE, TOPICS.chunk_vectors),
    )(index_chunk_vectors)
    return router


def open_index(settings: RouteSettings) -> VectorIndex:
    """The Qdrant server at RAGSTREAM_QDRANT_URL, else local mode under the data dir."""
    if settings.qdrant_url:
        return VectorIndex(url=settings.qdrant_url, collection=settings.qdrant_collection)
    return VectorIndex(path=settings.data_dir / "qdrant", collection=settings.qdrant_collection)


def create_app(settings: RouteSettings | None = None) -> FastStream:
    settings = settings or RouteSettings()

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        index = open_index(settings)
        await index.warm_up()
        try:
            yield {"route": RouteResources(settings, index)}
        finally:
            await index.close()

    return stage_app(STAGE, settings, build_router(settings), resources)
