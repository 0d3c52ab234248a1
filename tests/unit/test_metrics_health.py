"""A stage's metrics and health port, in-process on a free port: /metrics in Prometheus text,
/healthz, /readyz from its checks; and the counters a stage's broker and publishing keep."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from faststream.kafka import TestKafkaBroker
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from contracts.registry import TOPICS
from contracts.v1 import AlertV1, ProducedBy
from services.cli.stage_probe import probe_stage, rates, stalls
from services.cli.status_cmd import collect_status
from services.runtime.broker import make_broker
from services.runtime.dead_letters import dead_letter_for, publish_dead_letter
from services.runtime.health import HealthServer, serving_health, stage_endpoints
from services.runtime.metrics import OwnedPartitions, cache_decided, records_consumed
from services.runtime.publishing import event_bytes, publish_event
from services.runtime.settings import RuntimeSettings
from services.runtime.stalls import LAG_PROBE_S, STALL_S, watching_stalls

pytestmark = pytest.mark.asyncio(loop_scope="function")


async def _yes() -> bool:
    return True


async def _no() -> bool:
    return False


async def _broken() -> bool:
    raise ConnectionError("qdrant at 127.0.0.1:6333 refused")


async def _hangs() -> bool:
    await asyncio.sleep(30)
    return True


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_server_answers_metrics_liveness_and_readiness() -> None:
    server = HealthServer("route", {"broker": _yes}, port=0)
    await server.start()
    try:
        cache_decided("semantic")
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            metrics = await http.get("/metrics")
            live = await http.get("/healthz")
            ready = await http.get("/readyz")
            missing = await http.get("/nope")
            post = await http.post("/readyz")
    finally:
        await server.stop()
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    assert "ragstream_cache_lookups" in families
    assert any(
        s.labels == {"result": "semantic"} for s in families["ragstream_cache_lookups"].samples
    )
    assert (live.status_code, live.json()) == (
        200,
        {"status": "ok", "stage": "route", "pid": os.getpid()},
    )
    assert (ready.status_code, ready.json()["checks"]) == (200, {"broker": True})
    assert (missing.status_code, post.status_code) == (404, 405)


async def test_readiness_fails_when_any_check_fails_raises_or_hangs() -> None:
    checks = {"broker": _yes, "triton": _no, "qdrant": _broken, "slow": _hangs}
    server = HealthServer("generate", checks, port=0, check_timeout_s=0.2)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            ready = await http.get("/readyz")
    finally:
        await server.stop()
    assert ready.status_code == 503
    assert ready.json() == {
        "ready": False,
        "stage": "generate",
        "checks": {"broker": True, "triton": False, "qdrant": False, "slow": False},
    }


async def test_a_taken_port_falls_back_to_a_free_one(caplog: pytest.LogCaptureFixture) -> None:
    first = HealthServer("embed", port=0)
    await first.start()
    second = HealthServer("embed", port=first.port)
    try:
        await second.start()
        assert second.port != first.port
        assert "is taken" in caplog.text
    finally:
        await second.stop()
        await first.stop()


async def test_the_endpoint_file_lives_while_the_server_runs_and_status_shows_it(
    tmp_path: Path,
) -> None:
    settings = RuntimeSettings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    async with serving_health("chunk", settings, {}) as server:
        [endpoint] = stage_endpoints(tmp_path, "chunk")
        assert endpoint["metrics_url"] == f"{server.url}/metrics"
        assert stage_endpoints(tmp_path, "embed") == []
        status = await asyncio.to_thread(collect_status, settings)
        assert status["stages"]["chunk"]["metrics_urls"] == [endpoint["metrics_url"]]
    assert stage_endpoints(tmp_path, "chunk") == []
    assert endpoint["pid"] == os.getpid()


def _alert(tenant: str) -> AlertV1:
    return AlertV1(
        tenant_id=tenant,
        correlation_id="c-1",
        produced_by=ProducedBy(service="test", version="1"),
        kind="budget_share",
        message="over",
        value=0.9,
        threshold=0.8,
    )


class _Sent:
    """A publisher or broker that keeps what it is given."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def publish(self, message: bytes, *args: object, **kwargs: object) -> None:
        self.sent.append(message)


async def test_a_stage_broker_counts_records_in_and_batch_sizes(tmp_path: Path) -> None:
    settings = RuntimeSettings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:9092")
    broker = make_broker(settings, "metrics-test")

    @broker.subscriber(TOPICS.alerts.name, group_id="metrics-test")
    async def operators(alert: dict[str, object]) -> None: ...

    labels = {"stage": "metrics-test", "topic": TOPICS.alerts.name}
    before = _sample("ragstream_events_in_total", **labels)
    async with TestKafkaBroker(broker) as test_broker:
        for _ in range(2):
            await test_broker.publish(event_bytes(_alert("acme")), TOPICS.alerts.name)
    assert _sample("ragstream_events_in_total", **labels) - before == 2
    assert _sample("ragstream_batch_size_count", **labels) >= 2
    faststream_labels = {"app_name": "ragstream-metrics-test", "handler": TOPICS.alerts.name}
    assert _sample("faststream_received_messages_total", broker="kafka", **faststream_labels) >= 2


