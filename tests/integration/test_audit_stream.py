"""The audit stream as an analyst's own tool sees it: a plain Kafka client and the committed
JSON Schema decode every lineage record, dead letters included."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition
from jsonschema import Draft202012Validator

from contracts.registry import TOPICS
from tests.integration.conftest import StageProcesses, eventually, publish_events, tenant_name
from tests.integration.test_document_flow import document

pytestmark = pytest.mark.integration
SCHEMA = Path(__file__).resolve().parents[2] / "contracts" / "schemas" / "v1"


def audit_records_with_librdkafka(bootstrap: str) -> list[dict[str, Any]]:
    """Every record on the audit topic, read with confluent-kafka (not ragstream's code)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"analyst-{time.monotonic_ns()}",
         "enable.partition.eof": True}
    )  # fmt: skip
    topic = TOPICS.audit.name
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records, at_end = [], set()
    deadline = time.monotonic() + 60
    while len(at_end) < len(partitions) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            at_end.add(message.partition())
            continue
        records.append(json.loads(message.value()))
    consumer.close()
    return records


async def test_every_lineage_record_decodes_with_the_committed_schema(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("analyst")
    good = document(tenant, 1)
    await publish_events(producer, TOPICS.documents, [good])
    await producer.send_and_wait(TOPICS.documents.name, b"{not json", key=b"broken")

    async def both_recorded() -> list[dict[str, Any]] | None:
        records = audit_records_with_librdkafka(pipeline.bootstrap)
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
