"""The vector index and answer cache on Qdrant (local mode, on disk): idempotent upserts,
versions, tenants."""

import asyncio
import logging
import math
import random
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from contracts.v1 import AnswerV1, ChunkSetV1, ChunkVectorV1, ProducedBy, VectorV1
from contracts.v1.chunks import ChunkContentV1
from services.chunk.chunker import chunk_id
from services.route.cache import AnswerCache
from services.route.index import VectorIndex
from services.route.local_search import query_filtered
from services.route.local_store import commit_without_fsync, sqlite_connections
from services.route.patient_qdrant import patient, unreachable

ROUTE = ProducedBy(service="test", version="1")
ROOT = Path(__file__).resolve().parents[2]


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


async def test_local_mode_drops_stale_points_written_before_a_restart(tmp_path: Path) -> None:
    """Local mode deletes a document's stale points by id, from its own map of the store (it
    has no payload index): the map is read back at start, so points an earlier process wrote
    still go when their document's next version lands, and no other document's do."""
    first = VectorIndex(path=tmp_path / "qdrant")
    await first.warm_up()
    other = vector_event("acme", "e", 1, 0, seed=50)
    await first.upsert([*(vector_event("acme", "d", 1, p, seed=p) for p in range(3)), other])
    await first.close()
    second = VectorIndex(path=tmp_path / "qdrant")
    await second.warm_up()
    v2 = vector_event("acme", "d", 2, 0, seed=60)
    await second.upsert([v2])
    # a chunk id in capitals names the same point (Qdrant keeps UUIDs in lower case)
    await second.apply_chunk_set(chunk_set("acme", "d", 2, [v2.chunk.chunk_id.upper()]))
    assert sorted(await second.chunk_ids("acme")) == sorted(
        [v2.chunk.chunk_id, other.chunk.chunk_id]
    )
    await second.apply_chunk_set(chunk_set("acme", "d", 3, [], deleted=True))
    assert await second.chunk_ids("acme") == [other.chunk.chunk_id]
    await second.close()


def _journal_mode(path: Path) -> str:
    """The journal mode a collection's SQLite file is in (WAL is kept in the file)."""
    with sqlite3.connect(path) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


async def test_local_mode_commits_without_an_fsync_and_keeps_what_it_wrote(
    tmp_path: Path,
) -> None:
    """Route puts the index and the answer cache in WAL mode with synchronous=NORMAL (no
    fsync a point); what was written is all there when the store is opened again."""
    index = VectorIndex(path=tmp_path / "qdrant", collection="chunks")
    await index.warm_up()
    await AnswerCache(index.client, "answers", local=True).warm_up()
    assert index.commit_without_fsync() == ["answers", "chunks"]
    connections = sqlite_connections(index._plain)
    assert connections is not None and sorted(connections) == ["answers", "chunks"]
    for connection in connections.values():
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    await index.upsert([vector_event("acme", "d", 1, p, seed=p) for p in range(20)])
    await index.close()
    assert _journal_mode(tmp_path / "qdrant" / "collection" / "chunks" / "storage.sqlite") == "wal"
    again = VectorIndex(path=tmp_path / "qdrant", collection="chunks")
    await again.warm_up()
    assert await again.count("acme", "d") == 20
    await again.close()


