"""`ragstream ask`: publish questions on the queries topic and wait for their answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uuid_utils
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from confluent_kafka import KafkaException
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, CitationV1, QueryOptionsV1, QueryV1
from contracts.v1.envelope import utc_now
from services.runtime.kafka_admin import partition_counts
from services.runtime.publishing import event_bytes, event_headers, produced_by
from services.runtime.topic_reader import TopicTail
from services.runtime.tracing import inject_trace_context

if TYPE_CHECKING:
    from services.cli.evaluation import QuestionSpec

CLI = "ragstream-cli"
_tracer = trace.get_tracer(__name__)
EXIT_ANSWERED = 0  # an answer or a refusal: both are the pipeline's valid outcomes
EXIT_UNAVAILABLE = 1
EXIT_TIMED_OUT = 2
HEADING_SEPARATOR = " \u203a "  # single right-pointing angle quote: title, then headings


class PipelineUnavailableError(RuntimeError):
    """No broker answered, or the pipeline's topics do not exist there."""


@dataclass(frozen=True)
class AskResult:
    """One question's outcome: its answer (or None when none came in time) and the wait.

    >>> result = AskResult("How many days?", "ask-0192…", None, 30_000.0, timed_out=True)
    """

    question: str
    request_id: str
    answer: AnswerV1 | None
    client_latency_ms: float
    timed_out: bool = False
    question_id: str | None = None

    @property
    def refused(self) -> bool:
        return self.answer is not None and self.answer.refusal is not None


def new_request_id() -> str:
    return f"ask-{uuid_utils.uuid7().hex}"


def query_event(question: str, tenant: str, options: QueryOptionsV1 | None = None) -> QueryV1:
    """The QueryV1 upstream would publish; its request id is also its correlation id."""
    request_id = new_request_id()
    return QueryV1(
        tenant_id=tenant,
        correlation_id=request_id,
        produced_by=produced_by(CLI),
        request_id=request_id,
        question=question,
        options=options or QueryOptionsV1(),
    )


def _answer_of(value: bytes | None) -> AnswerV1 | None:
    if not value:
        return None
    try:
        return AnswerV1.model_validate_json(value)
    except ValidationError:
        return None  # not ours to judge: the answers topic's consumers dead-letter bad records


async def _check_topics(bootstrap: str) -> None:
    try:
        counts = await asyncio.to_thread(partition_counts, bootstrap, 5.0)
    except KafkaException as exc:
        raise PipelineUnavailableError(
            f"no Kafka broker answered at {bootstrap}; start the pipeline with `ragstream up` "
            "or set RAGSTREAM_BOOTSTRAP_SERVERS"
        ) from exc
    missing = [s.name for s in (TOPICS.queries, TOPICS.answers) if not counts.get(s.name)]
    if missing:
        raise PipelineUnavailableError(
            f"topic {', '.join(missing)} does not exist at {bootstrap}; start the pipeline with "
            "`ragstream up` (it creates the topics)"
        )


async def _collect_answers(
    tail: TopicTail, waiting: dict[str, asyncio.Future[tuple[AnswerV1, float]]], horizon_s: float
) -> None:
    """Settle each waiting request with its first answer and the time it was read."""
    async for record in tail.records(horizon_s):
        answer = _answer_of(record.value)
        future = waiting.get(answer.request_id) if answer is not None else None
        if answer is not None and future is not None and not future.done():
            future.set_result((answer, time.monotonic()))


