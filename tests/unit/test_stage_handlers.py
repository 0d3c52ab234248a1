"""ingest, chunk and route handlers, one at a time, on FastStream's in-memory test broker."""

import asyncio
import base64
import gc
import importlib
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, get_type_hints

import anyio.to_thread
import pytest
from aiokafka import ConsumerRecord
from fast_depends.library import CustomField
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.message import StreamMessage
from prometheus_client import REGISTRY

from contracts.registry import TOPICS
from contracts.v1 import AcceptedDocumentV1, AnswerV1, DocumentUpsertV1, ProducedBy, QueryV1
from services.chunk import app as chunk_stage
from services.chunk.chunker import Chunker, load_tokenizer
from services.ingest import app as ingest_stage
from services.route import app as route_stage
from services.route.alerts import BudgetAlerts
from services.route.budget import LedgerCatchUp, SpendLedger
from services.route.cache import AnswerCache
from services.route.index import VectorIndex
from services.runtime.dead_letters import DeadLetterMiddleware
from services.runtime.loop_context import LoopContext
from services.runtime.publishing import event_bytes, strict_json_decoder
from services.runtime.settings import IngestSettings, RouteSettings
from services.runtime.stage import freeze_startup_objects, load_stage_app
from tests.unit.test_query_decisions import NOW, generation
from tests.unit.test_vector_index import chunk_set, vector_event

pytestmark = pytest.mark.asyncio(loop_scope="function")
STAGE_APPS = ["ingest", "chunk", "embed", "route", "generate", "validate", "audit"]


def _broker(stage: str, router: Any) -> KafkaBroker:
    broker = KafkaBroker(
        middlewares=[DeadLetterMiddleware.for_stage(stage, attempts=2, retry_wait_s=0.01)],
        decoder=strict_json_decoder,
    )
    broker.include_router(router)
    return broker


def upsert(content: str = "# Leave\n\nTwenty days.", tenant: str = "acme") -> DocumentUpsertV1:
    return DocumentUpsertV1(
        tenant_id=tenant,
        correlation_id="c-1",
        produced_by=ProducedBy(service="test", version="1"),
        doc_id="handbook.md",
        content_type="text/markdown",
        content=content,
    )


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[tuple[KafkaBroker, list[bytes]]]:
    broker = _broker("ingest", ingest_stage.router)
    dead: list[dict[str, Any]] = []

    @broker.subscriber(TOPICS.dlq.name)
    async def dlq_sink(letter: dict[str, Any]) -> None:
        dead.append(letter)

    settings = IngestSettings(data_dir=tmp_path, tenant_burst=3, tenant_rate_per_second=0.001)
    resources = ingest_stage.IngestResources.open(settings)
    broker.context.set_global("ingest", resources)
    async with TestKafkaBroker(broker) as test_broker:
        yield test_broker, dead
    resources.versions.close()


async def test_ingest_accepts_a_document_then_drops_its_unchanged_republish(ingest: Any) -> None:
    broker, dead = ingest
    await broker.publish(event_bytes(upsert()), TOPICS.documents.name)
    ingest_stage.accepted_documents.mock.assert_called_once()
    accepted = AcceptedDocumentV1.model_validate(
        ingest_stage.accepted_documents.mock.call_args.args[0]
    )
    assert (accepted.doc_version, accepted.text) == (1, "# Leave\n\nTwenty days.")

    await broker.publish(event_bytes(upsert()), TOPICS.documents.name)
    ingest_stage.accepted_documents.mock.assert_called_once()
    await broker.publish(event_bytes(upsert("# Leave\n\nThirty days.")), TOPICS.documents.name)
    assert ingest_stage.accepted_documents.mock.call_count == 2
    changed = AcceptedDocumentV1.model_validate(
        ingest_stage.accepted_documents.mock.call_args.args[0]
    )
    assert changed.doc_version == 2
    assert dead == []


