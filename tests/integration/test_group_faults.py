"""Faults of the consumer group and of the broker, injected for real on the embedded stack: a
consumer stalled (SIGSTOP) past its session timeout with a batch in flight, and the embedded
broker killed (SIGKILL) and started again on the same address under load.

Each test runs its own broker (Tansu), so the processes it starts are the only members of
their groups and the restart touches no other test. Counts are printed (`pytest -s`) in the
style of test_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, DeadLetterV1, DocumentUpsertV1, LineageRecordV1
from inference.server import TritonServer
from services.cli.ask_cmd import query_event
from services.cli.stage_probe import probe_stage
from services.runtime.embedded_broker import EmbeddedBroker, free_port
from services.runtime.health import stage_endpoints
from services.runtime.kafka_admin import ensure_topics
from services.runtime.stage import STAGES
from services.runtime.topic_reader import high_watermarks, read_topic
from tests.integration.conftest import (
    UPSTREAM,
    StageProcesses,
    eventually,
    publish_events,
    tenant_name,
)
from tests.integration.test_faults import report
from tests.integration.test_scaling import (
    Embed,
    all_embedded,
    chunk,
    committed,
    producer_for,
    vector_event_ids,
)

pytestmark = pytest.mark.integration
CHUNKS_TOPIC = TOPICS.chunks.name
#: 32 chunks a batch (~1 s of embedding here): the victim is stopped holding one. The stall
#: lasts until the broker drops it: aiokafka's session timeout (10 s, FastStream's default),
#: well short of its max poll interval (5 min), so the broker, not the consumer, notices.
EMBED_BATCH = {"RAGSTREAM_EMBED_BATCH_SIZE": "32", "RAGSTREAM_EMBED_BATCH_WAIT_MS": "100"}
COMMIT_FAILED = re.compile(r"CommitFailedError|IllegalGeneration|UnknownMemberId|RebalanceInProg")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(log_path=tmp_path / "tansu.log") as own:
        ensure_topics(own.bootstrap_servers)
        yield own


@pytest.fixture
def embed(
    own_broker: EmbeddedBroker, triton_server: TritonServer, tmp_path: Path
) -> Iterator[Embed]:
    processes = Embed(own_broker.bootstrap_servers, triton_server.grpc_url, tmp_path / "data")
    processes.data_dir.mkdir()
    try:
        yield processes
    finally:
        for process in processes.processes:  # never leave a stopped process behind
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
        processes.stop()


def _metrics(url: str) -> dict[tuple[str, str], float]:
    """(sample name, topic) → value, plus ("owned", topic/partition) for owned partitions."""
    with urllib.request.urlopen(url, timeout=2.0) as response:
        text = response.read().decode()
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            topic = sample.labels.get("topic", "")
            if sample.name == "ragstream_partition_owned" and sample.value >= 1:
                found[("owned", f"{topic}/{sample.labels['partition']}")] = 1
            elif sample.name in ("ragstream_events_in_total", "ragstream_events_out_total"):
                found[(sample.name, topic)] = found.get((sample.name, topic), 0) + sample.value
    return found


def stage_metrics(data_dir: Path, stage: str, pid: int) -> dict[tuple[str, str], float]:
    """One stage process's metrics, from its endpoint file (a stopped process is never asked)."""
    (endpoint,) = [e for e in stage_endpoints(data_dir, stage) if int(e["pid"]) == pid]
    return _metrics(str(endpoint["metrics_url"]))


def owned_chunk_partitions(metrics: dict[tuple[str, str], float]) -> set[int]:
    """The chunks partitions the process says it owns (`ragstream_partition_owned`)."""
    return {
        int(key.rsplit("/", 1)[1])
        for kind, key in metrics
        if kind == "owned" and key.startswith(CHUNKS_TOPIC + "/")
    }


async def owners(embed: Embed, pids: list[int]) -> dict[int, set[int]]:
    return {
        pid: owned_chunk_partitions(
            await asyncio.to_thread(stage_metrics, embed.data_dir, "embed", pid)
        )
        for pid in pids
    }


