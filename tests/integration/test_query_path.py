"""Questions through every stage on the real broker, Triton and models: answers that cite the
right documents, caches, tenant isolation, validation, budgets and the Triton-down fallback."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from rich.console import Console

from contracts.registry import TOPICS
from contracts.v1 import AnswerV1, GenerationV1, LineageRecordV1, ProducedBy, QueryOptionsV1
from services.cli.ask_cmd import AskResult, ask_questions
from services.cli.evaluation import check_thresholds, evaluate, load_questions, load_thresholds
from services.cli.ingest_cmd import ingest_paths
from services.runtime.settings import RouteSettings
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import (
    TINY_BUDGET_TENANT,
    StageProcesses,
    events_on,
    eventually,
    publish_events,
    tenant_name,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
QUIET = Console(quiet=True)
TEST_PRODUCER = ProducedBy(service="test_query_path", version="1")
#: What route logs once its spend ledger has read the generations topic as of its start.
LEDGER_REBUILT = "spend ledger rebuilt"


async def ingest(pipeline: StageProcesses, tenant: str, *paths: Path) -> None:
    report = await ingest_paths(pipeline.bootstrap, list(paths), tenant, True, 300, QUIET)
    counts = report.counts()
    assert counts["done"] + counts["unchanged"] == len(report.outcomes), report.as_json()


async def ask(
    pipeline: StageProcesses, tenant: str, question: str, tier: str | None = None
) -> AnswerV1:
    options = QueryOptionsV1(tier=tier) if tier else None
    [result] = await ask_questions(pipeline.bootstrap, tenant, [question], 240, options=options)
    assert result.answer is not None, f"no answer to {question!r} within 240 s"
    return result.answer


async def lineage_of(pipeline: StageProcesses, request_ids: set[str]) -> list[LineageRecordV1]:
    """Lineage records of the events that carry these request ids (by correlation)."""
    records = [
        TOPICS.audit.adapter.validate_json(r.value)
        for r in await read_topic(pipeline.bootstrap, TOPICS.audit.name)
    ]
    answers = [
        TOPICS.answers.adapter.validate_json(r.value)
        for r in await read_topic(pipeline.bootstrap, TOPICS.answers.name)
    ]
    correlations = {a.correlation_id for a in answers if a.request_id in request_ids}
    return [r for r in records if r.correlation_id in correlations]


@pytest.fixture(scope="module")
async def corpus_tenant(pipeline: StageProcesses) -> AsyncIterator[str]:
    tenant = tenant_name("corpus")
    await ingest(pipeline, tenant, EXAMPLES / "corpus")
    yield tenant


async def test_example_questions_are_answered_from_the_right_documents(
    pipeline: StageProcesses, corpus_tenant: str
) -> None:
    specs = load_questions(EXAMPLES / "questions.jsonl")
    results: list[AskResult] = await ask_questions(
        pipeline.bootstrap, corpus_tenant, specs, timeout_s=600
    )
    for result in results:
        answer = result.answer
        assert answer is not None, f"{result.question!r} timed out"
        if answer.refusal is None:  # validated: cites retrieved chunks, nothing unsupported
            assert answer.answer and answer.citations, answer
        else:
            assert answer.refusal.reasons, answer
    report = evaluate(results, specs, k=5)
    failures = check_thresholds(report, load_thresholds(EXAMPLES / "eval_thresholds.json"))
    assert not failures, failures


async def test_repeated_and_paraphrased_questions_hit_the_caches_until_the_corpus_changes(
    pipeline: StageProcesses, tmp_path: Path
) -> None:
    tenant = tenant_name("cache")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    leave = corpus / "leave.md"
    leave.write_text((EXAMPLES / "corpus" / "handbook" / "leave.md").read_text())
    await ingest(pipeline, tenant, corpus)
    question = "How many days of paid vacation does a full-time employee receive?"

    first = await ask(pipeline, tenant, question)
    assert first.refusal is None and first.cache_hit == "none", first
    again = await ask(pipeline, tenant, question)
    assert again.cache_hit == "exact" and again.answer == first.answer, again

    async def embed_vectors() -> dict[str, str]:  # embed's lineage: Triton or its memory
        records = await lineage_of(pipeline, {first.request_id, again.request_id})
        vectors = {
            r.correlation_id: str(r.details.get("vector")) for r in records if r.stage == "embed"
        }
        return vectors if len(vectors) == 2 else {}

    assert await eventually(embed_vectors, what="embed's lineage of both questions") == {
        first.correlation_id: "embedded",
        again.correlation_id: "remembered",
    }
    paraphrase = await ask(
        pipeline, tenant, "How many paid vacation days does a full-time employee receive?"
    )
    assert paraphrase.cache_hit == "semantic" and paraphrase.answer == first.answer, paraphrase

    leave.write_text(
        leave.read_text().replace("25 days of paid vacation", "27 days of paid vacation")
    )
    await ingest(pipeline, tenant, corpus)
    after = await ask(pipeline, tenant, question)
    assert after.cache_hit == "none", after
    assert after.answer and "27 days" in after.answer, after


async def test_a_tenant_never_sees_another_tenants_documents_or_cached_answers(
    pipeline: StageProcesses, corpus_tenant: str, tmp_path: Path
) -> None:
    question = "How many weeks of fully paid parental leave do parents receive?"
    of_a = await ask(pipeline, corpus_tenant, question)
    assert of_a.refusal is None and of_a.citations, of_a
    a_chunks = {c.chunk_id for c in of_a.citations}

    tenant_b = tenant_name("isolated")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "garden.md").write_text(
        "# Garden club\n\nThe garden club meets on Thursdays. Members water the plants.\n"
    )
    await ingest(pipeline, tenant_b, tmp_path / "b")
    of_b = await ask(pipeline, tenant_b, question)
    assert of_b.cache_hit == "none", of_b
    assert not {c.chunk_id for c in of_b.citations} & a_chunks, of_b
    assert all(c.doc_id == "garden.md" for c in of_b.citations), of_b
    assert "16 weeks" not in (of_b.answer or ""), of_b


@pytest.mark.parametrize(
    ("tier", "caught_by"),
    [("invented-citation", "citations"), ("pii-leak", "pii"), ("ungrounded", "grounded")],
)
async def test_invalid_generations_are_retried_escalated_and_never_published(
    pipeline: StageProcesses, corpus_tenant: str, tier: str, caught_by: str
) -> None:
    answer = await ask(
        pipeline, corpus_tenant, "How many unused vacation days may be carried over?", tier=tier
    )
    assert answer.tier != tier, answer
    assert "jane.roe@example.org" not in (answer.answer or "")
    assert "Jupiter" not in (answer.answer or "")
    records = await lineage_of(pipeline, {answer.request_id})
    verdicts = [r for r in records if r.stage == "validate" and r.details.get("tier") == tier]
    assert [r.outcome for r in verdicts] == ["retry", "escalated"], verdicts
    for record in verdicts:
        checks = {c["name"]: c["passed"] for c in record.details["checks"]}  # type: ignore[index, union-attr]
        assert checks[caught_by] is False, record.details
    published = [
        TOPICS.answers.adapter.validate_json(r.value)
        for r in await read_topic(pipeline.bootstrap, TOPICS.answers.name)
    ]
    assert not [a for a in published if a.request_id == answer.request_id and a.tier == tier]


async def test_a_tenant_over_its_daily_cap_is_refused_even_after_route_restarts(
    pipeline: StageProcesses, corpus_tenant: str
) -> None:
    await ingest(pipeline, TINY_BUDGET_TENANT, EXAMPLES / "corpus" / "handbook")
    questions = [
        "How many days of paid vacation does a full-time employee receive?",
        "When must sick leave be reported to the manager?",
        "How many weeks of parental leave do parents receive?",
        "When do carried-over vacation days expire?",
        "How early must vacation longer than three days be requested?",
        "What happens when a public holiday falls on a weekend?",
        "How many days may be carried over into the next year?",
        "Do sick days reduce the vacation balance?",
    ]
    outcomes = []
    for question in questions:
        answer = await ask(pipeline, TINY_BUDGET_TENANT, question)
        outcomes.append(answer)
        if answer.refusal and "budget_exceeded" in answer.refusal.reasons:
            break
    assert outcomes[0].refusal is None, outcomes[0]
    assert outcomes[-1].refusal is not None, [o.answer for o in outcomes]
    assert outcomes[-1].refusal.reasons == ["budget_exceeded"], outcomes[-1]

    other = await ask(pipeline, corpus_tenant, "When do carried-over vacation days expire?")
    assert other.refusal is None, other

    pipeline.stop_stage("route")
    pipeline.restart("route")
    after = await ask(pipeline, TINY_BUDGET_TENANT, "Who approves vacation requests?")
    assert after.refusal is not None and after.refusal.reasons == ["budget_exceeded"], after


async def test_questions_queued_while_route_restarts_wait_for_its_whole_spend_ledger(
    pipeline: StageProcesses, producer: AIOKafkaProducer
) -> None:
    """Route rebuilds its ledger from the generations topic on every start, while its question
    consumer already runs: questions queued during the restart must be checked against the
    whole ledger (`LedgerCatchUp`), not against what it had read so far."""
    tenant = tenant_name("ledger")
    await ingest(pipeline, tenant, EXAMPLES / "corpus" / "handbook")
    pipeline.stop_stage("route")
    # The tenant's whole day spent while route is down, after every generation already there.
    daily_cap = RouteSettings().daily_token_cap
    spent = GenerationV1(
        tenant_id=tenant, correlation_id=f"{tenant}-spend", produced_by=TEST_PRODUCER,
        request_id=f"{tenant}-spend", question="(spent elsewhere)", tier="extractive",
        model_name="extractive", model_version="1", prompt_name="grounded_answer",
        prompt_version="v1", raw_output="{}", input_tokens=daily_cap, output_tokens=0,
        finish_reason="stop", model_latency_ms=1.0,
    )  # fmt: skip
    await publish_events(producer, TOPICS.generations, [spent])
    questions = [
        "How many days of paid vacation does a full-time employee receive?",
        "When must sick leave be reported to the manager?",
        "How many weeks of parental leave do parents receive?",
    ]
    asking = asyncio.create_task(
        ask_questions(pipeline.bootstrap, tenant, questions, 240, concurrency=len(questions))
    )

    async def queued() -> bool:
        return len(await events_on(pipeline.bootstrap, TOPICS.query_vectors, {tenant})) == 3

    await eventually(queued, timeout_s=120, what="the questions waiting for route")
    route_log = pipeline.data_dir / "route.log"
    rebuilt_before = route_log.read_text().count(LEDGER_REBUILT)
    await asyncio.to_thread(pipeline.restart, "route")
    for result in await asking:
        answer = result.answer
        assert answer is not None, f"no answer to {result.question!r} within 240 s"
        assert answer.refusal is not None, answer
        assert answer.refusal.reasons == ["budget_exceeded"], answer
    # The ledger reached the ends read at the start (not let through by the timeout). On this
    # broker a consumer group takes ~5 s to join and the ledger has none, so it is ahead of
    # the questions anyway: the hold itself is proved in tests/unit/test_stage_handlers.py.
    log = route_log.read_text()
    assert log.count(LEDGER_REBUILT) == rebuilt_before + 1, log[-3000:]
    assert "RAGSTREAM_LEDGER_CATCH_UP_TIMEOUT_S" not in log


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_with_triton_unreachable_answers_come_from_the_extractive_tier(
    pipeline: StageProcesses, corpus_tenant: str
) -> None:
    pipeline.stop_stage("generate")
    pipeline.restart("generate", RAGSTREAM_TRITON_URL=f"127.0.0.1:{_closed_port()}")
    try:
        answer = await ask(
            pipeline,
            corpus_tenant,
            "Why should employees plan their vacation ahead before the end of the year?",
            tier="small",
        )
        assert answer.refusal is None and answer.tier == "extractive", answer
        records = await lineage_of(pipeline, {answer.request_id})
        generated = [r for r in records if r.stage == "generate"]
        assert generated and generated[0].outcome == "fallback", generated
        assert "small" in json.dumps(generated[0].details["fallbacks"]), generated[0].details
    finally:
        pipeline.stop_stage("generate")
        pipeline.restart("generate")
