"""Prometheus metrics of a stage process: FastStream's per handler, and ragstream's own.

Every metric lives in prometheus_client's default registry, which each stage serves on
`/metrics` (`services.runtime.health`). The recording functions below are the one way to
count something; each is called on one line where the thing happens.

>>> event_published("chunk", TOPICS.chunks)  # doctest: +SKIP
>>> model_called("small", "generator", latency_ms=840.0, ok=True)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from faststream import BaseMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from contracts.registry import TopicSpec

EVENTS_IN = Counter(
    "ragstream_events_in_total", "Records a stage consumed, per topic.", ["stage", "topic"]
)
EVENTS_OUT = Counter(
    "ragstream_events_out_total", "Events a stage published, per topic.", ["stage", "topic"]
)
EVENTS_FAILED = Counter(
    "ragstream_events_failed_total",
    "Records a stage could not handle (dead-lettered), per source topic.",
    ["stage", "topic"],
)
DEAD_LETTERS = Counter(
    "ragstream_dead_letters_total",
    "Dead letters published to the DLQ topic, per error kind.",
    ["stage", "error_kind"],
)
RATE_LIMITED = Counter(
    "ragstream_rate_limited_total",
    "Events turned away over their tenant's rate limit, per source topic.",
    ["stage", "topic"],
)
BATCH_SIZE = Histogram(
    "ragstream_batch_size",
    "Records per consumed batch (1 for single-record subscribers).",
    ["stage", "topic"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
MODEL_LATENCY = Histogram(
    "ragstream_model_latency_seconds",
    "Latency of a tier's successful model calls.",
    ["tier", "model"],
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 60, 120, 300),
)
MODEL_CALLS = Counter(
    "ragstream_model_calls_total", "Model calls per tier: ok, error.", ["tier", "model", "outcome"]
)
TOKENS = Counter(
    "ragstream_tokens_total",
    "Tokens generations used, per tenant, tier and direction (input, output).",
    ["tenant", "tier", "direction"],
)
COST = Counter("ragstream_cost_usd_total", "Cost of generations, USD.", ["tenant", "tier"])
CACHE_LOOKUPS = Counter(
    "ragstream_cache_lookups_total",
    "route's answer-cache decision per question: exact or semantic hit, or miss.",
    ["result"],
)
DOCUMENT_HOLD = Counter(
    "ragstream_document_hold_seconds_total",
    "Seconds embed held document requests back for questions in flight (questions first).",
)
ALERTS = Counter("ragstream_alerts_total", "Alerts published.", ["stage", "kind", "subject"])
ALERT_ACTIVE = Gauge(
    "ragstream_alert_active",
    "1 from a model alert's crossing until its tier recovers, per kind and tier.",
    ["kind", "subject"],
)

PARTITIONS_OWNED = Gauge(
    "ragstream_partition_owned",
    "1 for each partition this process's consumer group member owns now.",
    ["stage", "topic", "partition"],
)


def prometheus_middleware(stage: str) -> KafkaPrometheusMiddleware:
    """FastStream's own metrics (`faststream_received_messages_total` …), app `ragstream-STAGE`."""
    return KafkaPrometheusMiddleware(registry=REGISTRY, app_name=f"ragstream-{stage}")


class ConsumedEventsMiddleware(BaseMiddleware):
    """Counts each consumed record and batch size of a stage, per topic.

    >>> KafkaBroker(middlewares=[ConsumedEventsMiddleware.for_stage("embed")])  # doctest: +SKIP
    """

    stage = "unknown"

    @classmethod
    def for_stage(cls, stage: str) -> type[ConsumedEventsMiddleware]:
        return type(f"ConsumedEventsMiddleware_{stage}", (cls,), {"stage": stage})

    async def on_receive(self) -> None:
        records_consumed(self.stage, self.msg)


def records_consumed(stage: str, raw: Any) -> None:
    """Count a consumed record, or a batch (tuple or list) of records."""
    records: Sequence[Any] = raw if isinstance(raw, (tuple, list)) else (raw,)
    if not records or not isinstance(records[0], ConsumerRecord):
        return
    topic = records[0].topic
    EVENTS_IN.labels(stage, topic).inc(len(records))
    BATCH_SIZE.labels(stage, topic).observe(len(records))


def event_published(stage: str, spec: TopicSpec) -> None:
    EVENTS_OUT.labels(stage, spec.name).inc()


def dead_letter_published(stage: str, source_topic: str, error_kind: str) -> None:
    EVENTS_FAILED.labels(stage, source_topic).inc()
    DEAD_LETTERS.labels(stage, error_kind).inc()


def rate_limited(stage: str, source_topic: str) -> None:
    RATE_LIMITED.labels(stage, source_topic).inc()


def model_called(tier: str, model: str, latency_ms: float, ok: bool) -> None:
    MODEL_CALLS.labels(tier, model, "ok" if ok else "error").inc()
    if ok:
        MODEL_LATENCY.labels(tier, model).observe(latency_ms / 1000)


def generation_charged(
    tenant_id: str, tier: str, input_tokens: int, output_tokens: int, cost_usd: float
) -> None:
    TOKENS.labels(tenant_id, tier, "input").inc(input_tokens)
    TOKENS.labels(tenant_id, tier, "output").inc(output_tokens)
    COST.labels(tenant_id, tier).inc(cost_usd)


def cache_decided(result: str) -> None:
    """`exact`, `semantic` or `miss`."""
    CACHE_LOOKUPS.labels(result).inc()


def alert_raised(stage: str, kind: str, subject: str) -> None:
    ALERTS.labels(stage, kind, subject).inc()


def alert_active(kind: str, subject: str, active: bool) -> None:
    """A threshold that re-arms (model alerts): 1 from its crossing until it recovers."""
    ALERT_ACTIVE.labels(kind, subject).set(1 if active else 0)


class OwnedPartitions(ConsumerRebalanceListener):
    """Keeps `ragstream_partition_owned` equal to a consumer's assignment, across rebalances
    (the broker's group description need not list it: Tansu's does not).

    >>> router.subscriber(topic, listener=OwnedPartitions("embed"))  # doctest: +SKIP
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            try:
                PARTITIONS_OWNED.remove(self.stage, tp.topic, str(tp.partition))
            except KeyError:
                pass

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            PARTITIONS_OWNED.labels(self.stage, tp.topic, str(tp.partition)).set(1)
