"""Malformed events beside valid ones: every bad one is dead-lettered, every good one goes on."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from contracts.registry import TOPICS
from contracts.v1 import ChunkSetV1, DeadLetterV1, DocumentUpsertV1, ProducedBy
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import StageProcesses, events_on, eventually, tenant_name

pytestmark = pytest.mark.integration


def _valid(tenant: str, n: int) -> DocumentUpsertV1:
    return DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id=f"valid-{n}",
        produced_by=ProducedBy(service="upstream-test", version="1"),
        doc_id=f"ok-{n}.md",
        content_type="text/markdown",
        content=f"# Valid {n}\n\nA perfectly ordinary document number {n}.",
    )


def _malformed(tenant: str, marker: str) -> list[tuple[str, bytes]]:
    """50 bad records, (expected error kind, value), each carrying `marker`."""
    good = json.loads(_valid(tenant, 0).model_dump_json())

    def variant(n: int, **changes: Any) -> bytes:
        payload = {**good, "doc_id": f"{marker}-{n}", **changes}
        return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()

    bad: list[tuple[str, bytes]] = []
    for n in range(8):
        bad.append(("invalid_json", f'{{"doc_id": "{marker}-{n}", '.encode()))
    for n in range(8):
        bad.append(("not_utf8", b"\xff\xfe" + marker.encode() + bytes([0x80 + n])))
    for n in range(8):  # wrong types, missing fields, unknown fields, unknown content type
        changes = [
            {"content": 42},
            {"content": ...},
            {"colour": "blue"},
            {"content_type": "application/pdf"},
        ][n % 4]
        bad.append(("schema_violation", variant(n, **changes)))
    for n in range(7):
        bad.append(("unknown_schema_version", variant(100 + n, schema_version=f"{2 + n}.0")))
    for n in range(7):
        bad.append(("rejected", variant(200 + n, content=f"{marker} " + "x" * 950_000)))
    for n in range(6):
        bad.append(("schema_violation", variant(300 + n, tenant_id=...)))
    for n in range(6):
        bad.append(("rejected", variant(400 + n, content=" \n\t " * n)))
    assert len(bad) == 50
    return bad


async def test_fifty_bad_events_go_to_the_dlq_and_fifty_good_ones_through(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("mixed")
    marker = f"bad-{uuid.uuid4().hex[:8]}"
    bad = _malformed(tenant, marker)
    good = [_valid(tenant, n) for n in range(50)]
    sends = []
    for (_, value), event in zip(bad, good, strict=True):
        sends.append(await producer.send(TOPICS.documents.name, value, key=marker.encode()))
        sends.append(
            await producer.send(
                TOPICS.documents.name, event.model_dump_json().encode(), key=event.doc_id.encode()
            )
        )
    for send in sends:
        await send

    async def all_dead() -> list[DeadLetterV1] | None:
        records = await read_topic(pipeline.bootstrap, TOPICS.dlq.name)
        letters = [DeadLetterV1.model_validate_json(r.value) for r in records]
        mine = [letter for letter in letters if marker.encode() in letter.original_value]
        return mine if len(mine) >= len(bad) else None

    letters = await eventually(all_dead, what="50 dead letters")
    assert len(letters) == 50
    by_value = {letter.original_value: letter for letter in letters}
    for kind, value in bad:
        letter = by_value[value]
        assert (letter.stage, letter.error_kind, letter.source_topic) == (
            "ingest",
            kind,
            TOPICS.documents.name,
        )
        assert letter.reason and letter.source_key == marker
    reasons = " ".join(letter.reason for letter in letters)
    assert "over the 0.90 MB limit" in reasons and "no text content" in reasons
    assert "'2.0' is not readable" in reasons
    missing_tenant = by_value[bad[-7][1]]
    assert "tenant_id" in missing_tenant.reason and missing_tenant.tenant_id is None

    async def all_chunked() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.chunks, {tenant})
        sets = [e for e in events if isinstance(e, ChunkSetV1)]
        return sets if len(sets) >= 50 else None

    sets = await eventually(all_chunked, what="50 valid documents chunked")
    assert sorted(s.doc_id for s in sets) == sorted(d.doc_id for d in good)
    assert pipeline.alive("ingest") and pipeline.alive("chunk")
