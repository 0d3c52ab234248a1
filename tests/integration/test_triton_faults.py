"""Triton killed for real (SIGKILL of the tritonserver process) and restarted on the same ports
while documents and questions stream.

What the user must see: no document skipped (each one sent during the outage waits at embed,
then is indexed exactly once), questions already past embed answered by the fallback tier
with the reason recorded, and, once Triton is back, the circuit closed again: questions that
ask for the Triton tier (`small`) are answered by it, and new documents are indexed. Every
input is accounted for exactly once, counted by deterministic event ids, as in test_faults.
"""

from __future__ import annotations

import json
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import (
    AnswerV1,
    ChunkSetV1,
    ChunkV1,
    ChunkVectorV1,
    DeadLetterV1,
    GenerationV1,
    LineageRecordV1,
    QueryOptionsV1,
    QueryV1,
)
from inference.server import TritonServer
from services.cli.ask_cmd import AskResult, ask_questions, query_event
from tests.integration.conftest import (
    StageProcesses,
    eventually,
    publish_events,
    tenant_name,
)
from tests.integration.test_document_flow import document
from tests.integration.test_faults import answer_ids_by_request, decoded, report
from tests.integration.test_index_flow import index_of
from tests.integration.test_query_path import ingest

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: `small` is the Triton generator tier of the session's TEST_TIERS; it falls back to extractive.
SMALL = QueryOptionsV1(tier="small")
#: Questions sent during the outage wait at embed; they need no model after it (fewer
#: generations on a 2-core runner): what they show is that none is lost.
EXTRACTIVE = QueryOptionsV1(tier="extractive")
OUTAGE_DOCUMENTS = 12
LATER_DOCUMENTS = 4


@pytest.fixture
async def triton(
    pipeline: StageProcesses, triton_server: TritonServer
) -> AsyncIterator[TritonServer]:
    """The session's Triton, for a test that kills it: running again on the same ports
    afterwards (every stage holds its URL), and generate running, even if the test failed."""
    urls = (triton_server.http_url, triton_server.grpc_url, triton_server.metrics_url)
    try:
        yield triton_server
    finally:
        if not triton_server.running:
            triton_server.restart()
        if "generate" not in pipeline.processes:
            pipeline.restart("generate")
    assert (triton_server.http_url, triton_server.grpc_url, triton_server.metrics_url) == urls


def kill_9(server: TritonServer) -> None:
    """SIGKILL to tritonserver itself, as the kernel's OOM killer would send it."""
    assert server.pid is not None and server.running
    os.kill(server.pid, signal.SIGKILL)
    assert server.wait() == -signal.SIGKILL


def example_questions() -> list[str]:
    return [json.loads(line)["question"] for line in (EXAMPLES / "questions.jsonl").open()]


async def lineage(pipeline: StageProcesses, correlations: set[str]) -> list[LineageRecordV1]:
    return [
        r
        for r in await decoded(pipeline.bootstrap, TOPICS.audit)
        if isinstance(r, LineageRecordV1) and r.correlation_id in correlations
    ]


async def handled_all(
    pipeline: StageProcesses, correlations: set[str], stage: str
) -> list[LineageRecordV1] | None:
    """`stage`'s lineage records of these correlation ids, once every one of them has one."""
    records = [r for r in await lineage(pipeline, correlations) if r.stage == stage]
    return records if {r.correlation_id for r in records} == correlations else None


async def generations_of(pipeline: StageProcesses, request_ids: set[str]) -> list[GenerationV1]:
    return [
        g
        for g in await decoded(pipeline.bootstrap, TOPICS.generations)
        if isinstance(g, GenerationV1) and g.request_id in request_ids
    ]


async def answers_of(pipeline: StageProcesses, request_ids: set[str]) -> list[AnswerV1] | None:
    """The first answer of each request, once every request has one."""
    first: dict[str, AnswerV1] = {}
    for answer in await decoded(pipeline.bootstrap, TOPICS.answers):
        if isinstance(answer, AnswerV1) and answer.request_id in request_ids:
            first.setdefault(answer.request_id, answer)
    return list(first.values()) if set(first) == request_ids else None


def request_ids(queries: Iterable[QueryV1 | AskResult]) -> set[str]:
    return {q.request_id for q in queries}


def answered_by_small(generations: list[GenerationV1], request_id: str) -> bool:
    """The Triton tier itself produced output for the request (no fallback on the way)."""
    return any(
        g.request_id == request_id and g.tier == "small" and not g.fallback_reason
        for g in generations
    )


