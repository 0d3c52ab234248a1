"""Causal order of lineage records: each after the record whose output it consumed."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import UTC, datetime

from contracts.v1 import LineageRecordV1


def utc(moment: datetime) -> datetime:
    """A naive moment (as DuckDB's TIMESTAMP holds it) is UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def causal_order(records: Sequence[LineageRecordV1]) -> list[LineageRecordV1]:
    """Records so that each comes after the record whose output it consumed; among records
    ready at the same time, the earlier `started_at` first (then event id)."""
    by_id = {r.event_id: r for r in records}  # a record stored twice counts once
    producer_of: dict[str, str] = {}
    for record in by_id.values():
        for output in record.output_event_ids:
            producer_of.setdefault(output, record.event_id)
    children: dict[str, list[str]] = {event_id: [] for event_id in by_id}
    caused: set[str] = set()
    for record in by_id.values():
        parent = producer_of.get(record.input_event_id or "")
        if parent is not None and parent != record.event_id:
            children[parent].append(record.event_id)
            caused.add(record.event_id)

    def key(event_id: str) -> tuple[datetime, str]:
        return (utc(by_id[event_id].started_at), event_id)

    ready = [key(event_id) for event_id in by_id if event_id not in caused]
    heapq.heapify(ready)
    ordered: list[LineageRecordV1] = []
    while ready:
        _, event_id = heapq.heappop(ready)
        ordered.append(by_id[event_id])
        for child in children[event_id]:
            heapq.heappush(ready, key(child))
    seen = {r.event_id for r in ordered}  # only a cycle (never produced by the stages) is left
    ordered += sorted(
        (r for r in by_id.values() if r.event_id not in seen), key=lambda r: key(r.event_id)
    )
    return ordered
