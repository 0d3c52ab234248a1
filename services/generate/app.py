"""generate stage: generation requests in; the tier's raw structured output and usage out.

A tier that cannot answer (Triton down, its circuit open) hands the request to the next tier
of its fallback chain, which ends with `extractive`, so a request is never stuck on a model."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from faststream import FastStream
from faststream.kafka import KafkaRouter
from pydantic import JsonValue

from contracts.registry import TOPICS
from contracts.v1 import GenerationRequestV1, GenerationV1
from contracts.v1.envelope import utc_now
from inference.client import TritonClient
from inference.prompts import PromptNotFoundError, PromptTemplate, load_prompt
from services.generate.tier_health import TierHealth, model_alert
from services.generate.tiers import (
    TierArms,
    TierRunner,
    TierUnavailableError,
    build_arms,
    labelled_sources,
)
from services.runtime.batches import validate_batch
from services.runtime.broker import subscribe_batches
from services.runtime.health import READINESS, triton_check
from services.runtime.lineage import lineage_record, publish_lineage
from services.runtime.loop_context import KafkaBroker, KafkaMessage, LoopContext
from services.runtime.metrics import alert_active, alert_raised, generation_charged, model_called
from services.runtime.publishing import Publisher, derived_from, publish_event
from services.runtime.runstate import resolve_triton_url
from services.runtime.settings import QuerySettings
from services.runtime.stage import stage_app

STAGE = "generate"
logger = logging.getLogger("ragstream.generate")


class NoTierAnsweredError(RuntimeError):
    """Every tier of a request's chain was unavailable (the chain lacked `extractive`)."""


@dataclass
class GenerateResources:
    settings: QuerySettings
    runners: dict[str, TierArms]
    generations: Publisher
    alerts: Publisher
    health: TierHealth


Generate = Annotated[GenerateResources, LoopContext("generate")]


def _prompt_for(
    request: GenerationRequestV1, settings: QuerySettings
) -> tuple[PromptTemplate, str]:
    """The request's prompt version, or the configured one (with the reason) if it is gone."""
    try:
        return load_prompt(request.prompt_name, request.prompt_version), ""
    except PromptNotFoundError as error:
        return load_prompt(settings.prompt_name, settings.prompt_version), str(error)


async def generate_one(
    request: GenerationRequestV1, broker: KafkaBroker, generate: GenerateResources
) -> None:
    started = utc_now()
    prompt, prompt_note = _prompt_for(request, generate.settings)
    chain = [request.tier, *request.fallback_chain]
    skipped: list[str] = []
    for position, name in enumerate(chain):
        arms = generate.runners.get(name)
        if arms is None:
            skipped.append(f"{name}: no such tier in RAGSTREAM_TIERS")
            continue
        runner, model_arm = arms.for_request(request.request_id)
        # A fallback tier starts afresh: the corrective feedback was about another model.
        attempt = (
            request if position == 0 else request.model_copy(update={"attempt": 0, "feedback": []})
        )
        messages = prompt.render(attempt.question, labelled_sources(attempt), attempt.feedback)
        called = time.perf_counter()
        try:
            output = await runner.run(attempt, messages)
        except TierUnavailableError as error:
            logger.warning("tier %s unavailable for %s: %s", name, request.request_id, error)
            skipped.append(str(error))
            await observe_tier_call(generate, request, runner, False, _ms_since(called))
            continue
        await observe_tier_call(generate, request, runner, True, output.latency_ms)
        cost_usd = runner.spec.cost_usd(output.input_tokens, output.output_tokens)
        generation = GenerationV1(
            **derived_from(request, STAGE),
            request_id=request.request_id,
            question=request.question,
            tier=name,
            model_name=output.model_name,
            model_version=output.model_version,
            prompt_name=prompt.name,
            prompt_version=prompt.version,
            context=request.context,
            raw_output=output.raw_output,
            input_tokens=output.input_tokens,
            output_tokens=output.output_tokens,
            finish_reason=output.finish_reason,
            model_latency_ms=output.latency_ms,
            attempt=attempt.attempt,
            fallback_chain=chain[position + 1 :],
            max_output_tokens=request.max_output_tokens,
            token_budget=request.token_budget,
            complexity_score=request.complexity_score,
            asked_at=request.asked_at,
            fallback_reason="; ".join(skipped)[:512],
        )
        await publish_event(generate.generations, TOPICS.generations, generation, STAGE)
        generation_charged(
            request.tenant_id, name, output.input_tokens, output.output_tokens, cost_usd
        )
        details: dict[str, JsonValue] = {
            "tier": name,
            "requested_tier": request.tier,
            "fallbacks": list(skipped),
            "prompt_name": prompt.name,
            "prompt_version": prompt.version,
            "prompt_note": prompt_note,
            "model_name": output.model_name,
            "model_version": output.model_version,
            "model_arm": model_arm,
            "input_tokens": output.input_tokens,
            "output_tokens": output.output_tokens,
            "cost_usd": cost_usd,
            "model_latency_ms": round(output.latency_ms, 2),
            "attempt": attempt.attempt,
        }
        outcome = "fallback" if skipped else "ok"
        record = lineage_record(STAGE, request, outcome, started, [generation], details)
        await publish_lineage(broker, record)
        return
    raise NoTierAnsweredError(
        f"request {request.request_id} of tenant {request.tenant_id}: no tier of {chain} "
        f"answered ({'; '.join(skipped)}); add an `extractive` tier to RAGSTREAM_TIERS"
    )


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


