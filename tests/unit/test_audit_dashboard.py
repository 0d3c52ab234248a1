"""The dashboard's store queries and HTML on plain records, and its HTTP server on a store file."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from contracts.v1 import CitationV1, RefusalV1
from services.audit.dashboard import overview_page
from services.audit.store import AuditStore, audit_db_path
from services.cli.dashboard_cmd import DashboardServer, full_report
from tests.unit.test_audit_store import T0, answer, query_path

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CITED = CitationV1(chunk_id="00000000-0000-4000-8000-000000000001", doc_id="leave",
                   title="Leave policy")  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with AuditStore(audit_db_path(tmp_path)) as opened:
        opened.write(
            query_path("r-1", "acme") + query_path("r-2", "beta", offset=1000),
            [
                answer("r-1", "req-1", citations=[CITED], produced_at=T0),
                answer("r-2", "req-2", answer=None,
                       refusal=RefusalV1(reasons=["ungrounded"], message="Not supported."),
                       ).model_copy(update={"question": "Mail jane.roe@example.org <b>?",
                                            "tenant_id": "beta",
                                            "produced_at": T0 + timedelta(seconds=5)}),
            ],
        )  # fmt: skip
        yield opened


def test_recent_requests_are_newest_first_with_tokens_from_the_lineage(
    store: AuditStore,
) -> None:
    recent = store.recent(10)
    assert [r["request_id"] for r in recent] == ["req-2", "req-1"]
    first = recent[1]
    assert (first["outcome"], first["tier"], first["question"]) == (
        "answered", "extractive", "How many days?"
    )  # fmt: skip
    assert (first["input_tokens"], first["output_tokens"]) == (300, 60)
    assert first["cost_usd"] == pytest.approx(0.01)
    assert recent[0]["outcome"] == "refused" and recent[0]["refusal_reasons"] == ["ungrounded"]
    assert store.recent(1) == recent[:1]


def test_costs_per_tenant_per_day(store: AuditStore) -> None:
    assert store.costs_by_tenant_day() == [
        {"day": "2026-11-23", "tenant": "acme", "generations": 2, "input_tokens": 300,
         "output_tokens": 60, "cost_usd": pytest.approx(0.01)},
        {"day": "2026-11-23", "tenant": "beta", "generations": 2, "input_tokens": 300,
         "output_tokens": 60, "cost_usd": pytest.approx(0.01)},
    ]  # fmt: skip


def test_the_question_and_citations_of_a_request_are_kept(store: AuditStore) -> None:
    assert store.question_of("req-1") == ("acme", "How many days?")
    assert store.question_of("r-1") == ("acme", "How many days?")
    assert store.question_of("nope") is None
    assert [c["chunk_id"] for c in store.citations_of("req-1")] == [CITED.chunk_id]
    assert store.citations_of("req-2") == []


def test_a_store_written_before_questions_were_kept_gains_the_column(tmp_path: Path) -> None:
    path = audit_db_path(tmp_path)
    path.parent.mkdir(parents=True)
    with duckdb.connect(str(path)) as db:  # the schema without `question`
        db.execute(
            "CREATE TABLE answers (event_id VARCHAR PRIMARY KEY, request_id VARCHAR NOT NULL, "
            "correlation_id VARCHAR NOT NULL, tenant_id VARCHAR NOT NULL, produced_at TIMESTAMP, "
            "tier VARCHAR, cache_hit VARCHAR, answer VARCHAR, refusal_reasons VARCHAR[], "
            "refusal_message VARCHAR, citations JSON, input_tokens BIGINT, output_tokens BIGINT, "
            "cost_usd DOUBLE, latency_ms DOUBLE)"
        )
        db.execute("INSERT INTO answers (event_id, request_id, correlation_id, tenant_id) "
                   "VALUES ('old', 'req-old', 'r-old', 'acme')")  # fmt: skip
    with AuditStore(path) as store:
        store.write([], [answer()])
        assert store.question_of("req-1") == ("acme", "How many days?")
        assert store.question_of("req-old") == ("acme", None)
        assert store.answer("req-1") is not None


def _overview(store: AuditStore, selected: str) -> str:
    report = full_report(store, selected)
    costs, latency = store.costs_by_tenant_day(), store.latency()
    return overview_page(store.recent(50), report, costs, latency, NOW, "audit.duckdb")


def test_the_page_shows_the_selected_lineage_in_causal_order_and_escapes_text(
    store: AuditStore,
) -> None:
    html = _overview(store, "req-1")
    lineage = html[html.index('id="lineage"') : html.index('id="costs"')]
    assert 'data-request-id="req-1"' in lineage
    assert re.findall(r'data-stage="(\w+)"', lineage) == [
        "ingest", "embed", "route", "generate", "validate", "generate", "validate"
    ]  # fmt: skip
    assert "25 days." in lineage and "Leave policy" in lineage
    assert "retrieved: 1 chunks (top score 0.800)" in lineage
    assert "<b>?" not in html and "&lt;b&gt;?" in html  # a question is text, never markup
    assert "<script" not in html and "http://" not in html and "https://" not in html


def test_personal_data_in_a_question_is_redacted_on_the_page(store: AuditStore) -> None:
    html = _overview(store, "req-2")
    assert "jane.roe@example.org" not in html and "[REDACTED:email]" in html
    assert "ungrounded" in html


@pytest.fixture
def server(store: AuditStore) -> Iterator[str]:
    served = DashboardServer(("127.0.0.1", 0), store.path)  # reads a copy: the store holds it
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served.url
    served.shutdown()
    served.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_server_serves_the_page_and_the_json_api(server: str) -> None:
    status, html = _get(server)
    assert status == 200 and 'data-request-id="req-2"' in html  # the newest is selected
    status, body = _get(server + "api/requests/req-1")
    report: dict[str, Any] = json.loads(body)
    assert status == 200 and [r["stage"] for r in report["records"]][:2] == ["ingest", "embed"]
    assert report["citations"][0]["doc_id"] == "leave"
    assert [r["request_id"] for r in json.loads(_get(server + "api/recent?limit=1")[1])] == [
        "req-2"
    ]
    assert json.loads(_get(server + "api/costs")[1])[0]["tenant"] == "acme"
    assert {r["stage"] for r in json.loads(_get(server + "api/latency")[1])} >= {"route"}
    assert _get(server + "api/requests/nope")[0] == 404
    assert _get(server + "?request=nope")[0] == 404
    assert _get(server + "elsewhere")[0] == 404


def test_the_server_says_when_there_is_no_store_yet(tmp_path: Path) -> None:
    served = DashboardServer(("127.0.0.1", 0), audit_db_path(tmp_path / "empty"))
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    try:
        status, html = _get(served.url)
        assert status == 503 and "no audit store at" in html
        status, body = _get(served.url + "api/recent")
        assert status == 503 and "no audit store at" in json.loads(body)["error"]
    finally:
        served.shutdown()
        served.server_close()
