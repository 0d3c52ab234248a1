"""Answer caches in the vector store: exact (same normalised question) and semantic (a close
question vector), per tenant, valid only for the tenant's current corpus version.

Each question route sends to generation leaves a pending entry (its vector, hash and corpus
version); when its validated answer comes back on the answers topic the entry becomes ready.
A ready answer is also stored under its exact key (tenant, question hash, corpus version) as
a point whose id is derived from that key, so an exact lookup is one read by id, whatever the
cache's size (a filtered scroll is a scan in local mode: 12.5 ms at 500 answers). A tenant's
changed document gives it a new corpus version, and its older entries stop matching and are
deleted. An in-process LRU sits in front of the exact lookups.

In Qdrant's local mode a delete by filter checks every point of the collection in Python, so
dropping a tenant's older entries that way cost every other tenant's cached answers: a
flooder's accepted documents, each a new corpus version, held route's event loop 100-400 ms
each (bench/README.md, "Tenant flood, 2026-12-07 14:05-15:55 UTC"). So in local mode the
cache keeps its own map of each tenant's entries (read once at start; the process that opens
a local store is its only writer) and deletes the older ones by id, as `VectorIndex` does a
document's stale points.

>>> cache = AnswerCache(index.client, "ragstream_answers")  # doctest: +SKIP
>>> await cache.lookup_exact("acme", question_hash, version)  # doctest: +SKIP
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from contracts.v1 import AnswerV1
from services.route.index import TENANT_FIELD, VECTOR_SIZE, every_point
from services.route.local_search import query_filtered
from services.runtime.lru import Lru

_NAMESPACE = uuid.UUID("6f1d3c2a-2b8e-4f4e-9d55-6b1f0a7e9c11")
_CORPUS_VECTOR = [1.0] + [0.0] * (VECTOR_SIZE - 1)
INITIAL_CORPUS_VERSION = "0"
#: The kinds of point that hold a question's answer (the corpus version's point is kept).
CACHED_KINDS = ("answer", "exact")


def _point_id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join(parts)))


def _exact_id(tenant_id: str, question_hash: str, version: str) -> str:
    return _point_id("exact", tenant_id, question_hash, version)


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


@dataclass(frozen=True)
class CacheHit:
    answer: AnswerV1
    kind: str  # "exact" or "semantic"
    similarity: float
    source_request_id: str


class AnswerCache:
    """Validated answers per tenant, keyed by question hash and question vector."""

    def __init__(
        self,
        client: AsyncQdrantClient,
        collection: str,
        lru_entries: int = 2048,
        *,
        local: bool = False,
    ):
        self.client = client
        self.collection = collection
        self.local = local  # Qdrant's local mode: see local_search
        self._lru: Lru[tuple[str, ...], CacheHit] = Lru(lru_entries)
        #: Local mode: each tenant's entries (pending, ready and exact points), id -> version.
        self._entries: dict[str, dict[str, str]] = {}

    async def warm_up(self) -> None:
        if not await self.client.collection_exists(self.collection):
            await self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(
                    size=VECTOR_SIZE, distance=models.Distance.COSINE
                ),
            )
        if self.local:
            await self._map_entries()

    async def _map_entries(self) -> None:
        fields = ["kind", TENANT_FIELD, "corpus_version"]
        async for point in every_point(self.client, self.collection, fields):
            payload = point.payload or {}
            if payload.get("kind") in CACHED_KINDS:
                tenant_id, version = str(payload[TENANT_FIELD]), str(payload["corpus_version"])
                self._remember(tenant_id, str(point.id), version)

    def _remember(self, tenant_id: str, point_id: str, version: str) -> None:
        if self.local:
            self._entries.setdefault(tenant_id, {})[point_id] = version

    async def corpus_version(self, tenant_id: str) -> str:
        points = await self.client.retrieve(self.collection, [_point_id("corpus", tenant_id)])
        if not points or not points[0].payload:
            return INITIAL_CORPUS_VERSION
        return str(points[0].payload["corpus_version"])

    async def new_corpus_version(self, tenant_id: str, version: str) -> None:
        """The tenant's corpus changed: record `version`, drop every answer of an older one."""
        await self.client.upsert(
            self.collection,
            points=[
                models.PointStruct(
                    id=_point_id("corpus", tenant_id),
                    vector=_CORPUS_VECTOR,
                    payload={"kind": "corpus", TENANT_FIELD: tenant_id, "corpus_version": version},
                )
            ],
            wait=True,
        )
        if self.local:
            await self._drop_older_by_id(tenant_id, version)
            return
        cached = models.FieldCondition(key="kind", match=models.MatchAny(any=list(CACHED_KINDS)))
        stale = models.Filter(
            must=[cached, _match(TENANT_FIELD, tenant_id)],
            must_not=[_match("corpus_version", version)],
        )
        await self.client.delete(
            self.collection, points_selector=models.FilterSelector(filter=stale), wait=True
        )

    async def _drop_older_by_id(self, tenant_id: str, version: str) -> None:
        entries = self._entries.get(tenant_id, {})
        older = sorted(point_id for point_id, v in entries.items() if v != version)
        if older:
            await self.client.delete(
                self.collection, points_selector=models.PointIdsList(points=older), wait=True
            )
            for point_id in older:
                del entries[point_id]

    def _ready(self, tenant_id: str, version: str) -> list[models.Condition]:
        return [
            _match("kind", "answer"),
            _match(TENANT_FIELD, tenant_id),
            _match("corpus_version", version),
            _match("ready", True),
        ]

    @staticmethod
    def _hit(payload: dict[str, Any], kind: str, similarity: float) -> CacheHit:
        answer = AnswerV1.model_validate_json(payload["answer"])
        return CacheHit(answer, kind, similarity, answer.request_id)

    async def lookup_exact(
        self, tenant_id: str, question_hash: str, version: str
    ) -> CacheHit | None:
        key = (tenant_id, question_hash, version)
        if (hit := self._lru.get(key)) is not None:
            return hit
        exact_id = _exact_id(tenant_id, question_hash, version)
        points = await self.client.retrieve(self.collection, [exact_id], with_payload=True)
        payload = dict(points[0].payload or {}) if points else {}
        if payload.get(TENANT_FIELD) != tenant_id:
            return None
        hit = self._hit(payload, "exact", 1.0)
        self._lru.put(key, hit)
        return hit

    async def lookup_semantic(
        self, tenant_id: str, vector: Sequence[float], version: str, threshold: float
    ) -> CacheHit | None:
        """The closest ready answer at or above `threshold` cosine; a threshold of 1.0 turns
        the semantic cache off (only the same question would match, which the exact cache
        has answered already), so no vector query is made."""
        if threshold >= 1.0:
            return None
        points = await query_filtered(
            self.client,
            self.collection,
            vector,
            self._ready(tenant_id, version),
            1,
            threshold,
            local=self.local,
        )
        if not points:
            return None
        best = points[0]
        return self._hit(dict(best.payload or {}), "semantic", best.score)

    async def remember_pending(
        self,
        tenant_id: str,
        request_id: str,
        question_hash: str,
        vector: Sequence[float],
        version: str,
    ) -> None:
        """A question sent to generation: its entry, to be filled by its validated answer."""
        payload = {
            "kind": "answer",
            TENANT_FIELD: tenant_id,
            "request_id": request_id,
            "question_hash": question_hash,
            "corpus_version": version,
            "ready": False,
        }
        point_id = _point_id("answer", tenant_id, request_id)
        point = models.PointStruct(id=point_id, vector=list(vector), payload=payload)
        await self.client.upsert(self.collection, points=[point], wait=True)
        self._remember(tenant_id, point_id, version)

    async def store_answer(self, answer: AnswerV1) -> bool:
        """Fill the pending entry of `answer`'s request; False when there is none (a cache hit,
        a refusal, or an entry a newer corpus version has dropped)."""
        if answer.refusal is not None or answer.cache_hit != "none" or answer.answer is None:
            return False
        point_id = _point_id("answer", answer.tenant_id, answer.request_id)
        points = await self.client.retrieve(self.collection, [point_id], with_payload=True)
        if not points:
            return False
        payload = dict(points[0].payload or {})
        stored = answer.model_dump_json()
        await self.client.set_payload(
            self.collection, payload={"ready": True, "answer": stored}, points=[point_id], wait=True
        )
        key = (answer.tenant_id, str(payload["question_hash"]), str(payload["corpus_version"]))
        exact = {
            "kind": "exact",
            TENANT_FIELD: answer.tenant_id,
            "question_hash": key[1],
            "corpus_version": key[2],
            "answer": stored,
        }
        exact_id = _exact_id(*key)
        await self.client.upsert(
            self.collection,
            points=[models.PointStruct(id=exact_id, vector=_CORPUS_VECTOR, payload=exact)],
            wait=True,
        )
        self._remember(answer.tenant_id, exact_id, key[2])
        self._lru.put(key, CacheHit(answer, "exact", 1.0, answer.request_id))
        return True
