"""route stage: chunk vectors into the index; questions to a cached answer, a refusal, or a
generation request with their tier, context and budget."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaRouter
from pydantic import JsonValue

from contracts.registry import TOPICS
from contracts.v1 import (
    AnswerV1,
    ChunkSetV1,
    ChunkVectorV1,
    GenerationRequestV1,
    GenerationV1,
    QueryVectorV1,
)
from contracts.v1.envelope import utc_now
from inference.queries_first import QueriesFirst
from services.route.alerts import BudgetAlerts, budget_alert, read_alerted_keys
from services.route.budget import LedgerCatchUp, SpendLedger
from services.route.cache import AnswerCache, CacheHit
from services.route.index import VectorIndex
from services.route.planner import choose_prompt, plan_generation
from services.runtime.answers import latency_ms, refusal_answer
from services.runtime.batches import records_of, validate_batch
from services.runtime.broker import BACKGROUND_FETCH_MAX_WAIT_MS, subscribe_batches
from services.runtime.health import READINESS
from services.runtime.lineage import lineage_record
from services.runtime.loop_context import KafkaBroker, KafkaMessage, LoopContext
from services.runtime.metrics import alert_raised, cache_decided
from services.runtime.outbox import Outbox
from services.runtime.publishing import Publisher, derived_from, publish_event
from services.runtime.runstate import resolve_bootstrap
from services.runtime.settings import RouteSettings
from services.runtime.stage import stage_app
from services.runtime.topic_reader import high_watermarks

STAGE = "route"
logger = logging.getLogger("ragstream.route")
#: The longest a batch of chunk vectors waits in all, between its documents, for questions
#: being routed: in Qdrant's local mode the index runs on this event loop, so a batch held
#: every question that arrived meanwhile until the whole batch was written. A steady stream
#: of questions slows indexing down, never stops it.
INDEX_YIELD_MAX_S = 1.0


@dataclass
class RouteResources:
    settings: RouteSettings
    index: VectorIndex
    cache: AnswerCache
    ledger: SpendLedger
    budget_alerts: BudgetAlerts
    generation_requests: Publisher
    answers: Publisher
    alerts: Publisher
    #: Indexing waits, between documents, while a question is being routed.
    questions_first: QueriesFirst = field(default_factory=QueriesFirst)
    #: Questions wait until the ledger has read the generations topic as of the start.
    ledger_catch_up: LedgerCatchUp = field(default_factory=lambda: LedgerCatchUp({}))


Route = Annotated[RouteResources, LoopContext("route")]


async def index_chunk_vectors(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, route: Route
) -> None:
    """Upsert a batch's vectors; at each chunk set, flush first, then drop the stale points.

    Idempotent: points are upserted by chunk id, deletes are by document and set, so a
    batch replayed after a crash leaves the index exactly as one pass would."""
    started = utc_now()
    loop = asyncio.get_running_loop()
    yield_until = loop.time() + INDEX_YIELD_MAX_S
    batch = validate_batch(message, TOPICS.chunk_vectors)
    pending: list[ChunkVectorV1] = []
    for event in batch.events:
        if isinstance(event, ChunkVectorV1):
            pending.append(event)
            continue
        assert isinstance(event, ChunkSetV1)
        await route.index.upsert(pending)
        pending = []
        await route.index.apply_chunk_set(event)
        # Each document is whole in the index now: let a question that came in be routed.
        await asyncio.sleep(0)
        if (left := yield_until - loop.time()) > 0:
            await route.questions_first.before_document(max_wait_s=left)
    await route.index.upsert(pending)
    changed = {e.tenant_id: e.event_id for e in batch.events if isinstance(e, ChunkSetV1)}
    for tenant_id, version in changed.items():  # the tenant's cached answers are stale now
        await route.cache.new_corpus_version(tenant_id, version)
    await batch.dead_letter_invalid(broker, STAGE)
    async with Outbox(broker, STAGE) as outbox:
        for event in batch.events:
            if isinstance(event, ChunkSetV1):
                details = {
                    "doc_version": event.doc_version,
                    "chunks": len(event.chunk_ids),
                    "deleted": event.deleted,
                }
                record = lineage_record(STAGE, event, "ok", started, details=details)
                with batch.span(event, STAGE):
                    await outbox.lineage(record)


async def _answer_from_cache(
    query: QueryVectorV1, hit: CacheHit, route: RouteResources, outbox: Outbox
) -> AnswerV1:
    cached = hit.answer
    answer = AnswerV1(
        **derived_from(query, STAGE),
        request_id=query.request_id,
        question=query.question,
        answer=cached.answer,
        citations=cached.citations,
        tier=cached.tier,
        cache_hit="exact" if hit.kind == "exact" else "semantic",
        confidence=cached.confidence,
        latency_ms=latency_ms(query.asked_at, query.produced_at),
    )
    await outbox.event(route.answers, TOPICS.answers, answer)
    return answer


async def route_query(query: QueryVectorV1, route: RouteResources, outbox: Outbox) -> None:
    """Exact cache, semantic cache, else retrieve, plan, and send to generation (or refuse);
    what it publishes goes through `outbox`, acked before the batch commits."""
    started = utc_now()
    settings = route.settings
    tenant = query.tenant_id
    vector = query.vector.decode()
    version = await route.cache.corpus_version(tenant)
    details: dict[str, JsonValue] = {"corpus_version": version}
    hit = await route.cache.lookup_exact(tenant, query.question_hash, version)
    if hit is None:
        hit = await route.cache.lookup_semantic(
            tenant, vector, version, settings.semantic_cache_threshold
        )
    if hit is not None and query.options.tier and hit.answer.tier != query.options.tier:
        details["cache_skipped"] = f"cached answer is from tier {hit.answer.tier}"
        hit = None  # the question asks for another tier than the one that answered before
    if hit is not None and hit.source_request_id == query.request_id:
        # This very request was answered already: its query was delivered again (a producer
        # retry, or route restarted before committing). One answer per request id.
        details |= {"cache": hit.kind, "duplicate_of_answered_request": True}
        await outbox.lineage(lineage_record(STAGE, query, "duplicate", started, [], details))
        return
    cache_decided(hit.kind if hit is not None else "miss")
    if hit is not None:
        answer = await _answer_from_cache(query, hit, route, outbox)
        details |= {
            "cache": hit.kind,
            "similarity": round(hit.similarity, 4),
            "cached_request_id": hit.source_request_id,
        }
        await outbox.lineage(lineage_record(STAGE, query, "cache_hit", started, [answer], details))
        return
    details["cache"] = "miss"
    hits = await route.index.search(
        tenant, vector, limit=query.options.top_k or settings.top_k, min_score=settings.min_score
    )
    now = utc_now()
    spent = route.ledger.spent_today(tenant, now)
    plan = plan_generation(query.question, hits, query.options, settings, tenant, spent)
    details |= plan.details
    if plan.refusal is not None or plan.choice is None:
        assert plan.refusal is not None
        refusal = refusal_answer(
            query,
            STAGE,
            request_id=query.request_id,
            question=query.question,
            reasons=plan.refusal.reasons,
            message=plan.refusal.message,
            asked_at=query.asked_at,
        )
        await outbox.event(route.answers, TOPICS.answers, refusal)
        await outbox.lineage(lineage_record(STAGE, query, "refused", started, [refusal], details))
        return
    prompt = choose_prompt(query.request_id, query.options.prompt_version, settings)
    details |= {"prompt_version": prompt.version, "prompt_arm": prompt.arm}
    route.ledger.reserve(tenant, query.request_id, plan.estimate, now)
    await route.cache.remember_pending(
        tenant, query.request_id, query.question_hash, vector, version
    )
    request = GenerationRequestV1(
        **derived_from(query, STAGE),
        request_id=query.request_id,
        question=query.question,
        tier=plan.choice.tier.name,
        prompt_name=settings.prompt_name,
        prompt_version=prompt.version,
        context=plan.context,
        max_output_tokens=plan.max_output_tokens,
        token_budget=plan.token_budget,
        complexity_score=plan.score.value if plan.score else 0.0,
        fallback_chain=plan.choice.fallback_chain,
        asked_at=query.asked_at or query.produced_at,
    )
    await outbox.event(route.generation_requests, TOPICS.generation_requests, request)
    await outbox.lineage(lineage_record(STAGE, query, "ok", started, [request], details))


async def route_queries(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, route: Route
) -> None:
    batch = validate_batch(message, TOPICS.query_vectors)
    await wait_for_ledger(route)
    async with route.questions_first.query(), Outbox(broker, STAGE) as outbox:
        # The batch's questions one after another, none waiting for the broker's ack of the
        # one before: each was two round trips (its request or answer, its lineage).
        await batch.handle_each(
            broker,
            STAGE,
            lambda q: route_query(q, route, outbox),
            attempts=route.settings.handler_attempts,
        )
    await batch.dead_letter_invalid(broker, STAGE)


async def wait_for_ledger(route: RouteResources) -> None:
    """Hold questions until the spend ledger has charged every generation the topic held at
    the start: checked against a ledger still being rebuilt, a question queued during a
    restart could pass a cap its tenant had spent. At most the configured timeout, once."""
    catch_up = route.ledger_catch_up
    if catch_up.settled:
        return
    timeout_s = route.settings.ledger_catch_up_timeout_s
    if not await catch_up.wait(timeout_s):
        logger.warning(
            "the spend ledger did not reach the end of %s within %.0f s "
            "(RAGSTREAM_LEDGER_CATCH_UP_TIMEOUT_S); routing questions on what it has read",
            TOPICS.generations.name,
            timeout_s,
        )


async def cache_answers(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, route: Route
) -> None:
    """Validated answers fill the pending cache entries of their questions."""
    batch = validate_batch(message, TOPICS.answers)
    for answer in batch.events:
        await route.cache.store_answer(answer)
    await batch.dead_letter_invalid(broker, STAGE)


async def charge_generations(values: list[bytes], message: KafkaMessage, route: Route) -> None:
    """Every generation's tokens to its tenant's daily spend. This subscriber has no consumer
    group: each route process reads the whole topic from the start, so the ledger is rebuilt
    on every start and every replica sees every tenant's spend. Bad records are left to
    validate's own consumer to dead-letter."""
    batch = validate_batch(message, TOPICS.generations)
    for generation in batch.events:
        assert isinstance(generation, GenerationV1)
        route.ledger.record(generation)
        await alert_on_budget(generation, route)
    catch_up = route.ledger_catch_up
    if not catch_up.caught_up:  # once caught up, a batch costs nothing more here
        for record in records_of(message):
            catch_up.read(record.partition, record.offset)
        if catch_up.caught_up:
            logger.info("spend ledger rebuilt from %s", TOPICS.generations.name)


