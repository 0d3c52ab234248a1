"""Pure core of ingest: Kafka headers that contradict the event they travel with are lies."""

from __future__ import annotations

from collections.abc import Mapping

from contracts.registry import TopicSpec
from contracts.v1 import Envelope
from services.runtime.publishing import event_headers

#: Headers that restate the event (CloudEvents binary mode); others are free-form.
CHECKED_HEADERS = ("content-type", "ce_type", "ce_id", "ce_tenant", "ce_correlationid")


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def _says_json(content_type: str) -> bool:
    """JSON is also plain text (FastStream labels a published `str` so)."""
    media = _media_type(content_type)
    return media in ("application/json", "text/plain") or media.endswith("+json")


def header_contradiction(
    headers: Mapping[str, str], spec: TopicSpec, event: Envelope
) -> str | None:
    """A reason when a header that restates the event says something else than the event.

    The payload is the contract: a record whose headers claim another tenant, type or id
    is forged or broken, and a consumer routing by headers would be misled by it. Absent
    or empty headers are fine (plain Kafka producers send none, FastStream an empty
    content-type for bytes).

    >>> header_contradiction({"ce_tenant": "victim"}, TOPICS.queries, query)  # doctest: +SKIP
    "header ce_tenant says 'victim' but the event says 'acme'; ..."
    """
    truth = event_headers(spec, event, "ingest")
    for name in CHECKED_HEADERS:
        claim = headers.get(name)
        if not claim or (claim == truth[name]) or (name == "content-type" and _says_json(claim)):
            continue
        return (
            f"header {name} says {claim[:128]!r} but the event says {truth[name]!r}; "
            "a record whose headers contradict its value is not accepted: fix the producer"
        )
    return None