async def test_two_versions_of_a_document_handled_at_once_get_two_version_numbers(
    ingest: Any,
) -> None:
    """Each partition has a worker of its own: an upstream that does not key a document by its
    id (as the registry asks) can put two versions of it in two partitions, handled at once."""
    broker, dead = ingest
    first, second = upsert("# Leave\n\nTwenty days."), upsert("# Leave\n\nThirty days.")
    await asyncio.gather(
        broker.publish(event_bytes(first), TOPICS.documents.name),
        broker.publish(event_bytes(second), TOPICS.documents.name),
    )
    calls = ingest_stage.accepted_documents.mock.call_args_list
    versions = sorted(AcceptedDocumentV1.model_validate(c.args[0]).doc_version for c in calls)
    assert versions == [1, 2] and dead == []


async def test_ingest_publishes_an_unchanged_document_again_as_a_new_version_on_reindex(
    ingest: Any,
) -> None:
    broker, dead = ingest
    await broker.publish(event_bytes(upsert()), TOPICS.documents.name)
    await broker.publish(event_bytes(upsert()), TOPICS.documents.name)
    ingest_stage.accepted_documents.mock.assert_called_once()

    reindex = upsert().model_copy(update={"reindex": True})
    await broker.publish(event_bytes(reindex), TOPICS.documents.name)
    assert ingest_stage.accepted_documents.mock.call_count == 2
    again = AcceptedDocumentV1.model_validate(
        ingest_stage.accepted_documents.mock.call_args.args[0]
    )
    assert (again.doc_version, again.text) == (2, "# Leave\n\nTwenty days.")
    assert dead == []


async def test_ingest_sends_bad_and_over_limit_events_to_the_dlq(ingest: Any) -> None:
    broker, dead = ingest
    await broker.publish(b"\xffnot json", TOPICS.documents.name)
    await broker.publish(event_bytes(upsert("   ")), TOPICS.documents.name)
    for n in range(4):  # burst of 3 per tenant; the empty one above took one
        await broker.publish(event_bytes(upsert(f"v{n}", tenant="flood")), TOPICS.documents.name)
    assert [letter["error_kind"] for letter in dead] == ["not_utf8", "rejected", "rate_limited"]
    assert "rate limit" in dead[2]["reason"]
    assert base64.b64decode(dead[0]["original_value"]) == b"\xffnot json"
    ingest_stage.accepted_documents.mock.assert_called()


async def test_ingest_refuses_a_question_over_its_rate_limit_without_a_dead_letter(
    ingest: Any,
) -> None:
    """The refusal is the question's one answer (a dead letter's replay would give it a
    second); the refusal is counted like a dead letter would be."""
    broker, dead = ingest
    labels = {"stage": "ingest", "topic": TOPICS.queries.name}

    def counted() -> float:
        return REGISTRY.get_sample_value("ragstream_rate_limited_total", labels) or 0.0

    before = counted()
    for n in range(4):  # burst of 3 per tenant
        question = QueryV1(
            tenant_id="asker",
            correlation_id=f"c-{n}",
            produced_by=ProducedBy(service="test", version="1"),
            request_id=f"r-{n}",
            question=f"How many vacation days in year {n}?",
        )
        await broker.publish(event_bytes(question), TOPICS.queries.name)
    assert ingest_stage.accepted_queries.mock.call_count == 3
    refusal = AnswerV1.model_validate(ingest_stage.answers.mock.call_args.args[0])
    assert refusal.request_id == "r-3" and refusal.refusal is not None
    assert refusal.refusal.reasons == ["rate_limited"]
    assert "tenant asker is over its rate limit" in refusal.refusal.message
    assert refusal.refusal.message.endswith("ask again later")
    assert dead == [] and counted() == before + 1


