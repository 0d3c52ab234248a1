"""Dead letters: every event a stage cannot handle goes to the DLQ topic, then is committed.

One middleware does it for every stage. It retries an unexpected handler error a bounded
number of times, then publishes the original bytes, headers, source position, stage and a
readable reason to `ragstream.dlq.v1` before the offset is committed. If even the DLQ
publish fails, the error propagates, FastStream nacks (seeks back) and nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faststream import BaseMiddleware
from faststream.exceptions import HandlerException, StopConsume
from faststream.message import StreamMessage
from opentelemetry import trace
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)
from tenacity.wait import wait_base

from contracts.registry import TOPICS
from contracts.v1 import DeadLetterV1, KafkaHeaderV1
from contracts.v1.envelope import SCHEMA_VERSION_PATTERN
from contracts.v1.operations import DeadLetterKind
from services.runtime.lineage import dead_letter_lineage, publish_lineage
from services.runtime.metrics import dead_letter_published
from services.runtime.publishing import produced_by

logger = logging.getLogger("ragstream.dlq")

#: Dead letters published by this process, per (stage, error kind).
DEAD_LETTER_COUNTS: Counter[tuple[str, str]] = Counter()

TRUNCATED_BYTES = 64 * 1024
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)
_NOT_RETRIED = (ValidationError, UnicodeDecodeError, json.JSONDecodeError, RecursionError)


def broker_trouble(error: BaseException | None) -> bool:
    """The broker refused or could not take a publish (unreachable, restarting, a partition's
    leader moving, Tansu's UnknownError just after a restart): nothing is wrong with the event,
    so it is retried for longer and never dead-lettered. A record too large for the broker is
    the event's own problem."""
    return isinstance(error, KafkaError) and not isinstance(error, _TOO_LARGE)


def header_problem(headers: Iterable[tuple[str, bytes | None]]) -> str | None:
    """A reason when a header's value is absent or not UTF-8 (the consumer cannot parse it)."""
    for name, raw in headers:
        if raw is None:
            return f"header {name!r} has no value; headers must be UTF-8 strings"
        try:
            raw.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            return f"header {name!r} is not UTF-8: byte {raw[exc.start]:#04x} at {exc.start}"
    return None


def classify(
    value: bytes | None,
    error: BaseException,
    headers: Iterable[tuple[str, bytes | None]] | None = None,
) -> tuple[DeadLetterKind, str]:
    """Why a record could not be handled, as (kind, readable reason)."""
    try:
        text = (value or b"").decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        return "not_utf8", f"value is not UTF-8: byte {exc.object[exc.start]:#04x} at {exc.start}"
    try:
        payload = json.loads(text)
    except RecursionError:
        return "invalid_json", "value is JSON nested too deeply to decode"
    except json.JSONDecodeError as exc:
        return "invalid_json", f"value is not JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
    except ValueError as exc:  # valid syntax this decoder refuses: an integer of 5,000 digits
        return "invalid_json", f"value is JSON this stage cannot decode: {exc}"[:500]
    if isinstance(payload, dict):
        version = payload.get("schema_version")
        if version is not None and not (
            isinstance(version, str) and re.match(SCHEMA_VERSION_PATTERN, version)
        ):
            return "unknown_schema_version", (
                f"schema_version {version!r} is not readable by this stage (reads 1.x); "
                "publish it on the topic of its major version"
            )
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
            for e in error.errors(include_url=False)[:5]
        )
        return "schema_violation", f"{error.error_count()} schema violation(s): {problems}"
    if problem := header_problem(headers or ()):
        return "not_utf8", problem
    return "handler_error", f"{type(error).__name__}: {error}"


def _headers(record: ConsumerRecord[Any, Any]) -> list[KafkaHeaderV1]:
    return [
        KafkaHeaderV1(name=k, value=base64.b64encode(v or b"")) for k, v in (record.headers or ())
    ]


