"""Tenant isolation of the audit store, the `ragstream audit` commands and the dashboard: two
tenants with near-identical requests (same request and correlation ids, same question, same
documents and chunks); scoped to one, nothing of the other shows, and another tenant's request
reads exactly like an unknown one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from contracts.v1 import AnswerV1, CitationV1, LineageRecordV1, ProducedBy
from services.audit.store import AuditStore, audit_db_path
from services.cli.audit_cmd import audit_app
from services.cli.replay_cmd import ReplayNotPossibleError, load_original
from tests.unit.test_audit_dashboard import _get
from tests.unit.test_audit_store import T0, record

REPO = Path(__file__).resolve().parents[2]
A, B = "acme", "globex"
#: Every value only tenant B holds contains this (its tenant id included), in any case.
B_MARK = "globex"
QUESTION = "How many days of paid vacation?"
CHUNK = "00000000-0000-4000-8000-000000000001"
#: (request id, correlation id) per tenant: req-1/r-1 is used by both, req-3 only by B.
REQUESTS = {A: [("req-1", "r-1"), ("req-2", "r-2")], B: [("req-1", "r-1"), ("req-3", "r-3")]}
#: Tokens in/out and cost of each tenant's first generation: sums tell the tenants apart.
SPEND = {A: (300, 40, 0.01), B: (5000, 700, 0.5)}


def request_path(tenant: str, correlation: str, offset: float) -> list[LineageRecordV1]:
    """ingest → embed → route → generate → validate (retry) → generate → validate, of one
    tenant's request; B's decisions carry B's marker."""
    t, c, o = tenant, correlation, offset
    e = f"{t}-{c}"  # event ids are unique per tenant; everything else is shared
    tokens_in, tokens_out, cost = SPEND[t]
    note = "GLOBEX-DETAIL" if t == B else "plain"
    path = [
        record("ingest", f"{e}-l1", f"{e}-q", [f"{e}-a"], o + 0, 2, c, t),
        record("embed", f"{e}-l2", f"{e}-a", [f"{e}-v"], o + 5, 10 if t == A else 90, c, t),
        record("route", f"{e}-l3", f"{e}-v", [f"{e}-g1"], o + 20, 8, c, t, tier="small",
               retrieved=[{"chunk_id": CHUNK, "doc_id": "leave", "score": 0.8}], note=note),
        record("generate", f"{e}-l4", f"{e}-g1", [f"{e}-o1"], o + 30, 100, c, t,
               model_name="smollm", input_tokens=tokens_in, output_tokens=tokens_out,
               cost_usd=cost, model_version="2", prompt_name="grounded_answer",
               prompt_version="v2", model_arm="canary"),
        record("validate", f"{e}-l5", f"{e}-o1", [f"{e}-g2"], o + 140, 4, c, t,
               checks=[{"name": "schema", "passed": False}]),
        record("generate", f"{e}-l6", f"{e}-g2", [f"{e}-o2"], o + 150, 50, c, t,
               model_name="extractive", input_tokens=0, output_tokens=20, cost_usd=0.0),
        record("validate", f"{e}-l7", f"{e}-o2", [f"{e}-ans"], o + 210, 3, c, t),
    ]  # fmt: skip
    # produced when it finished (not now): two stores of the same records hold equal rows
    return [r.model_copy(update={"produced_at": r.finished_at}) for r in path]


def request_answer(tenant: str, request_id: str, correlation: str, offset: float) -> AnswerV1:
    mark = " GLOBEX-ANSWER" if tenant == B else ""
    title = "Leave policy" + (" GLOBEX-TITLE" if tenant == B else "")
    return AnswerV1(
        event_id=f"{tenant}-{correlation}-ans",
        tenant_id=tenant,
        correlation_id=correlation,
        produced_by=ProducedBy(service="validate", version="0.1.0"),
        produced_at=T0 + timedelta(milliseconds=offset + 213),
        request_id=request_id,
        question=QUESTION if request_id != "req-3" else QUESTION + " GLOBEX-QUESTION",
        answer="25 days." + mark,
        citations=[CitationV1(chunk_id=CHUNK, doc_id="leave", title=title)],
        tier="extractive",
        latency_ms=213.0,
    )


def write_tenants(path: Path, tenants: tuple[str, ...] = (A, B)) -> None:
    """Both tenants' requests, interleaved in time (or only the tenants named)."""
    with AuditStore(path) as store:
        for n, tenant in enumerate(tenants):
            for i, (request_id, correlation) in enumerate(REQUESTS[tenant]):
                offset = 1000 * i + 100 * n
                store.write(
                    request_path(tenant, correlation, offset),
                    [request_answer(tenant, request_id, correlation, offset)],
                )


