"""Contracts v1: frozen once released; a breaking change is v2 beside it."""

from contracts.v1.answers import (
    AnswerV1,
    CitationV1,
    ContextChunkV1,
    GenerationRequestV1,
    GenerationV1,
    RefusalV1,
)
from contracts.v1.chunks import (
    ChunkContentV1,
    ChunkEventV1,
    ChunkSetV1,
    ChunkV1,
    ChunkVectorEventV1,
    ChunkVectorV1,
    QueryVectorV1,
    VectorV1,
)
from contracts.v1.documents import (
    AcceptedDocumentEventV1,
    AcceptedDocumentV1,
    DocumentDeleteV1,
    DocumentEventV1,
    DocumentRemovedV1,
    DocumentUpsertV1,
)
from contracts.v1.envelope import Envelope, ProducedBy, new_event_id
from contracts.v1.operations import AlertV1, DeadLetterV1, KafkaHeaderV1, LineageRecordV1
from contracts.v1.queries import AcceptedQueryV1, QueryOptionsV1, QueryV1

__all__ = [
    "AcceptedDocumentEventV1",
    "AcceptedDocumentV1",
    "AcceptedQueryV1",
    "AlertV1",
    "AnswerV1",
    "ChunkContentV1",
    "ChunkEventV1",
    "ChunkSetV1",
    "ChunkV1",
    "ChunkVectorEventV1",
    "ChunkVectorV1",
    "CitationV1",
    "ContextChunkV1",
    "DeadLetterV1",
    "DocumentDeleteV1",
    "DocumentEventV1",
    "DocumentRemovedV1",
    "DocumentUpsertV1",
    "Envelope",
    "GenerationRequestV1",
    "GenerationV1",
    "KafkaHeaderV1",
    "LineageRecordV1",
    "ProducedBy",
    "QueryOptionsV1",
    "QueryV1",
    "QueryVectorV1",
    "RefusalV1",
    "VectorV1",
    "new_event_id",
]
