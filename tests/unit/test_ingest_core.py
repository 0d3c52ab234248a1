"""ingest's pure core: normalisation, HTML, acceptance rules, versions and rate limits; and
`ragstream ingest --reindex` reaching the events it publishes."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts.v1 import DocumentUpsertV1, ProducedBy, QueryV1
from services.cli import ingest_cmd
from services.cli.ingest_cmd import IngestReport, Outcome, document_event
from services.cli.main import app
from services.ingest.acceptance import PreparedDocument, prepare_document, prepare_question
from services.ingest.normalise import Rejection, html_to_markdown, normalise_text
from services.ingest.rate_limits import RefusalSummary, TenantRateLimits
from services.ingest.versions import DocumentVersions, VersionDecision
from services.runtime import tracing
from services.runtime.settings import IngestSettings

SETTINGS = IngestSettings(max_document_bytes=1_000, max_question_chars=50)


def upsert(content: str, content_type: str = "text/markdown") -> DocumentUpsertV1:
    return DocumentUpsertV1(
        tenant_id="acme",
        correlation_id="c-1",
        produced_by=ProducedBy(service="test", version="1"),
        doc_id="d-42",
        content_type=content_type,  # type: ignore[arg-type]
        content=content,
    )


def test_normalise_text_tidies_whitespace_controls_and_unicode() -> None:
    assert normalise_text("Cafe\u0301 \r\nline  \x00two\n\n\n\nend  ") == "Café\nline  two\n\nend"


def test_html_keeps_headings_lists_and_code_and_drops_scripts() -> None:
    html = (
        "<html><head><title>t</title><script>alert(1)</script></head><body>"
        "<h1>Leave</h1><p>Twenty <b>days</b>.</p><ul><li>one</li><li>two</li></ul>"
        "<h2>Sick</h2><pre>x = 1\n  y</pre></body></html>"
    )
    assert html_to_markdown(html) == (
        "# Leave\n\nTwenty days .\n\n- one\n- two\n\n## Sick\n\n```\nx = 1\n  y\n```"
    )


def test_deeply_nested_html_is_rejected() -> None:
    result = html_to_markdown("<div>" * 500 + "x" + "</div>" * 500)
    assert isinstance(result, Rejection)
    assert "nested deeper than" in result.reason


def test_html_document_becomes_markdown() -> None:
    prepared = prepare_document(upsert("<h1>A</h1><p>b</p>", "text/html"), SETTINGS)
    assert prepared == PreparedDocument("# A\n\nb", "text/markdown", prepared.content_hash)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("   \n\t ", "no text content"),
        ("x" * 1_001, "over the 1000 bytes limit (RAGSTREAM_MAX_DOCUMENT_BYTES)"),
        ("bad \udc80 surrogate", "not valid Unicode"),
    ],
)
def test_bad_documents_are_rejected_with_a_reason(content: str, reason: str) -> None:
    result = prepare_document(upsert(content), SETTINGS)
    assert isinstance(result, Rejection)
    assert reason in result.reason
    assert "d-42" in result.reason and "acme" in result.reason


def test_questions_are_normalised_and_limited() -> None:
    def ask(text: str) -> QueryV1:
        return QueryV1(
            tenant_id="acme",
            correlation_id="r",
            produced_by=ProducedBy(service="t", version="1"),
            request_id="r-1",
            question=text,
        )

    prepared = prepare_question(ask("  How many\n days?  "), SETTINGS)
    assert not isinstance(prepared, Rejection)
    assert prepared.question == "How many days?"
    assert isinstance(prepare_question(ask("   "), SETTINGS), Rejection)
    too_long = prepare_question(ask("why " * 20), SETTINGS)
    assert isinstance(too_long, Rejection) and "RAGSTREAM_MAX_QUESTION_CHARS" in too_long.reason


def test_versions_drop_unchanged_and_number_changes(tmp_path: Path) -> None:
    versions = DocumentVersions(tmp_path / "v.sqlite3")
    first = versions.decide_upsert("acme", "d", "a" * 64)
    assert (first.kind, first.version) == ("new", 1)
    versions.record("acme", "d", "a" * 64, 1)
    assert versions.decide_upsert("acme", "d", "a" * 64).kind == "unchanged"
    assert versions.decide_upsert("other", "d", "a" * 64).kind == "new"
    changed = versions.decide_upsert("acme", "d", "b" * 64)
    assert (changed.kind, changed.version) == ("changed", 2)
    versions.record("acme", "d", "b" * 64, 2)
    deleted = versions.decide_delete("acme", "d")
    assert (deleted.kind, deleted.version) == ("deleted", 3)
    versions.record("acme", "d", None, 3)
    assert versions.decide_delete("acme", "d").kind == "already_deleted"
    again = versions.decide_upsert("acme", "d", "b" * 64)
    assert (again.kind, again.version) == ("changed", 4)
    versions.close()
    reopened = DocumentVersions(tmp_path / "v.sqlite3")
    assert reopened.decide_delete("acme", "d").kind == "already_deleted"


def test_reindex_makes_unchanged_content_a_new_version_and_changes_nothing_else(
    tmp_path: Path,
) -> None:
    versions = DocumentVersions(tmp_path / "v.sqlite3")
    new = versions.decide_upsert("acme", "d", "a" * 64, reindex=True)
    assert (new.kind, new.version) == ("new", 1)
    versions.record("acme", "d", "a" * 64, 1)
    again = versions.decide_upsert("acme", "d", "a" * 64, reindex=True)
    assert (again.kind, again.version) == ("reindex", 2)
    versions.record("acme", "d", "a" * 64, 2)
    assert versions.decide_upsert("acme", "d", "a" * 64) == VersionDecision("unchanged", 2)
    changed = versions.decide_upsert("acme", "d", "b" * 64, reindex=True)
    assert (changed.kind, changed.version) == ("changed", 3)
    versions.record("acme", "d", None, 3)  # deleted: the same content is re-added
    readded = versions.decide_upsert("acme", "d", "a" * 64, reindex=True)
    assert readded == versions.decide_upsert("acme", "d", "a" * 64) == VersionDecision("changed", 4)


def test_ingest_reindex_flag_reaches_every_published_upsert(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    page = tmp_path / "leave.md"
    page.write_text("# Leave\n\nTwenty days.", encoding="utf-8")
    assert document_event(page, "leave.md", "acme", "x", reindex=True).reindex is True
    assert document_event(page, "leave.md", "acme", "x").reindex is False

    calls: list[dict[str, Any]] = []

    async def publishing(*args: Any, reindex: bool = False) -> IngestReport:
        calls.append({"paths": args[1], "reindex": reindex})
        return IngestReport(outcomes={"c": Outcome("leave.md", page)})

    @contextmanager
    def untraced(*_: Any) -> Iterator[None]:  # a CLI's tracer is process-wide: not in tests
        yield None

    monkeypatch.setattr(ingest_cmd, "ingest_paths", publishing)
    monkeypatch.setattr(tracing, "traced_process", untraced)
    env = {"RAGSTREAM_BOOTSTRAP_SERVERS": "localhost:1", "RAGSTREAM_DATA_DIR": str(tmp_path)}
    for flags, reindex in (([], False), (["--reindex"], True)):
        result = CliRunner().invoke(app, ["ingest", str(page), "--tenant", "acme", *flags], env=env)
        assert result.exit_code == 0, result.output
        assert calls.pop() == {"paths": [page], "reindex": reindex}


async def test_rate_limits_are_per_tenant() -> None:
    limits = TenantRateLimits(rate_per_second=0.001, burst=3)
    decisions = [await limits.try_acquire("flood", f"e-{n}") for n in range(5)]
    assert decisions == [True, True, True, False, False]
    assert await limits.try_acquire("quiet", "e-0")


async def test_an_event_handled_again_gets_the_decision_it_got_first() -> None:
    """A run retried after broker trouble, or an upstream's duplicate send: an accepted event
    is not refused the next time (its request would get two answers), a refused one not
    accepted; no second token is taken. Per tenant, and only the newest decisions are kept."""
    limits = TenantRateLimits(rate_per_second=0.001, burst=2, remembered=3)
    assert [await limits.try_acquire("t", e) for e in ("a", "b", "c")] == [True, True, False]
    assert [await limits.try_acquire("t", e) for e in ("a", "b", "c")] == [True, True, False]
    assert await limits.try_acquire("other", "c")  # another tenant's event of the same id
    assert not await limits.try_acquire("t", "a")  # forgotten (3 kept): decided anew, no token


def test_rate_limited_events_are_logged_as_a_summary_an_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flood is one log line each 10 s with each tenant's count, not a line an event."""
    now = [100.0]
    summary = RefusalSummary(rate_per_second=2, burst=20, clock=lambda: now[0])
    first = summary.add("flooder")
    assert first == "over the rate limit (2 events/s, burst 20) since the last summary: flooder 1"
    for n in range(500):
        now[0] += 0.01
        assert summary.add("flooder" if n % 5 else "other") is None
    for n in range(12):
        summary.add(f"forged-{n}")  # counted: the summary names the 10 most refused
    now[0] += 10
    line = summary.add("flooder")
    assert line is not None
    assert line.startswith("over the rate limit (2 events/s, burst 20) since the last summary: ")
    assert "flooder 401, other 100, forged-" in line and line.endswith("; 4 more tenants: 4")
    assert [r.getMessage() for r in caplog.records if r.name == "ragstream.ingest"] == [first, line]
