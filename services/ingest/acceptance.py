"""Pure core of ingest: is a document or question acceptable, and in which normalised form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from contracts.v1 import DocumentUpsertV1, QueryV1
from services.ingest.normalise import (
    Rejection,
    html_to_markdown,
    normalise_question,
    normalise_text,
    sha256_hex,
    utf8_problem,
)
from services.runtime.settings import IngestSettings


@dataclass(frozen=True)
class PreparedDocument:
    text: str
    content_type: Literal["text/plain", "text/markdown"]
    content_hash: str


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.2f} MB" if size >= 10_000 else f"{size} bytes"


def prepare_document(
    event: DocumentUpsertV1, settings: IngestSettings
) -> PreparedDocument | Rejection:
    """Validate and normalise an upsert; HTML becomes Markdown so its structure survives."""
    where = f"document {event.doc_id!r} of tenant {event.tenant_id}"
    if problem := utf8_problem(event.content):
        return Rejection(f"{where}: {problem}")
    size = len(event.content.encode("utf-8"))
    if size > settings.max_document_bytes:
        return Rejection(
            f"{where} is {_megabytes(size)}, over the {_megabytes(settings.max_document_bytes)} "
            "limit (RAGSTREAM_MAX_DOCUMENT_BYTES); split it or raise the limit"
        )
    content_type: Literal["text/plain", "text/markdown"] = "text/markdown"
    if event.content_type == "text/html":
        converted = html_to_markdown(event.content)
        if isinstance(converted, Rejection):
            return Rejection(f"{where}: {converted.reason}")
        text = converted
    else:
        text = normalise_text(event.content)
        content_type = event.content_type
    if not text:
        return Rejection(f"{where} has no text content after normalisation (empty or whitespace)")
    return PreparedDocument(text=text, content_type=content_type, content_hash=sha256_hex(text))


@dataclass(frozen=True)
class PreparedQuestion:
    question: str
    question_hash: str


def prepare_question(event: QueryV1, settings: IngestSettings) -> PreparedQuestion | Rejection:
    where = f"question {event.request_id!r} of tenant {event.tenant_id}"
    if problem := utf8_problem(event.question):
        return Rejection(f"{where}: {problem}")
    question = normalise_question(event.question)
    if not question:
        return Rejection(f"{where} is empty")
    if len(question) > settings.max_question_chars:
        return Rejection(
            f"{where} has {len(question)} characters, over the {settings.max_question_chars} "
            "limit (RAGSTREAM_MAX_QUESTION_CHARS)"
        )
    return PreparedQuestion(question=question, question_hash=sha256_hex(question.lower()))
