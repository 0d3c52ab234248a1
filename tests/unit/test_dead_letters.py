"""Dead-letter classification: each kind of bad record gets a readable reason."""

import asyncio
import base64
import json
from collections import Counter
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    UnknownError,
)
from faststream.kafka import KafkaBroker, TestKafkaBroker
from pydantic import ValidationError

from contracts.registry import TOPICS
from services.cli.ask_cmd import query_event
from services.runtime.batches import BatchValidation, validate_batch, validate_records
from services.runtime.dead_letters import DeadLetterMiddleware, classify
from services.runtime.loop_context import KafkaMessage
from services.runtime.publishing import event_bytes, strict_json_decoder


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


def _flaky_broker(failures: list[BaseException], broker_wait_s: float) -> tuple[Any, list[Any]]:
    """A broker whose one handler raises each of `failures` in turn, then succeeds."""
    broker = KafkaBroker(
        middlewares=[
            DeadLetterMiddleware.for_stage(
                "chunk", attempts=2, retry_wait_s=0.01, broker_wait_s=broker_wait_s
            )
        ]
    )
    calls: list[Any] = []
    dead: list[Any] = []

    @broker.subscriber("in")
    async def handler(body: dict[str, Any]) -> None:
        calls.append(body)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]

    @broker.subscriber(TOPICS.dlq.name)
    async def dlq_sink(letter: dict[str, Any]) -> None:
        dead.append(letter)

    return broker, [calls, dead]


@pytest.mark.asyncio
async def test_broker_trouble_is_waited_out_past_the_attempts_and_never_dead_lettered() -> None:
    # 2 attempts for an ordinary error, but the broker refusing publishes 4 times in a row
    # (unreachable, restarting, Tansu's UnknownError) is retried until it takes them
    refusals = [KafkaConnectionError(), UnknownError(), NotLeaderForPartitionError()] * 2
    broker, (calls, dead) = _flaky_broker(refusals, broker_wait_s=30)
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish({"n": 1}, "in")
    assert len(calls) == 7 and dead == []


@pytest.mark.asyncio
async def test_broker_trouble_past_its_bound_is_consumed_again_not_dead_lettered() -> None:
    broker, (calls, dead) = _flaky_broker([UnknownError()] * 1000, broker_wait_s=0.3)
    async with TestKafkaBroker(broker) as test_broker:
        with pytest.raises(UnknownError):  # propagates: FastStream nacks, the record is re-read
            await test_broker.publish({"n": 1}, "in")
    assert len(calls) > 2 and dead == []


@pytest.mark.asyncio
async def test_an_ordinary_error_and_a_record_too_large_are_dead_lettered_after_the_attempts() -> (
    None
):
    for error in (ZeroDivisionError("boom"), MessageSizeTooLargeError()):
        broker, (calls, dead) = _flaky_broker([error] * 10, broker_wait_s=30)
        async with TestKafkaBroker(broker) as test_broker:
            await test_broker.publish({"n": 1}, "in")
        assert len(calls) == 2
        assert [d["error_kind"] for d in dead] == ["handler_error"]
        assert type(error).__name__ in dead[0]["reason"]


@pytest.mark.asyncio
@pytest.mark.parametrize(("concurrently", "attempts"), [(False, 3), (True, 3), (False, 2)])
async def test_a_failing_event_of_a_batch_is_dead_lettered_alone_and_its_neighbours_once(
    concurrently: bool, attempts: int
) -> None:
    """Retrying or dead-lettering the whole batch would repeat the neighbours' effects (a
    second generation, a second answer) and dead-letter events that were handled. The failing
    event is tried as often as the stage's `handler_attempts` says."""
    broker = KafkaBroker(
        middlewares=[DeadLetterMiddleware.for_stage("generate", attempts=3, retry_wait_s=0.01)],
        decoder=strict_json_decoder,
    )
    events = [query_event(f"How many desks are on floor {n}?", "acme") for n in range(3)]
    failing = events[1].event_id
    handled: Counter[str] = Counter()
    dead: list[Any] = []

    @broker.subscriber(TOPICS.queries.name, batch=True)
    async def handler(values: list[bytes], message: KafkaMessage) -> None:
        async def handle(event: Any) -> None:
            handled[event.event_id] += 1
            if event.event_id == failing:
                raise ZeroDivisionError("boom")

        batch = validate_batch(message, TOPICS.queries)
        await batch.handle_each(
            broker,
            "generate",
            handle,
            concurrently=concurrently,
            attempts=attempts,
            retry_wait_s=0.01,
        )

    @broker.subscriber(TOPICS.dlq.name)
    async def dlq_sink(letter: dict[str, Any]) -> None:
        dead.append(letter)

    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            *(event_bytes(e) for e in events), topic=TOPICS.queries.name
        )
    assert handled == {events[0].event_id: 1, failing: attempts, events[2].event_id: 1}
    assert [(d["stage"], d["error_kind"], d["attempts"]) for d in dead] == [
        ("generate", "handler_error", attempts)
    ]
    assert "ZeroDivisionError: boom" in dead[0]["reason"]
    assert json.loads(base64.b64decode(dead[0]["original_value"]))["event_id"] == failing


