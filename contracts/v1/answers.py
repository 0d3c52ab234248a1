"""Generation requests, raw generations and validated answers: the query path's events."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from contracts.v1.chunks import ChunkId
from contracts.v1.envelope import ContractModel, DocId, Envelope


class ContextChunkV1(ContractModel):
    """A retrieved chunk (or the selected sentences of it) handed to the model."""

    chunk_id: ChunkId
    doc_id: DocId
    title: str = ""
    source_uri: str = ""
    heading_path: list[str] = Field(default_factory=list)
    text: str
    score: float = Field(description="Retrieval similarity (cosine).")


class GenerationRequestV1(Envelope):
    """What route decided for a question: context, tier, prompt and budget."""

    event_type: Literal["generation.request"] = "generation.request"
    request_id: str = Field(min_length=1, max_length=128)
    question: str
    tier: str = Field(max_length=64, examples=["small"])
    prompt_name: str = Field(max_length=64, examples=["grounded_answer"])
    prompt_version: str = Field(max_length=32, examples=["v1"])
    context: list[ContextChunkV1] = Field(default_factory=list)
    max_output_tokens: int = Field(ge=1)
    token_budget: int = Field(ge=0, description="Input + output tokens this request may use.")
    complexity_score: float = Field(ge=0.0)
    attempt: int = Field(default=0, ge=0, description="0 first; +1 per corrective retry.")
    fallback_chain: list[str] = Field(
        default_factory=list,
        description="Tiers to escalate to, in order, when this tier fails or is unavailable.",
        examples=[["extractive"]],
    )
    feedback: list[str] = Field(
        default_factory=list,
        description="Why the previous attempt failed validation (for the corrective prompt).",
        examples=[["citation 3f1c… is not one of the retrieved chunks"]],
    )
    asked_at: datetime | None = Field(
        default=None, description="When the question was published (for answer latency)."
    )


class GenerationV1(Envelope):
    """A tier's raw structured output with its usage, before validation."""

    event_type: Literal["generation"] = "generation"
    request_id: str = Field(min_length=1, max_length=128)
    question: str
    tier: str = Field(max_length=64)
    model_name: str = Field(max_length=128, examples=["SmolLM2-135M-Instruct"])
    model_version: str = Field(max_length=32, examples=["1"])
    prompt_name: str = Field(max_length=64)
    prompt_version: str = Field(max_length=32)
    context: list[ContextChunkV1] = Field(default_factory=list)
    raw_output: str = Field(description="The model's output, JSON by constrained decoding.")
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    finish_reason: str = Field(max_length=32, examples=["stop", "length"])
    model_latency_ms: float = Field(ge=0.0)
    attempt: int = Field(default=0, ge=0)
    fallback_chain: list[str] = Field(default_factory=list, description="As in the request.")
    max_output_tokens: int | None = Field(default=None, ge=1, description="As in the request.")
    token_budget: int | None = Field(default=None, ge=0, description="As in the request.")
    complexity_score: float = Field(default=0.0, ge=0.0, description="As in the request.")
    asked_at: datetime | None = Field(default=None, description="As in the request.")
    fallback_reason: str = Field(
        default="",
        max_length=512,
        description="Why a tier of the chain produced this instead of the requested one.",
        examples=["small: circuit open for triton at 127.0.0.1:8001"],
    )


class CitationV1(ContractModel):
    chunk_id: ChunkId
    doc_id: DocId
    source_uri: str = ""
    title: str = ""
    heading_path: list[str] = Field(default_factory=list)


class RefusalV1(ContractModel):
    reasons: list[str] = Field(min_length=1, examples=[["budget_exceeded"]])
    message: str = Field(examples=["Your team's daily token budget is used up."])


class AnswerV1(Envelope):
    """The validated answer to a question, or a graceful refusal with reasons."""

    event_type: Literal["answer"] = "answer"
    request_id: str = Field(min_length=1, max_length=128)
    question: str
    answer: str | None = None
    citations: list[CitationV1] = Field(default_factory=list)
    refusal: RefusalV1 | None = None
    tier: str = Field(max_length=64)
    cache_hit: Literal["none", "exact", "semantic"] = "none"
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0.0)
    latency_ms: float = Field(ge=0.0, description="From the question's produced_at to now.")
    confidence: float | None = Field(
        default=None, ge=0.0, le=1.0, description="The tier's own confidence, if it gives one."
    )