@pytest.fixture
def both(tmp_path: Path) -> Iterator[AuditStore]:
    """A store holding both tenants."""
    path = audit_db_path(tmp_path / "both")
    write_tenants(path)
    with AuditStore(path, read_only=True) as store:
        yield store


@pytest.fixture
def a_only(tmp_path: Path) -> Iterator[AuditStore]:
    """A store holding tenant A's requests alone: what a scoped query must equal."""
    path = audit_db_path(tmp_path / "a-only")
    write_tenants(path, (A,))
    with AuditStore(path, read_only=True) as store:
        yield store


def no_b(value: Any) -> bool:
    return B_MARK not in json.dumps(value, default=str).lower()


# --- the store ----------------------------------------------------------------------------


def test_the_fixture_holds_both_tenants_unscoped(both: AuditStore) -> None:
    """The scoped tests below would pass vacuously if B were missing."""
    assert {r.tenant_id for r in both.lineage("req-1")} == {A, B}
    assert {row["tenant"] for row in both.costs("tenant")} == {A, B}
    assert not no_b(both.recent(50))


def test_a_requests_lineage_and_answer_scoped_to_a_hold_none_of_b(
    both: AuditStore, a_only: AuditStore
) -> None:
    for request in ("req-1", "r-1", "req-2", "r-2"):
        lineage = both.lineage(request, A)
        assert lineage == a_only.lineage(request) and len(lineage) == 7
        assert {r.tenant_id for r in lineage} == {A} and no_b([r.model_dump() for r in lineage])
        stored = both.answer(request, A)
        assert stored is not None and stored == a_only.answer(request)
        assert stored.tenant_id == A and stored.answer == "25 days."
        assert both.question_of(request, A) == (A, QUESTION)
        assert both.citations_of(request, A) == a_only.citations_of(request)
        assert no_b(both.citations_of(request, A))
    assert both.correlations_of("req-1", A) == ["r-1", "req-1"]


@pytest.mark.parametrize("request_id", ["req-3", "r-3"])
def test_bs_request_scoped_to_a_reads_like_an_unknown_one(
    both: AuditStore, request_id: str
) -> None:
    assert both.lineage(request_id, B) and both.answer(request_id, B) is not None
    assert both.lineage(request_id, A) == both.lineage("req-9", A) == []
    assert both.answer(request_id, A) is None
    assert both.question_of(request_id, A) is None
    assert both.citations_of(request_id, A) == []


def test_replay_scoped_to_a_replays_as_request_and_refuses_bs_as_unknown(
    both: AuditStore,
) -> None:
    original = load_original(both, "req-1", A)
    assert original.tenant_id == A and no_b(original.lineage.records)
    messages = []
    for request_id in ("req-3", "req-9"):  # B's, and one nobody has
        with pytest.raises(ReplayNotPossibleError) as refused:
            load_original(both, request_id, A)
        messages.append(str(refused.value).replace(request_id, "ID"))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("by", ["tenant", "model", "version", "prompt", "arm", "day"])
def test_costs_scoped_to_a_are_as_sums_of_a_alone(
    both: AuditStore, a_only: AuditStore, by: Any
) -> None:
    assert both.costs(by, A) == a_only.costs(by)
    assert both.costs(by, B) != both.costs(by, A)  # the tenants' spend differs


def test_cost_totals_and_days_scoped_to_a_count_only_as_generations(both: AuditStore) -> None:
    assert both.costs("tenant", A) == [
        {"tenant": A, "generations": 4, "input_tokens": 600, "output_tokens": 120,
         "cost_usd": pytest.approx(0.02)}
    ]  # fmt: skip
    assert [(row["tenant"], row["input_tokens"]) for row in both.costs_by_tenant_day(A)] == [
        (A, 600)
    ]


def test_recent_and_latency_scoped_to_a_equal_a_alone(both: AuditStore, a_only: AuditStore) -> None:
    recent = both.recent(50, A)
    assert recent == a_only.recent(50)
    assert [(r["request_id"], r["tenant"]) for r in recent] == [("req-2", A), ("req-1", A)]
    assert [r["input_tokens"] for r in recent] == [300, 300] and no_b(recent)
    assert both.latency(tenant=A) == a_only.latency()
    assert both.latency("embed", A) == a_only.latency("embed")
    assert both.latency("embed", A)[0]["max_ms"] == pytest.approx(10.0)  # B's took 90 ms


