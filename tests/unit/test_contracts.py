"""Contracts: the committed snapshot matches the models; breaking changes are named."""

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ConfigDict, Field, ValidationError, create_model
from typer.testing import CliRunner

from contracts.registry import TOPICS, TopicSpec
from contracts.schema import SNAPSHOT_DIR, check_compatibility, export_snapshot
from contracts.v1 import DocumentDeleteV1, DocumentUpsertV1, ProducedBy, VectorV1
from services.cli.main import app

runner = CliRunner()


def test_committed_snapshot_matches_the_models(tmp_path: Path) -> None:
    export_snapshot(tmp_path)
    committed = sorted(p.name for p in SNAPSHOT_DIR.glob("*.json"))
    assert committed == sorted(p.name for p in tmp_path.glob("*.json"))
    for name in committed:
        assert (tmp_path / name).read_text() == (SNAPSHOT_DIR / name).read_text(), name
    assert check_compatibility().ok


def test_every_topic_has_a_versioned_name_and_a_schema() -> None:
    names = [spec.name for spec in TOPICS]
    assert len(names) == len(set(names)) == 13
    assert all(n.startswith("ragstream.") and n.endswith(".v1") for n in names)


def _documents_topic_with_upsert(**changes: object) -> list[TopicSpec]:
    """All topics, the documents topic with a changed DocumentUpsertV1 (None removes a field)."""
    fields = {
        name: (info.annotation, info)
        for name, info in DocumentUpsertV1.model_fields.items()
        if name not in changes
    }
    fields.update({k: v for k, v in changes.items() if v is not None})  # type: ignore[misc]
    model = create_model(
        "DocumentUpsertV1", __config__=ConfigDict(extra="forbid", frozen=True), **fields
    )  # type: ignore[call-overload]
    union = Annotated[model | DocumentDeleteV1, Field(discriminator="event_type")]
    changed = replace(TOPICS.documents, payload=union)
    return [changed if spec.name == changed.name else spec for spec in TOPICS]


def test_removed_field_is_breaking_and_named() -> None:
    report = check_compatibility(SNAPSHOT_DIR, _documents_topic_with_upsert(title=None))
    assert not report.ok
    assert any("field removed" in line and ".title" in line for line in report.breaking)


def test_changed_type_and_new_required_field_are_breaking(tmp_path: Path) -> None:
    broken = _documents_topic_with_upsert(content=(int, ...), priority=(int, ...))
    report = check_compatibility(SNAPSHOT_DIR, broken)
    assert any("type changed" in line and ".content" in line for line in report.breaking)
    assert any("new required field" in line and ".priority" in line for line in report.breaking)


def test_optional_field_added_is_compatible() -> None:
    extended = _documents_topic_with_upsert(language=(str | None, None))
    report = check_compatibility(SNAPSHOT_DIR, extended)
    assert report.ok, report.breaking
    assert any("optional field added" in line and ".language" in line for line in report.compatible)


def test_cli_check_fails_naming_the_field_against_a_changed_snapshot(tmp_path: Path) -> None:
    snapshot = tmp_path / "v1"
    shutil.copytree(SNAPSHOT_DIR, snapshot)
    path = snapshot / "ragstream.chunks.v1.json"
    schema = json.loads(path.read_text())
    chunk = schema["$defs"]["ChunkV1"]
    chunk["properties"]["legacy_score"] = {"type": "number"}
    path.write_text(json.dumps(schema))
    result = runner.invoke(app, ["contracts", "check", "--snapshot", str(snapshot), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["breaking"] == ["field removed: ragstream.chunks.v1:ChunkV1.legacy_score"]

    ok = runner.invoke(app, ["contracts", "check", "--json"])
    assert ok.exit_code == 0, ok.stdout


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        DocumentUpsertV1.model_validate(
            {
                "tenant_id": "acme",
                "correlation_id": "c",
                "produced_by": {"service": "t", "version": "1"},
                "doc_id": "d",
                "content_type": "text/plain",
                "content": "x",
                "colour": "blue",
            }
        )


def test_unknown_schema_version_is_rejected() -> None:
    with pytest.raises(ValidationError, match="schema_version"):
        DocumentUpsertV1(
            schema_version="2.0",
            tenant_id="acme",
            correlation_id="c",
            produced_by=ProducedBy(service="t", version="1"),
            doc_id="d",
            content_type="text/plain",
            content="x",
        )


@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=512)
)
def test_vector_encoding_round_trips(values: list[float]) -> None:
    vector = VectorV1.encode(values)
    assert vector.decode() == values
    assert VectorV1.model_validate_json(vector.model_dump_json()).decode() == values


@given(
    tenant=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    doc_id=st.text(
        st.characters(min_codepoint=32, exclude_characters="\x7f", exclude_categories=["Cs"]),
        min_size=1,
        max_size=40,
    ),
    content=st.text(max_size=200),
)
def test_document_events_round_trip_through_json(tenant: str, doc_id: str, content: str) -> None:
    event = DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id="c-1",
        produced_by=ProducedBy(service="test", version="1"),
        doc_id=doc_id,
        content_type="text/plain",
        content=content,
    )
    decoded = TOPICS.documents.adapter.validate_json(event.model_dump_json())
    assert decoded == event