async def split_between(embed: Embed, pids: list[int]) -> dict[int, set[int]]:
    """Wait until these processes own disjoint, non-empty partition sets covering the topic."""

    async def probe() -> dict[int, set[int]] | None:
        owned = await owners(embed, pids)
        every = sorted(p for parts in owned.values() for p in parts)
        fair = all(owned.values()) and every == list(range(TOPICS.chunks.partitions))
        return owned if fair else None

    return await eventually(probe, 120, f"{len(pids)} consumers owning every partition once")


async def dead_letters(bootstrap: str, tenants: set[str]) -> list[DeadLetterV1]:
    records = await read_topic(bootstrap, TOPICS.dlq.name)
    letters = (TOPICS.dlq.adapter.validate_json(r.value) for r in records)
    return [d for d in letters if isinstance(d, DeadLetterV1) and d.tenant_id in tenants]


async def test_a_consumer_stalled_past_its_session_loses_and_doubles_nothing(embed: Embed) -> None:
    """SIGSTOP one of two embed consumers mid-batch until the group gives its partitions to
    the other, then SIGCONT: its late commit fails or is harmless, it rejoins and works on."""
    bootstrap = embed.bootstrap
    victim, survivor = embed.start(**EMBED_BATCH), embed.start(**EMBED_BATCH)
    embed.wait_ready(2)
    await split_between(embed, [victim.pid, survivor.pid])
    tenant = tenant_name("stall")
    chunks = [chunk(tenant, i) for i in range(330)]
    producer = await producer_for(bootstrap)
    try:
        await publish_events(producer, TOPICS.chunks, chunks[:240])

        async def victim_mid_batch() -> int | None:
            """The victim consumed more chunks than it published vectors for: a batch in hand."""
            seen = await asyncio.to_thread(stage_metrics, embed.data_dir, "embed", victim.pid)
            consumed = seen.get(("ragstream_events_in_total", CHUNKS_TOPIC), 0)
            published = seen.get(("ragstream_events_out_total", TOPICS.chunk_vectors.name), 0)
            if consumed > published:
                victim.send_signal(signal.SIGSTOP)  # at once, with the batch in flight
                return int(consumed - published)
            return None

        in_flight = await eventually(victim_mid_batch, 120, "the victim holding a batch")
        stopped_log_size = embed.logs_of(victim).stat().st_size
        # The broker drops the silent member after its session timeout; the survivor takes all.
        await eventually(
            lambda: _owns_everything(embed, survivor.pid),
            120,
            "the survivor owning every partition",
        )
        await publish_events(producer, TOPICS.chunks, chunks[240:300])
        victim.send_signal(signal.SIGCONT)
        await split_between(embed, [victim.pid, survivor.pid])  # the victim rejoined
        before = await asyncio.to_thread(stage_metrics, embed.data_dir, "embed", victim.pid)
        await publish_events(producer, TOPICS.chunks, chunks[300:])
        counts = await all_embedded(bootstrap, tenant, chunks)

        async def victim_worked_on() -> bool:
            after = await asyncio.to_thread(stage_metrics, embed.data_dir, "embed", victim.pid)
            key = ("ragstream_events_out_total", TOPICS.chunk_vectors.name)
            return after.get(key, 0) > before.get(key, 0)

        await eventually(victim_worked_on, 60, "the resumed consumer embedding again")
    finally:
        await producer.stop()
    assert victim.poll() is None and survivor.poll() is None, embed.logs()
    ends = await high_watermarks(bootstrap, CHUNKS_TOPIC)
    await eventually(
        lambda: asyncio.to_thread(lambda: committed(bootstrap) == ends), 60, "all committed"
    )
    lost = len(chunks) - len(counts)
    distinct_events = await vector_event_ids(bootstrap, tenant)
    letters = await dead_letters(bootstrap, {tenant})
    assert lost == 0
    assert distinct_events == len(chunks), "a chunk got a second, different vector event"
    assert not letters, [d.reason for d in letters]
    late = embed.logs_of(victim).read_text(errors="replace")[stopped_log_size:]
    records = sum(counts.values())
    report(
        "SIGSTOP embed past its session timeout",
        chunks=len(chunks),
        victim_batch_in_flight=in_flight,
        embedded=len(counts),
        vector_records=records,
        repeated_records=records - len(counts),
        duplicated=distinct_events - len(chunks),
        dlq=len(letters),
        lost=lost,
        # 1: the resumed victim's commit was refused (CommitFailedError); 0: its heartbeat
        # learnt first that it left the group, so the commit named no partition of it.
        late_commit_refused=int(bool(COMMIT_FAILED.search(late))),
    )


