"""Batch consumption: validate each record of a batch alone, dead-letter the bad ones."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from aiokafka import ConsumerRecord
from faststream.exceptions import HandlerException, StopConsume
from faststream.message import StreamMessage
from opentelemetry.context import Context
from opentelemetry.trace import Span
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from contracts.registry import TopicSpec
from services.runtime.dead_letters import (
    broker_trouble,
    classify,
    dead_letter_for,
    handler_retry_wait,
    header_problem,
    publish_dead_letter,
)
from services.runtime.tracing import event_span, shared_span, trace_context_of

T = TypeVar("T")
logger = logging.getLogger("ragstream.dlq")


class _EventsFailed(Exception):
    """Some events of a batch failed this try (`handle_each` tries those again)."""


class BatchValidation:
    """The valid events of a batch, in order, and the records to dead-letter.

    >>> batch = validate_batch(message, TOPICS.query_vectors)  # doctest: +SKIP
    >>> for query in batch.events:
    ...     with batch.span(query, "route"):  # in the trace the query came with
    ...         await route_query(query, route, outbox)
    """

    def __init__(self, spec: TopicSpec | None = None) -> None:
        self.spec = spec
        self.events: list[Any] = []
        self.invalid: list[tuple[ConsumerRecord[Any, Any], BaseException]] = []
        #: The trace context each event's record carried, by the event (`id` of one of
        #: `events`: two records of a batch may hold events with one id, and differ).
        self.trace_contexts: dict[int, Context] = {}
        self._records: dict[int, ConsumerRecord[Any, Any]] = {}

    def record_of(self, event: Any) -> ConsumerRecord[Any, Any]:
        """The record that `event` (one of `events`) came in."""
        return self._records[id(event)]

    def span(self, event: Any, stage: str) -> AbstractContextManager[Span]:
        """Trace `event`'s own work (and what it publishes) in the trace it came with."""
        topic = self.spec.short_name if self.spec else "event"
        parent = self.trace_contexts.get(id(event))
        return event_span(f"{stage} {topic}", stage, event, parent)

    async def traced(self, event: Any, stage: str, work: Awaitable[T]) -> T:
        """Await `work` (an event's handling, gathered with others') in `span(event, stage)`."""
        with self.span(event, stage):
            return await work

    def shared_span(self, stage: str, what: str) -> AbstractContextManager[Span]:
        """Trace work the batch's events share (one model call for all of them)."""
        return shared_span(f"{stage} {what}", stage, list(self.trace_contexts.values()))

    async def handle_each(
        self,
        broker: Any,
        stage: str,
        handle: Callable[[Any], Awaitable[None]],
        *,
        concurrently: bool = False,
        taking_turns: bool = False,
        attempts: int = 3,
        retry_wait_s: float = 0.2,
    ) -> None:
        """`handle` every valid event in its span (`concurrently`: all at once, so a model
        batches them; `taking_turns`: in order, the event loop given a turn after each, for
        events whose handling may never wait, as a flood's refusals do). An event whose
        handling keeps failing is tried `attempts` times (the stage's `handler_attempts`, with
        the DLQ middleware's wait between tries), then dead-lettered alone: its neighbours'
        effects stand and are not repeated, as they would be if the whole batch were retried
        and dead-lettered. Broker trouble still fails the batch, which is then consumed again."""
        pending = list(self.events)
        failed: list[tuple[Any, BaseException]] = []
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=handler_retry_wait(retry_wait_s),
                retry=retry_if_exception_type(_EventsFailed),
                reraise=True,
            ):
                with attempt:
                    failed = await self._try(pending, stage, handle, concurrently, taking_turns)
                    if failed:
                        pending = [event for event, _ in failed]
                        raise _EventsFailed()
        except _EventsFailed:
            for event, error in failed:
                await self._dead_letter_failed(broker, stage, event, error, attempts)

    async def _try(
        self,
        events: list[Any],
        stage: str,
        handle: Callable[[Any], Awaitable[None]],
        concurrently: bool,
        taking_turns: bool,
    ) -> list[tuple[Any, BaseException]]:
        """One try of `events`: those that failed, with their errors."""
        if concurrently:
            gathered = await asyncio.gather(
                *(self.traced(e, stage, handle(e)) for e in events), return_exceptions=True
            )
            outcomes = [_raise_if_batch_wide(outcome) for outcome in gathered]
        else:
            outcomes = []
            for event in events:  # in order; broker trouble stops the batch at once
                outcomes.append(_raise_if_batch_wide(await self._outcome(event, stage, handle)))
                if taking_turns:
                    await asyncio.sleep(0)
        return [(e, o) for e, o in zip(events, outcomes, strict=True) if o is not None]

    async def _outcome(
        self, event: Any, stage: str, handle: Callable[[Any], Awaitable[None]]
    ) -> BaseException | None:
        try:
            await self.traced(event, stage, handle(event))
        except Exception as error:
            return error
        return None

    async def _dead_letter_failed(
        self, broker: Any, stage: str, event: Any, error: BaseException, tries: int
    ) -> None:
        record = self.record_of(event)
        kind, reason = classify(record.value, error, record.headers)
        logger.error(
            "stage %s failed on event %s %d times; dead-lettered", stage, event.event_id, tries,
            exc_info=error,
        )  # fmt: skip
        with self.span(event, stage):
            await publish_dead_letter(broker, dead_letter_for(record, stage, kind, reason, tries))

    async def dead_letter_invalid(self, broker: Any, stage: str) -> None:
        for record, error in self.invalid:
            kind, reason = classify(record.value, error, record.headers)
            await publish_dead_letter(broker, dead_letter_for(record, stage, kind, reason))


