"""Malformed events beside valid ones: every bad one is dead-lettered, every good one goes on."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from contracts.registry import TOPICS
from contracts.v1 import (
    AnswerV1,
    ChunkSetV1,
    DeadLetterV1,
    DocumentUpsertV1,
    ProducedBy,
    QueryV1,
    RefusalV1,
)
from services.runtime.publishing import event_bytes, event_headers
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import (
    UPSTREAM,
    StageProcesses,
    events_on,
    eventually,
    publish_events,
    tenant_name,
)
from tests.integration.test_scaling import chunk

pytestmark = pytest.mark.integration


def _valid(tenant: str, n: int) -> DocumentUpsertV1:
    return DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id=f"valid-{n}",
        produced_by=ProducedBy(service="upstream-test", version="1"),
        doc_id=f"ok-{n}.md",
        content_type="text/markdown",
        content=f"# Valid {n}\n\nA perfectly ordinary document number {n}.",
    )


def _malformed(tenant: str, marker: str) -> list[tuple[str, bytes]]:
    """50 bad records, (expected error kind, value), each carrying `marker`."""
    good = json.loads(_valid(tenant, 0).model_dump_json())

    def variant(n: int, **changes: Any) -> bytes:
        payload = {**good, "doc_id": f"{marker}-{n}", **changes}
        return json.dumps({k: v for k, v in payload.items() if v is not ...}).encode()

    bad: list[tuple[str, bytes]] = []
    for n in range(8):
        bad.append(("invalid_json", f'{{"doc_id": "{marker}-{n}", '.encode()))
    for n in range(8):
        bad.append(("not_utf8", b"\xff\xfe" + marker.encode() + bytes([0x80 + n])))
    for n in range(8):  # wrong types, missing fields, unknown fields, unknown content type
        changes = [
            {"content": 42},
            {"content": ...},
            {"colour": "blue"},
            {"content_type": "application/pdf"},
        ][n % 4]
        bad.append(("schema_violation", variant(n, **changes)))
    for n in range(7):
        bad.append(("unknown_schema_version", variant(100 + n, schema_version=f"{2 + n}.0")))
    for n in range(7):
        bad.append(("rejected", variant(200 + n, content=f"{marker} " + "x" * 950_000)))
    for n in range(6):
        bad.append(("schema_violation", variant(300 + n, tenant_id=...)))
    for n in range(6):
        bad.append(("rejected", variant(400 + n, content=" \n\t " * n)))
    assert len(bad) == 50
    return bad


async def test_fifty_bad_events_go_to_the_dlq_and_fifty_good_ones_through(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("mixed")
    marker = f"bad-{uuid.uuid4().hex[:8]}"
    bad = _malformed(tenant, marker)
    good = [_valid(tenant, n) for n in range(50)]
    sends = []
    for (_, value), event in zip(bad, good, strict=True):
        sends.append(await producer.send(TOPICS.documents.name, value, key=marker.encode()))
        sends.append(
            await producer.send(
                TOPICS.documents.name, event.model_dump_json().encode(), key=event.doc_id.encode()
            )
        )
    for send in sends:
        await send

    async def all_dead() -> list[DeadLetterV1] | None:
        records = await read_topic(pipeline.bootstrap, TOPICS.dlq.name)
        letters = [DeadLetterV1.model_validate_json(r.value) for r in records]
        mine = [letter for letter in letters if marker.encode() in letter.original_value]
        return mine if len(mine) >= len(bad) else None

    letters = await eventually(all_dead, what="50 dead letters")
    assert len(letters) == 50
    by_value = {letter.original_value: letter for letter in letters}
    for kind, value in bad:
        letter = by_value[value]
        assert (letter.stage, letter.error_kind, letter.source_topic) == (
            "ingest",
            kind,
            TOPICS.documents.name,
        )
        assert letter.reason and letter.source_key == marker
    reasons = " ".join(letter.reason for letter in letters)
    assert "over the 0.90 MB limit" in reasons and "no text content" in reasons
    assert "'2.0' is not readable" in reasons
    missing_tenant = by_value[bad[-7][1]]
    assert "tenant_id" in missing_tenant.reason and missing_tenant.tenant_id is None

    async def all_chunked() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.chunks, {tenant})
        sets = [e for e in events if isinstance(e, ChunkSetV1)]
        return sets if len(sets) >= 50 else None

    sets = await eventually(all_chunked, what="50 valid documents chunked")
    assert sorted(s.doc_id for s in sets) == sorted(d.doc_id for d in good)
    assert pipeline.alive("ingest") and pipeline.alive("chunk")


# -- the hostile corpus: each kind beside valid traffic, each with its reason -------------

Headers = list[tuple[str, bytes | None]]


def _hostile_documents(tenant: str) -> dict[str, tuple[bytes, Headers, str, str]]:
    """label → (value, headers, expected error kind, fragment of the reason)."""
    good = json.loads(_valid(tenant, 0).model_dump_json())

    def doc(**changes: Any) -> bytes:
        return json.dumps({**good, "doc_id": "hostile.md", **changes}).encode()

    return {
        "nested-100k-arrays": (b"[" * 100_000 + b"]" * 100_000, [], "invalid_json",
                               "nested too deeply"),
        "nested-in-a-field": (doc()[:-1] + b', "metadata": ' + b"[" * 100_000
                              + b"]" * 100_000 + b"}", [], "invalid_json", "nested too deeply"),
        "integer-of-5000-digits": (doc()[:-1] + b', "title": ' + b"9" * 5_000 + b"}", [],
                                   "invalid_json", "4300 digits"),
        "raw-control-in-json": (doc(content="a").replace(b'"a"', b'"a\x01b"'), [],
                                "invalid_json", "Invalid control character"),
        "control-in-doc-id": (doc(doc_id="evil\u0007.md"), [], "schema_violation", "doc_id"),
        "controls-only": (doc(content="\x00\x01\u200b\x1b\x7f\ufeff"), [], "rejected",
                          "no text content"),
        "lone-surrogate": (doc(correlation_id="c\ud800"), [], "schema_violation",
                           "correlation_id"),
        "html-deep-dom": (doc(content_type="text/html", content="<div>" * 150_000), [],
                          "rejected", "nested deeper than 200 elements"),
        "html-wide-empty": (doc(content_type="text/html", content="<p></p>" * 120_000), [],
                            "rejected", "no text content"),
        "tenant-uppercase": (doc(tenant_id="ACME"), [], "schema_violation", "tenant_id"),
        "tenant-path": (doc(tenant_id="../other"), [], "schema_violation", "tenant_id"),
        "tenant-empty": (doc(tenant_id=""), [], "schema_violation", "tenant_id"),
        "header-forged-tenant": (doc(), [("content-type", b"application/json"),
                                         ("ce_tenant", b"victim")], "rejected",
                                 "header ce_tenant says 'victim'"),
        "header-content-type": (doc(), [("content-type", b"application/avro")], "rejected",
                                "header content-type says 'application/avro'"),
        "header-schema-major": (doc(), [("ce_type", b"ragstream.documents.v2.document.upsert")],
                                "rejected", "header ce_type says"),
        "header-not-utf8": (doc(), [("ce_tenant", b"\xff\xfe")], "not_utf8",
                            "header 'ce_tenant' is not UTF-8"),
        "header-no-value": (doc(), [("ce_tenant", None)], "not_utf8", "has no value"),
    }  # fmt: skip


async def test_hostile_documents_get_a_reason_each_and_valid_ones_go_through(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("hostile")
    marker = f"hostile-{uuid.uuid4().hex[:8]}"
    hostile = _hostile_documents(tenant)
    mixed = _valid(tenant, 1000).model_copy(
        update={"doc_id": "controls.md", "content": "Leave\x00 is\x1b twenty\u200b days\x7f."}
    )
    valid = [_valid(tenant, n) for n in range(len(hostile))]
    sends = []
    for (label, (value, headers, _, _)), event in zip(hostile.items(), valid, strict=True):
        key = f"{marker}/{label}".encode()
        sends.append(await producer.send(TOPICS.documents.name, value, key=key, headers=headers))
        sends.append(await producer.send(TOPICS.documents.name, event_bytes(event), key=b"ok"))
    truthful = [(k, v.encode()) for k, v in event_headers(TOPICS.documents, mixed, "up").items()]
    sends.append(
        await producer.send(TOPICS.documents.name, event_bytes(mixed), key=b"ok", headers=truthful)
    )
    for send in sends:
        await send

    async def dead_letters() -> dict[str, DeadLetterV1] | None:
        records = await read_topic(pipeline.bootstrap, TOPICS.dlq.name)
        letters = (DeadLetterV1.model_validate_json(r.value) for r in records)
        mine = {
            (letter.source_key or "").split("/", 1)[1]: letter
            for letter in letters
            if (letter.source_key or "").startswith(f"{marker}/")
        }
        return mine if len(mine) >= len(hostile) else None

    letters = await eventually(dead_letters, what=f"{len(hostile)} hostile documents in the DLQ")
    for label, (value, _, kind, fragment) in hostile.items():
        letter = letters[label]
        assert (letter.stage, letter.error_kind) == ("ingest", kind), (label, letter.reason)
        assert fragment in letter.reason, (label, letter.reason)
        assert letter.original_value == value or letter.original_value_truncated
    assert letters["header-forged-tenant"].tenant_id == tenant  # the payload's, not the claim

    async def accepted() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.documents_accepted, {tenant})
        return events if len(events) >= len(valid) + 1 else None

    events = await eventually(accepted, what="the valid documents accepted")
    assert sorted(e.doc_id for e in events) == sorted([*(v.doc_id for v in valid), "controls.md"])
    assert next(e for e in events if e.doc_id == "controls.md").text == "Leave is twenty days."
    print(f"hostile documents: in {len(hostile) + len(valid) + 1}, DLQ {len(letters)}, "
          f"accepted {len(events)}")  # fmt: skip
    assert pipeline.alive("ingest")


def _question(tenant: str, request_id: str, question: str) -> QueryV1:
    return QueryV1(tenant_id=tenant, correlation_id=request_id, produced_by=UPSTREAM,
                   request_id=request_id, question=question)  # fmt: skip


async def test_oversize_and_hostile_questions_are_refused_beside_valid_ones(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    tenant = tenant_name("questions")
    marker = f"q-{uuid.uuid4().hex[:8]}"
    hostile = {
        "over-4000-chars": (_question(tenant, f"{marker}-1", "why " * 1_500), "rejected",
                            "has 5999 characters, over the 4000 limit"),
        "900-kb": (_question(tenant, f"{marker}-2", "x" * 900_000), "rejected",
                   "has 900000 characters, over the 4000 limit"),
        "controls-only": (_question(tenant, f"{marker}-3", "\x00\x1b\u200b\x7f"), "rejected",
                          "is empty"),
    }  # fmt: skip
    valid = [_question(tenant, f"ok-{n}", f"How many vacation days, take {n}?") for n in range(3)]
    for label, (event, _, _) in hostile.items():
        await producer.send(
            TOPICS.queries.name, event_bytes(event), key=f"{marker}/{label}".encode()
        )
    forged = _question(tenant, f"{marker}-4", "What does the other tenant know?")
    await producer.send(TOPICS.queries.name, event_bytes(forged), key=f"{marker}/forged".encode(),
                        headers=[("ce_tenant", b"other-tenant")])  # fmt: skip
    nested = b'{"question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    await producer.send(TOPICS.queries.name, nested, key=f"{marker}/nested".encode())
    await publish_events(producer, TOPICS.queries, valid)
    expected = {label: (kind, fragment) for label, (_, kind, fragment) in hostile.items()}
    expected |= {"forged": ("rejected", "header ce_tenant says 'other-tenant'"),
                 "nested": ("invalid_json", "nested too deeply")}  # fmt: skip

    async def dead_letters() -> dict[str, DeadLetterV1] | None:
        records = await read_topic(pipeline.bootstrap, TOPICS.dlq.name)
        letters = (DeadLetterV1.model_validate_json(r.value) for r in records)
        mine = {
            (letter.source_key or "").split("/", 1)[1]: letter
            for letter in letters
            if (letter.source_key or "").startswith(f"{marker}/")
        }
        return mine if len(mine) >= len(expected) else None

    letters = await eventually(dead_letters, what="hostile questions in the DLQ")
    for label, (kind, fragment) in expected.items():
        assert letters[label].error_kind == kind and fragment in letters[label].reason, label

    # A question turned away at ingest is answered at once with a refusal and its reason
    # (the nested one has no request id to answer).
    async def refusals() -> dict[str, AnswerV1] | None:
        answers = await events_on(pipeline.bootstrap, TOPICS.answers, {tenant})
        mine = {a.request_id: a for a in answers if a.request_id.startswith(marker)}
        return mine if len(mine) >= 4 else None

    refused = await eventually(refusals, what="refusals of the turned-away questions")
    assert all(a.refusal and a.refusal.reasons == ["rejected"] for a in refused.values())
    big = refused[f"{marker}-2"]
    assert "over the 4000 limit" in (big.refusal or RefusalV1(reasons=["-"], message="")).message
    assert len(big.question) <= 501  # quoted, not 900 kB again

    async def accepted() -> list[Any] | None:
        events = await events_on(pipeline.bootstrap, TOPICS.queries_accepted, {tenant})
        return events if len(events) >= len(valid) else None

    events = await eventually(accepted, what="the valid questions accepted")
    assert sorted(e.request_id for e in events) == ["ok-0", "ok-1", "ok-2"]
    print(f"hostile questions: in {len(expected) + len(valid)}, DLQ {len(letters)}, "
          f"accepted {len(events)}")  # fmt: skip
    assert pipeline.alive("ingest")


async def test_a_flood_from_one_tenant_is_rate_limited_and_starves_no_other(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    flood_tenant, calm_tenant = tenant_name("flood"), tenant_name("calm")
    pipeline.stop_stage("ingest")
    pipeline.restart("ingest", RAGSTREAM_TENANT_BURST="40", RAGSTREAM_TENANT_RATE_PER_SECOND="0.01")
    try:
        flood = [_valid(flood_tenant, n) for n in range(1_000)]
        calm = [_valid(calm_tenant, n) for n in range(20)]
        sends = []
        for n, event in enumerate(flood):
            sends.append(await producer.send(TOPICS.documents.name, event_bytes(event), key=b"f"))
            if n % 50 == 25:
                other = calm[n // 50]
                sends.append(
                    await producer.send(TOPICS.documents.name, event_bytes(other), key=b"c")
                )
        for send in sends:
            await send

        async def accounted() -> tuple[list[Any], list[Any], list[DeadLetterV1]] | None:
            accepted = await events_on(
                pipeline.bootstrap, TOPICS.documents_accepted, {flood_tenant, calm_tenant}
            )
            records = await read_topic(pipeline.bootstrap, TOPICS.dlq.name)
            letters = [DeadLetterV1.model_validate_json(r.value) for r in records]
            limited = [letter for letter in letters if letter.tenant_id == flood_tenant]
            ok_flood = [e for e in accepted if e.tenant_id == flood_tenant]
            ok_calm = [e for e in accepted if e.tenant_id == calm_tenant]
            done = len(ok_flood) + len(limited) >= len(flood) and len(ok_calm) >= len(calm)
            return (ok_flood, ok_calm, limited) if done else None

        ok_flood, ok_calm, limited = await eventually(accounted, what="every flood event settled")
    finally:
        pipeline.stop_stage("ingest")
        pipeline.restart("ingest")
    assert len(ok_flood) + len(limited) == len(flood)
    assert 40 <= len(ok_flood) < 100 and len(ok_calm) == len(calm)
    assert {letter.error_kind for letter in limited} == {"rate_limited"}
    assert all(
        f"tenant {flood_tenant} is over its rate limit of 0.01 events/s (burst 40)" in letter.reason
        for letter in limited
    )
    print(f"flood: in {len(flood) + len(calm)}, DLQ {len(limited)} (rate_limited), "
          f"accepted {len(ok_flood)} flood + {len(ok_calm)} calm")  # fmt: skip


def _tenant_on_another_partition(label: str, taken: str) -> str:
    """A tenant name whose questions land on another partition of the questions topic than
    `taken`'s (questions are keyed by tenant; aiokafka's default partitioner)."""

    def partition(tenant: str) -> int:
        return (murmur2(tenant.encode()) & 0x7FFFFFFF) % TOPICS.queries.partitions

    while partition(tenant := tenant_name(label)) == partition(taken):
        pass
    return tenant


async def test_a_question_flood_holds_up_only_its_own_partition(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    """300 questions from one tenant wait for ingest, then one from another tenant: ingest
    consumes each partition on its own, so the other's question is accepted while most of the
    flood is still being turned away, not after it."""
    flood_tenant = tenant_name("qflood")
    calm_tenant = _tenant_on_another_partition("qcalm", flood_tenant)
    pipeline.stop_stage("ingest")
    flood = [_question(flood_tenant, f"flood-{n}", f"Flood question {n}?") for n in range(300)]
    calm = _question(calm_tenant, "calm-0", "How many vacation days do I get?")
    await publish_events(producer, TOPICS.queries, flood)
    await publish_events(producer, TOPICS.queries, [calm])
    pipeline.restart("ingest", RAGSTREAM_TENANT_BURST="5", RAGSTREAM_TENANT_RATE_PER_SECOND="0.01")
    try:

        async def settled() -> tuple[list[Any], list[Any]] | None:
            refused = [  # turned away by ingest (the 5 accepted are answered later)
                r for r in await read_topic(pipeline.bootstrap, TOPICS.answers.name)
                if json.loads(r.value)["tenant_id"] == flood_tenant
                and "rate_limited" in (json.loads(r.value).get("refusal") or {}).get("reasons", [])
            ]  # fmt: skip
            accepted = [
                r for r in await read_topic(pipeline.bootstrap, TOPICS.queries_accepted.name)
                if json.loads(r.value)["tenant_id"] in (flood_tenant, calm_tenant)
            ]  # fmt: skip
            done = len(refused) + len(accepted) >= len(flood) + 1
            return (refused, accepted) if done else None

        refusals, accepted = await eventually(settled, what="the flood turned away, calm taken")
    finally:
        pipeline.stop_stage("ingest")
        pipeline.restart("ingest")
    calm_taken = [r for r in accepted if json.loads(r.value)["tenant_id"] == calm_tenant]
    assert len(calm_taken) == 1 and len(refusals) == len(flood) - 5
    # a refusal is the question's one answer: no dead letter, whose replay would be a second
    letters = [
        DeadLetterV1.model_validate_json(r.value)
        for r in await read_topic(pipeline.bootstrap, TOPICS.dlq.name)
    ]
    assert [letter for letter in letters if letter.tenant_id == flood_tenant] == []
    refused_before = sum(1 for r in refusals if r.timestamp <= calm_taken[0].timestamp)
    print(f"question flood: {len(flood)} flood questions, {len(refusals)} refused, DLQ 0, "
          f"{refused_before} of them before the other tenant's question was accepted")  # fmt: skip
    assert refused_before < len(refusals) // 2


async def test_a_header_that_is_not_utf8_costs_a_batch_stage_only_its_own_record(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    """embed takes chunks in batches: one record with a broken header beside good ones is
    dead-lettered alone (`not_utf8`, by embed) and its neighbours are embedded."""
    tenant = tenant_name("batch-header")
    chunks = [chunk(tenant, n) for n in range(6)]
    broken = chunks[2]
    sends = []
    for event in chunks:
        headers = [("ce_tenant", b"\xff\xfe")] if event is broken else []
        sends.append(
            await producer.send(
                TOPICS.chunks.name, event_bytes(event), key=b"same-batch", headers=headers
            )
        )
    for send in sends:
        await send

    async def settled() -> tuple[list[Any], list[DeadLetterV1]] | None:
        vectors = await events_on(pipeline.bootstrap, TOPICS.chunk_vectors, {tenant})
        letters = [
            letter
            for letter in await events_on(pipeline.bootstrap, TOPICS.dlq, {tenant})
            if isinstance(letter, DeadLetterV1)
        ]
        return (vectors, letters) if len(vectors) + len(letters) >= len(chunks) else None

    vectors, letters = await eventually(settled, what="every chunk embedded or dead-lettered")
    assert sorted(v.chunk.chunk_id for v in vectors) == sorted(
        c.chunk_id for c in chunks if c is not broken
    )
    [letter] = letters
    assert (letter.stage, letter.error_kind) == ("embed", "not_utf8"), letter.reason
    assert "header 'ce_tenant' is not UTF-8" in letter.reason
    assert letter.original_value == event_bytes(broken)
    print(f"batch header: in {len(chunks)}, DLQ {len(letters)}, embedded {len(vectors)}")
    assert pipeline.alive("embed")