async def _owns_everything(embed: Embed, pid: int) -> bool:
    owned = await owners(embed, [pid])
    return owned[pid] == set(range(TOPICS.chunks.partitions))


#: Only the extractive tier: every question goes the whole way without the slow CPU generator.
EXTRACTIVE_ONLY = '[{"name": "extractive", "kind": "extractive", "max_complexity": 1.0}]'
TOPICS_WORDS = "vacation parking laptop travel expense badge salary onboarding".split()


def document(tenant: str, label: str, index: int) -> DocumentUpsertV1:
    topic = TOPICS_WORDS[index % len(TOPICS_WORDS)]
    body = " ".join(
        f"The {topic} rule {label} {index}.{n} says staff follow step {n} of the {topic} policy."
        for n in range(24)
    )
    return DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id=f"{tenant}-{label}-{index}",
        produced_by=UPSTREAM,
        doc_id=f"policies/{label}-{index:03d}.md",
        content_type="text/markdown",
        content=f"# {topic.title()} {label} {index}\n\n{body}",
    )


def question(tenant: str, label: str, index: int) -> Any:
    topic = TOPICS_WORDS[index % len(TOPICS_WORDS)]
    return query_event(f"Which step of the {topic} policy applies ({label} {index})?", tenant)


async def settled(bootstrap: str, tenant: str) -> tuple[set[str], set[str]]:
    """(correlation ids of documents indexed by route, request ids answered) on the broker now."""
    audit = await read_topic(bootstrap, TOPICS.audit.name)
    indexed = set()
    for record in audit:
        event = TOPICS.audit.adapter.validate_json(record.value)
        if (
            isinstance(event, LineageRecordV1)
            and event.tenant_id == tenant
            and event.stage == "route"
            and event.outcome == "ok"
            and event.correlation_id.startswith(f"{tenant}-")
        ):
            indexed.add(event.correlation_id)
    answers = (
        TOPICS.answers.adapter.validate_json(r.value)
        for r in await read_topic(bootstrap, TOPICS.answers.name)
    )
    answered = {a.request_id for a in answers if isinstance(a, AnswerV1) and a.tenant_id == tenant}
    return indexed, answered


def stages_ready(data_dir: Path) -> dict[str, dict[str, bool]]:
    """Each stage's readiness checks (`/readyz`), as `ragstream status` reads them."""
    return {stage: probe_stage(stage_endpoints(data_dir, stage)).checks for stage in STAGES}


async def send(bootstrap: str, documents: list[Any], questions: list[Any]) -> None:
    """Publish documents, then questions, with a producer of their own."""
    producer = await producer_for(bootstrap)
    try:
        await publish_events(producer, TOPICS.documents, documents)
        await publish_events(producer, TOPICS.queries, questions)
    finally:
        await producer.stop()


