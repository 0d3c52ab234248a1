"""The topic registry: every topic's name, payload model, key and partitions, in one place.

No topic name is written anywhere else; stages, the CLI, tests and the k8s renderer read
them from here.

>>> from contracts.registry import TOPICS
>>> TOPICS.chunks.name
'ragstream.chunks.v1'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from pydantic import TypeAdapter

from contracts.v1 import (
    AcceptedDocumentEventV1,
    AcceptedQueryV1,
    AlertV1,
    AnswerV1,
    ChunkEventV1,
    ChunkVectorEventV1,
    ChunkVectorV1,
    DeadLetterV1,
    DocumentEventV1,
    GenerationRequestV1,
    GenerationV1,
    LineageRecordV1,
    QueryV1,
    QueryVectorV1,
)

TOPIC_PREFIX = "ragstream"


def _doc_id(event: Any) -> str:
    return event.chunk.doc_id if isinstance(event, ChunkVectorV1) else event.doc_id


def _tenant(event: Any) -> str:
    return event.tenant_id


def _correlation(event: Any) -> str:
    return event.correlation_id


def _source_key(event: Any) -> str:
    return event.source_key or ""


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name, the model its values follow, how its key is chosen."""

    short_name: str
    major: int
    payload: Any
    key_description: str
    key_of: Callable[[Any], str] = field(repr=False, compare=False)
    partitions: int = 8
    description: str = ""

    @property
    def name(self) -> str:
        return f"{TOPIC_PREFIX}.{self.short_name}.v{self.major}"

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.payload)

    def key_bytes(self, event: Any) -> bytes:
        return self.key_of(event).encode("utf-8")


@dataclass(frozen=True)
class Topics:
    documents: TopicSpec
    queries: TopicSpec
    documents_accepted: TopicSpec
    queries_accepted: TopicSpec
    chunks: TopicSpec
    chunk_vectors: TopicSpec
    query_vectors: TopicSpec
    generation_requests: TopicSpec
    generations: TopicSpec
    answers: TopicSpec
    audit: TopicSpec
    dlq: TopicSpec
    alerts: TopicSpec

    def __iter__(self) -> Iterator[TopicSpec]:
        return (getattr(self, f.name) for f in fields(self))

    def by_name(self, name: str) -> TopicSpec:
        for spec in self:
            if spec.name == name:
                return spec
        known = ", ".join(spec.name for spec in self)
        raise KeyError(f"unknown topic {name!r}; known topics: {known}")


TOPICS = Topics(
    documents=TopicSpec(
        "documents",
        1,
        DocumentEventV1,
        "doc id",
        _doc_id,
        description="document upserts and deletes (upstream → ingest)",
    ),
    queries=TopicSpec(
        "queries",
        1,
        QueryV1,
        "tenant",
        _tenant,
        description="questions (upstream → ingest)",
    ),
    documents_accepted=TopicSpec(
        "documents-accepted",
        1,
        AcceptedDocumentEventV1,
        "doc id",
        _doc_id,
        description="validated, normalised documents and deletes (ingest → chunk)",
    ),
    queries_accepted=TopicSpec(
        "queries-accepted",
        1,
        AcceptedQueryV1,
        "tenant",
        _tenant,
        description="validated, normalised questions (ingest → embed)",
    ),
    chunks=TopicSpec(
        "chunks",
        1,
        ChunkEventV1,
        "doc id",
        _doc_id,
        description="chunks and each version's chunk set (chunk → embed)",
    ),
    chunk_vectors=TopicSpec(
        "chunk-vectors",
        1,
        ChunkVectorEventV1,
        "doc id",
        _doc_id,
        description="chunks with vectors, and chunk sets (embed → route)",
    ),
    query_vectors=TopicSpec(
        "query-vectors",
        1,
        QueryVectorV1,
        "tenant",
        _tenant,
        description="questions with vectors (embed → route)",
    ),
    generation_requests=TopicSpec(
        "generation-requests",
        1,
        GenerationRequestV1,
        "tenant",
        _tenant,
        description="context, tier and budget per question (route → generate)",
    ),
    generations=TopicSpec(
        "generations",
        1,
        GenerationV1,
        "tenant",
        _tenant,
        description="raw structured output and usage (generate → validate)",
    ),
    answers=TopicSpec(
        "answers",
        1,
        AnswerV1,
        "tenant",
        _tenant,
        description="validated answers or refusals (validate → upstream)",
    ),
    audit=TopicSpec(
        "audit",
        1,
        LineageRecordV1,
        "correlation id",
        _correlation,
        description="lineage records (every stage → audit, analysts)",
    ),
    dlq=TopicSpec(
        "dlq",
        1,
        DeadLetterV1,
        "source key",
        _source_key,
        partitions=4,
        description="dead letters: original bytes, stage, reason (every stage → operators)",
    ),
    alerts=TopicSpec(
        "alerts",
        1,
        AlertV1,
        "tenant",
        _tenant,
        partitions=4,
        description="budget, error-rate and latency alerts (audit → operators)",
    ),
)