async def test_chunk_publishes_chunks_then_the_chunk_set() -> None:
    broker = _broker("chunk", chunk_stage.router)
    broker.context.set_global("chunker", Chunker(load_tokenizer(), 200, 30))
    document = AcceptedDocumentV1(
        tenant_id="acme",
        correlation_id="c-1",
        produced_by=ProducedBy(service="test", version="1"),
        doc_id="handbook.md",
        doc_version=3,
        content_hash="a" * 64,
        content_type="text/markdown",
        text="# Leave\n\nTwenty days.\n\n# Pay\n\nMonthly.",
    )
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish(event_bytes(document), TOPICS.documents_accepted.name)
        calls = chunk_stage.chunks.mock.call_args_list
        published = [TOPICS.chunks.adapter.validate_python(c.args[0]) for c in calls]
    assert [type(e).__name__ for e in published] == ["ChunkV1", "ChunkV1", "ChunkSetV1"]
    assert [e.heading_path for e in published[:2]] == [["Leave"], ["Pay"]]
    assert published[2].chunk_ids == [published[0].chunk_id, published[1].chunk_id]
    assert all(e.doc_version == 3 and e.causation_id == document.event_id for e in published)


async def test_a_handler_call_resolves_its_context_without_a_worker_thread(
    ingest: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fast_depends runs a synchronous context field in a worker thread (~0.2 ms of CPU a field
    and a call): the stages' message, broker and resources are resolved on the loop."""
    broker, dead = ingest
    hops: list[Any] = []
    real_run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await real_run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    await broker.publish(event_bytes(upsert("# Leave\n\nNine days.")), TOPICS.documents.name)
    ingest_stage.accepted_documents.mock.assert_called_once()
    assert dead == []
    assert hops == []


@pytest.mark.parametrize("stage", STAGE_APPS)
async def test_every_stage_handler_takes_its_context_on_the_loop(stage: str) -> None:
    module = importlib.import_module(f"services.{stage}.app")
    # a subscribed handler is wrapped by FastStream: its declared function is `_original_call`
    found = [getattr(value, "_original_call", value) for value in vars(module).values()]
    handlers = [
        f for f in found
        if inspect.iscoroutinefunction(f) and f.__module__ == module.__name__
    ]  # fmt: skip
    fields = [
        meta
        for handler in handlers
        for hint in get_type_hints(handler, include_extras=True).values()
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, CustomField)
    ]
    assert fields, f"no handler of services.{stage}.app takes a context parameter"
    assert all(isinstance(meta, LoopContext) for meta in fields), fields


async def _route_and_three_documents(
    tmp_path: Path,
) -> tuple[route_stage.RouteResources, StreamMessage[Any]]:
    """Route's resources on a local index, and a batch of three one-chunk documents."""
    index = VectorIndex(path=tmp_path / "qdrant")
    await index.warm_up()
    cache = AnswerCache(index.client, "ragstream_answers", lru_entries=0, local=True)
    await cache.warm_up()
    settings = RouteSettings(data_dir=tmp_path)
    publishers = route_stage.build_router(settings)[1:]
    route = route_stage.RouteResources(
        settings, index, cache, SpendLedger(), BudgetAlerts(0.8), *publishers
    )
    events: list[Any] = []
    for doc in range(3):
        vector = vector_event("acme", f"doc-{doc}", 1, 0, seed=doc)
        events += [vector, chunk_set("acme", f"doc-{doc}", 1, [vector.chunk.chunk_id])]
    return route, _batch(TOPICS.chunk_vectors.name, events)


async def test_route_indexing_waits_between_documents_while_a_question_is_routed(
    tmp_path: Path,
) -> None:
    """In Qdrant's local mode the index runs on route's event loop: a batch of chunk vectors
    stops after each whole document while a question is being routed (it would otherwise
    hold the question until the whole batch is written), and goes on once it is routed."""
    route, message = await _route_and_three_documents(tmp_path)
    async with TestKafkaBroker(KafkaBroker()) as broker:
        async with route.questions_first.query():
            indexing = asyncio.create_task(
                route_stage.index_chunk_vectors([], message, broker, route)
            )
            await asyncio.sleep(0.3)
            assert await route.index.count("acme") == 1 and not indexing.done()
        await asyncio.wait_for(indexing, 5)
    assert await route.index.count("acme") == 3
    await route.index.close()


