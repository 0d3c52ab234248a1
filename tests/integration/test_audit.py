"""The audit stage on the real broker: a request's lineage in the store in causal order,
duplicates stored once, costs equal to the generate records on the audit topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from contracts.registry import TOPICS
from contracts.v1 import LineageRecordV1, ProducedBy
from services.audit.store import audit_db_path, open_for_reading
from services.cli.audit_cmd import audit_app
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import StageProcesses, eventually, publish_events, tenant_name
from tests.integration.test_query_path import EXAMPLES, ask, ingest

pytestmark = pytest.mark.integration
QUERY_PATH = ["ingest", "embed", "route", "generate", "validate"]


@pytest.fixture(scope="module")
def audited(pipeline: StageProcesses) -> StageProcesses:
    """The pipeline with the audit stage running (started here if the pipeline has not)."""
    if "audit" not in pipeline.processes:
        pipeline.start("audit")
        pipeline.wait_ready()
    return pipeline


def audit_cli(pipeline: StageProcesses, *args: str) -> Any:
    """`ragstream audit ARGS --json` against the pipeline's data dir, parsed."""
    env = {"RAGSTREAM_DATA_DIR": str(pipeline.data_dir)}
    result = CliRunner().invoke(audit_app, [*args, "--json"], env=env)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout) if result.exit_code == 0 else None


async def test_a_requests_lineage_is_shown_in_causal_order_with_tokens_and_cost(
    audited: StageProcesses, tmp_path: Path
) -> None:
    tenant = tenant_name("audit")
    doc = tmp_path / "leave.md"
    doc.write_text((EXAMPLES / "corpus" / "handbook" / "leave.md").read_text())
    await ingest(audited, tenant, doc)
    answer = await ask(
        audited, tenant, "How many days of paid vacation does a full-time employee receive?",
        tier="small",
    )  # fmt: skip

    async def complete() -> dict[str, Any] | None:
        report = audit_cli(audited, "show", answer.request_id)
        done = report and report["answer"] and report["records"][-1]["stage"] == "validate"
        return report if done else None

    report = await eventually(complete, 60, "the request's lineage in the audit store")
    stages = [r["stage"] for r in report["records"]]
    assert [s for s in stages if s in QUERY_PATH][:5] == QUERY_PATH, stages
    assert report["answer"]["request_id"] == answer.request_id
    assert report["answer"]["answer"] == answer.answer
    generations = [r for r in report["records"] if r["stage"] == "generate"]
    assert report["input_tokens"] == sum(g["details"]["input_tokens"] for g in generations) > 0
    assert report["output_tokens"] == sum(g["details"]["output_tokens"] for g in generations) > 0
    assert report["cost_usd"] == pytest.approx(sum(g["details"]["cost_usd"] for g in generations))
    assert report["cost_usd"] > 0
    assert all(r["duration_ms"] >= 0 for r in report["records"])
    rendered = CliRunner().invoke(
        audit_app, ["show", answer.request_id], env={"RAGSTREAM_DATA_DIR": str(audited.data_dir)}
    )
    assert rendered.exit_code == 0 and "generate" in rendered.stdout, rendered.output


def _lineage(tenant: str, correlation: str, index: int) -> LineageRecordV1:
    now = datetime.now(UTC)
    return LineageRecordV1(
        tenant_id=tenant,
        correlation_id=correlation,
        produced_by=ProducedBy(service="audit-test", version="1"),
        stage="chunk",
        input_event_id=f"in-{index}",
        outcome="ok",
        started_at=now,
        finished_at=now,
        details={"index": index},
    )


async def test_lineage_records_published_twice_are_stored_once(
    audited: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("audit-dup")
    records = [_lineage(tenant, f"dup-{tenant}", i) for i in range(5)]
    sentinel = _lineage(tenant, f"dup-{tenant}", 99)  # same key: one partition, after the rest
    await publish_events(producer, TOPICS.audit, records + records[:3] + records)
    await publish_events(producer, TOPICS.audit, [sentinel])

    async def stored() -> list[LineageRecordV1] | None:
        with open_for_reading(audit_db_path(audited.data_dir)) as store:
            rows = store.lineage(f"dup-{tenant}")
        return rows if sentinel.event_id in {r.event_id for r in rows} else None

    rows = await eventually(stored, 60, "the sentinel record in the audit store")
    assert sorted(r.event_id for r in rows) == sorted(r.event_id for r in [*records, sentinel])


async def test_costs_equal_the_generate_records_on_the_audit_topic(
    audited: StageProcesses,
) -> None:
    async def matching() -> dict[str, Any] | None:
        expected: dict[str, list[float]] = {}
        for message in await read_topic(audited.bootstrap, TOPICS.audit.name):
            record = TOPICS.audit.adapter.validate_json(message.value)
            if record.stage == "generate":
                sums = expected.setdefault(record.tenant_id, [0, 0, 0, 0.0])
                sums[0] += 1
                sums[1] += record.details["input_tokens"]
                sums[2] += record.details["output_tokens"]
                sums[3] += record.details["cost_usd"]
        costs = audit_cli(audited, "costs", "--by", "tenant") or []
        got = {
            row["tenant"]: [
                row["generations"],
                row["input_tokens"],
                row["output_tokens"],
                row["cost_usd"],
            ]
            for row in costs
        }
        same = set(got) == set(expected) and all(
            got[t][:3] == expected[t][:3] and got[t][3] == pytest.approx(expected[t][3])
            for t in expected
        )
        return {"expected": expected, "got": got} if same and expected else None

    result = await eventually(matching, 60, "costs equal to the topic's generate records")
    assert sum(sums[1] for sums in result["got"].values()) > 0
    latency = audit_cli(audited, "latency")
    assert {row["stage"] for row in latency} >= {*QUERY_PATH, "end_to_end.query"}
    assert all(row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] for row in latency)
