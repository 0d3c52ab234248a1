"""Any bytes given to any stage's consumer end in a valid event or a dead letter with a reason.

Properties over every input topic of every stage (`STAGE_INPUTS`): arbitrary bytes,
arbitrary JSON, and valid events of each contract with fields fuzzed, dropped, added or
replaced. Batch consumers go through the runtime's `validate_batch` and `classify`;
single-record consumers through the broker's `strict_json_decoder` and the contract; the
ingest handlers through FastStream's test broker, one handler at a time.
"""

from __future__ import annotations

import asyncio
import copy
import json
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.message import StreamMessage
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contracts.registry import TOPICS, TopicSpec
from contracts.v1 import (
    AcceptedDocumentV1,
    AcceptedQueryV1,
    AnswerV1,
    ChunkSetV1,
    ChunkV1,
    ChunkVectorV1,
    ContextChunkV1,
    DeadLetterV1,
    DocumentDeleteV1,
    DocumentRemovedV1,
    DocumentUpsertV1,
    GenerationRequestV1,
    GenerationV1,
    LineageRecordV1,
    ProducedBy,
    QueryV1,
    QueryVectorV1,
    RefusalV1,
    VectorV1,
)
from contracts.v1.operations import DeadLetterKind
from services.ingest import app as ingest_stage
from services.ingest.acceptance import PreparedDocument, prepare_document, prepare_question
from services.ingest.normalise import Rejection
from services.runtime.batches import validate_batch
from services.runtime.dead_letters import DeadLetterMiddleware, classify, dead_letter_for
from services.runtime.publishing import event_headers, strict_json_decoder
from services.runtime.settings import IngestSettings
from services.runtime.stage import STAGE_INPUTS

SINGLE_RECORD = {TOPICS.documents_accepted.name}  # chunk; ingest takes batches (partition workers)
INPUTS = sorted(
    {(stage, spec.name): spec for stage, specs in STAGE_INPUTS.items() for spec in specs}.items()
)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_ENVELOPE = {
    "tenant_id": "acme",
    "correlation_id": "c-1",
    "produced_by": ProducedBy(service="test", version="1"),
}
_CHUNK_ID = "3f1c9a4e-6a52-5d1e-9c7b-1e2f3a4b5c6d"
_HASH = "a" * 64
_CONTEXT = ContextChunkV1(chunk_id=_CHUNK_ID, doc_id="d.md", text="Twenty days.", score=0.8)
_CHUNK = {
    "chunk_id": _CHUNK_ID,
    "doc_id": "d.md",
    "doc_version": 1,
    "position": 0,
    "text": "Twenty days.",
    "heading_path": ["Leave"],
    "token_count": 3,
    "content_hash": _HASH,
}
_NOW = datetime(2026, 11, 23, tzinfo=UTC)
_VECTOR = VectorV1.encode([0.5, -0.25, 1.0])
_QUESTION = {"request_id": "r-1", "question": "How many days?"}
_GENERATION = {**_QUESTION, "tier": "small", "prompt_name": "grounded", "prompt_version": "v1"}

