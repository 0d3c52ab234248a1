"""`ragstream replay` on the real pipeline: a second request with the original's tier and prompt
version, its lineage in the audit store, and a diff that says what changed."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from services.audit.store import audit_db_path, open_for_reading
from services.cli.replay_cmd import replay_command, wait_for_lineage
from tests.integration.conftest import StageProcesses, tenant_name
from tests.integration.test_audit import QUERY_PATH, audited  # noqa: F401 - the fixture
from tests.integration.test_query_path import EXAMPLES, ask, ingest

pytestmark = pytest.mark.integration
QUESTION = "How many days of paid vacation does a full-time employee receive?"
QUIET = Console(quiet=True)


async def asked_and_audited(pipeline: StageProcesses, doc: Path, tier: str) -> tuple[str, str]:
    """A new tenant with `doc` indexed asks QUESTION; its tenant and request id once the
    request's lineage is complete in the audit store."""
    tenant = tenant_name("replay")
    await ingest(pipeline, tenant, doc)
    answer = await ask(pipeline, tenant, QUESTION, tier=tier)
    path = audit_db_path(pipeline.data_dir)
    lineage = await asyncio.to_thread(
        wait_for_lineage, path, answer.request_id, time.monotonic() + 60
    )
    assert lineage is not None, f"{answer.request_id}'s lineage not in the audit store in 60 s"
    return tenant, answer.request_id


async def replay(
    pipeline: StageProcesses, request_id: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """`ragstream replay REQUEST_ID --json`, parsed."""
    capsys.readouterr()
    code = await asyncio.to_thread(
        replay_command, request_id, 240, True, pipeline.bootstrap, pipeline.data_dir, QUIET, QUIET
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    report: dict[str, Any] = json.loads(printed)
    assert report["request_id"] == request_id != report["replay_request_id"]
    return report


def stages_in_store(pipeline: StageProcesses, request_id: str) -> list[str]:
    with open_for_reading(audit_db_path(pipeline.data_dir)) as store:
        return [r.stage for r in store.lineage(request_id)]


async def test_replaying_an_answered_question_is_an_exact_cache_hit_and_the_diff_says_so(
    audited: StageProcesses,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = tmp_path / "leave.md"
    doc.write_text((EXAMPLES / "corpus" / "handbook" / "leave.md").read_text())
    _, original = await asked_and_audited(audited, doc, tier="extractive")

    report = await replay(audited, original, capsys)

    assert report["options"] == {"tier": "extractive", "prompt_version": "v1"}
    assert report["before"]["cache"] == "miss" and report["after"]["cache"] == "exact"
    differences = {d["field"]: (d["before"], d["after"]) for d in report["differences"]}
    assert differences["cache"] == ("miss", "exact")
    assert differences["retrieved"][1] is None  # answered from the cache: nothing retrieved
    assert "answer" not in differences and "citations" not in differences
    assert report["after"]["stages"] == ["ingest:ok", "embed:ok", "route:cache_hit"]
    assert stages_in_store(audited, report["replay_request_id"]) == ["ingest", "embed", "route"]


async def test_after_the_document_changed_a_replay_retrieves_again_and_shows_what_moved(
    audited: StageProcesses,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = tmp_path / "leave.md"
    text = (EXAMPLES / "corpus" / "handbook" / "leave.md").read_text()
    doc.write_text(text)
    tenant, original = await asked_and_audited(audited, doc, tier="small")
    changed = text.replace("**25 days of paid vacation**", "**30 days of paid vacation**")
    assert changed != text
    doc.write_text(changed)
    await ingest(audited, tenant, doc)  # a new version: new chunks, the tenant's cache dropped

    report = await replay(audited, original, capsys)

    assert report["tenant_id"] == tenant and report["options"]["tier"] == "small"
    assert report["options"]["prompt_version"] == "v1"
    assert report["after"]["cache"] == "miss"
    fields = [d["field"] for d in report["differences"]]
    assert "retrieved" in fields, report["differences"]  # a new version: new chunk ids
    stored = stages_in_store(audited, report["replay_request_id"])
    assert [s for s in stored if s in QUERY_PATH][:5] == QUERY_PATH, stored
    assert stored[-1] == "validate"
