"""The audit stream as an analyst's own tool sees it: a plain Kafka client and the committed
JSON Schema decode every lineage record, dead letters included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from jsonschema import Draft202012Validator

from contracts.registry import TOPICS
from tests.integration.conftest import (
    StageProcesses,
    eventually,
    publish_events,
    records_with_librdkafka,
    tenant_name,
)
from tests.integration.test_document_flow import document

pytestmark = pytest.mark.integration
SCHEMA = Path(__file__).resolve().parents[2] / "contracts" / "schemas" / "v1"


async def test_every_lineage_record_decodes_with_the_committed_schema(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("analyst")
    good = document(tenant, 1)
    await publish_events(producer, TOPICS.documents, [good])
    await producer.send_and_wait(TOPICS.documents.name, b"{not json", key=b"broken")

    async def both_recorded() -> list[dict[str, Any]] | None:
        records = records_with_librdkafka(pipeline.bootstrap, TOPICS.audit.name)
        ours = [r for r in records if r["correlation_id"] == good.correlation_id]
        dead = [r for r in records if r["outcome"] == "dead_lettered"]
        return records if any(r["stage"] == "route" for r in ours) and dead else None

    records = await eventually(both_recorded, what="lineage of a document and a dead letter")
    schema = json.loads((SCHEMA / f"{TOPICS.audit.name}.json").read_text())
    validator = Draft202012Validator(schema)
    problems = [
        f"{r.get('stage')}/{r.get('outcome')}: {e.message}"
        for r in records
        for e in validator.iter_errors(r)
    ]
    assert not problems, problems[:5]
    dead = [r for r in records if r["outcome"] == "dead_lettered"]
    assert all(r["details"]["error_kind"] and r["details"]["source"] for r in dead)
    ingest = [r for r in records if r["correlation_id"] == good.correlation_id]
    assert all(r["queued_at"] <= r["started_at"] <= r["finished_at"] for r in ingest)
