"""Document events: upstream upserts and deletes, and the validated documents ingest accepts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from contracts.v1.envelope import DocId, Envelope

UpstreamContentType = Literal["text/plain", "text/markdown", "text/html"]


class DocumentUpsertV1(Envelope):
    """A document to add or replace, as upstream publishes it on `ragstream.documents.v1`."""

    event_type: Literal["document.upsert"] = "document.upsert"
    doc_id: DocId
    title: str = Field(default="", max_length=1000, examples=["Employee handbook"])
    source_uri: str = Field(default="", max_length=2048, examples=["file:///docs/handbook.md"])
    content_type: UpstreamContentType = Field(
        description="Media type of `content`.", examples=["text/markdown"]
    )
    content: str = Field(description="The document's text (UTF-8).", examples=["# Intro\n..."])
    metadata: dict[str, str] = Field(default_factory=dict, examples=[{"team": "hr"}])
    reindex: bool = Field(
        default=False,
        description=(
            "Publish a new version downstream even when the content is unchanged: re-indexes a"
            " document lost downstream (after a broker restart, or a vector store restored from"
            " an old backup)."
        ),
        examples=[True],
    )


class DocumentDeleteV1(Envelope):
    """A request to remove a document and everything derived from it."""

    event_type: Literal["document.delete"] = "document.delete"
    doc_id: DocId


DocumentEventV1 = Annotated[DocumentUpsertV1 | DocumentDeleteV1, Field(discriminator="event_type")]


class AcceptedDocumentV1(Envelope):
    """A validated, normalised document version (HTML already turned into Markdown)."""

    event_type: Literal["document.accepted"] = "document.accepted"
    doc_id: DocId
    doc_version: int = Field(ge=1, description="Increases by one per content change.")
    content_hash: str = Field(
        min_length=64, max_length=64, description="SHA-256 (hex) of the normalised text."
    )
    title: str = Field(default="", max_length=1000)
    source_uri: str = Field(default="", max_length=2048)
    content_type: Literal["text/plain", "text/markdown"]
    text: str = Field(min_length=1, description="Normalised text (NFC, tidy whitespace).")
    metadata: dict[str, str] = Field(default_factory=dict)


class DocumentRemovedV1(Envelope):
    """A document deleted upstream: downstream removes every chunk of it."""

    event_type: Literal["document.removed"] = "document.removed"
    doc_id: DocId
    doc_version: int = Field(ge=1, description="The tombstone's version (last version + 1).")


AcceptedDocumentEventV1 = Annotated[
    AcceptedDocumentV1 | DocumentRemovedV1, Field(discriminator="event_type")
]
