"""Publishing lineage: retried through a broker hiccup, never raised into the main path."""

from __future__ import annotations

import uuid
from typing import Any

from contracts.v1 import LineageRecordV1, ProducedBy
from contracts.v1.envelope import utc_now
from services.runtime import lineage
from services.runtime.lineage import publish_lineage
from services.runtime.publishing import derived_event_id, derived_from


class FlakyBroker:
    """Fails its first `failures` publishes, then records what it is given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[dict[str, Any]] = []

    async def publish(self, value: bytes, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker went away")
        self.published.append({"value": value, **kwargs})


def record() -> LineageRecordV1:
    now = utc_now()
    return LineageRecordV1(
        tenant_id="acme", correlation_id="c-1", produced_by=ProducedBy(service="t", version="1"),
        stage="route", outcome="ok", started_at=now, finished_at=now,
    )  # fmt: skip


async def test_a_broker_hiccup_is_retried_and_the_record_published_once() -> None:
    broker = FlakyBroker(failures=2)
    await publish_lineage(broker, record())
    assert len(broker.published) == 1
    assert broker.published[0]["topic"] == "ragstream.audit.v1"


async def test_a_broker_that_stays_down_costs_the_record_but_not_the_handler() -> None:
    before = lineage.LINEAGE_LOST.get("route", 0)
    broker = FlakyBroker(failures=100)
    await publish_lineage(broker, record())  # returns instead of raising
    assert broker.published == []
    assert lineage.LINEAGE_LOST["route"] == before + 1


def test_an_input_handled_twice_derives_the_same_event_ids() -> None:
    """At least once, with deterministic ids: a redelivered input republishes the same ids."""
    cause = record()
    again = derived_from(cause, "validate")
    assert again == derived_from(cause, "validate")
    assert again["event_id"] == derived_event_id(cause, "validate")
    ids = {
        derived_event_id(cause, "validate"),
        derived_event_id(cause, "route"),
        derived_event_id(cause, "validate", "budget-alert"),
        derived_event_id(record(), "validate"),  # another input
    }
    assert len(ids) == 4
    derived = uuid.UUID(again["event_id"])
    assert derived.version == 7 and derived.variant == uuid.RFC_4122
    # Time-ordered like its cause: the UUIDv7 millisecond prefix is the cause's.
    assert derived.bytes[:6] == uuid.UUID(cause.event_id).bytes[:6]
    handled = lineage.lineage_record("validate", cause, "ok", utc_now())
    assert handled.event_id == lineage.lineage_record("validate", cause, "ok", utc_now()).event_id
    assert (
        handled.event_id != lineage.lineage_record("validate", cause, "retry", utc_now()).event_id
    )
    odd = cause.model_copy(update={"event_id": "upstream-id-42"})  # not a UUID: still stable
    assert derived_event_id(odd, "ingest") == derived_event_id(odd, "ingest")
