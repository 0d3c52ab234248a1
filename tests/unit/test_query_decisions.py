"""The query path's pure decisions: complexity and tier, context selection, budgets, the
extractive tier, prompt rendering and the model's source labels."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from contracts.v1 import ContextChunkV1, GenerationRequestV1, GenerationV1, ProducedBy
from contracts.v1 import QueryOptionsV1 as Options
from inference.prompts import PromptNotFoundError, load_prompt
from services.generate.extractive import extract_answer
from services.generate.tiers import FixedTier, restore_chunk_ids, source_labels
from services.route.budget import LedgerCatchUp, SpendLedger, decide_budget
from services.route.context import select_context
from services.route.index import Hit
from services.route.planner import BUDGET_EXCEEDED, NO_CONTEXT, plan_generation
from services.route.tiers import choose_tier, complexity, fallback_chain
from services.runtime.settings import QuerySettings, TenantBudget, TierSpec

CHUNK_A = "3f1c9a4e-6a52-5d1e-9c7b-1e2f3a4b5c6d"
CHUNK_B = "9a8b7c6d-5e4f-5a3b-8c2d-1e0f9a8b7c6d"
LEAVE = (
    "Every full-time employee receives 25 days of paid vacation per calendar year. "
    "Part-time employees receive vacation in proportion to their hours. "
    "Up to 5 unused vacation days may be carried over into the next year."
)
EXPENSES = "Submit receipts within 30 days. Meals are reimbursed up to 40 euros a day."
PRODUCER = ProducedBy(service="test", version="1")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def hit(chunk_id: str, text: str, score: float, doc_id: str = "handbook/leave.md") -> Hit:
    payload = {"doc_id": doc_id, "text": text, "title": "Leave", "heading_path": ["Vacation"]}
    return Hit(chunk_id, score, payload)


def settings(**overrides: object) -> QuerySettings:
    return QuerySettings(_env_file=None, **overrides)  # type: ignore[call-arg]


def test_factual_one_chunk_questions_score_low_and_reasoning_questions_high() -> None:
    simple = complexity("How many vacation days do I get?", [0.71, 0.42])
    hard = complexity(
        "Why are carried-over days lost and how should I compare that with part-time rules?",
        [0.61, 0.60, 0.59, 0.58],
    )
    assert simple.value < 0.45 < hard.value
    assert simple.reasons["question_type"] == "factual"
    assert hard.reasons["question_type"] == "reasoning"
    assert hard.reasons["chunks_needed"] == 4


def test_tier_follows_complexity_and_falls_back_to_cheaper_tiers() -> None:
    tiers = settings().tiers
    easy = choose_tier(tiers, complexity("When do carried-over days expire?", [0.8]))
    hard = choose_tier(tiers, complexity("Explain why the policy differs for part-timers?", []))
    assert (easy.tier.name, easy.fallback_chain) == ("extractive", [])
    assert (hard.tier.name, hard.fallback_chain) == ("small", ["extractive"])
    assert "complexity" in hard.reason


def test_a_requested_test_tier_falls_back_to_every_automatic_tier() -> None:
    tiers = [*settings().tiers, TierSpec(name="bad", kind="fixed", auto=False, outputs=["{}"])]
    choice = choose_tier(tiers, complexity("Anything?", [0.5]), requested="bad")
    assert choice.tier.name == "bad" and choice.reason == "requested by the query"
    assert fallback_chain(tiers, choice.tier) == ["small", "extractive"]


def test_tiers_without_an_automatic_extractive_tier_are_rejected() -> None:
    with pytest.raises(ValueError, match="needs an automatic `extractive` tier"):
        settings(tiers=[TierSpec(name="small", kind="triton", model="generator")])


def test_context_keeps_the_supporting_sentences_within_the_budget() -> None:
    hits = [hit(CHUNK_A, LEAVE, 0.8), hit(CHUNK_B, EXPENSES, 0.5, "handbook/expenses.md")]
    context = select_context("How many vacation days may be carried over?", hits, 20)
    assert [c.chunk_id for c in context] == [CHUNK_A]
    assert "carried over" in context[0].text and "Part-time" not in context[0].text
    assert context[0].heading_path == ["Vacation"] and context[0].doc_id == "handbook/leave.md"


def test_no_retrieved_chunk_is_a_refusal_that_says_so() -> None:
    plan = plan_generation("Anything?", [], Options(), settings(), "acme", 0)
    assert plan.refusal is not None and plan.refusal.reasons == [NO_CONTEXT]
    assert "acme" in plan.refusal.message


def test_a_plan_fits_the_request_budget_and_records_why() -> None:
    hits = [hit(CHUNK_A, LEAVE, 0.8)]
    plan = plan_generation("How many vacation days?", hits, Options(), settings(), "acme", 0)
    assert plan.refusal is None and plan.choice is not None
    assert plan.estimate <= plan.token_budget
    assert plan.details["tier"] == "extractive" and plan.details["selected"] == [CHUNK_A]
    assert plan.details["complexity_reasons"]["question_type"] == "factual"  # type: ignore[index,call-overload]


def test_a_tenant_over_its_daily_cap_is_refused_and_others_are_not() -> None:
    config = settings(tenant_budgets={"tiny": TenantBudget(daily_tokens=300)})
    hits = [hit(CHUNK_A, LEAVE, 0.8)]
    refused = plan_generation("How many vacation days?", hits, Options(), config, "tiny", 250)
    allowed = plan_generation("How many vacation days?", hits, Options(), config, "acme", 250)
    assert refused.refusal is not None and refused.refusal.reasons == [BUDGET_EXCEEDED]
    assert "250 of its 300 tokens" in refused.refusal.message
    assert allowed.refusal is None


def generation(tenant: str, request_id: str, tokens: int, at: datetime) -> GenerationV1:
    return GenerationV1(
        tenant_id=tenant, correlation_id=request_id, produced_by=PRODUCER, produced_at=at,
        request_id=request_id, question="q", tier="small", model_name="m", model_version="1",
        prompt_name="grounded_answer", prompt_version="v1", raw_output="{}",
        input_tokens=tokens, output_tokens=0, finish_reason="stop", model_latency_ms=1.0,
    )  # fmt: skip


def test_the_ledger_charges_each_generation_once_and_releases_its_reservation() -> None:
    ledger = SpendLedger()
    ledger.reserve("acme", "r-1", 500, NOW)
    assert ledger.spent_today("acme", NOW) == 500
    first = generation("acme", "r-1", 120, NOW)
    assert ledger.record(first) and not ledger.record(first)  # a redelivery is free
    assert ledger.spent_today("acme", NOW) == 120
    assert ledger.spent_today("other", NOW) == 0
    assert ledger.spent_today("acme", NOW + timedelta(days=1)) == 0  # a new day
    assert not decide_budget(ledger, "acme", 200, 300, NOW).allowed
    assert decide_budget(ledger, "acme", 180, 300, NOW).allowed


def test_stale_reservations_stop_counting() -> None:
    ledger = SpendLedger()
    ledger.reserve("acme", "lost", 900, NOW)
    assert ledger.spent_today("acme", NOW + timedelta(minutes=11)) == 0


def test_the_ledger_catches_up_once_every_partition_is_read_to_its_end_at_the_start() -> None:
    catch_up = LedgerCatchUp({0: 3, 1: 0, 2: 5})  # partition 1 held nothing at the start
    catch_up.read(0, 2)
    catch_up.read(2, 3)
    assert not catch_up.caught_up and not catch_up.settled
    catch_up.read(2, 4)
    assert catch_up.caught_up and catch_up.settled
    catch_up.read(2, 9)  # records published after the start change nothing
    assert catch_up.caught_up
    assert LedgerCatchUp({}).settled and LedgerCatchUp({0: 0}).caught_up  # nothing to read


async def test_waiting_for_the_ledger_ends_when_it_catches_up_or_once_timed_out() -> None:
    catch_up = LedgerCatchUp({0: 2})
    waiting = asyncio.create_task(catch_up.wait(timeout_s=30))
    await asyncio.sleep(0)
    catch_up.read(0, 0)
    await asyncio.sleep(0)
    assert not waiting.done()
    catch_up.read(0, 1)
    assert await asyncio.wait_for(waiting, 1) is True and not catch_up.timed_out

    stuck = LedgerCatchUp({0: 2})  # e.g. its records deleted after the end was read
    assert await stuck.wait(timeout_s=0.05) is False
    assert stuck.timed_out and stuck.settled and not stuck.caught_up
    assert await asyncio.wait_for(stuck.wait(timeout_s=30), 1) is False  # no second wait


def test_the_extractive_tier_answers_with_the_best_sentence_and_cites_it() -> None:
    answer = extract_answer(
        "How many days of paid vacation do employees receive?",
        [(CHUNK_B, EXPENSES), (CHUNK_A, "Every employee receives **25 days of paid vacation**.")],
    )
    assert answer.answer == "Every employee receives 25 days of paid vacation."
    assert answer.citations == [CHUNK_A] and 0 < answer.confidence <= 1


def request(**overrides: object) -> GenerationRequestV1:
    context = [
        ContextChunkV1(chunk_id=CHUNK_A, doc_id="a.md", text=LEAVE, score=0.8),
        ContextChunkV1(chunk_id=CHUNK_B, doc_id="b.md", text=EXPENSES, score=0.5),
    ]
    fields: dict[str, object] = dict(
        tenant_id="acme", correlation_id="c-1", produced_by=PRODUCER, request_id="r-1",
        question="How many vacation days?", tier="small", prompt_name="grounded_answer",
        prompt_version="v1", context=context, max_output_tokens=64, token_budget=900,
        complexity_score=0.5,
    )  # fmt: skip
    return GenerationRequestV1.model_validate(fields | overrides)


def test_models_see_short_source_labels_and_citations_come_back_as_chunk_ids() -> None:
    req = request()
    assert source_labels(req) == ["1", "2"]
    raw = json.dumps({"answer": "25 days.", "citations": ["2", "1"], "confidence": 0.8})
    assert json.loads(restore_chunk_ids(raw, req))["citations"] == [CHUNK_B, CHUNK_A]
    assert restore_chunk_ids("not json", req) == "not json"


async def test_a_fixed_tier_returns_its_outputs_per_attempt_with_chunk_ids_filled_in() -> None:
    tier = FixedTier(TierSpec(name="t", kind="fixed", auto=False, outputs=["$chunk_1", "second"]))
    assert (await tier.run(request(), [])).raw_output == CHUNK_B
    assert (await tier.run(request(attempt=1), [])).raw_output == "second"


def test_the_prompt_names_its_sources_and_the_corrective_feedback() -> None:
    prompt = load_prompt("grounded_answer", "v1")
    messages = prompt.render("How many days?", [("1", LEAVE)], ["citations: '9' is unknown"])
    assert [m.role for m in messages] == ["system", "user"]
    assert "[1] Every full-time employee" in messages[1].content
    assert "citations: '9' is unknown" in messages[1].content
    with pytest.raises(PromptNotFoundError, match="known: grounded_answer/v1"):
        load_prompt("grounded_answer", "v99")
