"""Publishing what one input gives without a round trip to the broker for each record."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

from contracts.registry import TOPICS, TopicSpec
from contracts.v1 import DeadLetterV1, Envelope, LineageRecordV1
from services.runtime.dead_letters import dead_letter_options, dead_lettered, send_dead_letter
from services.runtime.lineage import dead_letter_lineage, lineage_options, publish_lineage
from services.runtime.metrics import event_published
from services.runtime.publishing import Publisher, event_bytes, event_options, send_bare


class Outbox:
    """Events and lineage records sent without waiting for each one's ack; leaving the block
    waits for all of them, so a stage's offset is still committed only once the broker holds
    everything it derived.

    `publish_event` waits for the broker after every record: a document's chunk, chunk set
    and lineage were three round trips, each a produce request holding one record (and a
    one-record batch that the embedded broker keeps scanning: bench/README.md, "The embedded
    broker's growth"). Records sent here wait in the producer instead, and those for one
    partition leave together, in the order they were sent.

    >>> async with Outbox(broker, STAGE) as outbox:  # doctest: +SKIP
    ...     for chunk in chunks:
    ...         await outbox.event(chunks_publisher, TOPICS.chunks, chunk)
    ...     await outbox.lineage(lineage_record(STAGE, event, "ok", started, chunks))

    An event that the broker refuses fails the block (the input is consumed again, and the
    events' derived ids make the second delivery count once); a lineage record that it
    refuses is sent again alone with `publish_lineage`'s retries, and never fails the block;
    a dead letter that it refuses is sent again alone with `send_dead_letter`'s retries, and
    fails the block only if those fail too.
    """

    def __init__(self, broker: Any, stage: str) -> None:
        self.broker = broker
        self.stage = stage
        self._events: list[tuple[Any, TopicSpec]] = []
        self._lineage: list[tuple[Any, LineageRecordV1]] = []
        self._letters: list[tuple[Any, DeadLetterV1]] = []

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None:
            await self.confirmed()
        else:  # the block failed: let what was sent settle, and keep its error
            sent = [s for s, _ in [*self._events, *self._lineage, *self._letters]]
            await asyncio.gather(*map(_acked, sent), return_exceptions=True)

    async def event(
        self, publisher: Publisher, spec: TopicSpec, event: Envelope, *, bare: bool = False
    ) -> None:
        """Send `event` on its topic, keyed per the registry, as `publish_event` does; `bare`,
        past FastStream's publish middlewares (`send_bare`)."""
        options = event_options(spec, event, self.stage)
        if bare:
            sent = await send_bare(self.broker, event_bytes(event), topic=spec.name, **options)
        else:
            sent = await publisher.publish(event_bytes(event), **options, no_confirm=True)
        self._events.append((sent, spec))

    async def lineage(self, record: LineageRecordV1, *, bare: bool = False) -> None:
        """Send a lineage record to the audit topic, as `publish_lineage` does; `bare`, past
        FastStream's publish middlewares (`send_bare`)."""
        sent = await _sent(self.broker, event_bytes(record), lineage_options(record), bare)
        self._lineage.append((sent, record))

    async def dead_letter(self, letter: DeadLetterV1, *, bare: bool = False) -> None:
        """Send a dead letter to the DLQ and its lineage record, as `publish_dead_letter`
        does; `bare`, past FastStream's publish middlewares (`send_bare`)."""
        body = letter.model_dump_json().encode("utf-8")
        sent = await _sent(self.broker, body, dead_letter_options(letter), bare)
        self._letters.append((sent, letter))
        await self.lineage(dead_letter_lineage(letter), bare=bare)

    async def confirmed(self) -> None:
        """Wait for the broker's ack of everything sent so far; raise the first event error."""
        events, self._events = self._events, []
        lineage, self._lineage = self._lineage, []
        letters, self._letters = self._letters, []
        outcomes = await asyncio.gather(
            *(_acked(sent) for sent, _ in [*events, *lineage, *letters]), return_exceptions=True
        )
        lineage_at, letters_at = len(events), len(events) + len(lineage)
        event_outcomes = outcomes[:lineage_at]
        lineage_outcomes, letter_outcomes = outcomes[lineage_at:letters_at], outcomes[letters_at:]
        for (_, letter), outcome in zip(letters, letter_outcomes, strict=True):
            if isinstance(outcome, BaseException):  # too large (truncated) or broker trouble
                letter = await send_dead_letter(self.broker, letter)
            dead_lettered(letter)
        for (_, record), outcome in zip(lineage, lineage_outcomes, strict=True):
            if isinstance(outcome, BaseException):
                await publish_lineage(self.broker, record)
            else:
                event_published(record.stage, TOPICS.audit)
        for (_, spec), outcome in zip(events, event_outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome
            event_published(self.stage, spec)


async def _sent(broker: Any, body: bytes, options: dict[str, Any], bare: bool) -> Any:
    """A send with `options` (a topic's), unacked: the producer's future, or the error that
    stopped the send (sent again, with retries, in `confirmed`)."""
    try:
        if bare:
            return await send_bare(broker, body, **options)
        return await broker.publish(body, **options, no_confirm=True)
    except Exception as error:
        return error


async def _acked(sent: Any) -> None:
    """Wait for a send's ack: the producer's future, the error that stopped the send, or
    nothing to wait for (FastStream's test broker hands back none)."""
    if isinstance(sent, BaseException):
        raise sent
    if isinstance(sent, asyncio.Future):
        await sent
