"""The vector store unreachable: route waits (ready: false), consumes nothing, loses nothing.

Route runs against a Qdrant server address where nothing answers (no Qdrant server binary
ships in a wheel, and the embedded default is local mode, which cannot become unreachable):
it must stay up, say `qdrant`/`resources_opened: false` on `/readyz`, dead-letter nothing and
commit nothing. Then route starts again on a store that answers (the pipeline's local one):
the document and the question sent during the outage are indexed and answered, once.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, DeadLetterV1, DocumentUpsertV1, LineageRecordV1
from services.cli.ask_cmd import query_event
from services.cli.stage_probe import probe_stage
from services.runtime.health import stage_endpoints
from tests.integration.conftest import (
    UPSTREAM,
    StageProcesses,
    events_on,
    eventually,
    publish_events,
    tenant_name,
)

pytestmark = pytest.mark.integration


def closed_port() -> int:
    """A loopback port where nothing listens (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def route_checks(data_dir: Path) -> dict[str, bool]:
    """route's readiness checks (`/readyz`), as `ragstream status` reads them."""
    return probe_stage(stage_endpoints(data_dir, "route")).checks


async def test_route_waits_for_an_unreachable_vector_store_and_loses_nothing(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("store-down")
    document = DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id="store-down-doc",
        produced_by=UPSTREAM,
        doc_id="policies/bikes.md",
        content_type="text/markdown",
        content="# Bicycles\n\nThe bicycle shed by the east entrance holds forty bicycles.",
    )
    question = query_event("How many bicycles does the shed by the east entrance hold?", tenant)
    pipeline.stop_stage("route")
    pipeline.start("route", RAGSTREAM_QDRANT_URL=f"http://127.0.0.1:{closed_port()}")
    try:
        checks = await eventually(
            lambda: asyncio.sleep(0, result=route_checks(pipeline.data_dir)), 90, "route's /readyz"
        )
        assert checks["resources_opened"] is False
        await publish_events(producer, TOPICS.documents, [document])
        embedded = await eventually(
            lambda: _lineage(pipeline, tenant, document.correlation_id, "embed"),
            180,
            "doc embedded",
        )
        await publish_events(producer, TOPICS.queries, [question])
        await eventually(
            lambda: _lineage(pipeline, tenant, question.correlation_id, "embed"),
            120,
            "question embedded",
        )
        # The store is away: route is up, not ready, and neither indexed nor answered anything.
        assert pipeline.alive("route")
        assert not all(route_checks(pipeline.data_dir).values())
        assert not await _lineage(pipeline, tenant, document.correlation_id, "route")
        assert not await events_on(pipeline.bootstrap, TOPICS.answers, {tenant})
        log = (pipeline.data_dir / "route.log").read_text(errors="replace")
        assert "qdrant unreachable" in log and "events wait, none is lost" in log
    finally:
        pipeline.stop_stage("route")
        pipeline.restart("route")

    answers = await eventually(
        lambda: events_on(pipeline.bootstrap, TOPICS.answers, {tenant}), 180, "the answer"
    )
    indexed = await eventually(
        lambda: _lineage(pipeline, tenant, document.correlation_id, "route"), 60, "document indexed"
    )
    # One answer (or one refusal: route reads its topics concurrently, so the question may be
    # routed before the document's vectors are indexed) for the one request.
    assert [a.request_id for a in answers if isinstance(a, AnswerV1)] == [question.request_id]
    letters = [
        d
        for d in await events_on(pipeline.bootstrap, TOPICS.dlq, {tenant})
        if isinstance(d, DeadLetterV1)
    ]
    assert not letters, [d.reason for d in letters]
    print(
        f"\nfaults: qdrant unreachable: documents=1, chunks_embedded={len(embedded)}, "
        f"indexed_after={len(indexed)}, questions=1, answers={len(answers)}, "
        f"dlq={len(letters)}, lost=0, duplicated={len(answers) - 1}"
    )


async def _lineage(
    pipeline: StageProcesses, tenant: str, correlation_id: str, stage: str
) -> list[LineageRecordV1]:
    return [
        r
        for r in await events_on(pipeline.bootstrap, TOPICS.audit, {tenant})
        if isinstance(r, LineageRecordV1)
        and r.correlation_id == correlation_id
        and r.stage == stage
    ]
