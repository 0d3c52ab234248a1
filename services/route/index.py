"""The vector index in Qdrant: chunk vectors per tenant, deterministic ids, no stale versions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from contracts.v1 import ChunkSetV1, ChunkVectorV1
from services.route.local_search import query_filtered
from services.route.local_store import commit_without_fsync
from services.route.patient_qdrant import patient

VECTOR_SIZE = 384
TENANT_FIELD = "tenant_id"


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its payload (text, document, headings) and cosine score."""

    chunk_id: str
    score: float
    payload: dict[str, Any]


def _point_key(chunk_id: str) -> str:
    """A chunk id as Qdrant returns the point's id (a UUID in its canonical form)."""
    return str(uuid.UUID(chunk_id))


def _tenant_is(tenant_id: str) -> models.FieldCondition:
    return models.FieldCondition(key=TENANT_FIELD, match=models.MatchValue(value=tenant_id))


def _document_of(tenant_id: str, doc_id: str) -> list[models.Condition]:
    return [
        _tenant_is(tenant_id),
        models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id)),
    ]


#: Points read a page at a time when local mode's document map is built.
SCROLL_PAGE = 1000


async def every_point(
    client: AsyncQdrantClient, collection: str, payload_fields: list[str]
) -> AsyncIterator[models.Record]:
    """Every point of `collection` with `payload_fields`, read `SCROLL_PAGE` at a time."""
    offset = None
    while True:
        points, offset = await client.scroll(
            collection, limit=SCROLL_PAGE, offset=offset, with_payload=payload_fields
        )
        for point in points:
            yield point
        if offset is None:
            return


