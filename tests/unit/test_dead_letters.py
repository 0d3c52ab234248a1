"""Dead-letter classification: each kind of bad record gets a readable reason."""

import json

import pytest
from pydantic import ValidationError

from contracts.registry import TOPICS
from services.runtime.dead_letters import classify


def _validation_error(value: bytes) -> ValidationError:
    try:
        TOPICS.documents.adapter.validate_json(value)
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a validation error")


@pytest.mark.parametrize(
    ("value", "kind", "fragment"),
    [
        (b"\xff\xfe not utf8", "not_utf8", "byte 0xff at 0"),
        (b"{not json", "invalid_json", "value is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", ""),
        (
            json.dumps({"schema_version": "9.1", "tenant_id": "a"}).encode(),
            "unknown_schema_version",
            "'9.1'",
        ),
        (
            json.dumps({"event_type": "document.upsert", "tenant_id": "a"}).encode(),
            "schema_violation",
            "doc_id",
        ),
    ],
)
def test_bad_records_are_classified_with_a_reason(value: bytes, kind: str, fragment: str) -> None:
    try:
        error: BaseException = _validation_error(value)
    except (ValueError, RecursionError) as exc:
        error = exc
    got_kind, reason = classify(value, error)
    assert got_kind == kind
    assert fragment in reason


def test_a_handler_error_names_its_type() -> None:
    kind, reason = classify(b"{}", ZeroDivisionError("division by zero"))
    assert (kind, reason) == ("handler_error", "ZeroDivisionError: division by zero")
