"""Where spans and log lines go: PII redacted first, then OTLP or a JSON-lines file per process.

Redaction uses the detector validate uses on answers (`services.validate.pii.find_pii`), so what
validate would call personal data never reaches a trace store or a log file either.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status
from opentelemetry.util.types import Attributes

from services.validate.pii import find_pii


def redact_text(text: str) -> str:
    """`text` with each piece of personal data replaced by `[REDACTED:<kind>]`.

    >>> redact_text("mail jane.doe@corp.example now")
    'mail [REDACTED:email] now'
    """
    if len(text) <= _CACHED_LENGTH:  # topic names, stages, tenants: the same strings again
        return _redact_short(text)
    return _redact(text)


_CACHED_LENGTH = 200


@functools.lru_cache(maxsize=4096)
def _redact_short(text: str) -> str:
    return _redact(text)


def _redact(text: str) -> str:
    matches = find_pii(text)
    if not matches:
        return text
    parts: list[str] = []
    at = 0
    for match in matches:  # sorted, not overlapping
        parts += [text[at : match.start], f"[REDACTED:{match.kind}]"]
        at = match.end
    parts.append(text[at:])
    return "".join(parts)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
        redacted = redact_text(text)
        return value if redacted == text else redacted
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, Sequence):
        return tuple(_redact_value(item) for item in value)
    return value


def redact_attributes(attributes: Attributes) -> dict[str, Any]:
    return {key: _redact_value(value) for key, value in (attributes or {}).items()}


def redact_span(span: ReadableSpan) -> ReadableSpan:
    """A copy of `span` whose name, attributes, event attributes (exception messages) and
    status description carry no personal data."""
    status = span.status
    return ReadableSpan(
        name=redact_text(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=redact_attributes(span.attributes),
        events=[Event(e.name, redact_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links,
        kind=span.kind,
        status=Status(status.status_code, redact_text(status.description or "") or None),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class PiiRedactingSpanExporter(SpanExporter):
    """Redacts every span, then hands it to `inner`; runs on the batch processor's thread, off
    the event loop.

    >>> exporter = PiiRedactingSpanExporter(JsonLinesSpanExporter(Path("spans.jsonl")))
    """

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.inner.export([redact_span(span) for span in spans])

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _hex(number: int, width: int) -> str:
    return format(number, f"0{width}x")


def _iso(unix_nanos: int | None) -> str | None:
    if unix_nanos is None:
        return None
    return datetime.fromtimestamp(unix_nanos / 1e9, tz=UTC).isoformat(timespec="microseconds")


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_json_value(item) for item in value]
    return value


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """One span as the JSON object a line of the trace file holds."""
    context, parent = span.context, span.parent
    start, end = span.start_time, span.end_time
    return {
        "trace_id": _hex(context.trace_id, 32) if context else None,
        "span_id": _hex(context.span_id, 16) if context else None,
        "parent_span_id": _hex(parent.span_id, 16) if parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get("service.name"),
        "start_time": _iso(start),
        "end_time": _iso(end),
        "duration_ms": (end - start) / 1e6 if start is not None and end is not None else None,
        "attributes": _json_value(dict(span.attributes or {})),
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "events": [
            {
                "name": e.name,
                "time": _iso(e.timestamp),
                "attributes": _json_value(dict(e.attributes or {})),
            }
            for e in span.events
        ],
        "links": [
            {"trace_id": _hex(link.context.trace_id, 32), "span_id": _hex(link.context.span_id, 16)}
            for link in span.links
        ],
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each span as one JSON object per line to `path` (created with its folder).

    >>> exporter = JsonLinesSpanExporter(Path(".ragstream/traces/embed-4242.jsonl"))
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), ensure_ascii=False) + "\n" for s in spans)
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(lines)
            self._file.flush()  # a reader polling the file sees whole batches
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # every export is flushed already


class PiiRedactingFilter(logging.Filter):
    """Redacts personal data from a log record's message, exception and stack text.

    Install it on handlers (as `install_log_redaction` does): a filter on a logger only sees
    records logged on that very logger, not those propagated from its children.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction() -> PiiRedactingFilter:
    """Put one redacting filter on the root logger and on each of its handlers (idempotent)."""
    root = logging.getLogger()
    existing = [f for f in root.filters if isinstance(f, PiiRedactingFilter)]
    redacting = existing[0] if existing else PiiRedactingFilter()
    for target in (root, *root.handlers):
        if redacting not in target.filters:
            target.addFilter(redacting)
    return redacting