async def alert_on_budget(generation: GenerationV1, route: RouteResources) -> None:
    """An alert when this generation took its tenant's day over the alert share (once)."""
    tenant, day = generation.tenant_id, generation.produced_at.date()
    spent = route.ledger.spent.get((tenant, day), 0)
    _, daily_cap = route.settings.budget_of(tenant)
    crossing = route.budget_alerts.check(tenant, day, spent, daily_cap, utc_now().date())
    if crossing is None:
        return
    alert = budget_alert(crossing, generation, STAGE)
    try:
        await publish_event(route.alerts, TOPICS.alerts, alert, STAGE)
    except Exception:  # the ledger must go on; the tenant's next generation tries again
        logger.exception("could not publish the budget alert %s", crossing.alert_key)
        return
    route.budget_alerts.remember(crossing.alert_key)
    alert_raised(STAGE, alert.kind, tenant)


def build_router(settings: RouteSettings) -> tuple[KafkaRouter, Publisher, Publisher, Publisher]:
    router = KafkaRouter()
    generation_requests = router.publisher(
        TOPICS.generation_requests.name, title="generation-requests"
    )
    answers = router.publisher(TOPICS.answers.name, title="answers")
    alerts = router.publisher(TOPICS.alerts.name, title="alerts")
    subscribe_batches(
        router,
        STAGE,
        TOPICS.chunk_vectors,
        index_chunk_vectors,
        max_records=settings.index_batch_size,
        wait_ms=settings.index_batch_wait_ms,
    )
    subscribe_batches(router, STAGE, TOPICS.query_vectors, route_queries, max_records=16, wait_ms=5)
    subscribe_batches(router, STAGE, TOPICS.answers, cache_answers, max_records=64, wait_ms=20)
    router.subscriber(
        TOPICS.generations.name,
        batch=True,
        max_records=256,
        batch_timeout_ms=20,
        group_id=None,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        # Off the question's path: a request in flight holds a reservation of its estimate
        # until its generation is charged (`SpendLedger.reserve`), so a charge read up to a
        # background wait later lets no burst overrun the cap, and this consumer no longer
        # asks the broker 40 times a second while idle (bench/README.md).
        fetch_max_wait_ms=BACKGROUND_FETCH_MAX_WAIT_MS,
    )(charge_generations)
    return router, generation_requests, answers, alerts


