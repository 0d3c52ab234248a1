"""Chunk events and vector events: what chunk emits and what embed publishes for route."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field

from contracts.v1.envelope import ContractModel, DocId, Envelope
from contracts.v1.queries import QueryOptionsV1

ChunkId = Annotated[
    str,
    Field(
        min_length=36,
        max_length=36,
        description="Deterministic chunk id: a UUID from SHA-256 of tenant, doc id, version, "
        "position and content hash.",
        examples=["3f1c9a4e-6a52-5d1e-9c7b-1e2f3a4b5c6d"],
    ),
]


class ChunkContentV1(ContractModel):
    """What a chunk is: its text and where it sits in its document."""

    chunk_id: ChunkId
    doc_id: DocId
    doc_version: int = Field(ge=1)
    position: int = Field(ge=0, description="0-based index of the chunk in its document.")
    text: str = Field(min_length=1)
    heading_path: list[str] = Field(
        default_factory=list, examples=[["Handbook", "Leave", "Vacation"]]
    )
    token_count: int = Field(ge=1, description="Tokens of `text` in the embedder's tokenizer.")
    content_hash: str = Field(min_length=64, max_length=64, description="SHA-256 of `text`.")
    title: str = Field(default="", max_length=1000)
    source_uri: str = Field(default="", max_length=2048)


class ChunkV1(Envelope, ChunkContentV1):
    """One chunk of a document version, on `ragstream.chunks.v1`."""

    event_type: Literal["chunk"] = "chunk"


class ChunkSetV1(Envelope):
    """The complete set of live chunks of a document after a new version or a delete.

    Published after the version's chunks; downstream removes every other chunk of the
    document (all of them when `deleted`).
    """

    event_type: Literal["chunk.set"] = "chunk.set"
    doc_id: DocId
    doc_version: int = Field(ge=1)
    chunk_ids: list[ChunkId] = Field(default_factory=list)
    deleted: bool = False


ChunkEventV1 = Annotated[ChunkV1 | ChunkSetV1, Field(discriminator="event_type")]


class VectorV1(ContractModel):
    """A dense vector, compactly encoded: float32 little-endian, then base64 (4/3 bytes per
    byte, ~2 KB for 384 dims instead of ~8 KB as a JSON list)."""

    encoding: Literal["f32le-base64"] = "f32le-base64"
    dim: int = Field(ge=1, le=65536, examples=[384])
    data: str = Field(description="base64 of dim little-endian float32 values.")

    @classmethod
    def encode(cls, values: Sequence[float]) -> VectorV1:
        raw = struct.pack(f"<{len(values)}f", *values)
        return cls(dim=len(values), data=base64.b64encode(raw).decode("ascii"))

    def decode(self) -> list[float]:
        raw = base64.b64decode(self.data, validate=True)
        if len(raw) != 4 * self.dim:
            raise ValueError(f"vector holds {len(raw)} bytes, expected {4 * self.dim}")
        return list(struct.unpack(f"<{self.dim}f", raw))


class ChunkVectorV1(Envelope):
    """A chunk and its embedding, on `ragstream.chunk-vectors.v1`."""

    event_type: Literal["chunk.vector"] = "chunk.vector"
    chunk: ChunkContentV1
    vector: VectorV1
    embedding_model: str = Field(max_length=128, examples=["all-MiniLM-L6-v2"])


ChunkVectorEventV1 = Annotated[ChunkVectorV1 | ChunkSetV1, Field(discriminator="event_type")]


class QueryVectorV1(Envelope):
    """A question and its embedding, on `ragstream.query-vectors.v1`."""

    event_type: Literal["query.vector"] = "query.vector"
    request_id: str = Field(min_length=1, max_length=128)
    question: str = Field(min_length=1)
    question_hash: str = Field(min_length=64, max_length=64)
    options: QueryOptionsV1 = Field(default_factory=QueryOptionsV1)
    vector: VectorV1
    embedding_model: str = Field(max_length=128, examples=["all-MiniLM-L6-v2"])
    asked_at: datetime | None = Field(
        default=None, description="When upstream published the question (for answer latency)."
    )
