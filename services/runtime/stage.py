"""Stage start-up shared by every service: topics exist, resources reach handlers via Context."""

from __future__ import annotations

import asyncio
import gc
import importlib
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from faststream import FastStream
from faststream.kafka import KafkaBroker, KafkaRouter

from contracts.registry import TOPICS, TopicSpec
from services.runtime.broker import forbid_topic_auto_creation, make_broker, rewind_past_log_end
from services.runtime.exceptions import StoppedWhileStarting
from services.runtime.health import READINESS, ReadinessCheck, serving_health
from services.runtime.kafka_admin import broker_answers, ensure_topics, wait_for_broker
from services.runtime.kafka_security import librdkafka_security
from services.runtime.runstate import resolve_bootstrap
from services.runtime.settings import RuntimeSettings
from services.runtime.stalls import watching_stalls
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
    watch = asyncio.create_task(rewind_past_log_end(broker))
    try:
        yield
    finally:
        watch.cancel()
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


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The readiness check that is false while a stage is still opening its resources.
OPENING = "resources_opened"


async def _opening() -> bool:
    return False


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
            async with AsyncExitStack() as opened:
                health = await opened.enter_async_context(serving_health(stage, settings, checks))
                await opened.enter_async_context(watching_stalls(stage))
                # Not ready while its stores open (route waits out an unreachable Qdrant).
                health.checks[OPENING] = _opening
                async with _stoppable(app, stage):
                    context = await opened.enter_async_context(resources())
                    del health.checks[OPENING]
                    health.checks.update(context.pop(READINESS, {}))
                    await opened.enter_async_context(prepare_stage(broker, settings, **context))
                yield

    app = FastStream(broker, lifespan=lifespan)
    app.after_startup(freeze_startup_objects)
    return app


async def freeze_startup_objects() -> None:
    """Take what a started stage holds for good (modules, contracts' schemas, clients, a local
    index's points) out of the garbage collector's full collections (`gc.freeze`).

    A full collection walks every object the collector tracks, with the event loop stopped:
    route holds ~160,000 once started, and under a tenant's flood (2 cores busy) its full
    collections held its loop 110-600 ms each, 8-12 times in a run (bench/README.md, "Tenant
    flood, 2026-12-07 14:05-15:55 UTC"). Frozen objects are still freed by reference counting;
    only a reference cycle among them would stay. The garbage of startup is collected first."""
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def _stoppable(app: FastStream, stage: str) -> AsyncIterator[None]:
    """SIGTERM or SIGINT while a stage starts (opening its stores, waiting for the broker)
    stop it: FastStream looks at its exit flag only once started, so a stage waiting out an
    unreachable Qdrant would otherwise ignore them."""
    loop = asyncio.get_running_loop()
    starting = asyncio.current_task()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        app.exit()
        if starting is not None:
            starting.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    except asyncio.CancelledError:
        if stopped:
            raise StoppedWhileStarting(f"{stage} stopped by a signal while starting") from None
        raise
    finally:
        for sig in STOP_SIGNALS:  # FastStream's own handling, as `app.run()` set it
            loop.add_signal_handler(sig, app.exit)


def load_stage_app(stage: str) -> FastStream:
    """The FastStream app of `stage`, built from settings read now (`services/<stage>/app.py`)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages built so far: {', '.join(STAGES)}")
    forbid_topic_auto_creation()
    module = importlib.import_module(f"services.{stage}.app")
    app: FastStream = module.create_app()
    return app
