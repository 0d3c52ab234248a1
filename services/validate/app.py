"""validate stage: raw generations in; validated answers, corrective retries, escalations to the
next tier, or graceful refusals out. Nothing unvalidated reaches the answers topic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from faststream import FastStream
from faststream.kafka import KafkaRouter
from pydantic import JsonValue

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, CitationV1, Envelope, GenerationRequestV1, GenerationV1
from contracts.v1.envelope import utc_now
from services.runtime.answers import latency_ms, refusal_answer
from services.runtime.batches import validate_batch
from services.runtime.broker import subscribe_batches
from services.runtime.lineage import lineage_record
from services.runtime.loop_context import KafkaBroker, KafkaMessage, LoopContext
from services.runtime.outbox import Outbox
from services.runtime.publishing import Publisher, derived_from
from services.runtime.settings import QuerySettings
from services.runtime.stage import stage_app
from services.validate.checks import ValidationOutcome, ValidationRules, validate_generation

STAGE = "validate"

#: Tiers whose output does not change on a retry: a corrective prompt cannot help them.
DETERMINISTIC_KINDS = {"extractive"}


@dataclass
class ValidateResources:
    settings: QuerySettings
    rules: ValidationRules
    answers: Publisher
    generation_requests: Publisher


Validate = Annotated[ValidateResources, LoopContext("validate")]


def _cost(settings: QuerySettings, generation: GenerationV1) -> float:
    try:
        spec = settings.tier(generation.tier)
    except KeyError:
        return 0.0
    return spec.cost_usd(generation.input_tokens, generation.output_tokens)


def _citations(generation: GenerationV1, chunk_ids: list[str]) -> list[CitationV1]:
    by_id = {c.chunk_id: c for c in generation.context}
    return [
        CitationV1(
            chunk_id=c.chunk_id,
            doc_id=c.doc_id,
            source_uri=c.source_uri,
            title=c.title,
            heading_path=c.heading_path,
        )
        for c in (by_id[i] for i in dict.fromkeys(chunk_ids) if i in by_id)
    ]


def next_request(
    generation: GenerationV1, tier: str, chain: list[str], attempt: int, feedback: list[str]
) -> GenerationRequestV1:
    """The generation request for a corrective retry (same tier) or an escalation."""
    return GenerationRequestV1(
        **derived_from(generation, STAGE),
        request_id=generation.request_id,
        question=generation.question,
        tier=tier,
        prompt_name=generation.prompt_name,
        prompt_version=generation.prompt_version,
        context=generation.context,
        max_output_tokens=generation.max_output_tokens or 160,
        token_budget=generation.token_budget or 0,
        complexity_score=generation.complexity_score,
        attempt=attempt,
        fallback_chain=chain,
        feedback=feedback,
        asked_at=generation.asked_at,
    )


def _deterministic(settings: QuerySettings, tier: str) -> bool:
    try:
        return settings.tier(tier).kind in DETERMINISTIC_KINDS
    except KeyError:
        return False


async def _on_failure(
    generation: GenerationV1,
    outcome: ValidationOutcome,
    validate: ValidateResources,
    outbox: Outbox,
) -> tuple[str, Envelope]:
    """One corrective retry, then the next tier, then a refusal naming every failure."""
    failures = outcome.failures
    if generation.attempt == 0 and not _deterministic(validate.settings, generation.tier):
        retry = next_request(generation, generation.tier, generation.fallback_chain, 1, failures)
        await outbox.event(validate.generation_requests, TOPICS.generation_requests, retry)
        return "retry", retry
    if generation.fallback_chain:
        tier, *rest = generation.fallback_chain
        escalation = next_request(generation, tier, rest, 0, [])
        await outbox.event(validate.generation_requests, TOPICS.generation_requests, escalation)
        return "escalated", escalation
    failed = [check.name for check in outcome.checks if not check.passed]
    refusal = refusal_answer(
        generation,
        STAGE,
        request_id=generation.request_id,
        question=generation.question,
        reasons=["validation_failed", *failed],
        # Names the failed checks only: their details quote the rejected model output, which
        # must not reach the user (it may echo a prompt); they stay in the lineage record.
        message=f"No answer passed validation (failed checks: {', '.join(failed)}); the "
        f"details are in `ragstream audit show {generation.request_id}`.",
        asked_at=generation.asked_at,
        tier=generation.tier,
        input_tokens=generation.input_tokens,
        output_tokens=generation.output_tokens,
        cost_usd=_cost(validate.settings, generation),
    )
    await outbox.event(validate.answers, TOPICS.answers, refusal)
    return "refused", refusal


async def validate_one(
    generation: GenerationV1, validate: ValidateResources, outbox: Outbox
) -> None:
    started = utc_now()
    outcome = validate_generation(generation.raw_output, generation.context, validate.rules)
    details: dict[str, JsonValue] = {
        "tier": generation.tier,
        "attempt": generation.attempt,
        "checks": [
            {"name": c.name, "passed": c.passed, "detail": c.detail, "score": c.score}
            for c in outcome.checks
        ],
    }
    if outcome.passed and outcome.parsed is not None:
        answer = AnswerV1(
            **derived_from(generation, STAGE),
            request_id=generation.request_id,
            question=generation.question,
            answer=outcome.parsed.answer,
            citations=_citations(generation, outcome.parsed.citations),
            tier=generation.tier,
            input_tokens=generation.input_tokens,
            output_tokens=generation.output_tokens,
            cost_usd=_cost(validate.settings, generation),
            confidence=outcome.parsed.confidence,
            latency_ms=latency_ms(generation.asked_at, generation.produced_at),
        )
        await outbox.event(validate.answers, TOPICS.answers, answer)
        await outbox.lineage(lineage_record(STAGE, generation, "ok", started, [answer], details))
        return
    result, out = await _on_failure(generation, outcome, validate, outbox)
    details["failures"] = list(outcome.failures)
    await outbox.lineage(lineage_record(STAGE, generation, result, started, [out], details))


async def validate_batch_of_generations(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, validate: Validate
) -> None:
    batch = validate_batch(message, TOPICS.generations)
    async with Outbox(broker, STAGE) as outbox:  # no round trip per answer and lineage
        await batch.handle_each(
            broker,
            STAGE,
            lambda g: validate_one(g, validate, outbox),
            attempts=validate.settings.handler_attempts,
        )
    await batch.dead_letter_invalid(broker, STAGE)


def build_router(settings: QuerySettings) -> tuple[KafkaRouter, Publisher, Publisher]:
    router = KafkaRouter()
    answers = router.publisher(TOPICS.answers.name, title="answers")
    generation_requests = router.publisher(
        TOPICS.generation_requests.name, title="generation-requests"
    )
    subscribe_batches(
        router, STAGE, TOPICS.generations, validate_batch_of_generations, max_records=32, wait_ms=10
    )
    return router, answers, generation_requests


def create_app(settings: QuerySettings | None = None) -> FastStream:
    settings = settings or QuerySettings()
    router, answers, generation_requests = build_router(settings)
    rules = ValidationRules(
        groundedness_threshold=settings.groundedness_threshold,
        max_answer_chars=settings.max_answer_chars,
        banned_phrases=tuple(settings.banned_phrases),
    )

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        yield {"validate": ValidateResources(settings, rules, answers, generation_requests)}

    return stage_app(STAGE, settings, router, resources)