def _encodable(text: str) -> str:
    """`text` with lone surrogates (from JSON escapes like "\\ud800") escaped: a dead letter
    that cannot be serialised would stall its partition."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def _readable(payload: Any, field: str) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get(field), str):
        return _encodable(str(payload[field])[:128])
    return None


def dead_letter_options(letter: DeadLetterV1) -> dict[str, Any]:
    """How a dead letter (`DeadLetterV1.model_dump_json`) is published with the broker."""
    return {
        "topic": TOPICS.dlq.name,
        "key": TOPICS.dlq.key_bytes(letter),
        "headers": {"content-type": "application/json", "ce_type": "ragstream.dlq.v1"},
    }


async def _send_dead_letter(broker: Any, letter: DeadLetterV1) -> None:
    await broker.publish(letter.model_dump_json().encode("utf-8"), **dead_letter_options(letter))


def dead_letter_for(
    record: ConsumerRecord[Any, Any],
    stage: str,
    kind: DeadLetterKind,
    reason: str,
    attempts: int = 1,
) -> DeadLetterV1:
    try:
        payload = json.loads(record.value or b"")
    except (ValueError, RecursionError):
        payload = None
    key = record.key.decode("utf-8", errors="replace") if record.key else None
    return DeadLetterV1(
        produced_by=produced_by(stage),
        stage=stage,
        error_kind=kind,
        reason=_encodable(reason),
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        source_key=key,
        source_timestamp_ms=record.timestamp,
        original_value=base64.b64encode(record.value or b""),  # Base64Bytes takes base64
        original_size=len(record.value or b""),
        original_headers=_headers(record),
        tenant_id=_readable(payload, "tenant_id"),
        correlation_id=_readable(payload, "correlation_id"),
        attempts=attempts,
    )


def _truncated(letter: DeadLetterV1) -> DeadLetterV1:
    kept = letter.original_value[:TRUNCATED_BYTES]
    return letter.model_copy(
        update={
            "original_value": kept,
            "original_value_truncated": True,
            "reason": f"{letter.reason} (original of {len(letter.original_value)} bytes too "
            f"large for the DLQ; first {len(kept)} bytes kept)",
        }
    )


async def publish_dead_letter(broker: Any, letter: DeadLetterV1) -> None:
    """Publish a dead letter and wait for the broker's ack (`send_dead_letter`), then count it
    and publish its lineage record."""
    letter = await send_dead_letter(broker, letter)
    dead_lettered(letter)
    await publish_lineage(broker, dead_letter_lineage(letter))


async def send_dead_letter(broker: Any, letter: DeadLetterV1) -> DeadLetterV1:
    """Publish a dead letter and wait for the broker's ack (retried: nothing may be lost);
    the letter as the broker took it.

    A letter too large for the broker keeps only the first 64 KiB of the original, marked
    truncated, so that one huge record cannot stall its partition forever."""
    async for attempt in AsyncRetrying(
        stop=stop_after_attempt(5),
        wait=wait_exponential(min=0.2, max=5),
        retry=retry_if_not_exception_type(_TOO_LARGE),
        reraise=True,
    ):
        with attempt:
            try:
                await _send_dead_letter(broker, letter)
            except _TOO_LARGE:
                letter = _truncated(letter)
                await _send_dead_letter(broker, letter)
    return letter


def dead_lettered(letter: DeadLetterV1) -> None:
    """Count a letter the broker holds, and log it. A letter over a tenant's rate limit is
    logged at debug level only: ingest summarises a flood in one line each interval
    (`RefusalSummary`), not a line an event."""
    DEAD_LETTER_COUNTS[(letter.stage, letter.error_kind)] += 1
    dead_letter_published(letter.stage, letter.source_topic, letter.error_kind)
    logger.log(
        logging.DEBUG if letter.error_kind == "rate_limited" else logging.WARNING,
        "dead-lettered %s[%d]@%d (%s): %s",
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        letter.error_kind,
        letter.reason,
    )


def handler_retry_wait(wait_s: float) -> wait_base:
    """The wait between tries of an event's handling: `wait_s`, doubling, at most 5 s. The
    middleware retrying a record and `BatchValidation.handle_each` retrying an event of a batch
    share it (and `RAGSTREAM_HANDLER_ATTEMPTS`, the number of tries)."""
    return wait_exponential(multiplier=wait_s, min=wait_s, max=5)


class DeadLetterMiddleware(BaseMiddleware):
    """Retry, then dead-letter: no event crashes a consumer or is silently dropped.

    >>> middleware = DeadLetterMiddleware.for_stage("chunk", attempts=3)
    >>> broker = KafkaBroker(middlewares=[middleware])  # doctest: +SKIP
    """

    stage = "unknown"
    attempts = 3
    retry_wait_s = 0.2
    broker_wait_s = 120.0

    @classmethod
    def for_stage(
        cls,
        stage: str,
        attempts: int = 3,
        retry_wait_s: float = 0.2,
        broker_wait_s: float = 120.0,
    ) -> type[DeadLetterMiddleware]:
        return type(
            f"DeadLetterMiddleware_{stage}",
            (cls,),
            {
                "stage": stage,
                "attempts": attempts,
                "retry_wait_s": retry_wait_s,
                "broker_wait_s": broker_wait_s,
            },
        )

    def _gives_up(self, state: RetryCallState) -> bool:
        """An ordinary error after `attempts` tries; broker trouble after `broker_wait_s`."""
        error = state.outcome.exception() if state.outcome else None
        if broker_trouble(error):
            elapsed = state.seconds_since_start or 0.0
            logger.warning(
                "stage %s: the broker refused a publish (%s: %s); retrying for %.0f s more",
                self.stage,
                type(error).__name__,
                error,
                max(self.broker_wait_s - elapsed, 0.0),
            )
            return elapsed >= self.broker_wait_s
        return state.attempt_number >= self.attempts

    async def consume_scope(self, call_next: Any, msg: StreamMessage[Any]) -> Any:
        self._tries = 0
        self._span = trace.get_current_span()  # the consumer's: its dead letter is in its trace
        async for attempt in AsyncRetrying(
            stop=self._gives_up,
            wait=handler_retry_wait(self.retry_wait_s),
            retry=retry_if_not_exception_type(
                (*_NOT_RETRIED, HandlerException, asyncio.CancelledError)
            ),
            reraise=True,
        ):
            with attempt:
                self._tries += 1
                return await call_next(msg)
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: Any = None,
    ) -> bool:
        if exc_val is None or isinstance(
            exc_val, (HandlerException, StopConsume, asyncio.CancelledError, SystemExit)
        ):
            return False
        if broker_trouble(exc_val):  # not the event's fault: consumed again, not dead-lettered
            logger.error(
                "stage %s: the broker refused publishes for %.0f s (%s: %s); the event is "
                "consumed again",
                self.stage,
                self.broker_wait_s,
                type(exc_val).__name__,
                exc_val,
            )
            return False
        records = self.msg if isinstance(self.msg, tuple) else (self.msg,)
        if any(record.topic == TOPICS.dlq.name for record in records):
            logger.error("a consumer of the DLQ itself failed; not dead-lettering a dead letter")
            return False
        broker = self.context.get("broker")
        tries = getattr(self, "_tries", 1) or 1
        span = getattr(self, "_span", trace.INVALID_SPAN)
        for record in records:
            kind, reason = classify(record.value, exc_val, record.headers)
            if kind == "handler_error":
                logger.error("stage %s failed on an event", self.stage, exc_info=exc_val)
            with trace.use_span(span, end_on_exit=False):
                await publish_dead_letter(
                    broker, dead_letter_for(record, self.stage, kind, reason, tries)
                )
        return True
