"""Integration fixtures: a real Tansu broker and the real stage processes, started once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, TopicPartition

from contracts.registry import TOPICS
from contracts.v1 import ProducedBy
from inference.server import TritonServer
from services.runtime.embedded_broker import EmbeddedBroker
from services.runtime.kafka_admin import ensure_topics
from services.runtime.publishing import event_bytes
from services.runtime.stage import STAGES
from services.runtime.topic_reader import read_topic

pytestmark = pytest.mark.integration
UPSTREAM = ProducedBy(service="upstream-test", version="1")
#: A tenant whose daily token cap is tiny (set in the pipeline's environment).
TINY_BUDGET_TENANT = f"tiny-budget-{uuid.uuid4().hex[:8]}"
TINY_DAILY_TOKENS = 1500
#: A tenant whose daily cap its test fills past the alert share (80%), for budget alerts.
ALERT_BUDGET_TENANT = f"alert-budget-{uuid.uuid4().hex[:8]}"
ALERT_DAILY_TOKENS = 3600
_UNKNOWN_CHUNK = "00000000-0000-4000-8000-000000000000"
#: Test tiers with fixed bad outputs (asked for by name), beside the real ones.
TEST_TIERS = [
    {"name": "extractive", "kind": "extractive", "max_complexity": 0.45,
     "context_tokens": 400, "max_output_tokens": 120},
    {"name": "small", "kind": "triton", "model": "generator", "max_complexity": 1.0,
     "context_tokens": 500, "max_output_tokens": 128,
     "input_usd_per_1k": 0.00002, "output_usd_per_1k": 0.00008},
    {"name": "invented-citation", "kind": "fixed", "auto": False, "outputs": [
        '{"answer": "Employees get 25 days of paid vacation.",'
        ' "citations": ["' + _UNKNOWN_CHUNK + '"], "confidence": 0.9}']},
    {"name": "pii-leak", "kind": "fixed", "auto": False, "outputs": [
        '{"answer": "Write to jane.roe@example.org or call +1 415 555 0134.",'
        ' "citations": ["$chunk_0"], "confidence": 0.9}']},
    {"name": "ungrounded", "kind": "fixed", "auto": False, "outputs": [
        '{"answer": "The moon orbits Jupiter every fortnight, astronomers say.",'
        ' "citations": ["$chunk_0"], "confidence": 0.9}']},
]  # fmt: skip
T = TypeVar("T")


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        ensure_topics(broker.bootstrap_servers)
        yield broker


@dataclass
class StageProcesses:
    """`ragstream serve STAGE` processes, as production runs them."""

    bootstrap: str
    data_dir: Path
    ready_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, stage: str, **env: str) -> None:
        """Start `ragstream serve STAGE`; `env` overrides the pipeline's environment."""
        log = open(self.data_dir / f"{stage}.log", "ab")
        self.processes[stage] = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", stage],
            env={
                **os.environ,
                "RAGSTREAM_BOOTSTRAP_SERVERS": self.bootstrap,
                "RAGSTREAM_DATA_DIR": str(self.data_dir),
                "RAGSTREAM_READY_DIR": str(self.ready_dir),
                **self.env,
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for stage, process in self.processes.items():
                if process.poll() is not None:
                    log = (self.data_dir / f"{stage}.log").read_text()[-3000:]
                    raise RuntimeError(f"{stage} exited with {process.returncode}:\n{log}")
            if all((self.ready_dir / f"{s}-{p.pid}").exists() for s, p in self.processes.items()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"stages not ready within {timeout_s} s")

    def stop_stage(self, stage: str) -> None:
        """SIGTERM one stage and wait for it to leave (e.g. to open route's local index)."""
        process = self.processes.pop(stage)
        process.terminate()
        process.wait(timeout=30)

    def restart(self, stage: str, **env: str) -> None:
        self.start(stage, **env)
        self.wait_ready()

    def alive(self, stage: str) -> bool:
        return self.processes[stage].poll() is None

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def pipeline(
    kafka: EmbeddedBroker, triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StageProcesses]:
    """Every stage as a process, on the session's broker and Triton."""
    data_dir = tmp_path_factory.mktemp("ragstream-data")
    stages = StageProcesses(
        kafka.bootstrap_servers,
        data_dir,
        data_dir / "ready",
        env={"RAGSTREAM_TENANT_BURST": "5000", "RAGSTREAM_TRITON_URL": triton_server.grpc_url,
             "RAGSTREAM_TRITON_RETRY_AFTER_S": "0.5", "RAGSTREAM_TIERS": json.dumps(TEST_TIERS),
             "RAGSTREAM_TENANT_BUDGETS": json.dumps(
                 {TINY_BUDGET_TENANT: {"daily_tokens": TINY_DAILY_TOKENS},
                  ALERT_BUDGET_TENANT: {"daily_tokens": ALERT_DAILY_TOKENS}})},
    )  # fmt: skip
    for stage in STAGES:
        stages.start(stage)
    try:
        stages.wait_ready()
        yield stages
    finally:
        stages.stop()


@pytest.fixture(scope="session")
async def producer(kafka: EmbeddedBroker) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka client as the upstream system."""
    client = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5)
    await client.start()
    yield client
    await client.stop()


def tenant_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


async def publish_events(producer: AIOKafkaProducer, topic: Any, events: list[Any]) -> None:
    futures = [
        await producer.send(topic.name, event_bytes(event), key=topic.key_bytes(event))
        for event in events
    ]
    await asyncio.gather(*futures)


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float = 120.0, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} not reached within {timeout_s} s (last probe: {last!r})")


async def events_on(bootstrap: str, topic: Any, tenants: set[str]) -> list[Any]:
    """Every event on `topic` of these tenants, decoded with its contract."""
    records = await read_topic(bootstrap, topic.name)
    decoded = (topic.adapter.validate_json(r.value) for r in records)
    return [event for event in decoded if getattr(event, "tenant_id", None) in tenants]


def records_with_librdkafka(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record of `topic` as JSON, read with confluent-kafka (librdkafka), not with
    ragstream's code: what an analyst's or operator's own tool sees."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
         "enable.partition.eof": True}
    )  # fmt: skip
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    records: list[dict[str, Any]] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    while len(at_end) < len(partitions) and time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            at_end.add(message.partition())
            continue
        records.append(json.loads(message.value()))
    consumer.close()
    return records


__all__ = [
    "ALERT_BUDGET_TENANT",
    "ALERT_DAILY_TOKENS",
    "TINY_BUDGET_TENANT",
    "TINY_DAILY_TOKENS",
    "TOPICS",
    "UPSTREAM",
    "StageProcesses",
    "events_on",
    "eventually",
    "publish_events",
    "records_with_librdkafka",
    "tenant_name",
]