def _raise_if_batch_wide(error: BaseException | None) -> BaseException | None:
    """Raise what is not the event's own fault: broker trouble (the batch is consumed again),
    FastStream's own exceptions (as the handler asked), cancellation; return anything else."""
    if error is None:
        return None
    if broker_trouble(error) or isinstance(error, HandlerException | StopConsume):
        raise error
    if not isinstance(error, Exception):
        raise error
    return error


def records_of(message: StreamMessage[Any]) -> Sequence[ConsumerRecord[Any, Any]]:
    """The records behind a batch subscriber's message (a list in TestKafkaBroker), or the
    one record of a single-record subscriber's."""
    raw = message.raw_message
    return raw if isinstance(raw, (tuple, list)) else (raw,)


def validate_batch(message: StreamMessage[Any], spec: TopicSpec) -> BatchValidation:
    """Decode each record of a batch message with `spec`'s contract."""
    batched = isinstance(message.raw_message, (tuple, list))
    return validate_records(records_of(message), spec, traced=batched)


def validate_records(
    records: Sequence[ConsumerRecord[Any, Any]], spec: TopicSpec, traced: bool = True
) -> BatchValidation:
    """Decode each of `records` with `spec`'s contract; `traced`: keep the trace context each
    came with (a single-record subscriber's consumer span is already in its trace)."""
    result = BatchValidation(spec)
    for record in records:
        if problem := header_problem(record.headers or ()):  # see broker.batch_parser
            result.invalid.append((record, ValueError(problem)))
            continue
        try:
            event = spec.adapter.validate_json(record.value or b"")
        except ValidationError as exc:
            result.invalid.append((record, _named_field(spec, record.value, exc)))
            continue
        except (ValueError, RecursionError) as exc:
            result.invalid.append((record, exc))
            continue
        result.events.append(event)
        result._records[id(event)] = record
        if traced and (context := trace_context_of(record.headers)) is not None:
            result.trace_contexts[id(event)] = context
    return result


def _named_field(spec: TopicSpec, value: bytes | None, error: ValidationError) -> ValidationError:
    """`error`, or where pydantic's JSON parser refused what Python's reads (a lone surrogate
    escape, "\\ud800"), the error of validating what Python's reads: it names the field, as a
    single-record subscriber's reason does (FastStream decodes with `json.loads`)."""
    if not any(e["type"] == "json_invalid" for e in error.errors()):
        return error
    try:
        spec.adapter.validate_python(json.loads(value or b""))
    except ValidationError as named:
        return named
    except (ValueError, RecursionError):
        pass
    return error