async def test_published_events_and_dead_letters_are_counted() -> None:
    out = {"stage": "metrics-test", "topic": TOPICS.alerts.name}
    failed = {"stage": "metrics-test", "topic": TOPICS.queries.name}
    dlq = {"stage": "metrics-test", "error_kind": "invalid_json"}
    before = [_sample("ragstream_events_out_total", **out),
              _sample("ragstream_events_failed_total", **failed),
              _sample("ragstream_dead_letters_total", **dlq)]  # fmt: skip
    await publish_event(_Sent(), TOPICS.alerts, _alert("acme"), "metrics-test")
    record = ConsumerRecord(TOPICS.queries.name, 0, 7, 0, 0, None, b"{", None, 0, 1, [])
    letter = dead_letter_for(record, "metrics-test", "invalid_json", "value is not JSON")
    await publish_dead_letter(_Sent(), letter)
    after = [_sample("ragstream_events_out_total", **out),
             _sample("ragstream_events_failed_total", **failed),
             _sample("ragstream_dead_letters_total", **dlq)]  # fmt: skip
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def _records(topic: str, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(topic, 0, n, 0, 0, None, b"{}", None, 0, 2, [])  # type: ignore[arg-type]
        for n in range(count)
    ]


async def test_status_probe_reads_owned_partitions_rates_and_checks(tmp_path: Path) -> None:
    """What `ragstream status` shows per stage comes from each process's own endpoints."""
    settings = RuntimeSettings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    stage, topic = "probe-stage", TOPICS.chunks.name
    owned = OwnedPartitions(stage)
    await owned.on_partitions_assigned({TopicPartition(topic, 1), TopicPartition(topic, 3)})
    async with serving_health(stage, settings, {"qdrant": _yes, "triton": _broken}):
        endpoints = stage_endpoints(tmp_path, stage)
        first = await asyncio.to_thread(probe_stage, endpoints)
        records_consumed(stage, _records(topic, 7))
        second = await asyncio.to_thread(probe_stage, endpoints)
        # A rebalance revokes everything, then assigns the new share.
        await owned.on_partitions_revoked({TopicPartition(topic, 1), TopicPartition(topic, 3)})
        await owned.on_partitions_assigned({TopicPartition(topic, 5)})
        third = await asyncio.to_thread(probe_stage, endpoints)
    assert first.processes_answering == 1
    assert first.partitions_owned == {topic: {1: os.getpid(), 3: os.getpid()}}
    assert first.checks == {"qdrant": True, "triton": False}
    assert second.events_in - first.events_in == 7
    rate = rates(first, second)
    assert rate["in_per_s"] is not None and rate["in_per_s"] > 0
    assert rate["out_per_s"] == 0
    assert third.partitions_owned == {topic: {5: os.getpid()}}
    await owned.on_partitions_revoked({TopicPartition(topic, 5)})
    gone = await asyncio.to_thread(probe_stage, endpoints)  # the server has stopped
    assert gone.processes_answering == 0 and gone.partitions_owned == {}


def _observed(name: str, labels: dict[str, str], at_least: float) -> float:
    """How many of histogram `name`'s observations with `labels` were above `at_least` s."""
    everything = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    below = REGISTRY.get_sample_value(f"{name}_bucket", {**labels, "le": str(at_least)}) or 0.0
    return everything - below


async def test_a_step_that_holds_the_loop_and_a_full_collection_are_on_the_metrics() -> None:
    """A step that blocks the loop 0.5 s shows as a lag of over 0.25 s; a full collection is
    timed under generation 2; once closed, the stage's collections are no longer timed."""
    lag_before = _observed("ragstream_event_loop_lag_seconds", {"stage": "probe"}, 0.25)
    full = {"stage": "probe", "generation": "2"}
    async with watching_stalls("probe"):
        await asyncio.sleep(LAG_PROBE_S / 2)  # the sampler is asleep now
        time.sleep(0.5)  # noqa: ASYNC251 (a step that never awaits, on purpose)
        await asyncio.sleep(2 * LAG_PROBE_S)  # it wakes, late
        gc.collect()
        assert _observed("ragstream_event_loop_lag_seconds", {"stage": "probe"}, 0.25) >= (
            lag_before + 1
        )
        timed = REGISTRY.get_sample_value("ragstream_gc_pause_seconds_count", full)
        assert timed is not None and timed >= 1
    gc.collect()
    assert REGISTRY.get_sample_value("ragstream_gc_pause_seconds_count", full) == timed


async def test_status_counts_the_times_a_stage_held_its_loop(tmp_path: Path) -> None:
    """`ragstream status` reads each process's loop-lag histogram: a step that blocks the loop
    0.3 s is a stall over `STALL_S` in the window between two probes and since start; the
    samples taken on time are not."""
    settings = RuntimeSettings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    async with serving_health("validate", settings, {}), watching_stalls("validate"):
        endpoints = stage_endpoints(tmp_path, "validate")
        first = await asyncio.to_thread(probe_stage, endpoints)
        await asyncio.sleep(LAG_PROBE_S / 2)  # the sampler is asleep now
        time.sleep(3 * STALL_S)  # noqa: ASYNC251 (a step that never awaits, on purpose)
        await asyncio.sleep(4 * LAG_PROBE_S)  # it wakes late, then on time a few times
        second = await asyncio.to_thread(probe_stage, endpoints)
        status = await asyncio.to_thread(collect_status, settings, 0)
    held = stalls(first, second)
    assert held["over_s"] == STALL_S
    assert held["stalls"] is not None and held["stalls"] >= 1
    assert held["samples"] is not None and held["samples"] > held["stalls"]  # on time: none
    assert second.stalls >= held["stalls"] and second.lag_samples >= held["samples"]
    shown = status["stages"]["validate"]["loop_stalls"]
    assert shown["since_start"] >= 1 and shown["samples"] is None  # no window: one probe
    assert stalls(None, second)["stalls"] is None
