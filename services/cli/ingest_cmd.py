"""`ragstream ingest`: publish files as document events, optionally wait until they are through."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contracts.registry import TOPICS
from contracts.v1 import DocumentUpsertV1, new_event_id
from contracts.v1.documents import UpstreamContentType
from services.runtime.publishing import event_bytes, event_headers, produced_by
from services.runtime.stage import DOCUMENT_PATH_END
from services.runtime.topic_reader import TopicTail
from services.runtime.tracing import inject_trace_context

CONTENT_TYPES: dict[str, UpstreamContentType] = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".html": "text/html",
    ".htm": "text/html",
}
CLI = "ragstream-cli"
_tracer = trace.get_tracer(__name__)
_MD_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


@dataclass
class Outcome:
    doc_id: str
    path: Path
    status: str = "published"
    detail: str = ""


@dataclass
class IngestReport:
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # by correlation id
    skipped: list[tuple[str, str]] = field(default_factory=list)
    elapsed_s: float = 0.0

    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "documents": len(self.outcomes),
            "counts": dict(self.counts()),
            "elapsed_s": round(self.elapsed_s, 3),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "results": [
                {"doc_id": o.doc_id, "path": str(o.path), "status": o.status, "detail": o.detail}
                for o in self.outcomes.values()
            ],
        }


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def collect_files(paths: list[Path]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """(file, doc id) pairs to publish, and (path, reason) pairs skipped."""
    files: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    for root in paths:
        if root.is_dir():
            visible = (p for p in root.rglob("*") if not _hidden(p.relative_to(root)))
            for path in sorted(p for p in visible if p.is_file()):
                if path.suffix.lower() in CONTENT_TYPES:
                    files.append((path, path.relative_to(root).as_posix()))
                else:
                    skipped.append((str(path), f"not one of {', '.join(CONTENT_TYPES)}"))
        elif root.is_file():
            if root.suffix.lower() in CONTENT_TYPES:
                files.append((root, root.name))
            else:
                skipped.append((str(root), f"not one of {', '.join(CONTENT_TYPES)}"))
        else:
            skipped.append((str(root), "no such file or directory"))
    return files, skipped


def document_event(
    path: Path, doc_id: str, tenant: str, content: str, reindex: bool = False
) -> DocumentUpsertV1:
    content_type = CONTENT_TYPES[path.suffix.lower()]
    pattern = _HTML_TITLE if content_type == "text/html" else _MD_TITLE
    match = pattern.search(content) if content_type != "text/plain" else None
    title = (
        " ".join(match.group(1).split()) if match else path.stem.replace("-", " ").replace("_", " ")
    )
    event_id = new_event_id()
    return DocumentUpsertV1(
        event_id=event_id,
        tenant_id=tenant,
        correlation_id=event_id,
        produced_by=produced_by(CLI),
        doc_id=doc_id,
        title=title[:1000],
        source_uri=path.resolve().as_uri(),
        content_type=content_type,
        content=content,
        reindex=reindex,
    )


def _settle(report: IngestReport, record_value: bytes, topic: str) -> Outcome | None:
    """Mark the outcome a lineage or dead-letter record settles, if it settles one."""
    try:
        payload = json.loads(record_value)
    except ValueError:
        return None
    outcome = report.outcomes.get(payload.get("correlation_id") or "")
    if outcome is None or outcome.status != "published":
        return None
    if topic == TOPICS.dlq.name:
        outcome.status, outcome.detail = "rejected", payload.get("reason", "")
        return outcome
    stage, result = payload.get("stage"), payload.get("outcome")
    details = payload.get("details") or {}
    if stage == DOCUMENT_PATH_END and result == "ok":
        outcome.status = "done"
        outcome.detail = f"version {details.get('doc_version')}, {details.get('chunks')} chunks"
    elif stage == "ingest" and result == "duplicate":
        outcome.status, outcome.detail = "unchanged", f"version {details.get('doc_version')}"
    elif stage == "ingest" and result in ("rejected", "rate_limited"):
        outcome.status, outcome.detail = "rejected", details.get("reason", result)
    else:
        return None
    return outcome


async def ingest_paths(
    bootstrap: str,
    paths: list[Path],
    tenant: str,
    wait: bool,
    timeout_s: float,
    console: Console,
    reindex: bool = False,
) -> IngestReport:
    files, skipped = collect_files(paths)
    report = IngestReport(skipped=skipped)
    started = time.monotonic()
    tail = TopicTail(bootstrap, [TOPICS.audit.name, TOPICS.dlq.name]) if wait else None
    if tail is not None:
        await tail.__aenter__()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=2**20 * 4)
    await producer.start()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("publishing", total=len(files))
            sends = []
            for path, doc_id in files:
                try:
                    content = path.read_bytes().decode("utf-8")
                except UnicodeDecodeError as exc:
                    report.skipped.append(
                        (str(path), f"not UTF-8 ({exc.reason} at byte {exc.start})")
                    )
                    progress.advance(task)
                    continue
                event = document_event(path, doc_id, tenant, content, reindex)
                report.outcomes[event.correlation_id] = Outcome(doc_id, path)
                with _tracer.start_as_current_span(  # the document's trace starts here
                    "ragstream ingest",
                    kind=SpanKind.PRODUCER,
                    attributes={"ragstream.doc_id": doc_id, "ragstream.tenant_id": tenant},
                ):
                    headers = inject_trace_context(event_headers(TOPICS.documents, event, CLI))
                    sends.append(
                        await producer.send(
                            TOPICS.documents.name,
                            event_bytes(event),
                            key=TOPICS.documents.key_bytes(event),
                            headers=[(k, v.encode()) for k, v in headers.items()],
                        )
                    )
                progress.advance(task)
            await asyncio.gather(*sends)
            if tail is not None:
                waiting = progress.add_task(
                    f"through {DOCUMENT_PATH_END}", total=len(report.outcomes)
                )
                left = len(report.outcomes)
                if left:
                    async for record in tail.records(timeout_s):
                        if _settle(report, record.value, record.topic):
                            left -= 1
                            progress.advance(waiting)
                            if left == 0:
                                break
                for outcome in report.outcomes.values():
                    if outcome.status == "published":
                        outcome.status, outcome.detail = (
                            "timed_out",
                            f"no result within {timeout_s:g} s",
                        )
    finally:
        await producer.stop()
        if tail is not None:
            await tail.__aexit__(None, None, None)
    report.elapsed_s = time.monotonic() - started
    return report
