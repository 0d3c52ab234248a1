"""Scaling the embed stage on one machine: partitions per worker, a killed worker, SIGTERM, lag.

Each test runs its own broker (Tansu), so the embed workers it starts are the only members
of their consumer group (the session pipeline's embed consumes the session broker). Chunks
are ~60 tokens, so 2,000 of them take Triton on 2 CPU cores about a minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import Consumer, TopicPartition

from contracts.registry import TOPICS
from contracts.v1 import ChunkV1, ChunkVectorV1
from inference.server import TritonServer
from services.runtime.broker import consumer_group
from services.runtime.embedded_broker import EmbeddedBroker
from services.runtime.kafka_admin import ensure_topics
from services.runtime.topic_reader import high_watermarks, read_topic
from tests.integration.conftest import UPSTREAM, eventually, publish_events, tenant_name

pytestmark = pytest.mark.integration
GROUP = consumer_group("embed", TOPICS.chunks)
#: SIGTERM to a stage: it leaves its group and exits within this many seconds.
SIGTERM_BOUND_S = 20.0
WORDS = "leave policy salary review onboarding laptop travel expense security badge".split()


def chunk(tenant: str, index: int) -> ChunkV1:
    text = " ".join(WORDS[(index + i) % len(WORDS)] for i in range(40)) + f" n{index}."
    digest = hashlib.sha256(f"{tenant}/{index}".encode()).hexdigest()
    return ChunkV1(
        tenant_id=tenant,
        correlation_id=f"{tenant}-{index}",
        produced_by=UPSTREAM,
        chunk_id=f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
        doc_id=f"docs/doc-{index:04d}.md",
        doc_version=1,
        position=0,
        text=text,
        token_count=60,
        content_hash=hashlib.sha256(text.encode()).hexdigest(),
        title=f"Document {index}",
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as own:
        ensure_topics(own.bootstrap_servers)
        yield own


class Embed:
    """`ragstream serve embed [--workers N]` processes on the test's broker."""

    def __init__(self, bootstrap: str, triton_url: str, data_dir: Path) -> None:
        self.bootstrap = bootstrap
        self.data_dir = data_dir
        self.ready_dir = data_dir / "ready"
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "RAGSTREAM_BOOTSTRAP_SERVERS": bootstrap,
            "RAGSTREAM_DATA_DIR": str(data_dir),
            "RAGSTREAM_READY_DIR": str(self.ready_dir),
            "RAGSTREAM_TRITON_URL": triton_url,
            "RAGSTREAM_TRITON_RETRY_AFTER_S": "0.5",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, workers: int = 1, **env: str) -> subprocess.Popen[bytes]:
        args = ["--workers", str(workers)] if workers > 1 else []
        log = open(self.data_dir / f"serve-{len(self.processes)}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "serve", "embed", *args],
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def ready_pids(self) -> set[int]:
        if not self.ready_dir.exists():
            return set()
        return {int(p.name.split("-")[1]) for p in self.ready_dir.glob("embed-*")}

    def wait_ready(self, count: int, timeout_s: float = 90.0) -> set[int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None and process.returncode not in (0, -9):
                    raise RuntimeError(f"serve exited with {process.returncode}: {self.logs()}")
            pids = {pid for pid in self.ready_pids() if _alive(pid)}
            if len(pids) >= count:
                return pids
            time.sleep(0.2)
        raise TimeoutError(f"{count} embed workers not ready within {timeout_s} s: {self.logs()}")

    def logs_of(self, process: subprocess.Popen[bytes]) -> Path:
        return self.data_dir / f"serve-{self.processes.index(process)}.log"

    def logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.data_dir.glob("serve-*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def embed(broker: EmbeddedBroker, triton_server: TritonServer, tmp_path: Path) -> Iterator[Embed]:
    processes = Embed(broker.bootstrap_servers, triton_server.grpc_url, tmp_path / "data")
    processes.data_dir.mkdir()
    try:
        yield processes
    finally:
        processes.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


ASSIGNED = re.compile(r"Setting newly assigned partitions (.*) for group (\S+)")
PARTITION = re.compile(rf"topic='{re.escape(TOPICS.chunks.name)}', partition=(\d+)")


def owned_partitions(log: Path) -> set[int] | None:
    """The chunks partitions a worker owns now: its consumer's last assignment in its log.

    Tansu answers DescribeGroups with the members but without their assignments, so the
    workers' own record of the assignment (aiokafka logs it at INFO) is the evidence."""
    last = None
    for match in ASSIGNED.finditer(log.read_text(errors="replace")):
        if match.group(2) == GROUP:
            last = {int(p) for p in PARTITION.findall(match.group(1))}
    return last


async def group_members(bootstrap: str) -> int | None:
    """Members of the chunks group once it is stable (None while it rebalances)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_consumer_groups([GROUP])
    finally:
        await admin.close()
    (group,) = response.groups
    error_code, _, state, _, _, members = group
    return len(members) if error_code == 0 and state == "Stable" else None


async def stable_split(bootstrap: str, logs: list[Path], members: int) -> list[set[int]]:
    """Wait until `members` consumers own disjoint partition sets covering the topic."""

    async def probe() -> list[set[int]] | None:
        if await group_members(bootstrap) != members:
            return None
        owned = [parts for log in logs if (parts := owned_partitions(log))]
        every = sorted(p for parts in owned for p in parts)
        covers = every == list(range(TOPICS.chunks.partitions))
        return owned if len(owned) == members and covers else None

    return await eventually(probe, 60, f"{members} members owning all partitions")


def committed(bootstrap: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "log_level": 0})
    try:
        parts = [TopicPartition(TOPICS.chunks.name, p) for p in range(TOPICS.chunks.partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


async def vector_counts(bootstrap: str, tenant: str) -> Counter[str]:
    records = await read_topic(bootstrap, TOPICS.chunk_vectors.name)
    events = (TOPICS.chunk_vectors.adapter.validate_json(r.value) for r in records)
    return Counter(
        e.chunk.chunk_id for e in events if isinstance(e, ChunkVectorV1) and e.tenant_id == tenant
    )


async def vector_event_ids(bootstrap: str, tenant: str) -> int:
    """Distinct event ids among the tenant's vector records."""
    records = await read_topic(bootstrap, TOPICS.chunk_vectors.name)
    events = (TOPICS.chunk_vectors.adapter.validate_json(r.value) for r in records)
    return len(
        {e.event_id for e in events if isinstance(e, ChunkVectorV1) and e.tenant_id == tenant}
    )


async def all_embedded(bootstrap: str, tenant: str, chunks: list[ChunkV1]) -> Counter[str]:
    wanted = {c.chunk_id for c in chunks}

    async def probe() -> Counter[str] | None:
        counts = await vector_counts(bootstrap, tenant)
        return counts if wanted <= set(counts) else None

    return await eventually(probe, 180, f"vectors for all {len(chunks)} chunks")


async def positions(bootstrap: str, tenant: str) -> dict[str, tuple[int, int]]:
    """Chunk id → (partition, offset) of its record on the chunks topic."""
    records = await read_topic(bootstrap, TOPICS.chunks.name)
    out = {}
    for record in records:
        event = TOPICS.chunks.adapter.validate_json(record.value)
        if isinstance(event, ChunkV1) and event.tenant_id == tenant:
            out[event.chunk_id] = (record.partition, record.offset)
    return out


async def producer_for(bootstrap: str) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    return producer


def embed_status(embed: Embed) -> dict[str, Any]:
    """`ragstream status --json`'s embed stage, found by the workers' endpoint files."""
    stages = status_json(embed, embed.data_dir)["stages"]
    assert isinstance(stages, dict)
    info: dict[str, Any] = stages["embed"]
    return info


def owned_per_worker(info: dict[str, Any]) -> dict[int, set[int]]:
    owned = info["topics"][TOPICS.chunks.name]["partitions_owned"]
    return {int(pid): set(parts) for pid, parts in owned.items()}


async def status_split(embed: Embed, workers: int) -> dict[int, set[int]]:
    """Wait until `status` shows `workers` live consumers owning disjoint, covering sets."""

    async def probe() -> dict[int, set[int]] | None:
        info = await asyncio.to_thread(embed_status, embed)
        owned = owned_per_worker(info)
        every = sorted(p for parts in owned.values() for p in parts)
        if info["consumers_alive"] != workers or len(owned) != workers:
            return None
        return owned if every == list(range(TOPICS.chunks.partitions)) else None

    return await eventually(probe, 90, f"{workers} consumers owning every partition")


async def test_one_then_two_workers_embed_2000_chunks_exactly_once(embed: Embed) -> None:
    """An operator adds a consumer: partitions move, every chunk is embedded exactly once."""
    bootstrap = embed.bootstrap
    tenant = tenant_name("scale")
    chunks = [chunk(tenant, i) for i in range(2000)]
    producer = await producer_for(bootstrap)
    try:
        first = embed.start()
        embed.wait_ready(1)
        assert list(await status_split(embed, 1)) == [first.pid]
        await publish_events(producer, TOPICS.chunks, chunks[:1000])

        async def streaming() -> bool:
            rate = (await asyncio.to_thread(embed_status, embed))["events_per_s"]
            return bool(rate and rate["in_per_s"] > 0 and rate["out_per_s"] > 0)

        await eventually(streaming, 120, "status showing events/s in and out")
        await all_embedded(bootstrap, tenant, chunks[:1000])

        second = embed.start()
        embed.wait_ready(2)
        owned = await status_split(embed, 2)
        assert set(owned) == {first.pid, second.pid}
        assert not owned[first.pid] & owned[second.pid]
        await publish_events(producer, TOPICS.chunks, chunks[1000:])
        counts = await all_embedded(bootstrap, tenant, chunks)
    finally:
        await producer.stop()
    assert len(counts) == len(chunks) and set(counts.values()) == {1}, "lost or duplicated"
    # The second half sat on both workers' partitions: each embedded a share of it.
    where = await positions(bootstrap, tenant)
    used = {where[c.chunk_id][0] for c in chunks[1000:]}
    assert used & owned[first.pid] and used & owned[second.pid]


async def test_serve_workers_split_partitions_and_survive_a_kill(embed: Embed) -> None:
    bootstrap = embed.bootstrap
    producer = await producer_for(bootstrap)
    try:
        # `serve embed --workers 2`: two processes, one group, disjoint partitions, no duplicate.
        serve = embed.start(workers=2)
        embed.wait_ready(2)
        workers = [embed.data_dir / "logs" / f"embed-worker-{i}.log" for i in range(2)]
        first, second = await stable_split(bootstrap, workers, 2)
        assert not first & second and first and second
        tenant = tenant_name("scale")
        chunks = [chunk(tenant, i) for i in range(200)]
        await publish_events(producer, TOPICS.chunks, chunks)
        counts = await all_embedded(bootstrap, tenant, chunks)
        assert set(counts.values()) == {1}, "a chunk was embedded twice without any crash"

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=SIGTERM_BOUND_S + 5) == 0
        assert not embed.ready_pids(), "a worker did not shut down cleanly"

        # Two plain workers (no supervisor to restart the victim); SIGKILL one mid-stream.
        embed.start()
        embed.start()
        victim, survivor = embed.processes[-2:]
        embed.wait_ready(2)
        victim_log, survivor_log = embed.logs_of(victim), embed.logs_of(survivor)
        await stable_split(bootstrap, [victim_log, survivor_log], 2)
        tenant = tenant_name("kill")
        chunks = [chunk(tenant, i) for i in range(1000)]  # issue 9: 1,000 chunks in flight
        await publish_events(producer, TOPICS.chunks, chunks[:700])
        await eventually(lambda: _at_least(bootstrap, tenant, 40), 120, "first vectors of the run")
        victim.kill()
        victim.wait()
        at_kill = committed(bootstrap)
        await publish_events(producer, TOPICS.chunks, chunks[700:])
        await stable_split(bootstrap, [survivor_log], 1)  # the survivor owns every partition
        counts = await all_embedded(bootstrap, tenant, chunks)
        assert survivor.poll() is None
    finally:
        await producer.stop()
    # Duplicates only for chunks the victim had in flight: at or past its last commit.
    where = await positions(bootstrap, tenant)
    duplicated = {cid for cid, n in counts.items() if n > 1}
    in_flight = {cid for cid, (p, off) in where.items() if off >= max(at_kill[p], 0)}
    assert duplicated <= in_flight, sorted(duplicated - in_flight)[:5]
    # A repeat is the same event again (deterministic id), never a second, different vector event.
    assert await vector_event_ids(bootstrap, tenant) == len(chunks)
    print(
        f"\nfaults: kill -9 embed: chunks={len(chunks)}, embedded={len(counts)}, "
        f"records={sum(counts.values())}, repeated={sum(counts.values()) - len(counts)}, "
        f"in_flight_at_kill={len(in_flight)}, lost={len(chunks) - len(counts)}"
    )
    ends = await high_watermarks(bootstrap, TOPICS.chunks.name)
    await eventually(
        lambda: asyncio.to_thread(lambda: committed(bootstrap) == ends), 30, "all committed"
    )


async def _at_least(bootstrap: str, tenant: str, count: int) -> bool:
    return sum((await vector_counts(bootstrap, tenant)).values()) >= count


async def test_sigterm_during_a_batch_exits_in_time_and_loses_nothing(embed: Embed) -> None:
    bootstrap = embed.bootstrap
    batch = {"RAGSTREAM_EMBED_BATCH_SIZE": "64", "RAGSTREAM_EMBED_BATCH_WAIT_MS": "500"}
    stage = embed.start(**batch)
    embed.wait_ready(1)
    await stable_split(bootstrap, [embed.logs_of(stage)], 1)
    tenant = tenant_name("sigterm")
    chunks = [chunk(tenant, i) for i in range(300)]
    producer = await producer_for(bootstrap)
    try:
        await publish_events(producer, TOPICS.chunks, chunks)
    finally:
        await producer.stop()
    await eventually(lambda: _at_least(bootstrap, tenant, 1), 120, "a batch under way")
    started = time.monotonic()
    stage.send_signal(signal.SIGTERM)
    code = stage.wait(timeout=SIGTERM_BOUND_S + 10)
    took = time.monotonic() - started
    assert took <= SIGTERM_BOUND_S, f"embed took {took:.1f} s to stop on SIGTERM"
    assert code == 0, embed.logs()
    before = await vector_counts(bootstrap, tenant)
    assert len(before) < len(chunks), "the whole run finished before SIGTERM: nothing in flight"

    embed.start(**batch)
    counts = await all_embedded(bootstrap, tenant, chunks)
    ends = await high_watermarks(bootstrap, TOPICS.chunks.name)
    await eventually(
        lambda: asyncio.to_thread(lambda: committed(bootstrap) == ends), 30, "offsets committed"
    )
    # Re-embedded after the restart: only what SIGTERM abandoned uncommitted.
    assert sum(counts.values()) - len(chunks) <= int(batch["RAGSTREAM_EMBED_BATCH_SIZE"])


def status_json(embed: Embed, status_dir: Path) -> dict[str, object]:
    env = {k: v for k, v in embed.env.items() if k != "RAGSTREAM_TRITON_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "status", "--json"],
        env={**env, "RAGSTREAM_DATA_DIR": str(status_dir)},
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode in (0, 1), result.stderr.decode()[-2000:]
    status: dict[str, object] = json.loads(result.stdout)
    return status


def chunks_lag(status: dict[str, object]) -> object:
    stages = status["stages"]
    assert isinstance(stages, dict)
    return stages["embed"]["topics"][TOPICS.chunks.name]["lag"]


async def test_status_reports_lag_until_consumed(embed: Embed, tmp_path: Path) -> None:
    status_dir = tmp_path / "status"
    status_dir.mkdir()
    tenant = tenant_name("lag")
    chunks = [chunk(tenant, i) for i in range(60)]
    producer = await producer_for(embed.bootstrap)
    try:
        await publish_events(producer, TOPICS.chunks, chunks)
    finally:
        await producer.stop()
    assert chunks_lag(status_json(embed, status_dir)) == len(chunks)

    embed.start()
    await all_embedded(embed.bootstrap, tenant, chunks)

    async def drained() -> bool:
        return await asyncio.to_thread(lambda: chunks_lag(status_json(embed, status_dir)) == 0)

    await eventually(drained, 60, "lag 0 after embed consumed the chunks")