#: A valid event of every payload each stage consumes.
SEEDS: dict[str, list[Any]] = {
    TOPICS.documents.name: [
        DocumentUpsertV1(
            **_ENVELOPE, doc_id="d.md", content_type="text/html", content="<h1>Leave</h1>"
        ),
        DocumentDeleteV1(**_ENVELOPE, doc_id="d.md"),
    ],
    TOPICS.queries.name: [QueryV1(**_ENVELOPE, **_QUESTION)],
    TOPICS.documents_accepted.name: [
        AcceptedDocumentV1(
            **_ENVELOPE,
            doc_id="d.md",
            doc_version=2,
            content_hash=_HASH,
            content_type="text/markdown",
            text="# Leave\n\nTwenty days.",
            metadata={"team": "hr"},
        ),
        DocumentRemovedV1(**_ENVELOPE, doc_id="d.md", doc_version=3),
    ],
    TOPICS.chunks.name: [
        ChunkV1(**_ENVELOPE, **_CHUNK),
        ChunkSetV1(**_ENVELOPE, doc_id="d.md", doc_version=1, chunk_ids=[_CHUNK_ID]),
    ],
    TOPICS.queries_accepted.name: [
        AcceptedQueryV1(**_ENVELOPE, **_QUESTION, question_hash=_HASH, asked_at=_NOW)
    ],
    TOPICS.chunk_vectors.name: [
        ChunkVectorV1(**_ENVELOPE, chunk=_CHUNK, vector=_VECTOR, embedding_model="minilm"),
        ChunkSetV1(**_ENVELOPE, doc_id="d.md", doc_version=1, deleted=True),
    ],
    TOPICS.query_vectors.name: [
        QueryVectorV1(
            **_ENVELOPE, **_QUESTION, question_hash=_HASH, vector=_VECTOR, embedding_model="m"
        )
    ],
    TOPICS.answers.name: [
        AnswerV1(**_ENVELOPE, **_QUESTION, answer="Twenty.", tier="small", latency_ms=12.5),
        AnswerV1(
            **_ENVELOPE,
            **_QUESTION,
            refusal=RefusalV1(reasons=["budget_exceeded"], message="Budget used up."),
            tier="small",
            latency_ms=3.0,
        ),
    ],
    TOPICS.generation_requests.name: [
        GenerationRequestV1(
            **_ENVELOPE,
            **_GENERATION,
            context=[_CONTEXT],
            max_output_tokens=64,
            token_budget=512,
            complexity_score=0.4,
            fallback_chain=["extractive"],
        )
    ],
    TOPICS.generations.name: [
        GenerationV1(
            **_ENVELOPE,
            **_GENERATION,
            model_name="smol",
            model_version="1",
            context=[_CONTEXT],
            raw_output='{"answer": "Twenty.", "citations": []}',
            input_tokens=40,
            output_tokens=8,
            finish_reason="stop",
            model_latency_ms=120.0,
        )
    ],
    TOPICS.audit.name: [
        LineageRecordV1(
            **_ENVELOPE,
            stage="chunk",
            outcome="ok",
            started_at=_NOW,
            finished_at=_NOW,
            details={"chunks": 2, "nested": {"list": [1, None, "x"]}},
        )
    ],
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["acme", "1.0", "2.0", "document.upsert", "chunk", _CHUNK_ID, _HASH]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if not isinstance(node, dict | list):
        return
    for key, child in node.items() if isinstance(node, dict) else enumerate(node):
        yield (*path, key)
        yield from _paths(child, (*path, key))


def _fuzzed_like(value: Any) -> st.SearchStrategy[Any]:
    """A value of the same JSON type: the field stays well-typed, its content does not."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.integers() | st.sampled_from([0, -1, 2**63, -(2**64), 10**300])
    if isinstance(value, float):
        return st.floats()
    if isinstance(value, str):
        return st.text(max_size=80) | st.text(min_size=100, max_size=300)
    return json_values


@st.composite
def mutated_events(draw: st.DrawFn, seeds: list[Any]) -> bytes:
    """A valid event of `seeds`, then one to three of: a field fuzzed within its type, replaced by
    any JSON, removed, or an unknown field added."""
    event = copy.deepcopy(draw(st.sampled_from(seeds)).model_dump(mode="json"))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(event))
        if not paths:
            break
        *parent_path, key = draw(st.sampled_from(paths))
        parent = event
        for step in parent_path:
            parent = parent[step]
        how = draw(st.sampled_from(["fuzz", "fuzz", "replace", "remove", "add"]))
        if how == "fuzz":
            parent[key] = draw(_fuzzed_like(parent[key]))
        elif how == "replace":
            parent[key] = draw(json_values)
        elif how == "remove":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    return json.dumps(event).encode()


def utf8_text(**sizes: int) -> st.SearchStrategy[str]:
    """Text a valid event can hold: no lone surrogates (pydantic rejects them at build time;
    hostile bytes with them are drawn elsewhere)."""
    return st.text(st.characters(codec="utf-8"), **sizes)


tenants = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
texts = utf8_text(max_size=300) | st.lists(
    st.sampled_from(["<h1>", "</h1>", "<li>", "<pre>", "<div>", "<script>", "&amp;", "\x00"])
    | utf8_text(max_size=10),
    max_size=60,
).map("".join)


def upstream_events(spec: TopicSpec) -> st.SearchStrategy[Any]:
    """Valid upstream events of `spec`'s contract, their free fields fuzzed."""
    envelope = {
        "tenant_id": tenants,
        "correlation_id": utf8_text(min_size=1, max_size=20),
        "produced_by": st.just(ProducedBy(service="upstream", version="1")),
    }
    if spec is TOPICS.queries:
        return st.builds(
            QueryV1, **envelope, request_id=utf8_text(min_size=1, max_size=20), question=texts
        )
    doc_ids = st.text(
        st.characters(min_codepoint=0x20, exclude_characters="\x7f", codec="utf-8"), min_size=1
    )
    return st.builds(
        DocumentUpsertV1,
        **envelope,
        doc_id=doc_ids,
        content_type=st.sampled_from(["text/plain", "text/markdown", "text/html"]),
        content=texts,
        title=utf8_text(max_size=50),
        metadata=st.dictionaries(utf8_text(max_size=8), utf8_text(max_size=8), max_size=3),
    ) | st.builds(DocumentDeleteV1, **envelope, doc_id=doc_ids)


def hostile_values(spec: TopicSpec) -> st.SearchStrategy[bytes]:
    """Any bytes, any JSON, and events of `spec`'s contract bent out of shape."""
    return (
        st.binary(max_size=512)
        | json_values.map(lambda v: json.dumps(v).encode())
        | mutated_events(SEEDS[spec.name])
        | (
            upstream_events(spec).map(lambda event: event.model_dump_json().encode())
            if spec in (TOPICS.documents, TOPICS.queries)
            else st.nothing()
        )
    )


def _record(spec: TopicSpec, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> Any:
    return ConsumerRecord(
        topic=spec.name,
        partition=3,
        offset=41,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"key",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value),
        headers=headers or [],
    )


def _single_record_event(spec: TopicSpec, record: Any) -> Any:
    """What a single-record subscriber hands its handler: the broker's decoder, then the
    handler's contract-typed argument."""
    message = StreamMessage(raw_message=record, body=record.value)
    decoded = asyncio.run(strict_json_decoder(message))
    return spec.adapter.validate_python(decoded)


def consume(stage: str, spec: TopicSpec, value: bytes) -> Any:
    """The event a stage's consumer of `spec` gets from `value`, or the dead letter it sends.

    Any exception escaping this is the bug the properties look for."""
    record = _record(spec, value)
    if spec.name in SINGLE_RECORD:
        try:
            events, error = [_single_record_event(spec, record)], None
        except Exception as exc:  # the dead-letter middleware gets any Exception
            events, error = [], exc
    else:
        batch = validate_batch(StreamMessage(raw_message=[record], body=[value]), spec)
        events = batch.events
        error = batch.invalid[0][1] if batch.invalid else None
    if events:
        [event] = events
        assert error is None
        published = spec.adapter.dump_json(event)  # NaN is published as null: compare bytes
        assert spec.adapter.dump_json(spec.adapter.validate_json(published)) == published
        assert spec.key_bytes(event)  # it can be keyed, so published downstream
        return event
    assert error is not None
    kind, reason = classify(record.value, error, record.headers)
    assert kind in get_args(DeadLetterKind) and kind != "handler_error", (kind, reason)
    assert reason.strip()
    letter = dead_letter_for(record, stage, kind, reason)
    assert DeadLetterV1.model_validate_json(letter.model_dump_json()) == letter
    assert (letter.original_value, letter.source_offset) == (value, 41)
    return letter


def test_every_stage_input_has_seeds_that_are_processed() -> None:
    assert {name for _, name in (key for key, _ in INPUTS)} == set(SEEDS)
    for (stage, _), spec in INPUTS:
        for seed in SEEDS[spec.name]:
            assert consume(stage, spec, seed.model_dump_json().encode()) == seed


@FAST
@given(data=st.data())
@example(data=None)  # the explicit hostile values below, on every topic
def test_any_bytes_end_in_an_event_or_a_dead_letter(data: st.DataObject | None) -> None:
    for (stage, _), spec in INPUTS:
        values = (
            [data.draw(hostile_values(spec), label=spec.name)]
            if data is not None
            else [
                b"",
                b"\xff\xfe",
                b"[" * 100_000 + b"]" * 100_000,
                b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                b'{"tenant_id": ' + b"9" * 5_000 + b"}",
                b'{"tenant_id": "acme\\ud800"}',
                b'{"schema_version": "2.0"}',
                b"NaN",
            ]
        )
        for value in values:
            consume(stage, spec, value)


@FAST
@given(value=st.binary(max_size=256), headers=st.lists(st.tuples(st.text(), st.binary())))
@example(value=b"{}", headers=[("ce_tenant", b"\xff")])
def test_a_dead_letter_always_has_a_reason_whatever_the_error(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    """classify never fails, even on an error unrelated to the value (a handler's)."""
    record = _record(TOPICS.chunks, value, headers)
    for error in (ZeroDivisionError("x"), UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")):
        kind, reason = classify(value, error, headers)
        assert kind in get_args(DeadLetterKind) and reason
        dead_letter_for(record, "embed", kind, reason).model_dump_json()


def test_a_header_that_is_not_utf8_is_named_in_the_reason() -> None:
    error = UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    kind, reason = classify(b"{}", error, [("ce_type", b"ok"), ("ce_tenant", b"\xffx")])
    assert (kind, reason) == ("not_utf8", "header 'ce_tenant' is not UTF-8: byte 0xff at 0")


def test_an_integer_too_long_to_decode_is_invalid_json_not_a_crash() -> None:
    value = b'{"tenant_id": ' + b"9" * 5_000 + b"}"
    kind, reason = classify(value, ValueError("decoder refused it"))
    assert kind == "invalid_json" and "4300 digits" in reason


# -- the ingest handlers, one at a time, on FastStream's test broker ---------------------


async def _through_ingest(
    spec: TopicSpec, records: list[tuple[bytes, dict[str, str]]]
) -> list[tuple[str, str]]:
    """Publish each record to ingest's handler of `spec`; each one's outcome, in order."""
    broker = KafkaBroker(
        middlewares=[DeadLetterMiddleware.for_stage("ingest", attempts=1)],
        decoder=strict_json_decoder,
    )
    broker.include_router(ingest_stage.router)
    outcomes: list[tuple[str, str]] = []

    @broker.subscriber(TOPICS.dlq.name)
    async def dead_letters(letter: dict[str, Any]) -> None:
        outcomes.append(("dead_letter", letter["reason"]))

    @broker.subscriber(TOPICS.audit.name)
    async def lineage(record: dict[str, Any]) -> None:
        if record["outcome"] == "duplicate":
            outcomes.append(("duplicate", record["input_event_id"]))

    with tempfile.TemporaryDirectory() as data_dir:
        settings = IngestSettings(data_dir=Path(data_dir), tenant_burst=10_000)
        resources = ingest_stage.IngestResources.open(settings)
        broker.context.set_global("ingest", resources)
        publisher = (
            ingest_stage.accepted_documents
            if spec is TOPICS.documents
            else ingest_stage.accepted_queries
        )
        try:
            async with TestKafkaBroker(broker) as test_broker:
                for value, headers in records:
                    before = len(outcomes), publisher.mock.call_count
                    await test_broker.publish(value, spec.name, headers=headers)
                    if publisher.mock.call_count > before[1]:
                        outcomes.append(("accepted", ""))
                    assert len(outcomes) == before[0] + 1, f"{value[:200]!r}: {outcomes}"
        finally:
            resources.versions.close()
    return outcomes


def _claimed_headers(spec: TopicSpec, value: bytes) -> st.SearchStrategy[dict[str, str]]:
    """Headers a producer might send: none, the truth, or some claims fuzzed."""
    try:
        truth = event_headers(spec, spec.adapter.validate_json(value), "upstream")
    except ValueError:
        truth = {}
    names = ["content-type", "ce_type", "ce_id", "ce_tenant", "ce_correlationid", "x-other"]
    lies = st.dictionaries(st.sampled_from(names), st.text(max_size=30), max_size=3)
    return st.just({}) | st.just(truth) | lies.map(lambda lie: {**truth, **lie})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), spec=st.sampled_from([TOPICS.documents, TOPICS.queries]))
def test_ingest_handles_each_hostile_record_exactly_once(
    data: st.DataObject, spec: TopicSpec
) -> None:
    """Each record ends accepted, dead-lettered with a reason, or a recorded duplicate."""
    records = []
    for _ in range(data.draw(st.integers(1, 6), label="records")):
        value = data.draw(hostile_values(spec), label="value")
        records.append((value, data.draw(_claimed_headers(spec, value), label="headers")))
    outcomes = asyncio.run(_through_ingest(spec, records))
    assert len(outcomes) == len(records)
    assert all(detail.strip() for kind, detail in outcomes if kind == "dead_letter")


@FAST
@given(document=upstream_events(TOPICS.documents), query=upstream_events(TOPICS.queries))
def test_ingest_core_prepares_or_rejects_any_valid_event(document: Any, query: QueryV1) -> None:
    """The pure core never raises: normalised text without control characters, no longer
    than its input (HTML markup adds at most a few characters per element), or a reason."""
    settings = IngestSettings(max_document_bytes=2_000, max_question_chars=200)
    outcomes = [prepare_question(query, settings)]
    if isinstance(document, DocumentUpsertV1):
        outcomes.append(prepare_document(document, settings))
        source = document.content
    for outcome in outcomes:
        if isinstance(outcome, Rejection):
            assert outcome.reason.strip()
            continue
        text = outcome.text if isinstance(outcome, PreparedDocument) else outcome.question
        assert text and text == text.strip()
        assert not any(ch in text for ch in "\x00\x07\x1b\x7f\u200b\ufeff")
        if isinstance(outcome, PreparedDocument):
            assert len(text) <= 2 * len(source)