def test_unscoped_recent_keeps_two_tenants_requests_of_the_same_id_apart(
    both: AuditStore,
) -> None:
    shown = {(r["request_id"], r["tenant"]): r["input_tokens"] for r in both.recent(50)}
    assert shown[("req-1", A)] == 300 and shown[("req-1", B)] == 5000


@pytest.mark.parametrize("table", ["lineage", "answers"])
@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_scoped_to_a_writes_only_as_rows(
    both: AuditStore, a_only: AuditStore, tmp_path: Path, fmt: Any, table: Any
) -> None:
    target, alone = tmp_path / f"a.{fmt}", tmp_path / f"alone.{fmt}"
    written = both.export(target, fmt, table, A)
    assert written == a_only.export(alone, fmt, table) == a_only.count(table)
    read = "read_json_auto" if fmt == "jsonl" else "read_parquet"
    rows = duckdb.sql(f"SELECT * FROM {read}('{target}')")
    as_dicts = [dict(zip(rows.columns, row, strict=True)) for row in rows.fetchall()]
    assert len(as_dicts) == written and {r["tenant_id"] for r in as_dicts} == {A}
    assert no_b(as_dicts)
    if fmt == "jsonl":
        assert target.read_text() == alone.read_text()


def test_a_tenant_that_looks_like_sql_matches_nothing(both: AuditStore) -> None:
    sneaky = "acme' OR '1'='1"
    assert both.lineage("req-1", sneaky) == [] and both.costs("tenant", sneaky) == []
    assert both.recent(50, sneaky) == [] and both.latency(tenant=sneaky) == []


# --- the commands -------------------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_tenants(audit_db_path(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def a_only_dir(tmp_path: Path) -> Path:
    write_tenants(audit_db_path(tmp_path / "a-only"), (A,))
    return tmp_path / "a-only"


def audit(data_dir: Path, *args: str, pin: str = "") -> Any:
    env = {"RAGSTREAM_DATA_DIR": str(data_dir), "RAGSTREAM_AUDIT_TENANT": pin}
    return CliRunner().invoke(audit_app, list(args), env=env)


