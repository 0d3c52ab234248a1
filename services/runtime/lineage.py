"""Lineage records: what a stage did with an event, published to the audit topic."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import JsonValue, ValidationError
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from contracts.registry import TOPICS
from contracts.v1 import DeadLetterV1, Envelope, LineageRecordV1
from contracts.v1.envelope import utc_now
from services.runtime.metrics import event_published
from services.runtime.publishing import derived_event_id, event_bytes, event_headers, produced_by

logger = logging.getLogger("ragstream.lineage")


def lineage_record(
    stage: str,
    event: Envelope,
    outcome: str,
    started_at: datetime,
    outputs: Sequence[Envelope] = (),
    details: Mapping[str, JsonValue] | None = None,
) -> LineageRecordV1:
    return LineageRecordV1(
        # The same input handled again (after a crash) gives the same record: stored once.
        event_id=derived_event_id(event, stage, f"lineage/{outcome}"),
        tenant_id=event.tenant_id,
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        produced_by=produced_by(stage),
        stage=stage,
        input_event_id=event.event_id,
        output_event_ids=[out.event_id for out in outputs],
        outcome=outcome,
        queued_at=event.produced_at,
        started_at=started_at,
        finished_at=utc_now(),
        details=dict(details or {}),
    )


#: Tries for one lineage record before it is given up (logged and counted), so that a broker
#: hiccup costs a moment, and a broker that is gone cannot stall the pipeline on its audit.
LINEAGE_ATTEMPTS = 4
LINEAGE_LOST: dict[str, int] = {}


def lineage_options(record: LineageRecordV1) -> dict[str, Any]:
    """How a lineage record (`event_bytes`) is published with the broker: on the audit topic,
    keyed per the registry, with its headers."""
    return {
        "topic": TOPICS.audit.name,
        "key": TOPICS.audit.key_bytes(record),
        "headers": event_headers(TOPICS.audit, record, record.stage),
    }


async def publish_lineage(broker: Any, record: LineageRecordV1) -> None:
    """Publish a lineage record, retried with backoff; a failure after the last try is logged
    and counted (`LINEAGE_LOST`), never raised into the main path."""
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(LINEAGE_ATTEMPTS),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                await broker.publish(event_bytes(record), **lineage_options(record))
        event_published(record.stage, TOPICS.audit)
    except Exception:
        LINEAGE_LOST[record.stage] = LINEAGE_LOST.get(record.stage, 0) + 1
        logger.exception(
            "lineage of %s for %s lost after %d tries",
            record.stage,
            record.input_event_id,
            LINEAGE_ATTEMPTS,
        )


#: The tenant of a dead letter whose original could not be read far enough to name one.
UNKNOWN_TENANT = "unknown"


def dead_letter_lineage(letter: DeadLetterV1) -> LineageRecordV1:
    """The lineage of a dead-lettered record: which stage gave up on it, why, and where the
    letter is, under the original's correlation id when it could be read."""
    now = utc_now()
    fields: dict[str, Any] = {
        "produced_by": produced_by(letter.stage),
        "stage": letter.stage,
        "output_event_ids": [letter.event_id],
        "outcome": "dead_lettered",
        "started_at": now,
        "finished_at": now,
        "details": {
            "error_kind": letter.error_kind,
            "reason": letter.reason[:1000],
            "source": f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}",
            "attempts": letter.attempts,
        },
    }
    try:  # the tenant and correlation as read from the original, if they are valid ones
        return LineageRecordV1(
            tenant_id=letter.tenant_id or UNKNOWN_TENANT,
            correlation_id=letter.correlation_id or letter.event_id,
            **fields,
        )
    except ValidationError:
        return LineageRecordV1(tenant_id=UNKNOWN_TENANT, correlation_id=letter.event_id, **fields)
