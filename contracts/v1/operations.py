"""Operational events: lineage records, dead letters and alerts."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, Base64Bytes, Field, JsonValue

from contracts.v1.envelope import (
    SCHEMA_VERSION,
    SCHEMA_VERSION_PATTERN,
    ContractModel,
    Envelope,
    EventId,
    ProducedBy,
    new_event_id,
    utc_now,
)


class LineageRecordV1(Envelope):
    """What one stage did with one event: the unit of the audit trail."""

    event_type: Literal["lineage"] = "lineage"
    stage: str = Field(max_length=32, examples=["chunk"])
    input_event_id: str | None = Field(default=None, max_length=128)
    output_event_ids: list[str] = Field(default_factory=list)
    outcome: str = Field(
        max_length=32,
        description="ok, duplicate, rejected, dead_lettered, cache_hit, retried, fallback, "
        "refused …",
        examples=["ok"],
    )
    queued_at: AwareDatetime | None = Field(
        default=None,
        description="When the input event was produced: queued_at to started_at is the time "
        "it waited on its topic.",
    )
    started_at: AwareDatetime
    finished_at: AwareDatetime
    details: dict[str, JsonValue] = Field(default_factory=dict)


DeadLetterKind = Literal[
    "not_utf8",
    "invalid_json",
    "schema_violation",
    "unknown_schema_version",
    "rejected",
    "rate_limited",
    "handler_error",
]


class KafkaHeaderV1(ContractModel):
    name: str
    value: Base64Bytes = Field(description="The header's bytes, base64.")


class DeadLetterV1(ContractModel):
    """An event a stage could not handle, with everything needed to inspect or replay it."""

    event_type: Literal["dead_letter"] = "dead_letter"
    event_id: EventId = Field(default_factory=new_event_id)
    schema_version: str = Field(default=SCHEMA_VERSION, pattern=SCHEMA_VERSION_PATTERN)
    produced_by: ProducedBy
    produced_at: AwareDatetime = Field(default_factory=utc_now)
    stage: str = Field(max_length=32, examples=["ingest"])
    error_kind: DeadLetterKind
    reason: str = Field(
        examples=["document d-42 of tenant acme is 18 MB, over the 1 MB limit"],
    )
    source_topic: str
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    source_key: str | None = None
    source_timestamp_ms: int | None = None
    original_value: Base64Bytes = Field(description="The original message bytes, base64.")
    original_value_truncated: bool = Field(
        default=False,
        description="True when the original was too large for the DLQ and only its first "
        "64 KiB are kept (`original_size` says how large it was).",
    )
    original_size: int | None = Field(default=None, ge=0, description="Bytes of the original.")
    original_headers: list[KafkaHeaderV1] = Field(default_factory=list)
    tenant_id: str | None = Field(default=None, description="When it could be read.")
    correlation_id: str | None = Field(default=None, description="When it could be read.")
    attempts: int = Field(default=1, ge=1)


class AlertV1(Envelope):
    """A threshold crossed: budget share, error rate or latency."""

    event_type: Literal["alert"] = "alert"
    kind: str = Field(max_length=64, examples=["budget_share"])
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str
    value: float
    threshold: float
    window_start: datetime | None = None
    subject: str | None = Field(
        default=None,
        max_length=128,
        description="What crossed the threshold: the tenant of a budget alert, the tier of a "
        "model alert.",
        examples=["small"],
    )
    alert_key: str | None = Field(
        default=None,
        max_length=256,
        description="The same in every copy of one crossing's alert (a publisher restarted or "
        "running twice): consumers deduplicate on it.",
        examples=["budget_share:acme:2026-11-23"],
    )
