"""The vector index on Qdrant (local mode, on disk): idempotent upserts, versions, tenants."""

import math
import random
from pathlib import Path

import pytest

from contracts.v1 import ChunkSetV1, ChunkVectorV1, ProducedBy, VectorV1
from contracts.v1.chunks import ChunkContentV1
from services.chunk.chunker import chunk_id
from services.route.index import VectorIndex

ROUTE = ProducedBy(service="test", version="1")


def unit_vector(seed: int) -> list[float]:
    rng = random.Random(seed)
    values = [rng.gauss(0, 1) for _ in range(384)]
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def vector_event(tenant: str, doc: str, version: int, position: int, seed: int) -> ChunkVectorV1:
    cid = chunk_id(tenant, doc, version, position, f"{seed:064d}")
    return ChunkVectorV1(
        tenant_id=tenant,
        correlation_id="c",
        produced_by=ROUTE,
        chunk=ChunkContentV1(
            chunk_id=cid, doc_id=doc, doc_version=version, position=position,
            text=f"text {seed}", token_count=2, content_hash=f"{seed:064d}",
        ),
        vector=VectorV1.encode(unit_vector(seed)),
        embedding_model="test",
    )  # fmt: skip


def chunk_set(
    tenant: str, doc: str, version: int, ids: list[str], deleted: bool = False
) -> ChunkSetV1:
    return ChunkSetV1(
        tenant_id=tenant, correlation_id="c", produced_by=ROUTE, doc_id=doc,
        doc_version=version, chunk_ids=ids, deleted=deleted,
    )  # fmt: skip


@pytest.fixture
async def index(tmp_path: Path) -> VectorIndex:
    index = VectorIndex(path=tmp_path / "qdrant")
    await index.warm_up()
    yield index
    await index.close()


async def test_upserts_are_idempotent_and_versions_replace_each_other(index: VectorIndex) -> None:
    v1 = [vector_event("acme", "d", 1, p, seed=p) for p in range(3)]
    await index.upsert(v1)
    await index.upsert(v1)
    assert await index.count("acme", "d") == 3

    v2 = [vector_event("acme", "d", 2, p, seed=10 + p) for p in range(2)]
    await index.upsert(v2)
    await index.apply_chunk_set(chunk_set("acme", "d", 2, [e.chunk.chunk_id for e in v2]))
    assert sorted(await index.chunk_ids("acme")) == sorted(e.chunk.chunk_id for e in v2)

    await index.apply_chunk_set(chunk_set("acme", "d", 3, [], deleted=True))
    assert await index.count("acme") == 0


async def test_search_never_crosses_tenants(index: VectorIndex) -> None:
    await index.upsert(
        [vector_event("acme", "d", 1, 0, seed=1), vector_event("globex", "d", 1, 0, seed=1)]
    )
    hits = await index.search("acme", unit_vector(1), limit=10)
    assert [h.payload["tenant_id"] for h in hits] == ["acme"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert await index.search("initech", unit_vector(1)) == []


async def test_a_chunk_set_only_touches_its_own_document(index: VectorIndex) -> None:
    await index.upsert(
        [vector_event("acme", "a", 1, 0, seed=1), vector_event("acme", "b", 1, 0, seed=2)]
    )
    await index.apply_chunk_set(chunk_set("acme", "a", 2, [], deleted=True))
    assert await index.count("acme", "a") == 0 and await index.count("acme", "b") == 1


async def test_using_the_index_before_warm_up_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before warm_up"):
        await VectorIndex(path=tmp_path).count("acme")