async def test_triton_killed_mid_stream_skips_no_document_and_the_circuit_closes_again(
    pipeline: StageProcesses, triton: TritonServer, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("triton-kill")
    await ingest(pipeline, tenant, EXAMPLES / "corpus")
    base = example_questions()
    backlog = [query_event(f"{q} (backlog)", tenant, SMALL) for q in base[:6]]
    queued = [query_event(f"{q} (outage)", tenant, EXTRACTIVE) for q in base[6:8]]

    # generate runs behind: its backlog of requests for `small` meets the outage.
    pipeline.stop_stage("generate")
    await publish_events(producer, TOPICS.queries, backlog)
    await eventually(
        lambda: handled_all(pipeline, request_ids(backlog), "route"), 120, "backlog routed"
    )
    kill_9(triton)
    outage_docs = [document(tenant, 7100 + i) for i in range(OUTAGE_DOCUMENTS)]
    await publish_events(producer, TOPICS.documents, outage_docs)
    await publish_events(producer, TOPICS.queries, queued)
    pipeline.restart("generate")

    # While Triton is down: the backlog is answered by the fallback tier, which says why.
    fallback_answers = await eventually(
        lambda: answers_of(pipeline, request_ids(backlog)), 180, "backlog answered"
    )
    assert {a.tier for a in fallback_answers} == {"extractive"}, fallback_answers
    generated = await generations_of(pipeline, request_ids(backlog))
    assert {g.tier for g in generated} == {"extractive"}, generated
    assert all(g.fallback_reason.startswith("small: ") for g in generated), generated
    fallbacks = [r for r in await lineage(pipeline, request_ids(backlog)) if r.stage == "generate"]
    assert {r.outcome for r in fallbacks} == {"fallback"}, fallbacks
    # ... and every document waits at embed, alive: chunked, and not one embedded yet.
    outage_ids = {d.correlation_id for d in outage_docs}
    await eventually(
        lambda: handled_all(pipeline, outage_ids, "chunk"), 120, "outage documents chunked"
    )
    vectors = await decoded(pipeline.bootstrap, TOPICS.chunk_vectors)
    assert not [v for v in vectors if getattr(v, "correlation_id", None) in outage_ids]
    assert pipeline.alive("embed") and not triton.running

    urls = (triton.http_url, triton.grpc_url)
    triton.restart()
    assert (triton.http_url, triton.grpc_url) == urls, "restarted on other ports"
    await eventually(
        lambda: handled_all(pipeline, outage_ids, "route"), 300, "outage documents indexed"
    )
    later_docs = [document(tenant, 7200 + i) for i in range(LATER_DOCUMENTS)]
    later_ids = {d.correlation_id for d in later_docs}
    await publish_events(producer, TOPICS.documents, later_docs)
    await eventually(
        lambda: handled_all(pipeline, later_ids, "route"), 180, "later documents indexed"
    )
    await eventually(
        lambda: answers_of(pipeline, request_ids(queued)), 180, "queued questions answered"
    )

    # The circuit closes: a question for `small` is answered by Triton again (the first may
    # still meet the open circuit's cool-down), then every new one is.
    probes: list[AskResult] = []

    async def probe_answered_by_small() -> bool:
        [result] = await ask_questions(
            pipeline.bootstrap, tenant, [f"{base[8]} (probe {len(probes)})"], 180, options=SMALL
        )
        probes.append(result)
        generations = await generations_of(pipeline, {result.request_id})
        return result.answer is not None and answered_by_small(generations, result.request_id)

    await eventually(probe_answered_by_small, 300, "a question answered by small again")
    after = await ask_questions(
        pipeline.bootstrap,
        tenant,
        [f"{q} (after)" for q in base[9:]],
        180,
        concurrency=8,
        options=SMALL,
    )
    generated_after = await generations_of(pipeline, request_ids(after))
    not_small = [r.question for r in after if not answered_by_small(generated_after, r.request_id)]
    assert not not_small, f"not answered by small after the restart: {not_small}"

    # Every input accounted for exactly once.
    asked = [*backlog, *queued, *probes, *after]
    all_requests = request_ids(asked)
    lost = [q.request_id for q in asked if isinstance(q, AskResult) and q.answer is None]
    by_request = answer_ids_by_request(
        await decoded(pipeline.bootstrap, TOPICS.answers), all_requests
    )
    twice = {rid: ids for rid, ids in by_request.items() if len(set(ids)) > 1}
    assert not lost and set(by_request) == all_requests, lost
    assert not twice, f"requests with two different answers: {list(twice.items())[:3]}"
    documents = outage_ids | later_ids
    indexed: dict[str, set[str]] = defaultdict(set)
    for record in await lineage(pipeline, documents):
        if record.stage == "route":
            indexed[record.correlation_id].add(record.event_id)
    assert all(len(ids) == 1 for ids in indexed.values()) and set(indexed) == documents, indexed
    chunks = {
        c.chunk_id
        for c in await decoded(pipeline.bootstrap, TOPICS.chunks)
        if isinstance(c, ChunkV1) and c.tenant_id == tenant
    }
    vector_ids: dict[str, set[str]] = defaultdict(set)
    for vector in await decoded(pipeline.bootstrap, TOPICS.chunk_vectors):
        if isinstance(vector, ChunkVectorV1) and vector.tenant_id == tenant:
            vector_ids[vector.chunk.chunk_id].add(vector.event_id)
    assert set(vector_ids) == chunks
    assert all(len(ids) == 1 for ids in vector_ids.values()), "a chunk embedded twice"
    letters = [
        d
        for d in await decoded(pipeline.bootstrap, TOPICS.dlq)
        if isinstance(d, DeadLetterV1) and d.tenant_id == tenant
    ]
    assert not letters, [d.reason for d in letters]
    chunk_sets = [
        s
        for s in await decoded(pipeline.bootstrap, TOPICS.chunks)
        if isinstance(s, ChunkSetV1) and s.correlation_id in documents
    ]
    async with index_of(pipeline) as index:
        in_index = await index.chunk_ids(tenant)
    assert sorted(in_index) == sorted(chunks), "the index differs from the chunks sent"

    answer_records = sum(len(ids) for ids in by_request.values())
    report(
        "triton kill -9 and restart",
        documents_in=len(documents),
        documents_during_outage=len(outage_docs),
        documents_indexed=len(indexed),
        chunks=len({c for s in chunk_sets for c in s.chunk_ids}),
        chunks_in_index=len(in_index),
        questions_in=len(all_requests),
        answered_by_fallback=len(fallback_answers),
        probes_until_small=len(probes),
        answered_by_small_after=len(after) - len(not_small),
        answers_of_tier_small_after=sum(
            r.answer is not None and r.answer.tier == "small" for r in after
        ),
        answers=len(by_request),
        answer_records=answer_records,
        repeated_records=answer_records - len(by_request),
        dlq=len(letters),
        duplicated=len(twice),
        lost=len(lost),
    )