class VectorIndex:
    """Chunk vectors of every tenant in one collection, the tenant an indexed payload field
    (Qdrant's multitenancy guidance); every search is filtered to one tenant.

    Local mode has no payload indexes: a delete by filter checks every point in Python (44 ms
    a document at 3,000 points), and a backfill's chunk sets, one delete each, held route's
    event loop, and the questions behind it, for seconds a batch. So in local mode the index
    keeps its own map of each document's point ids (read once at start; the process that opens
    a local store is its only writer) and deletes the stale ones by id.

    >>> index = VectorIndex(path=Path(".ragstream/qdrant"))  # doctest: +SKIP
    >>> await index.warm_up()  # doctest: +SKIP
    >>> hits = await index.search("acme", vector, limit=5)  # doctest: +SKIP
    """

    def __init__(
        self, *, url: str = "", path: Path | None = None, collection: str = "ragstream_chunks"
    ) -> None:
        if not url and path is None:
            raise ValueError(
                "VectorIndex needs a Qdrant url (RAGSTREAM_QDRANT_URL) or a local path"
            )
        self.url = url
        self.path = path
        self.collection = collection
        self._client: AsyncQdrantClient | None = None
        self._plain: AsyncQdrantClient | None = None
        #: Local mode: each (tenant, document)'s point ids.
        self._documents: dict[tuple[str, str], set[str]] = {}

    async def warm_up(self) -> None:
        """Open the store and create the collection and tenant index if missing (idempotent).
        A server that is unreachable is waited for (`patient_qdrant`), however long."""
        if self._client is not None:
            return
        if self.url:
            self._plain = AsyncQdrantClient(url=self.url)
        else:
            assert self.path is not None
            self.path.mkdir(parents=True, exist_ok=True)
            self._plain = AsyncQdrantClient(path=str(self.path))
        client = patient(self._plain)
        if not await client.collection_exists(self.collection):
            await client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=VECTOR_SIZE, distance=models.Distance.COSINE
                ),
            )
            if self.url:  # local mode has no payload indexes
                await client.create_payload_index(
                    self.collection,
                    TENANT_FIELD,
                    field_schema=models.KeywordIndexParams(
                        type=models.KeywordIndexType.KEYWORD, is_tenant=True
                    ),
                )
                await client.create_payload_index(
                    self.collection, "doc_id", models.PayloadSchemaType.KEYWORD
                )
        if self.local:
            await self._map_documents(client)
        self._client = client

    async def _map_documents(self, client: AsyncQdrantClient) -> None:
        async for point in every_point(client, self.collection, [TENANT_FIELD, "doc_id"]):
            payload = point.payload or {}
            key = (str(payload.get(TENANT_FIELD)), str(payload.get("doc_id")))
            self._documents.setdefault(key, set()).add(_point_key(str(point.id)))

    @property
    def local(self) -> bool:
        """Qdrant's local mode (in this process, no payload indexes), not a server."""
        return not self.url

    @property
    def client(self) -> AsyncQdrantClient:
        if self._client is None:
            raise RuntimeError("VectorIndex used before warm_up()")
        return self._client

    def commit_without_fsync(self) -> list[str]:
        """Local mode: every collection open now commits without an fsync for each point
        (`local_store`); the names of those changed. A server's storage is not touched."""
        if not self.local or self._plain is None:
            return []
        return commit_without_fsync(self._plain)

    async def reachable(self) -> bool:
        """Readiness: the store answers now and has the collection (never waits it out)."""
        return self._plain is not None and await self._plain.collection_exists(self.collection)

    async def close(self) -> None:
        plain, self._plain, self._client = self._plain, None, None
        if plain is not None:
            await plain.close()

    async def upsert(self, vectors: Sequence[ChunkVectorV1]) -> None:
        """Upsert by chunk id: writing the same chunk twice leaves one point."""
        if not vectors:
            return
        points = [
            models.PointStruct(
                id=event.chunk.chunk_id,
                vector=event.vector.decode(),
                payload={TENANT_FIELD: event.tenant_id, **event.chunk.model_dump(mode="json")},
            )
            for event in vectors
        ]
        await self.client.upsert(self.collection, points=points, wait=True)
        if self.local:
            for event in vectors:
                key = (event.tenant_id, event.chunk.doc_id)
                self._documents.setdefault(key, set()).add(_point_key(event.chunk.chunk_id))

    async def apply_chunk_set(self, chunk_set: ChunkSetV1) -> None:
        """Remove every point of the document that is not in the set (all after a delete)."""
        keep = [] if chunk_set.deleted else chunk_set.chunk_ids
        if self.local:
            await self._delete_stale_by_id(chunk_set.tenant_id, chunk_set.doc_id, keep)
            return
        selector = models.Filter(
            must=_document_of(chunk_set.tenant_id, chunk_set.doc_id),
            must_not=[models.HasIdCondition(has_id=keep)] if keep else None,
        )
        await self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=selector), wait=True
        )

    async def _delete_stale_by_id(self, tenant_id: str, doc_id: str, keep: list[str]) -> None:
        key = (tenant_id, doc_id)
        points = self._documents.get(key, set())
        stale = points - {_point_key(chunk_id) for chunk_id in keep}
        if stale:
            await self.client.delete(
                self.collection,
                points_selector=models.PointIdsList(points=sorted(stale)),
                wait=True,
            )
            points -= stale
        if not points:
            self._documents.pop(key, None)

    async def search(
        self, tenant_id: str, vector: Sequence[float], limit: int = 5, min_score: float = 0.0
    ) -> list[Hit]:
        """The nearest chunks of `tenant_id` only; never another tenant's."""
        points = await query_filtered(
            self.client,
            self.collection,
            vector,
            [_tenant_is(tenant_id)],
            limit,
            min_score or None,
            local=self.local,
        )
        return [Hit(str(p.id), p.score, dict(p.payload or {})) for p in points]

    async def count(self, tenant_id: str, doc_id: str | None = None) -> int:
        conditions = _document_of(tenant_id, doc_id) if doc_id else [_tenant_is(tenant_id)]
        result = await self.client.count(
            self.collection, count_filter=models.Filter(must=conditions), exact=True
        )
        return result.count

    async def chunk_ids(self, tenant_id: str) -> list[str]:
        """Every chunk id of a tenant (for tests and `status`)."""
        ids: list[str] = []
        offset = None
        while True:
            points, offset = await self.client.scroll(
                self.collection,
                scroll_filter=models.Filter(must=[_tenant_is(tenant_id)]),
                limit=1000,
                offset=offset,
                with_payload=False,
            )
            ids.extend(str(p.id) for p in points)
            if offset is None:
                return ids