@pytest.mark.skipif(
    "RAGSTREAM_SOAK_QUESTIONS" not in os.environ,
    reason="soak only (`make soak`): restarts the embedded broker and waits out its "
    "recovery (75-130 s); issue 9",
)
async def test_every_stage_reconnects_after_the_embedded_broker_restarts(
    triton_server: TritonServer, tmp_path: Path
) -> None:
    """SIGKILL the broker mid-stream, start it again on the same address, create the topics
    as `ragstream up` does: the same stage processes go on. What was in flight is gone with
    the broker's memory; the test counts it (what an operator must replay)."""
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu-1.log").start()
    bootstrap = broker.bootstrap_servers
    ensure_topics(bootstrap)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stages = StageProcesses(
        bootstrap,
        data_dir,
        data_dir / "ready",
        env={
            "HF_HUB_OFFLINE": "1",
            "RAGSTREAM_TRITON_URL": triton_server.grpc_url,
            "RAGSTREAM_TRITON_RETRY_AFTER_S": "0.5",
            "RAGSTREAM_TENANT_BURST": "5000",
            "RAGSTREAM_TIERS": EXTRACTIVE_ONLY,
        },
    )
    tenant = tenant_name("restart")
    try:
        for stage in STAGES:
            stages.start(stage)
        await asyncio.to_thread(stages.wait_ready, 180)
        pids = {stage: process.pid for stage, process in stages.processes.items()}
        documents = [document(tenant, "before", i) for i in range(80)]
        questions = [question(tenant, "before", i) for i in range(30)]
        await send(bootstrap, documents, questions)

        async def some_indexed() -> tuple[set[str], set[str]] | None:
            indexed, answered = await settled(bootstrap, tenant)
            return (indexed, answered) if len(indexed) >= 5 else None

        indexed_before, answered_before = await eventually(some_indexed, 180, "first documents")
        os.killpg(broker.pid or 0, signal.SIGKILL)  # the broker dies with its topics
        await asyncio.to_thread(broker.stop)

        async def outage_seen() -> bool:
            ready = await asyncio.to_thread(stages_ready, data_dir)
            return all(checks.get("broker") is False for checks in ready.values())

        await eventually(outage_seen, 60, "every stage reporting the broker down")
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu-2.log").start()
        ensure_topics(bootstrap)  # as `ragstream up` does on start

        async def all_ready() -> dict[str, dict[str, bool]] | None:
            ready = await asyncio.to_thread(stages_ready, data_dir)
            fine = all(checks and all(checks.values()) for checks in ready.values())
            return ready if fine else None

        await eventually(all_ready, 120, "every stage ready again")
        after_documents = [document(tenant, "after", i) for i in range(6)]
        after_questions = [question(tenant, "after", i) for i in range(6)]
        await send(bootstrap, after_documents, after_questions)
        wanted_documents = {d.correlation_id for d in after_documents}
        wanted_answers = {q.request_id for q in after_questions}

        async def handled_after() -> tuple[set[str], set[str]] | None:
            indexed, answered = await settled(bootstrap, tenant)
            done = wanted_documents <= indexed and wanted_answers <= answered
            return (indexed, answered) if done else None

        indexed_after, answered_after = await eventually(
            handled_after, 240, "documents and questions sent after the restart handled"
        )
        alive = {stage: process.pid for stage, process in stages.processes.items()
                 if process.poll() is None}  # fmt: skip
        assert alive == pids, f"stage processes died or changed: {pids} -> {alive}"
        letters = await dead_letters(bootstrap, {tenant})
    finally:
        stages.stop()
        broker.stop()
    before_ids = {d.correlation_id for d in documents}
    asked_before = {q.request_id for q in questions}
    in_flight_documents = before_ids - indexed_before
    in_flight_questions = asked_before - answered_before
    assert in_flight_documents or in_flight_questions, "all work finished before the kill"
    finished_late_documents = in_flight_documents & indexed_after
    finished_late_questions = in_flight_questions & answered_after
    report(
        "embedded broker SIGKILL and restart",
        documents=len(documents),
        indexed_before_kill=len(indexed_before),
        documents_in_flight=len(in_flight_documents),
        documents_finished_after=len(finished_late_documents),
        documents_lost=len(in_flight_documents - indexed_after),
        questions=len(questions),
        answered_before_kill=len(answered_before),
        questions_in_flight=len(in_flight_questions),
        questions_finished_after=len(finished_late_questions),
        questions_lost=len(in_flight_questions - answered_after),
        sent_after_restart=len(after_documents) + len(after_questions),
        handled_after_restart=len(wanted_documents & indexed_after)
        + len(wanted_answers & answered_after),
        dlq=len(letters),
        stages_restarted=0,
    )
    assert not [d for d in letters if d.correlation_id in wanted_documents | wanted_answers]
    # The broker refusing writes just after its restart (Tansu's UnknownError) is waited out
    # (RAGSTREAM_BROKER_WAIT_S), not dead-lettered: those events are not bad input.
    assert not [d for d in letters if d.error_kind == "handler_error"], letters