def open_index(settings: RouteSettings) -> VectorIndex:
    """The Qdrant server at RAGSTREAM_QDRANT_URL, else local mode under the data dir."""
    if settings.qdrant_url:
        return VectorIndex(url=settings.qdrant_url, collection=settings.qdrant_collection)
    return VectorIndex(path=settings.data_dir / "qdrant", collection=settings.qdrant_collection)


def create_app(settings: RouteSettings | None = None) -> FastStream:
    settings = settings or RouteSettings()
    router, generation_requests, answers, alerts = build_router(settings)

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        index = open_index(settings)
        await index.warm_up()
        cache = AnswerCache(
            index.client, settings.cache_collection, settings.exact_cache_entries, local=index.local
        )
        await cache.warm_up()
        if not settings.qdrant_local_fsync and (relaxed := index.commit_without_fsync()):
            logger.info("local Qdrant commits without an fsync for each point: %s", relaxed)
        # Before the ledger is rebuilt from the generations topic: crossings already alerted.
        bootstrap = resolve_bootstrap(settings)
        alerted = await read_alerted_keys(bootstrap, settings)
        budget_alerts = BudgetAlerts(settings.budget_alert_share, alerted)
        ledger = SpendLedger()
        publishers = (generation_requests, answers, alerts)
        resources = RouteResources(settings, index, cache, ledger, budget_alerts, *publishers)
        # The topic's end before the ledger's consumer starts: what it must read first.
        ends = await high_watermarks(bootstrap, TOPICS.generations.name, settings=settings)
        resources.ledger_catch_up = LedgerCatchUp(ends)

        async def ledger_settled() -> bool:
            return resources.ledger_catch_up.settled

        readiness = {"qdrant": index.reachable, "spend_ledger": ledger_settled}
        try:
            yield {"route": resources, READINESS: readiness}
        finally:
            await index.close()

    return stage_app(STAGE, settings, router, resources)
