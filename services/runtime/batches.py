"""Batch consumption: validate each record of a batch alone, dead-letter the bad ones."""

from __future__ import annotations

from typing import Any

from aiokafka import ConsumerRecord
from faststream.message import StreamMessage
from pydantic import ValidationError

from contracts.registry import TopicSpec
from services.runtime.dead_letters import classify, dead_letter_for, publish_dead_letter


class BatchValidation:
    """The valid events of a batch, in order, and the records to dead-letter."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.invalid: list[tuple[ConsumerRecord[Any, Any], BaseException]] = []

    async def dead_letter_invalid(self, broker: Any, stage: str) -> None:
        for record, error in self.invalid:
            kind, reason = classify(record.value, error)
            await publish_dead_letter(broker, dead_letter_for(record, stage, kind, reason))


def validate_batch(message: StreamMessage[Any], spec: TopicSpec) -> BatchValidation:
    """Decode each record of a batch message with `spec`'s contract."""
    records = (
        message.raw_message if isinstance(message.raw_message, tuple) else (message.raw_message,)
    )
    result = BatchValidation()
    for record in records:
        try:
            result.events.append(spec.adapter.validate_json(record.value or b""))
        except (ValidationError, ValueError, RecursionError) as exc:
            result.invalid.append((record, exc))
    return result