def _text(output: str) -> str:
    """A command's output with rich's box drawing and line wrapping undone."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


COMMANDS = [
    ["show", "req-1"], ["show", "req-1", "--json"], ["show", "r-1", "--json"],
    ["costs", "--json"], ["costs", "--by", "model", "--json"], ["costs", "--by", "day"],
    ["latency", "--json"], ["latency"],
]  # fmt: skip


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_command_with_tenant_a_or_pinned_to_a_shows_as_a_store_without_b_would(
    data_dir: Path, a_only_dir: Path, args: list[str]
) -> None:
    alone = audit(a_only_dir, *args)
    assert alone.exit_code == 0, alone.output
    scoped = audit(data_dir, *args, "--tenant", A)
    assert (scoped.exit_code, scoped.output) == (0, alone.output)
    assert B_MARK not in scoped.output.lower()
    assert audit(data_dir, *args).stdout != alone.stdout  # B is there, unscoped
    pinned = audit(data_dir, *args, pin=A)
    assert (pinned.exit_code, pinned.output) == (0, alone.output)
    assert audit(data_dir, *args, "--tenant", A, pin=A).output == alone.output


def test_costs_with_tenant_a_are_as_numbers(data_dir: Path) -> None:
    rows = json.loads(audit(data_dir, "costs", "--by", "model", "--json", pin=A).stdout)
    assert {r["model"]: (r["input_tokens"], r["cost_usd"]) for r in rows} == {
        "extractive": (0, 0.0),
        "smollm": (600, pytest.approx(0.02)),
    }


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_pinned_to_a_writes_only_as_rows(data_dir: Path, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"out.{fmt}"
    result = audit(data_dir, "export", "--out", str(target), "--format", fmt, pin=A)
    assert result.exit_code == 0 and "wrote 14 lineage rows" in result.output
    tenants = duckdb.sql(f"SELECT tenant_id, details FROM '{target}'").fetchall()
    assert len(tenants) == 14 and {t for t, _ in tenants} == {A}
    assert all(B_MARK not in str(details).lower() for _, details in tenants)


@pytest.mark.parametrize("as_json", [[], ["--json"]], ids=["tree", "json"])
@pytest.mark.parametrize("scope", ["flag", "pin"])
def test_show_of_bs_request_under_a_says_what_an_unknown_id_says(
    data_dir: Path, as_json: list[str], scope: str
) -> None:
    def show(request_id: str) -> Any:
        if scope == "flag":
            return audit(data_dir, "show", request_id, *as_json, "--tenant", A)
        return audit(data_dir, "show", request_id, *as_json, pin=A)

    assert audit(data_dir, "show", "req-3", "--tenant", B).exit_code == 0
    of_b, unknown = show("req-3"), show("req-9")
    assert of_b.exit_code == unknown.exit_code == 1
    assert of_b.output == unknown.output.replace("req-9", "req-3")
    assert B_MARK not in of_b.output.lower()


REFUSABLE = [
    ["show", "req-1"], ["costs"], ["latency"], ["export", "--out", "x.parquet"],
    ["tail", "--seconds", "1"], ["dashboard", "--port", "0"],
]  # fmt: skip


@pytest.mark.parametrize("args", REFUSABLE, ids=lambda a: a[0])
def test_another_tenant_than_the_pinned_one_is_refused(data_dir: Path, args: list[str]) -> None:
    result = audit(data_dir, *args, "--tenant", B, pin=A)
    assert result.exit_code == 2
    assert "Invalid value for --tenant: 'globex': this deployment is pinned to tenant 'acme' by " \
           "RAGSTREAM_AUDIT_TENANT" in _text(result.output)  # fmt: skip
    assert "GLOBEX-" not in result.output


# --- the dashboard ------------------------------------------------------------------------


@pytest.fixture(params=["pin", "flag"])
def dashboard(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    """`ragstream audit dashboard --port 0` scoped to A by RAGSTREAM_AUDIT_TENANT (or by
    --tenant), as its own process; its URL."""
    env = {**os.environ, "RAGSTREAM_DATA_DIR": str(data_dir), "RAGSTREAM_AUDIT_TENANT": ""}
    flags = ["--tenant", A] if request.param == "flag" else []
    if request.param == "pin":
        env["RAGSTREAM_AUDIT_TENANT"] = A
    command = [sys.executable, "-m", "services.cli.main", "audit", "dashboard", "--port", "0"]
    process = subprocess.Popen(
        command + flags, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # printed once the server listens
        found = re.search(r"(http://\S+/) \(read-only, tenant acme only", first)
        assert found, first + (process.stdout.read() if process.poll() is not None else "")
        yield found.group(1)
    finally:
        process.terminate()
        process.wait(timeout=20)


def _undated(page: str) -> str:
    return re.sub(r"generated [\d-]+ [\d:]+ UTC", "generated …", page)


PAGES = [
    "", "?request=req-1", "?request=r-1", "?request=req-2", "?limit=500", "api/recent",
    "api/recent?limit=500", "api/costs", "api/latency", "api/requests/req-1",
    "api/requests/r-1", "api/requests/req-2",
]  # fmt: skip


def test_every_page_and_endpoint_of_a_dashboard_scoped_to_a_holds_nothing_of_b(
    dashboard: str,
) -> None:
    for page in PAGES:
        status, body = _get(dashboard + page)
        assert status == 200, page
        assert B_MARK not in body.lower(), f"B's data on /{page}"
        assert A in body or page == "api/latency", page
    recent = json.loads(_get(dashboard + "api/recent")[1])
    assert [(r["request_id"], r["tenant"]) for r in recent] == [("req-2", A), ("req-1", A)]
    costs = json.loads(_get(dashboard + "api/costs")[1])
    assert [(c["tenant"], c["input_tokens"]) for c in costs] == [(A, 600)]
    latency = {r["stage"]: r for r in json.loads(_get(dashboard + "api/latency")[1])}
    assert (latency["embed"]["count"], latency["embed"]["max_ms"]) == (2, 10.0)  # B's took 90
    report = json.loads(_get(dashboard + "api/requests/req-1")[1])
    assert {r["tenant_id"] for r in report["records"]} == {A} and len(report["records"]) == 7


@pytest.mark.parametrize("request_id", ["req-3", "r-3"])
def test_bs_request_on_a_dashboard_scoped_to_a_answers_like_an_unknown_id(
    dashboard: str, request_id: str
) -> None:
    for prefix in ("api/requests/", "?request="):
        of_b, unknown = _get(dashboard + prefix + request_id), _get(dashboard + prefix + "req-9")
        assert of_b[0] == unknown[0] == 404
        assert _undated(of_b[1]) == _undated(unknown[1]).replace("req-9", request_id)
        assert B_MARK not in of_b[1].lower()
