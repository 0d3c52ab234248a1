"""Faults injected for real on the embedded stack: `kill -9` of a query-path stage with 200
questions in flight, and an upstream producer that sends the same events twice.

The invariant each test checks at the end: every input is accounted for exactly once. Every
question has exactly one answer, counted by the answer's event id, which is deterministic
(`services.runtime.publishing.derived_event_id`): a stage that handles an input again after a
crash republishes the same ids, and every consumer's write is idempotent by id. Records that
repeat an id (at-least-once delivery) are counted and reported, never a second answer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, ChunkV1, DeadLetterV1, DocumentUpsertV1, LineageRecordV1
from services.cli.ask_cmd import AskResult, ask_questions, query_event
from services.cli.ingest_cmd import ingest_paths
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import (
    UPSTREAM,
    StageProcesses,
    eventually,
    publish_events,
    tenant_name,
)
from tests.integration.test_query_path import QUIET

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Route without the semantic cache, so that every question goes on to generate and validate
#: (the questions below are near-paraphrases of a dozen): those stages then have work in flight.
ROUTE_ENV = {"RAGSTREAM_SEMANTIC_CACHE_THRESHOLD": "1.0"}
#: 200 in `make test`; `make soak` raises it (RAGSTREAM_SOAK_QUESTIONS) for a longer run.
QUESTIONS_IN_FLIGHT = int(os.environ.get("RAGSTREAM_SOAK_QUESTIONS", "200"))


@pytest.fixture(scope="module")
async def fault_tenant(pipeline: StageProcesses) -> AsyncIterator[str]:
    pipeline.stop_stage("route")
    pipeline.restart("route", **ROUTE_ENV)
    tenant = tenant_name("faults")
    report = await ingest_paths(pipeline.bootstrap, [EXAMPLES / "corpus"], tenant, True, 300, QUIET)
    assert report.counts()["done"] == len(report.outcomes), report.as_json()
    try:
        yield tenant
    finally:
        pipeline.stop_stage("route")
        pipeline.restart("route")


def kill_9(pipeline: StageProcesses, stage: str) -> None:
    process = pipeline.processes.pop(stage)
    process.kill()
    process.wait(timeout=30)


def questions(label: str, count: int) -> list[str]:
    base = [json.loads(line)["question"] for line in (EXAMPLES / "questions.jsonl").open()]
    return [f"{q} ({label} {n})" for n, q in zip(range(count), itertools.cycle(base), strict=False)]


async def decoded(bootstrap: str, topic: Any) -> list[Any]:
    return [topic.adapter.validate_json(r.value) for r in await read_topic(bootstrap, topic.name)]


def answer_ids_by_request(answers: list[AnswerV1], request_ids: set[str]) -> dict[str, list[str]]:
    """Request id → the event id of every answer record for it (repeats included)."""
    found: dict[str, list[str]] = defaultdict(list)
    for answer in answers:
        if isinstance(answer, AnswerV1) and answer.request_id in request_ids:
            found[answer.request_id].append(answer.event_id)
    return found


def report(scenario: str, **counts: int) -> None:
    """The scenario's counts, printed for the closing note (`pytest -s`)."""
    print(f"\nfaults: {scenario}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


@pytest.mark.parametrize("stage", ["route", "generate", "validate"])
async def test_kill_9_mid_stream_loses_no_question_and_answers_each_once(
    pipeline: StageProcesses, fault_tenant: str, stage: str
) -> None:
    answered: list[AskResult] = []
    asking = asyncio.create_task(
        ask_questions(
            pipeline.bootstrap,
            fault_tenant,
            questions(f"kill {stage}", QUESTIONS_IN_FLIGHT),
            timeout_s=300,
            concurrency=QUESTIONS_IN_FLIGHT,
            on_result=answered.append,
        )
    )
    await eventually(
        lambda: asyncio.sleep(0, result=len(answered) >= 20 or None), 240, "first answers"
    )  # then kill -9 with the rest in flight
    answered_at_kill = len(answered)
    kill_9(pipeline, stage)
    pipeline.restart(stage, **(ROUTE_ENV if stage == "route" else {}))
    results = await asking

    assert answered_at_kill < QUESTIONS_IN_FLIGHT, "every question was answered before the kill"
    lost = [r.question for r in results if r.answer is None]
    assert not lost, f"{len(lost)} questions never answered, e.g. {lost[:3]}"
    request_ids = {r.request_id for r in results}
    answers = await decoded(pipeline.bootstrap, TOPICS.answers)
    by_request = answer_ids_by_request(answers, request_ids)
    twice = {rid: ids for rid, ids in by_request.items() if len(set(ids)) > 1}
    assert not twice, f"requests with two different answers: {list(twice.items())[:3]}"
    assert set(by_request) == request_ids
    letters = [
        d
        for d in await decoded(pipeline.bootstrap, TOPICS.dlq)
        if isinstance(d, DeadLetterV1) and d.tenant_id == fault_tenant
    ]
    assert not letters, [d.reason for d in letters]
    records = sum(len(ids) for ids in by_request.values())
    report(
        f"kill -9 {stage}",
        questions=len(request_ids),
        answered_before_kill=answered_at_kill,
        answers=len(by_request),
        answer_records=records,
        repeated_records=records - len(by_request),
        dlq=len(letters),
        lost=len(lost),
        duplicated=len(twice),
    )


async def test_an_upstream_that_sends_everything_twice_has_one_effect(
    pipeline: StageProcesses, fault_tenant: str, producer: AIOKafkaProducer
) -> None:
    """A producer retrying after a timeout: the same event (same id) arrives twice."""
    tenant = fault_tenant
    document = DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id="twice-doc",
        produced_by=UPSTREAM,
        doc_id="policies/twice.md",
        content_type="text/markdown",
        content="# Parking\n\nStaff parking permits cost 40 euros a month at the north garage.",
    )
    question = query_event("How much does a staff parking permit cost a month?", tenant)
    await publish_events(producer, TOPICS.documents, [document, document])

    async def handled_twice(correlation: str, stage: str) -> list[LineageRecordV1] | None:
        records = [
            r
            for r in await decoded(pipeline.bootstrap, TOPICS.audit)
            if isinstance(r, LineageRecordV1)
            and r.correlation_id == correlation
            and r.stage == stage
        ]
        return records if len(records) >= 2 else None

    ingested = await eventually(lambda: handled_twice("twice-doc", "ingest"), 120, "2 ingests")
    assert sorted(r.outcome for r in ingested) == ["duplicate", "ok"], ingested
    chunks = [
        c
        for c in await decoded(pipeline.bootstrap, TOPICS.chunks)
        if isinstance(c, ChunkV1) and c.tenant_id == tenant and c.doc_id == document.doc_id
    ]
    assert chunks and len({c.chunk_id for c in chunks}) == len(chunks), "chunked twice"

    await eventually(lambda: _indexed(pipeline, document), 120, "the document indexed")
    await publish_events(producer, TOPICS.queries, [question, question])
    routed = await eventually(
        lambda: handled_twice(question.correlation_id, "route"), 180, "question routed twice"
    )
    by_request = answer_ids_by_request(
        await decoded(pipeline.bootstrap, TOPICS.answers), {question.request_id}
    )
    assert len(set(by_request[question.request_id])) == 1, by_request
    report(
        "duplicate sends",
        documents_sent=2,
        document_versions=len({c.doc_version for c in chunks}),
        chunks=len(chunks),
        questions_sent=2,
        route_deliveries=len(routed),
        answers=len(set(by_request[question.request_id])),
        answer_records=len(by_request[question.request_id]),
    )


async def _indexed(pipeline: StageProcesses, document: DocumentUpsertV1) -> bool:
    records = await decoded(pipeline.bootstrap, TOPICS.audit)
    return any(
        isinstance(r, LineageRecordV1)
        and r.correlation_id == document.correlation_id
        and r.stage == "route"
        for r in records
    )
