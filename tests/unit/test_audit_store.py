"""The audit store with plain records: idempotent writes, causal order, costs, latency, export,
and reading while another process holds the writer's lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from contracts.v1 import AnswerV1, LineageRecordV1, ProducedBy, RefusalV1
from services.audit.causal import causal_order
from services.audit.exceptions import AuditStoreMissingError
from services.audit.store import AuditStore, audit_db_path, open_for_reading
from services.cli.audit_cmd import render_request, request_report

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def record(
    stage: str,
    event_id: str,
    input_id: str | None,
    outputs: list[str],
    start_ms: float,
    took_ms: float,
    correlation: str = "r-1",
    tenant: str = "acme",
    **details: Any,
) -> LineageRecordV1:
    started = T0 + timedelta(milliseconds=start_ms)
    return LineageRecordV1(
        event_id=event_id,
        tenant_id=tenant,
        correlation_id=correlation,
        causation_id=input_id,
        produced_by=ProducedBy(service=stage, version="0.1.0"),
        stage=stage,
        input_event_id=input_id,
        output_event_ids=outputs,
        outcome="ok",
        started_at=started,
        finished_at=started + timedelta(milliseconds=took_ms),
        details=details,
    )


def query_path(correlation: str = "r-1", tenant: str = "acme", offset: float = 0) -> list[Any]:
    """ingest → embed → route → generate → validate (retry) → generate → validate."""
    c, o = correlation, offset
    return [
        record("ingest", f"{c}-l1", f"{c}-q", [f"{c}-a"], o + 0, 2, c, tenant),
        record("embed", f"{c}-l2", f"{c}-a", [f"{c}-v"], o + 5, 10, c, tenant),
        record("route", f"{c}-l3", f"{c}-v", [f"{c}-g1"], o + 20, 8, c, tenant, tier="small",
               retrieved=[{"chunk_id": "k1", "score": 0.8}], cache="miss"),
        record("generate", f"{c}-l4", f"{c}-g1", [f"{c}-o1"], o + 30, 100, c, tenant,
               model_name="smollm", input_tokens=300, output_tokens=40, cost_usd=0.01,
               model_version="2", prompt_name="grounded_answer", prompt_version="v2",
               model_arm="canary"),
        record("validate", f"{c}-l5", f"{c}-o1", [f"{c}-g2"], o + 140, 4, c, tenant,
               checks=[{"name": "schema", "passed": False}]),
        record("generate", f"{c}-l6", f"{c}-g2", [f"{c}-o2"], o + 150, 50, c, tenant,
               model_name="extractive", input_tokens=0, output_tokens=20, cost_usd=0.0),
        record("validate", f"{c}-l7", f"{c}-o2", [f"{c}-ans"], o + 210, 3, c, tenant),
    ]  # fmt: skip


def answer(correlation: str = "r-1", request_id: str = "req-1", **kw: Any) -> AnswerV1:
    return AnswerV1(
        event_id=f"{correlation}-ans",
        tenant_id="acme",
        correlation_id=correlation,
        produced_by=ProducedBy(service="validate", version="0.1.0"),
        request_id=request_id,
        question="How many days?",
        tier="extractive",
        latency_ms=213.0,
        **({"answer": "25 days."} | kw),
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with AuditStore(audit_db_path(tmp_path)) as opened:
        yield opened


def test_causal_order_follows_outputs_to_inputs_whatever_the_clocks_say() -> None:
    records = query_path()
    skewed = [r.model_copy(update={"started_at": T0 - timedelta(seconds=i)}) for i, r in
              enumerate(records)]  # fmt: skip
    ordered = causal_order(list(reversed(skewed)))
    assert [r.event_id for r in ordered] == [r.event_id for r in records]


def test_causal_order_breaks_ties_by_start_and_keeps_unrelated_records() -> None:
    late = record("route", "b", "x", [], 50, 1)
    early = record("route", "a", "y", [], 10, 1)
    child = record("generate", "c", "out-of-b", [], 0, 1)
    parent = late.model_copy(update={"output_event_ids": ["out-of-b"]})
    ordered = causal_order([child, parent, early, early])
    assert [r.event_id for r in ordered] == ["a", "b", "c"]


def test_writing_the_same_records_twice_keeps_one_row_each(store: AuditStore) -> None:
    records = query_path()
    store.write(records, [answer()])
    store.write(records + records[:2], [answer(), answer()])
    assert store.count("lineage") == len(records)
    assert store.count("answers") == 1


def test_lineage_by_request_id_is_in_causal_order_with_the_answer(store: AuditStore) -> None:
    written = query_path()
    store.write(list(reversed(written)) + query_path("r-2", offset=5), [answer()])
    lineage = store.lineage("req-1")
    assert [r.stage for r in lineage] == [
        "ingest", "embed", "route", "generate", "validate", "generate", "validate"
    ]  # fmt: skip
    assert lineage[2].details["retrieved"] == [{"chunk_id": "k1", "score": 0.8}]
    assert lineage[0] == written[0]
    assert store.lineage("r-1") == lineage
    stored = store.answer("req-1")
    assert stored is not None and stored.answer == "25 days." and stored.correlation_id == "r-1"
    report = request_report(store, "req-1")
    assert (report["input_tokens"], report["output_tokens"]) == (300, 60)
    assert report["cost_usd"] == pytest.approx(0.01)
    assert "25 days." in str(render_request(report).children[-1].children[0].label)


def test_a_refusal_is_stored_with_its_reasons(store: AuditStore) -> None:
    refusal = RefusalV1(reasons=["no_context"], message="Nothing matches.")
    store.write([], [answer(answer=None, refusal=refusal)])
    stored = store.answer("req-1")
    assert stored is not None and stored.refusal_reasons == ["no_context"]


def test_costs_sum_generate_records_by_tenant_model_and_day(store: AuditStore) -> None:
    store.write(query_path("r-1", "acme") + query_path("r-2", "beta") + query_path("r-3", "acme"))
    by_tenant = {row["tenant"]: row for row in store.costs("tenant")}
    assert by_tenant["acme"] == {
        "tenant": "acme", "generations": 4, "input_tokens": 600, "output_tokens": 120,
        "cost_usd": pytest.approx(0.02),
    }  # fmt: skip
    assert by_tenant["beta"]["input_tokens"] == 300
    by_model = {row["model"]: row["output_tokens"] for row in store.costs("model")}
    assert by_model == {"smollm": 120, "extractive": 60}
    # A canary's two sides, compared (the extractive records carry no version, prompt or arm).
    by_version = {row["version"]: row["generations"] for row in store.costs("version")}
    assert by_version == {"smollm@2": 3, "extractive@?": 3}
    by_prompt = {row["prompt"]: row["cost_usd"] for row in store.costs("prompt")}
    assert by_prompt == {"grounded_answer/v2": pytest.approx(0.03), "?/?": 0.0}
    assert {row["arm"]: row["generations"] for row in store.costs("arm")} == {
        "canary": 3,
        "stable": 3,
    }
    assert store.costs("day") == [
        {"day": "2026-11-23", "generations": 6, "input_tokens": 900, "output_tokens": 180,
         "cost_usd": pytest.approx(0.03)}
    ]  # fmt: skip


def test_latency_percentiles_per_stage_and_end_to_end(store: AuditStore) -> None:
    took = [float(ms) for ms in range(1, 101)]
    store.write(
        [record("embed", f"e{i}", None, [], i * 1000, ms, f"d-{i}") for i, ms in enumerate(took)]
        + query_path()
    )
    store.write([], [answer()])
    rows = {row["stage"]: row for row in store.latency()}
    embed = rows["embed"]
    assert embed["count"] == 101
    expected = np.percentile([*took, 10.0], [50, 95, 99])
    assert [embed["p50_ms"], embed["p95_ms"], embed["p99_ms"]] == pytest.approx(expected)
    assert rows["end_to_end.query"]["count"] == 1
    assert rows["end_to_end.query"]["p50_ms"] == pytest.approx(213.0)
    assert rows["end_to_end.document"]["count"] == 100
    assert list(rows)[:2] == ["ingest", "embed"] and list(rows)[-1] == "end_to_end.query"
    assert [row["stage"] for row in store.latency("generate")] == ["generate"]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_writes_every_row(store: AuditStore, tmp_path: Path, fmt: Any) -> None:
    store.write(query_path(), [answer()])
    target = tmp_path / "out" / f"lineage.{fmt}"
    assert store.export(target, fmt) == 7
    if fmt == "jsonl":
        rows = [json.loads(line) for line in target.read_text().splitlines()]
        assert [r["stage"] for r in rows][:2] == ["ingest", "embed"]
        assert rows[3]["details"]["input_tokens"] == 300
    else:
        assert duckdb.sql(f"SELECT count(*) FROM '{target}'").fetchall() == [(7,)]


def test_reading_a_missing_store_names_the_path(tmp_path: Path) -> None:
    with (
        pytest.raises(AuditStoreMissingError, match=r"no audit store at .*audit\.duckdb"),
        open_for_reading(audit_db_path(tmp_path)),
    ):
        pass


def test_a_reader_gets_a_copy_while_another_process_holds_the_writer_lock(
    tmp_path: Path,
) -> None:
    path = audit_db_path(tmp_path)
    with AuditStore(path) as store:
        store.write(query_path())
    writer = textwrap.dedent(f"""
        import sys, time
        from services.audit.store import AuditStore
        from tests.unit.test_audit_store import query_path
        store = AuditStore(__import__("pathlib").Path({str(path)!r}))
        store.write(query_path("r-2"))
        print("holding", flush=True)
        for i in range(3, 400):
            store.write(query_path(f"r-{{i}}"))
            time.sleep(0.01)
        time.sleep(30)
    """)
    holder = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"holding"
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(path), read_only=True)
        seen = []
        for _ in range(5):
            with open_for_reading(path) as reader:
                seen.append(reader.count())
                assert [r.stage for r in reader.lineage("r-2")][:2] == ["ingest", "embed"]
        assert seen[0] >= 14 and seen == sorted(seen)
    finally:
        holder.kill()
        holder.wait()
