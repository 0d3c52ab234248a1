"""embed stage: chunks and accepted questions in; chunk vectors and query vectors out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from faststream import FastStream
from faststream.exceptions import NackMessage
from faststream.kafka import KafkaRouter
from pydantic import JsonValue

from contracts.registry import TOPICS
from contracts.v1 import (
    AcceptedQueryV1,
    ChunkSetV1,
    ChunkV1,
    ChunkVectorV1,
    QueryVectorV1,
    VectorV1,
)
from contracts.v1.chunks import ChunkContentV1
from contracts.v1.envelope import utc_now
from inference.client import EmbedPriority, TritonClient
from inference.exceptions import InferenceUnavailableError
from inference.queries_first import QueriesFirst
from services.runtime.batches import validate_batch
from services.runtime.broker import subscribe_batches
from services.runtime.health import READINESS, triton_check
from services.runtime.lineage import lineage_record
from services.runtime.loop_context import KafkaBroker, KafkaMessage, LoopContext
from services.runtime.lru import Lru
from services.runtime.metrics import DOCUMENT_HOLD
from services.runtime.outbox import Outbox
from services.runtime.publishing import Publisher, derived_from
from services.runtime.runstate import resolve_triton_url
from services.runtime.settings import EmbedSettings
from services.runtime.stage import stage_app

STAGE = "embed"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
logger = logging.getLogger("ragstream.embed")
_CHUNK_FIELDS = set(ChunkContentV1.model_fields)


@dataclass
class EmbedResources:
    settings: EmbedSettings
    client: TritonClient
    chunk_vectors: Publisher
    query_vectors: Publisher
    #: Each (tenant, normalised question)'s vector: the same words, the same vector.
    question_vectors: Lru[tuple[str, str], VectorV1] = field(default_factory=lambda: Lru(0))


Embed = Annotated[EmbedResources, LoopContext("embed")]


def embedding_text(chunk: ChunkContentV1) -> str:
    """What the embedder reads: where the chunk sits (title, headings), then its text."""
    context = " / ".join(part for part in (chunk.title, *chunk.heading_path) if part)
    return f"{context}\n\n{chunk.text}" if context else chunk.text


async def _embed_or_retry_later(
    embed: EmbedResources, texts: Sequence[str], priority: EmbedPriority
) -> list[list[float]]:
    """Vectors for `texts`; while Triton is down, seek back and retry the batch later."""
    if not texts:
        return []
    try:
        vectors = await embed.client.embed(texts, priority=priority)
    except InferenceUnavailableError as exc:
        logger.warning(
            "Triton unavailable (%s); retrying this batch in %.1f s",
            exc,
            embed.settings.triton_retry_after_s,
        )
        await asyncio.sleep(embed.settings.triton_retry_after_s)
        raise NackMessage() from exc
    return [row.tolist() for row in vectors]


async def embed_chunks(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, embed: Embed
) -> None:
    """One Triton call per batch; chunk sets pass through in order, after their chunks."""
    started = utc_now()
    batch = validate_batch(message, TOPICS.chunks)
    chunks = [e for e in batch.events if isinstance(e, ChunkV1)]
    with batch.shared_span(STAGE, "batch of chunks"):
        vectors = await _embed_or_retry_later(
            embed, [embedding_text(c) for c in chunks], EmbedPriority.DOCUMENT
        )
    await batch.dead_letter_invalid(broker, STAGE)
    vector_of = {c.event_id: v for c, v in zip(chunks, vectors, strict=True)}
    details: dict[str, JsonValue] = {"batch_size": len(chunks), "model": EMBEDDING_MODEL}
    async with Outbox(broker, STAGE) as outbox:  # the batch's records leave together
        for event in batch.events:
            if isinstance(event, ChunkV1):
                out: ChunkVectorV1 | ChunkSetV1 = ChunkVectorV1(
                    **derived_from(event, STAGE),
                    chunk=ChunkContentV1.model_validate(event.model_dump(include=_CHUNK_FIELDS)),
                    vector=VectorV1.encode(vector_of[event.event_id]),
                    embedding_model=EMBEDDING_MODEL,
                )
            else:
                out = event.model_copy(update=derived_from(event, STAGE))
            with batch.span(event, STAGE):
                await outbox.event(embed.chunk_vectors, TOPICS.chunk_vectors, out)
                await outbox.lineage(lineage_record(STAGE, event, "ok", started, [out], details))


async def _question_vectors(
    embed: EmbedResources, queries: Sequence[AcceptedQueryV1]
) -> tuple[list[VectorV1], set[tuple[str, str]]]:
    """Each question's vector, and the (tenant, question) pairs Triton embedded now: one asked
    before comes from `question_vectors`, one asked twice in a batch is embedded once. Kept per
    tenant, so no tenant can tell from a fast answer that another asked the same words."""
    keys = list(dict.fromkeys((q.tenant_id, q.question) for q in queries))
    known = {k: v for k in keys if (v := embed.question_vectors.get(k)) is not None}
    missing = [k for k in keys if k not in known]
    vectors = await _embed_or_retry_later(embed, [q for _, q in missing], EmbedPriority.QUERY)
    for key, values in zip(missing, vectors, strict=True):
        known[key] = VectorV1.encode(values)
        embed.question_vectors.put(key, known[key])
    return [known[q.tenant_id, q.question] for q in queries], set(missing)


async def embed_queries(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, embed: Embed
) -> None:
    """Questions get their own subscriber and a higher Triton priority than chunks; a question
    asked again in the same words reuses its vector."""
    started = utc_now()
    batch = validate_batch(message, TOPICS.queries_accepted)
    queries: list[AcceptedQueryV1] = batch.events
    with batch.shared_span(STAGE, "batch of queries"):
        vectors, embedded = await _question_vectors(embed, queries)
    await batch.dead_letter_invalid(broker, STAGE)
    async with Outbox(broker, STAGE) as outbox:
        for query, vector in zip(queries, vectors, strict=True):
            out = QueryVectorV1(
                **derived_from(query, STAGE),
                request_id=query.request_id,
                question=query.question,
                question_hash=query.question_hash,
                options=query.options,
                asked_at=query.asked_at,
                vector=vector,
                embedding_model=EMBEDDING_MODEL,
            )
            how = "embedded" if (query.tenant_id, query.question) in embedded else "remembered"
            with batch.span(query, STAGE):
                await outbox.event(embed.query_vectors, TOPICS.query_vectors, out)
                record = lineage_record(STAGE, query, "ok", started, [out], {"vector": how})
                await outbox.lineage(record)


def embed_client(settings: EmbedSettings, url: str) -> TritonClient:
    """The Triton client embed uses: its batch and request sizes, questions first."""
    return TritonClient(
        url,
        embed_batch_size=settings.embed_batch_size,
        document_request_size=settings.document_request_size,
        queries_first=QueriesFirst(
            grace_s=settings.document_grace_ms / 1000,
            max_wait_s=settings.document_yield_max_ms / 1000,
            on_hold=DOCUMENT_HOLD.inc,
        ),
    )


def build_router(settings: EmbedSettings) -> tuple[KafkaRouter, Publisher, Publisher]:
    """Subscribers with batch sizes from settings, and the two publishers."""
    router = KafkaRouter()
    chunk_vectors = router.publisher(TOPICS.chunk_vectors.name, title="chunk-vectors")
    query_vectors = router.publisher(TOPICS.query_vectors.name, title="query-vectors")
    subscribe_batches(
        router,
        STAGE,
        TOPICS.chunks,
        embed_chunks,
        max_records=settings.embed_batch_size,
        wait_ms=settings.embed_batch_wait_ms,
    )
    subscribe_batches(
        router,
        STAGE,
        TOPICS.queries_accepted,
        embed_queries,
        max_records=settings.query_batch_size,
        wait_ms=settings.query_batch_wait_ms,
    )
    return router, chunk_vectors, query_vectors


def create_app(settings: EmbedSettings | None = None) -> FastStream:
    settings = settings or EmbedSettings()
    router, chunk_vectors, query_vectors = build_router(settings)

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        client = embed_client(settings, resolve_triton_url(settings))
        await client.warm_up()
        embed = EmbedResources(
            settings,
            client,
            chunk_vectors,
            query_vectors,
            question_vectors=Lru(settings.query_vector_cache_entries),
        )
        checks = {"triton": triton_check(client, [client.embedder_model])}
        try:
            yield {"embed": embed, READINESS: checks}
        finally:
            await client.close()

    return stage_app(STAGE, settings, router, resources)
