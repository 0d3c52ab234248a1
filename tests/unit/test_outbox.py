"""The outbox: records sent without a round trip each, all acked before the block ends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from contracts.registry import TOPICS
from contracts.v1 import LineageRecordV1, ProducedBy, QueryV1
from contracts.v1.envelope import utc_now
from services.runtime import lineage
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
