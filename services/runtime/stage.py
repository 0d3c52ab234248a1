"""Stage start-up shared by every service: topics exist, resources reach handlers via Context."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaRouter

from contracts.registry import TOPICS, TopicSpec
from services.runtime.broker import make_broker
from services.runtime.health import READINESS, ReadinessCheck, serving_health
from services.runtime.kafka_admin import broker_answers, ensure_topics, wait_for_broker
from services.runtime.kafka_security import librdkafka_security
from services.runtime.runstate import resolve_bootstrap
from services.runtime.settings import RuntimeSettings
from services.runtime.tracing import traced_process

#: Stages built so far, in pipeline order. `ragstream up` runs each of them.
STAGES: tuple[str, ...] = (
    "ingest", "chunk", "embed", "route", "generate", "validate", "audit"
)  # fmt: skip

#: Stages that call Triton: `ragstream up` starts it for them.
NEEDS_TRITON = {"embed", "generate"}

#: The last stage of the document path built so far: `ingest --wait` waits for its lineage.
DOCUMENT_PATH_END = "route"

#: The topics each stage consumes (for consumer lag in `ragstream status`).
STAGE_INPUTS: dict[str, tuple[TopicSpec, ...]] = {
    "ingest": (TOPICS.documents, TOPICS.queries),
    "chunk": (TOPICS.documents_accepted,),
    "embed": (TOPICS.chunks, TOPICS.queries_accepted),
    "route": (TOPICS.chunk_vectors, TOPICS.query_vectors, TOPICS.answers),
    "generate": (TOPICS.generation_requests,),
    "validate": (TOPICS.generations,),
    "audit": (TOPICS.audit, TOPICS.answers),
}


@asynccontextmanager
async def prepare_stage(
    broker: KafkaBroker, settings: RuntimeSettings, **resources: Any
) -> AsyncIterator[None]:
    """Wait for the broker, create missing topics, put `resources` in the broker's context."""
    bootstrap = resolve_bootstrap(settings)
    security = librdkafka_security(settings)
    await asyncio.to_thread(wait_for_broker, bootstrap, 60.0, security)
    await asyncio.to_thread(
        ensure_topics,
        bootstrap,
        partitions_override=settings.partitions_override,
        security=security,
    )
    for name, value in resources.items():
        broker.context.set_global(name, value)
    try:
        yield
    finally:
        for name in resources:
            broker.context.reset_global(name)


ResourceFactory = Callable[[], AbstractAsyncContextManager[dict[str, Any]]]


def broker_checks(broker: KafkaBroker, settings: RuntimeSettings) -> dict[str, ReadinessCheck]:
    """Readiness every stage shares: the broker answers, and the stage's consumers started."""
    bootstrap = resolve_bootstrap(settings)
    security = librdkafka_security(settings)

    async def broker_answering() -> bool:
        return await asyncio.to_thread(broker_answers, bootstrap, 1.0, security)

    async def consuming() -> bool:
        return broker.running

    return {"broker": broker_answering, "consumers": consuming}


def stage_app(
    stage: str, settings: RuntimeSettings, router: KafkaRouter, resources: ResourceFactory
) -> FastStream:
    """A stage's FastStream app: its broker and router, and a lifespan that opens the
    stage's resources (clients, stores), hands them to handlers and closes them at the end.

    The stage's metrics and health port is up first (liveness while it starts); readiness
    checks the broker, plus the checks the resources yield under `readiness`."""
    broker = make_broker(settings, stage)
    broker.include_router(router)

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        with traced_process(stage, settings):
            checks = broker_checks(broker, settings)
            async with serving_health(stage, settings, checks) as health, resources() as context:
                health.checks.update(context.pop(READINESS, {}))
                async with prepare_stage(broker, settings, **context):
                    yield

    return FastStream(broker, lifespan=lifespan)


def load_stage_app(stage: str) -> FastStream:
    """The FastStream app of `stage`, built from settings read now (`services/<stage>/app.py`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages built so far: {', '.join(STAGES)}")
    module = importlib.import_module(f"services.{stage}.app")
    app: FastStream = module.create_app()
    return app