def test_points_written_without_an_fsync_survive_a_kill_9(tmp_path: Path) -> None:
    """A process killed right after its upsert returned: every point is there (the commit was
    in the operating system's file cache; only a power loss could roll it back)."""
    writer = f"""
import os, signal
from qdrant_client import QdrantClient, models
from services.route.local_store import commit_without_fsync
client = QdrantClient(path={str(tmp_path / "qdrant")!r})
client.create_collection("c", vectors_config=models.VectorParams(size=4, distance="Cosine"))
assert commit_without_fsync(client) == ["c"]
for i in range(50):
    client.upsert("c", [models.PointStruct(id=i, vector=[1.0, i, 0.0, 1.0])], wait=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", writer], cwd=ROOT, timeout=120)
    assert done.returncode == -signal.SIGKILL
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    try:
        assert client.count("c").count == 50
    finally:
        client.close()


def test_a_client_laid_out_otherwise_keeps_its_fsync_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ragstream.route.qdrant"):
        assert commit_without_fsync(object()) == []
    assert "keeps its own fsync" in caplog.text


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


async def test_an_unreachable_server_is_waited_for_and_a_wrong_call_fails_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real clients: a server address where nothing listens, and a local store."""
    with socket.socket() as probe:  # a loopback port, released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    away = AsyncQdrantClient(url=f"http://127.0.0.1:{port}", timeout=1)
    with pytest.raises(Exception) as refused:
        await away.collection_exists("ragstream_chunks")
    assert unreachable(refused.value)
    caplog.set_level(logging.WARNING, logger="ragstream.route.qdrant")
    waiting = asyncio.create_task(patient(away, max_wait_s=0.2).collection_exists("x"))
    await asyncio.sleep(1.5)
    assert not waiting.done(), "a call to an unreachable server gave up instead of waiting"
    waiting.cancel()
    tries = [r for r in caplog.records if "qdrant unreachable" in r.getMessage()]
    assert len(tries) >= 2 and "events wait, none is lost" in tries[0].getMessage()
    await away.close()

    index = VectorIndex(path=tmp_path / "qdrant")
    await index.warm_up()
    assert await index.reachable()
    with pytest.raises(ValueError, match="not found"):  # not waited out: the call is wrong
        await index.client.get_collection("no-such-collection")
    assert not unreachable(UnexpectedResponse(404, "Not Found", b"", httpx.Headers()))
    assert unreachable(UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers()))
    await index.close()
    assert not await index.reachable()


async def test_a_semantic_threshold_of_one_turns_the_semantic_cache_off(
    index: VectorIndex,
) -> None:
    """A cached answer whose question vector is a near copy of the asked one is a semantic hit
    at 0.92; at 1.0 the semantic cache is off and no lookup is made (the exact cache, keyed
    by the question itself, still answers the same question)."""
    cache = AnswerCache(index.client, "ragstream_answers", lru_entries=0, local=True)
    await cache.warm_up()
    version = await cache.corpus_version("acme")
    asked = unit_vector(7)
    await cache.remember_pending("acme", "r1", "hash-1", asked, version)
    answer = AnswerV1(
        tenant_id="acme", correlation_id="c", produced_by=ROUTE, request_id="r1",
        question="How many desks?", answer="Twenty.", tier="extractive", latency_ms=5.0,
    )  # fmt: skip
    assert await cache.store_answer(answer)
    close = [v + 0.01 * w for v, w in zip(asked, unit_vector(8), strict=True)]
    hit = await cache.lookup_semantic("acme", close, version, 0.92)
    assert hit is not None and hit.kind == "semantic" and hit.answer.answer == "Twenty."
    assert await cache.lookup_semantic("beta", close, version, 0.92) is None  # other tenant
    assert await cache.lookup_semantic("acme", asked, version, 1.0) is None
    exact = await cache.lookup_exact("acme", "hash-1", version)
    assert exact is not None and exact.source_request_id == "r1"


async def test_exact_hits_are_read_by_key_and_a_new_corpus_version_drops_them(
    index: VectorIndex,
) -> None:
    """Same tenant, same question hash, same corpus version: a hit; another tenant asking the
    same question, or the tenant after its corpus changed, is a miss, and the stale entries
    are deleted, not merely skipped."""
    cache = AnswerCache(index.client, "ragstream_answers", lru_entries=0, local=True)
    await cache.warm_up()
    version = await cache.corpus_version("acme")
    for tenant in ("acme", "beta"):
        await cache.remember_pending(tenant, f"{tenant}-r", "hash-1", unit_vector(3), version)
    assert await cache.lookup_exact("acme", "hash-1", version) is None  # pending: no answer yet
    answer = AnswerV1(
        tenant_id="acme", correlation_id="c", produced_by=ROUTE, request_id="acme-r",
        question="How many desks?", answer="Twenty.", tier="extractive", latency_ms=5.0,
    )  # fmt: skip
    assert await cache.store_answer(answer)
    hit = await cache.lookup_exact("acme", "hash-1", version)
    assert hit is not None and hit.answer.answer == "Twenty." and hit.kind == "exact"
    assert await cache.lookup_exact("beta", "hash-1", version) is None
    assert await cache.lookup_exact("acme", "hash-2", version) is None
    await cache.new_corpus_version("acme", "v2")
    assert await cache.corpus_version("acme") == "v2"
    assert await cache.lookup_exact("acme", "hash-1", version) is None
    assert await cache.lookup_exact("acme", "hash-1", "v2") is None
    left, _ = await index.client.scroll("ragstream_answers", limit=100, with_payload=True)
    kinds = sorted((p.payload or {})["kind"] + ":" + (p.payload or {})["tenant_id"] for p in left)
    assert kinds == ["answer:beta", "corpus:acme"], kinds


