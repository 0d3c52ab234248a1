"""`ragstream dlq list / replay`: inspect dead letters and re-publish chosen ones."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from pydantic import ValidationError

from contracts.registry import TOPICS
from contracts.v1 import DeadLetterV1
from services.runtime.topic_reader import read_topic


async def dead_letters(
    bootstrap: str, stage: str | None = None, kind: str | None = None, tenant: str | None = None
) -> list[DeadLetterV1]:
    """Every dead letter now on the DLQ topic that matches the filters, oldest first."""
    letters = []
    for record in await read_topic(bootstrap, TOPICS.dlq.name):
        try:
            letter = DeadLetterV1.model_validate_json(record.value)
        except ValidationError:
            continue
        if (stage and letter.stage != stage) or (kind and letter.error_kind != kind):
            continue
        if tenant and letter.tenant_id != tenant:
            continue
        letters.append(letter)
    return sorted(letters, key=lambda letter: letter.produced_at)


async def replay(bootstrap: str, letters: list[DeadLetterV1]) -> int:
    """Re-publish each letter's original bytes, key and headers to its source topic."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**20 * 4)
    await producer.start()
    try:
        for letter in letters:
            headers = [(h.name, h.value) for h in letter.original_headers]
            headers.append(("ragstream-replayed-from", letter.event_id.encode()))
            await producer.send_and_wait(
                letter.source_topic,
                letter.original_value,
                key=letter.source_key.encode() if letter.source_key is not None else None,
                headers=headers,
            )
    finally:
        await producer.stop()
    return len(letters)