async def _ask_one(
    event: QueryV1,
    question_id: str | None,
    producer: AIOKafkaProducer,
    slots: asyncio.Semaphore,
    waiting: dict[str, asyncio.Future[tuple[AnswerV1, float]]],
    timeout_s: float,
) -> AskResult:
    async with slots:
        # asked when published: time spent queued for a slot is not the pipeline's latency
        event = event.model_copy(update={"produced_at": utc_now()})
        future: asyncio.Future[tuple[AnswerV1, float]] = asyncio.get_running_loop().create_future()
        waiting[event.request_id] = future  # before publishing: a fast answer is not missed
        started = time.monotonic()
        # The request's trace starts here: its context travels in the record's headers.
        with _tracer.start_as_current_span(
            "ragstream ask", kind=SpanKind.CLIENT, attributes=_ask_attributes(event)
        ) as span:
            headers = [
                (k, v.encode())
                for k, v in inject_trace_context(event_headers(TOPICS.queries, event, CLI)).items()
            ]
            try:
                await asyncio.wait_for(
                    producer.send_and_wait(
                        TOPICS.queries.name,
                        event_bytes(event),
                        key=TOPICS.queries.key_bytes(event),
                        headers=headers,
                    ),
                    timeout_s,
                )
                left = max(0.0, started + timeout_s - time.monotonic())
                answer, received = await asyncio.wait_for(future, left)
            except TimeoutError:
                elapsed_ms = (time.monotonic() - started) * 1000
                span.set_status(StatusCode.ERROR, "no answer in time")
                return AskResult(
                    event.question, event.request_id, None, elapsed_ms, True, question_id
                )
            finally:
                waiting.pop(event.request_id, None)
    elapsed_ms = (received - started) * 1000
    return AskResult(event.question, event.request_id, answer, elapsed_ms, False, question_id)


def _ask_attributes(event: QueryV1) -> dict[str, str]:
    return {
        "ragstream.request_id": event.request_id,
        "ragstream.tenant_id": event.tenant_id,
        "messaging.message.conversation_id": event.correlation_id,
        "messaging.destination.name": TOPICS.queries.name,
    }