async def test_route_indexing_waits_for_questions_at_most_its_budget_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady stream of questions slows indexing down but cannot stop it."""
    monkeypatch.setattr(route_stage, "INDEX_YIELD_MAX_S", 0.2)
    route, message = await _route_and_three_documents(tmp_path)
    async with TestKafkaBroker(KafkaBroker()) as broker, route.questions_first.query():
        await asyncio.wait_for(route_stage.index_chunk_vectors([], message, broker, route), 2)
        assert await route.index.count("acme") == 3
    await route.index.close()


def _batch(topic: str, events: list[Any]) -> StreamMessage[Any]:
    records = tuple(
        ConsumerRecord(topic, 0, n, 0, 0, None, event_bytes(e), None, 0, 0, [])
        for n, e in enumerate(events)
    )
    return StreamMessage(raw_message=records, body=[r.value for r in records])


async def test_route_holds_questions_until_its_ledger_has_read_the_generations_at_its_start(
    tmp_path: Path,
) -> None:
    """After a restart, a question queued meanwhile is checked against the whole ledger, not
    against what its consumer had read so far."""
    route, _ = await _route_and_three_documents(tmp_path)
    route.ledger_catch_up = LedgerCatchUp({0: 2})  # two generations on the topic at the start
    spent = [generation("acme", f"r-{n}", 700, NOW) for n in range(2)]
    async with TestKafkaBroker(KafkaBroker()) as broker:
        routing = asyncio.create_task(
            route_stage.route_queries([], _batch(TOPICS.query_vectors.name, []), broker, route)
        )
        await asyncio.sleep(0.2)
        assert not routing.done()
        await route_stage.charge_generations([], _batch(TOPICS.generations.name, spent), route)
        await asyncio.wait_for(routing, 5)
    assert route.ledger.spent_today("acme", NOW) == 1400
    await route.index.close()


async def test_route_stops_waiting_for_its_ledger_after_the_timeout_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    route, _ = await _route_and_three_documents(tmp_path)
    route.settings = RouteSettings(data_dir=tmp_path, ledger_catch_up_timeout_s=0.1)
    route.ledger_catch_up = LedgerCatchUp({0: 5})
    async with TestKafkaBroker(KafkaBroker()) as broker:
        message = _batch(TOPICS.query_vectors.name, [])
        await asyncio.wait_for(route_stage.route_queries([], message, broker, route), 5)
    assert route.ledger_catch_up.timed_out
    assert "RAGSTREAM_LEDGER_CATCH_UP_TIMEOUT_S" in caplog.text
    await route.index.close()


@pytest.mark.parametrize("stage", STAGE_APPS)
async def test_every_stage_freezes_what_it_holds_once_started(stage: str) -> None:
    app = load_stage_app(stage)
    # FastStream keeps an app's after-startup hooks in this list, each wrapped (fast_depends)
    hooks = [getattr(hook, "__wrapped__", hook) for hook in app._after_startup_calling]
    assert freeze_startup_objects in hooks


async def test_frozen_objects_are_left_out_of_full_collections() -> None:
    held = [[i] for i in range(1000)]  # lists: the collector tracks every one
    assert all(gc.is_tracked(o) for o in held)
    before = gc.get_freeze_count()
    try:
        await freeze_startup_objects()
        assert gc.get_freeze_count() >= before + len(held)
        scanned = {id(o) for o in gc.get_objects(generation=2)}
        assert not any(id(o) in scanned for o in held)
        later = [[i] for i in range(10)]
        gc.collect()
        scanned = {id(o) for o in gc.get_objects(generation=2)}
        assert all(id(o) in scanned for o in later)  # what comes after is still collected
    finally:
        gc.unfreeze()
