"""The envelope every ragstream v1 event carries: identity, tenant, lineage and producer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import uuid_utils
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = "1.0"
SCHEMA_VERSION_PATTERN = r"^1\.\d+$"

TenantId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$"),
    Field(description="Tenant the event belongs to (lowercase slug).", examples=["acme"]),
]
DocId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Field(description="Upstream document id, unique per tenant.", examples=["handbook/intro.md"]),
]
EventId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128),
    Field(description="Unique, time-ordered event id (UUIDv7).", examples=["01a207f8-98d4-7740"]),
]


def new_event_id() -> str:
    """A unique, time-ordered id (UUIDv7) for a new event."""
    return str(uuid_utils.uuid7())


def utc_now() -> datetime:
    return datetime.now(UTC)


class ContractModel(BaseModel):
    """Base of every contract model: closed (unknown fields rejected) and immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ProducedBy(ContractModel):
    service: str = Field(
        min_length=1, max_length=64, description="Producing service.", examples=["chunk"]
    )
    version: str = Field(
        min_length=1, max_length=32, description="Producer's version.", examples=["0.1.0"]
    )


class Envelope(ContractModel):
    """Fields every v1 event carries.

    >>> class Ping(Envelope): ...
    >>> Ping(tenant_id="acme", correlation_id="r-1",
    ...      produced_by=ProducedBy(service="cli", version="1")).schema_version
    '1.0'
    """

    event_id: EventId = Field(default_factory=new_event_id)
    schema_version: str = Field(
        default=SCHEMA_VERSION,
        pattern=SCHEMA_VERSION_PATTERN,
        description="Contract version, major.minor; the major matches the topic's v<major>.",
        examples=["1.0"],
    )
    tenant_id: TenantId
    correlation_id: str = Field(
        min_length=1,
        max_length=128,
        description="The document upload or request this event belongs to.",
        examples=["01a207f8-98d4-7740-8f6d-dfe2bbe94708"],
    )
    causation_id: str | None = Field(
        default=None, max_length=128, description="event_id of the event that caused this one."
    )
    produced_by: ProducedBy
    produced_at: AwareDatetime = Field(
        default_factory=utc_now, description="When the producer created the event (UTC)."
    )