def _reporting_to(on_result: Callable[[AskResult], None]) -> Callable[[asyncio.Task[Any]], None]:
    def report(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            on_result(task.result())

    return report


async def ask_questions(
    bootstrap: str,
    tenant: str,
    questions: list[str] | list[QuestionSpec],
    timeout_s: float,
    concurrency: int = 4,
    options: QueryOptionsV1 | None = None,
    on_result: Callable[[AskResult], None] | None = None,
) -> list[AskResult]:
    """Ask each question, at most `concurrency` in flight; results in the questions' order.

    Each question gets `timeout_s` from its publication; one with no answer by then is an
    AskResult with `timed_out=True`. Raises PipelineUnavailableError when there is no broker
    or no answers topic, and pydantic's ValidationError for a bad tenant id (before
    connecting)."""
    asked = [(q, None) if isinstance(q, str) else (q.question, q.id) for q in questions]
    events = [(query_event(text, tenant, options), qid) for text, qid in asked]
    if not events:
        return []
    await _check_topics(bootstrap)
    waiting: dict[str, asyncio.Future[tuple[AnswerV1, float]]] = {}
    slots = asyncio.Semaphore(max(1, concurrency))
    rounds = -(-len(events) // max(1, concurrency))
    async with TopicTail(bootstrap, [TOPICS.answers.name]) as tail:  # its end, before publishing
        reader = asyncio.create_task(_collect_answers(tail, waiting, (rounds + 1) * timeout_s + 60))
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            tasks = [
                asyncio.create_task(_ask_one(e, qid, producer, slots, waiting, timeout_s))
                for e, qid in events
            ]
            if on_result is not None:
                for task in tasks:
                    task.add_done_callback(_reporting_to(on_result))
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await producer.stop()
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader
    for outcome in outcomes:
        if isinstance(outcome, KafkaError):
            raise PipelineUnavailableError(
                f"publishing to {TOPICS.queries.name} at {bootstrap} failed: {outcome!r}"
            ) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
    return [o for o in outcomes if isinstance(o, AskResult)]


def _citation_label(citation: CitationV1) -> str:
    """Title, headings (document id); a top heading that repeats the title is shown once."""
    parts: list[str] = []
    for part in (citation.title, *citation.heading_path):
        if part and (not parts or parts[-1] != part):
            parts.append(part)
    path = HEADING_SEPARATOR.join(parts)
    return f"{path} ({citation.doc_id})" if path else citation.doc_id


def render_answer(console: Console, result: AskResult) -> None:
    """Print an answer with numbered citations and its cost line, a refusal, or a timeout."""
    answer = result.answer
    if answer is None:
        console.print(
            f"[yellow]no answer after {result.client_latency_ms / 1000:.1f} s[/] "
            f"(request {result.request_id}); is the pipeline running? see `ragstream status`"
        )
        return
    if answer.refusal is not None:
        console.print(Text("Refused: ", style="bold red") + Text(answer.refusal.message))
        console.print(Text(f"reasons: {', '.join(answer.refusal.reasons)}", style="red"))
    else:
        console.print(Text(answer.answer or ""))  # model output: never read as markup
    if answer.citations:
        console.print()
        for number, citation in enumerate(answer.citations, start=1):
            console.print(Text(f"[{number}] {_citation_label(citation)}", style="cyan"))
    facts = [
        f"tier {answer.tier}",
        f"cache {answer.cache_hit}",
        f"{answer.input_tokens} in / {answer.output_tokens} out tokens",
        f"${answer.cost_usd:.6f}",
        f"{answer.latency_ms:.0f} ms (client {result.client_latency_ms:.0f} ms)",
    ]
    if answer.confidence is not None:
        facts.append(f"confidence {answer.confidence:.2f}")
    console.print()
    console.print(Text(" · ".join(facts), style="dim"))


def answer_json(result: AskResult) -> dict[str, Any]:
    """The `--json` shape of one result; fields the pipeline did not send are null."""
    answer = result.answer
    refusal = answer.refusal if answer is not None else None
    return {
        "request_id": result.request_id,
        "question": result.question,
        "answer": answer.answer if answer is not None else None,
        "citations": [c.model_dump(mode="json") for c in answer.citations] if answer else [],
        "tier": answer.tier if answer else None,
        "cache_hit": answer.cache_hit if answer else None,
        "input_tokens": answer.input_tokens if answer else None,
        "output_tokens": answer.output_tokens if answer else None,
        "cost_usd": answer.cost_usd if answer else None,
        "latency_ms": answer.latency_ms if answer else None,
        "client_latency_ms": round(result.client_latency_ms, 3),
        "confidence": answer.confidence if answer else None,
        "refusal": refusal.model_dump(mode="json") if refusal is not None else None,
        "timed_out": result.timed_out,
    }


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error on one line: "tenant_id: String should match pattern …"."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def ask_command(
    question: str,
    tenant: str,
    timeout: float,
    json_output: bool,
    bootstrap: str,
    top_k: int | None = None,
    tier: str | None = None,
    out: Console | None = None,
    err: Console | None = None,
) -> int:
    """`ragstream ask`: 0 for an answer or a refusal, 2 when none came in time, 1 when the
    question could not be asked (bad tenant or options, no broker, no topics)."""
    out = out or Console()
    err = err or Console(stderr=True)
    try:
        options = QueryOptionsV1(top_k=top_k, tier=tier)
        query_event(question, tenant, options)  # validates tenant and question before connecting
    except ValidationError as exc:
        err.print(Text(f"cannot ask: {validation_problems(exc)}", style="red"))
        return EXIT_UNAVAILABLE
    try:
        with nullcontext() if json_output else err.status("waiting for the answer…"):
            (result,) = asyncio.run(
                ask_questions(bootstrap, tenant, [question], timeout, 1, options)
            )
    except PipelineUnavailableError as exc:
        err.print(Text(str(exc), style="red"))
        return EXIT_UNAVAILABLE
    if json_output:
        print(json.dumps(answer_json(result), indent=2, ensure_ascii=False))
    else:
        render_answer(out, result)
    return EXIT_TIMED_OUT if result.timed_out else EXIT_ANSWERED