async def observe_tier_call(
    generate: GenerateResources,
    request: GenerationRequestV1,
    runner: TierRunner,
    ok: bool,
    latency_ms: float,
) -> None:
    """Count a tier's call; alert when it takes the tier's error rate or p99 over a threshold."""
    tier, model = runner.spec.name, runner.spec.model or runner.spec.kind
    model_called(tier, model, latency_ms, ok)
    for crossing in generate.health.observe(tier, ok, latency_ms, utc_now()):
        alert_active(crossing.kind, tier, not crossing.recovered)
        if crossing.recovered:
            logger.info("tier %s recovered: %s %.4g", tier, crossing.kind, crossing.value)
            continue
        alert = model_alert(crossing, model, request, STAGE)
        try:
            await publish_event(generate.alerts, TOPICS.alerts, alert, STAGE)
        except Exception:  # an alert never fails the request it was noticed in
            logger.exception("could not publish the model alert %s", crossing.alert_key)
            continue
        alert_raised(STAGE, crossing.kind, tier)


async def generate_batch(
    values: list[bytes], message: KafkaMessage, broker: KafkaBroker, generate: Generate
) -> None:
    """The batch's requests run concurrently, so Triton batches them on the model."""
    batch = validate_batch(message, TOPICS.generation_requests)
    await batch.handle_each(
        broker,
        STAGE,
        lambda r: generate_one(r, broker, generate),
        concurrently=True,
        attempts=generate.settings.handler_attempts,
    )
    await batch.dead_letter_invalid(broker, STAGE)


def build_router(settings: QuerySettings) -> tuple[KafkaRouter, Publisher, Publisher]:
    router = KafkaRouter()
    generations = router.publisher(TOPICS.generations.name, title="generations")
    alerts = router.publisher(TOPICS.alerts.name, title="alerts")
    subscribe_batches(
        router,
        STAGE,
        TOPICS.generation_requests,
        generate_batch,
        max_records=settings.generate_batch_size,
        wait_ms=settings.generate_batch_wait_ms,
    )
    return router, generations, alerts


def create_app(settings: QuerySettings | None = None) -> FastStream:
    settings = settings or QuerySettings()
    router, generations, alerts = build_router(settings)
    triton_models = sorted({t.model for t in settings.tiers if t.kind == "triton" and t.model})

    @asynccontextmanager
    async def resources() -> AsyncIterator[dict[str, Any]]:
        client = TritonClient(resolve_triton_url(settings))
        await client.warm_up()
        runners = {
            spec.name: build_arms(spec, client, settings.max_answer_chars)
            for spec in settings.tiers
        }
        health = TierHealth(
            settings.model_alert_window,
            error_rate_alert=settings.model_error_rate_alert,
            p99_alert_ms=settings.model_p99_alert_ms,
        )
        generate = GenerateResources(settings, runners, generations, alerts, health)
        checks = {"triton": triton_check(client, triton_models)} if triton_models else {}
        try:
            yield {"generate": generate, READINESS: checks}
        finally:
            await client.close()

    return stage_app(STAGE, settings, router, resources)
