"""Question events: what upstream asks and what ingest accepts."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from contracts.v1.envelope import ContractModel, Envelope


class QueryOptionsV1(ContractModel):
    """Per-question options; each one left unset takes the tenant's default."""

    top_k: int | None = Field(default=None, ge=1, le=50, description="Chunks to retrieve.")
    max_output_tokens: int | None = Field(default=None, ge=1, le=4096)
    tier: str | None = Field(default=None, max_length=64, examples=["small"])
    prompt_version: str | None = Field(default=None, max_length=32, examples=["v1"])


class QueryV1(Envelope):
    """A question as upstream publishes it on `ragstream.queries.v1`."""

    event_type: Literal["query"] = "query"
    request_id: str = Field(min_length=1, max_length=128, examples=["req-42"])
    question: str = Field(examples=["How many vacation days do I get?"])
    options: QueryOptionsV1 = Field(default_factory=QueryOptionsV1)


class AcceptedQueryV1(Envelope):
    """A validated, normalised question."""

    event_type: Literal["query.accepted"] = "query.accepted"
    request_id: str = Field(min_length=1, max_length=128, examples=["req-42"])
    question: str = Field(min_length=1, description="Normalised question (NFC, tidy whitespace).")
    question_hash: str = Field(
        min_length=64, max_length=64, description="SHA-256 of the lower-cased question."
    )
    options: QueryOptionsV1 = Field(default_factory=QueryOptionsV1)
    asked_at: datetime | None = Field(
        default=None, description="When upstream published the question (for answer latency)."
    )