def test_a_batch_record_with_a_lone_surrogate_is_dead_lettered_naming_its_field() -> None:
    """pydantic's JSON parser refuses a lone surrogate escape as invalid JSON; the reason
    names the field, as a single record's does."""
    event = query_event("How many desks are on floor 1?", "acme")
    value = event_bytes(event).replace(event.correlation_id.encode(), b"c\\ud800")
    record = ConsumerRecord(TOPICS.queries.name, 0, 0, 0, 0, None, value, None, 0, 1, [])
    batch = validate_records([record], TOPICS.queries)  # type: ignore[list-item]
    [(_, error)] = batch.invalid
    kind, reason = classify(value, error)
    assert kind == "schema_violation" and "correlation_id" in reason, reason


def test_events_of_a_batch_that_share_an_id_each_keep_their_own_record() -> None:
    """An upstream that reuses an event id for two different records (a bug, a template):
    each event's dead letter must carry its own original bytes, not its namesake's."""
    first = query_event("How many desks are on floor 1?", "acme")
    second = first.model_copy(update={"question": "x" * 900})
    records = [
        ConsumerRecord(TOPICS.queries.name, 0, n, 0, 0, None, event_bytes(e), None, 0, 1, [])
        for n, e in enumerate([first, second])
    ]
    batch = validate_records(records, TOPICS.queries)  # type: ignore[arg-type]
    assert [e.event_id for e in batch.events] == [first.event_id] * 2
    assert [batch.record_of(e).offset for e in batch.events] == [0, 1]


@pytest.mark.asyncio
@pytest.mark.parametrize("concurrently", [False, True])
async def test_broker_trouble_in_one_event_fails_the_whole_batch_to_be_consumed_again(
    concurrently: bool,
) -> None:
    """Not the event's fault: nothing is dead-lettered, the batch is read again (in order,
    the events after it are not tried against a broker that refuses publishes)."""
    batch = BatchValidation(TOPICS.queries)
    batch.events = [query_event(f"Which floor is room {n} on?", "acme") for n in range(3)]
    handled: list[str] = []

    async def handle(event: Any) -> None:
        handled.append(event.event_id)
        if event.event_id == batch.events[0].event_id:
            raise KafkaConnectionError()

    with pytest.raises(KafkaConnectionError):
        await batch.handle_each(None, "route", handle, concurrently=concurrently)
    expected = [e.event_id for e in batch.events] if concurrently else [batch.events[0].event_id]
    assert handled == expected


@pytest.mark.asyncio
async def test_events_handled_taking_turns_let_other_tasks_run_between_them() -> None:
    """A run of events whose handling never waits (a flood's refusals: sent unawaited, acked
    once for the run) must not hold the loop for the whole run: with `taking_turns` (ingest's
    partition workers), another partition's worker, or the consumer fetching its next
    records, gets a turn after each event."""
    batch = BatchValidation(TOPICS.queries)
    batch.events = [query_event(f"Which floor is room {n} on?", "acme") for n in range(3)]
    order: list[str] = []

    async def handle(event: Any) -> None:  # never suspends
        order.append("event")

    async def other_partition() -> None:
        order.append("other")

    other = asyncio.get_running_loop().create_task(other_partition())
    await batch.handle_each(None, "ingest", handle, taking_turns=True)
    await other
    assert order.index("other") < len(batch.events), order