async def _answered(cache: AnswerCache, tenant: str, request_id: str, version: str) -> None:
    """A question of `tenant` sent to generation under corpus `version`, and its answer."""
    await cache.remember_pending(tenant, request_id, f"hash-{request_id}", unit_vector(3), version)
    answer = AnswerV1(
        tenant_id=tenant, correlation_id="c", produced_by=ROUTE, request_id=request_id,
        question="How many desks?", answer="Twenty.", tier="extractive", latency_ms=5.0,
    )  # fmt: skip
    assert await cache.store_answer(answer)


@pytest.mark.parametrize("local", [True, False])
async def test_a_new_corpus_version_drops_that_tenants_older_entries_only(
    tmp_path: Path, local: bool
) -> None:
    """acme's and beta's entries under v1, written before the store was opened again (local
    mode reads its map of the cache's entries at start), and acme's under v2: acme's new
    corpus version v2 drops acme's v1 entries, ready and pending, and nothing else. Local
    mode drops them by id, a server by filter (`local=False` here: the same local store
    asked as a server is), and both leave the same points."""
    first = VectorIndex(path=tmp_path / "qdrant", collection="chunks")
    await first.warm_up()
    cache = AnswerCache(first.client, "answers", lru_entries=0, local=local)
    await cache.warm_up()
    await _answered(cache, "acme", "r1", "v1")
    await _answered(cache, "beta", "r2", "v1")
    await cache.remember_pending("acme", "r3", "hash-r3", unit_vector(5), "v1")  # no answer
    await first.close()
    index = VectorIndex(path=tmp_path / "qdrant", collection="chunks")
    await index.warm_up()
    cache = AnswerCache(index.client, "answers", lru_entries=0, local=local)
    await cache.warm_up()
    await _answered(cache, "acme", "r4", "v2")
    await cache.new_corpus_version("acme", "v2")
    left, _ = await index.client.scroll("answers", limit=100, with_payload=True)
    found = sorted(
        f"{p['kind']}:{p['tenant_id']}:{p['corpus_version']}"
        for p in (q.payload or {} for q in left)
    )
    assert found == [
        "answer:acme:v2", "answer:beta:v1", "corpus:acme:v2", "exact:acme:v2", "exact:beta:v1"
    ]  # fmt: skip
    assert await cache.lookup_exact("acme", "hash-r4", "v2") is not None
    assert await cache.lookup_exact("beta", "hash-r2", "v1") is not None
    await index.close()


@pytest.mark.parametrize("threshold", [None, 0.05])
async def test_local_mode_queries_return_what_the_filtered_query_returns(
    index: VectorIndex, threshold: float | None
) -> None:
    """The unfiltered-first query of local mode against Qdrant's own filtered query, for a
    tenant holding most points (the wide query suffices), one holding a few (it falls back)
    and one holding none, with and without a score threshold: the same points, same order."""
    await index.upsert([vector_event("acme", f"a{i}", 1, 0, i) for i in range(300)])
    await index.upsert([vector_event("beta", f"b{i}", 1, 0, 1000 + i) for i in range(6)])
    for seed in range(20):
        query = unit_vector(90_000 + seed)
        for tenant in ("acme", "beta", "gamma"):
            must = [models.FieldCondition(key="tenant_id", match=models.MatchValue(value=tenant))]
            args = (index.client, index.collection, query, must, 5, threshold)
            fast = await query_filtered(*args, local=True)
            exact = await query_filtered(*args, local=False)
            assert [p.id for p in fast] == [p.id for p in exact], (seed, tenant)
            assert all((p.payload or {})["tenant_id"] == tenant for p in fast)
            assert len(fast) == (0 if tenant == "gamma" else 5) or threshold is not None
