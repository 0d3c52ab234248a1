"""The outbox: records sent without a round trip each, all acked before the block ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from contracts.registry import TOPICS
from contracts.v1 import DeadLetterV1, LineageRecordV1, ProducedBy, QueryV1
from contracts.v1.envelope import utc_now
from services.runtime import lineage
from services.runtime.dead_letters import DEAD_LETTER_COUNTS, dead_letter_for
from services.runtime.outbox import Outbox

ACK_DELAY_S = 0.05


class AckingBroker:
    """Hands back a future for each send, as aiokafka's producer does with `no_confirm`, and
    acks (or fails) it a moment later; a send without `no_confirm` is acked at once."""

    def __init__(
        self, fail_topics: frozenset[str] = frozenset(), fail_first_sends: int = 0
    ) -> None:
        self.fail_topics = fail_topics
        self.fail_first_sends = fail_first_sends
        self.sent: list[tuple[str, bool]] = []  # (topic, no_confirm) in the order sent
        self.acked: list[str] = []

    async def publish(self, value: bytes, **kwargs: Any) -> Any:
        topic = kwargs.get("topic", "publisher")
        no_confirm = kwargs.get("no_confirm", False)
        self.sent.append((topic, no_confirm))
        failing = topic in self.fail_topics and self.fail_first_sends > 0
        if not no_confirm:
            self.acked.append(topic)
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def settle() -> None:
            if failing:
                self.fail_first_sends -= 1
                future.set_exception(ConnectionError("not acked"))
            else:
                self.acked.append(topic)
                future.set_result(None)

        asyncio.get_running_loop().call_later(ACK_DELAY_S, settle)
        return future


def question(n: int) -> QueryV1:
    return QueryV1(
        tenant_id="acme", correlation_id=f"c-{n}", produced_by=ProducedBy(service="t", version="1"),
        request_id=f"r-{n}", question=f"question {n}?",
    )  # fmt: skip


def record(n: int) -> LineageRecordV1:
    now = utc_now()
    return LineageRecordV1(
        tenant_id="acme", correlation_id=f"c-{n}", produced_by=ProducedBy(service="t", version="1"),
        stage="ingest", outcome="ok", started_at=now, finished_at=now,
    )  # fmt: skip


async def test_every_send_is_acked_before_the_block_ends_and_none_waits_for_the_last() -> None:
    broker = AckingBroker()
    async with Outbox(broker, "ingest") as outbox:
        for n in range(3):
            await outbox.event(broker, TOPICS.queries_accepted, question(n))
            await outbox.lineage(record(n))
        assert broker.acked == []  # six sends, no round trip waited for yet
    assert broker.sent == [("publisher", True), (TOPICS.audit.name, True)] * 3
    assert len(broker.acked) == 6


async def test_an_event_the_broker_does_not_ack_fails_the_block() -> None:
    """The input is then consumed again; the derived ids make its effects count once."""
    broker = AckingBroker(frozenset({"publisher"}), fail_first_sends=1)
    with pytest.raises(ConnectionError):
        async with Outbox(broker, "ingest") as outbox:
            await outbox.event(broker, TOPICS.queries_accepted, question(1))
            await outbox.lineage(record(1))
    assert broker.acked == [TOPICS.audit.name]


async def test_a_lineage_record_the_broker_does_not_ack_is_sent_again_not_raised() -> None:
    lost = lineage.LINEAGE_LOST.get("ingest", 0)
    broker = AckingBroker(frozenset({TOPICS.audit.name}), fail_first_sends=1)
    async with Outbox(broker, "ingest") as outbox:
        await outbox.event(broker, TOPICS.queries_accepted, question(1))
        await outbox.lineage(record(1))
    # sent, not acked, then sent again and waited for (publish_lineage's retries)
    assert broker.sent[-1] == (TOPICS.audit.name, False)
    assert broker.acked == ["publisher", TOPICS.audit.name]
    assert lineage.LINEAGE_LOST.get("ingest", 0) == lost


async def test_a_failing_block_still_lets_what_it_sent_settle() -> None:
    broker = AckingBroker()
    with pytest.raises(RuntimeError, match="handler broke"):
        async with Outbox(broker, "ingest") as outbox:
            await outbox.event(broker, TOPICS.queries_accepted, question(1))
            raise RuntimeError("handler broke")
    assert broker.acked == ["publisher"]  # waited for, not left to warn unretrieved


def letter(n: int, kind: Any = "rejected") -> DeadLetterV1:
    value = question(n).model_dump_json().encode()
    record = ConsumerRecord(TOPICS.queries.name, 0, n, 0, 0, None, value, None, 0, 1, [])
    return dead_letter_for(record, "ingest", kind, f"reason {n}")  # type: ignore[arg-type]


async def test_a_dead_letter_and_its_lineage_are_acked_with_the_rest_and_counted_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected event's letter waits for no round trip of its own; a rate-limited one is
    counted and not logged (ingest summarises a flood)."""
    counted = (
        DEAD_LETTER_COUNTS[("ingest", "rejected")],
        DEAD_LETTER_COUNTS[("ingest", "rate_limited")],
    )
    broker = AckingBroker()
    with caplog.at_level(logging.INFO, logger="ragstream.dlq"):
        async with Outbox(broker, "ingest") as outbox:
            await outbox.event(broker, TOPICS.answers, question(1))
            await outbox.dead_letter(letter(1))
            await outbox.dead_letter(letter(2, "rate_limited"))
            assert broker.acked == []
    dlq, audit = TOPICS.dlq.name, TOPICS.audit.name
    assert broker.sent == [
        ("publisher", True),
        (dlq, True),
        (audit, True),
        (dlq, True),
        (audit, True),
    ]
    assert len(broker.acked) == 5
    assert DEAD_LETTER_COUNTS[("ingest", "rejected")] == counted[0] + 1
    assert DEAD_LETTER_COUNTS[("ingest", "rate_limited")] == counted[1] + 1
    [logged] = [r.getMessage() for r in caplog.records]
    assert "(rejected): reason 1" in logged


async def test_a_dead_letter_the_broker_does_not_ack_is_sent_again_before_the_block_ends() -> None:
    counted = DEAD_LETTER_COUNTS[("ingest", "rejected")]
    broker = AckingBroker(frozenset({TOPICS.dlq.name}), fail_first_sends=1)
    async with Outbox(broker, "ingest") as outbox:
        await outbox.dead_letter(letter(1))
    assert broker.sent[-1] == (TOPICS.dlq.name, False)  # sent again and waited for
    assert broker.acked.count(TOPICS.dlq.name) == 1
    assert DEAD_LETTER_COUNTS[("ingest", "rejected")] == counted + 1
