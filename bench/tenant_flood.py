"""Benchmark (issue 9, LLM10 unbounded consumption): other tenants' latency while one floods.

On a pipeline started with a per-tenant rate limit (`FLOOD_ENV`) and a daily token budget for
the flooder, four other tenants ask N questions one at a time (taking turns, `ROUND` each):
first with nothing else running (baseline), then N more while the flooder publishes F tiny
documents and Q questions at once, wave after wave, until the others are done: the next wave
once the last one's questions are settled, and not sooner than its period ((F + Q) /
FLOOD_EVENTS_PER_S). Two versions of the pipeline that each settle a wave within its period
are so compared under the same attack: with no period, a flooder that waits for its refusals
floods harder the faster they come (bench/README.md, 2026-12-07: 87 against 202 events/s when
ingest turned questions away 2.7x faster), and the ratio measures the attack as much as the
pipeline. Within a wave the events still come at once: a burst, as fast as ingest takes them.
The others start once their rate limit's bucket has refilled after their corpus was indexed,
and four of them stay well under it (each asks a quarter of the questions), so none of theirs
is refused: a refusal's answer is fast and would flatter either phase. The second phase asks
the same questions, each of another tenant than in the first (`another_tenant_each`), so every
one takes the whole path (the exact cache is per tenant). The flooder's events are counted by
outcome (accepted, rate-limited at ingest, refused for its budget, answered); its limits hold
when what ingest accepted stays within burst + rate x seconds (from the first publish to
ingest's last decision) and what it was answered stays within its budget.
Ratio: the others' p99 during the flood / without, over their answered (not refused) questions.
The ratio alone cannot show what a flood costs (a faster ingest settles a wave sooner, so its
burst is sharper). So, last, the flooder's questions are sent twice over at once (a fixed
amount of work) and the benchmark times their turning-away and reads the CPU each costs the
stack (broker, stages, Triton; the idle stack's polling included).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from bench.document_path import document_events, publish_documents
from bench.measure import (
    ROUND,
    Lineage,
    Processes,
    ask_one_at_a_time,
    cpu_ms_each,
    cpu_seconds,
    pipeline_ms,
    spread,
)
from bench.query_path import stage_breakdown
from contracts.registry import TOPICS
from services.cli.ask_cmd import AskResult, ask_questions
from services.runtime.topic_reader import TopicTail

P99_RATIO_TARGET = 2.0
FLOODER = "flooder"
OTHERS = ["tenant-a", "tenant-b", "tenant-c", "tenant-d"]
#: Per tenant: 2 events/s sustained, 20 at once. The 2-core pipeline answers ~5 questions/s
#: (bench/README.md), so one tenant may take at most ~40% of it; a client asking one question
#: at a time (~0.3-0.7 s each) stays under it. Others' corpora are at most the burst.
RATE_PER_SECOND = 2.0
BURST = 20
#: The flood's intensity at most, over a wave's period (its events come at once): 50 times a
#: tenant's rate limit, ~20 times what the 2-core pipeline answers a second; what the flooder
#: with no period reached before 2026-12-07 (67-96/s). 2,500 events a wave: one each 25 s.
FLOOD_EVENTS_PER_S = 100.0
FLOODER_DAILY_TOKENS = 2000
FLOOD_ENV = {
    "RAGSTREAM_TENANT_RATE_PER_SECOND": str(RATE_PER_SECOND),
    "RAGSTREAM_TENANT_BURST": str(BURST),
    "RAGSTREAM_TENANT_BUDGETS": json.dumps({FLOODER: {"daily_tokens": FLOODER_DAILY_TOKENS}}),
    # every question of the others takes the whole path in both phases
    "RAGSTREAM_SEMANTIC_CACHE_THRESHOLD": "1.0",
}


@dataclass
class Decisions:
    """Ingest's decision ("ok", "rate_limited", …) for each of the flooder's documents, by
    correlation id, and when the last one was published (Unix seconds)."""

    outcomes: dict[str, str] = field(default_factory=dict)
    last_at: float = 0.0


async def _ingest_outcomes(
    tail: TopicTail, correlation_ids: set[str], decisions: Decisions, complete: asyncio.Event
) -> None:
    """Collect `decisions` (a turned-away event also has a `dead_lettered` record: the
    decision's record is the one kept)."""
    outcomes = decisions.outcomes
    async for record in tail.records(3600):
        payload = json.loads(record.value)
        cid = payload.get("correlation_id")
        if payload.get("stage") == "ingest" and cid in correlation_ids:
            if payload["outcome"] != "dead_lettered" and cid not in outcomes:
                outcomes[cid] = payload["outcome"]
                decisions.last_at = max(decisions.last_at, record.timestamp / 1000)
                if len(outcomes) == len(correlation_ids):
                    complete.set()


async def _flood(
    bootstrap: str, texts: list[str], questions: list[str], stop: asyncio.Event
) -> tuple[list[AskResult], Counter[str], float]:
    """Waves of every document and question at once, the next once the last one's questions
    are settled and its share of FLOOD_EVENTS_PER_S has passed, until `stop` is set: each
    question's outcome, each document's ingest
    decision, and the seconds from the first publish until the last question was settled or
    the last document decided, whichever came later (ingest may still be deciding a wave's
    documents when its questions are settled: tokens its bucket refilled meanwhile count)."""
    ids: set[str] = set()
    decisions = Decisions()
    results: list[AskResult] = []
    complete = asyncio.Event()
    async with TopicTail(bootstrap, [TOPICS.audit.name]) as tail:
        collector = asyncio.create_task(_ingest_outcomes(tail, ids, decisions, complete))
        started = time.time()
        period = (len(texts) + len(questions)) / FLOOD_EVENTS_PER_S
        settled = started
        while not stop.is_set():
            wave_at = time.time()
            documents = document_events(texts, FLOODER)  # fresh ids: not deduplicated
            ids.update(d.correlation_id for d in documents)
            complete.clear()
            asked = asyncio.create_task(
                ask_questions(bootstrap, FLOODER, questions, 180, len(questions))
            )
            await publish_documents(bootstrap, documents)
            results += await asked
            settled = time.time()
            with suppress(TimeoutError):  # the wave's period out, unless stopped meanwhile
                await asyncio.wait_for(stop.wait(), wave_at + period - settled)
        with suppress(TimeoutError):  # a record lost on the way counts as `no_record`
            await asyncio.wait_for(complete.wait(), 60)
        collector.cancel()
        with suppress(asyncio.CancelledError):
            await collector
    outcomes = Counter(decisions.outcomes.values())
    outcomes["no_record"] = len(ids) - len(decisions.outcomes)
    return results, outcomes, max(settled, decisions.last_at) - started


async def _during(
    bootstrap: str,
    others: list[str],
    flood_texts: list[str],
    flood_questions: list[str],
    lineage: Lineage,
) -> tuple[list[AskResult], list[AskResult], Counter[str], float]:
    """The others ask every one of `others` while the flood goes on; it stops after them."""
    stop = asyncio.Event()
    task = asyncio.create_task(_flood(bootstrap, flood_texts, flood_questions, stop))
    await asyncio.sleep(0.5)
    try:
        theirs = await ask_one_at_a_time(bootstrap, OTHERS, others, lineage=lineage)
    finally:
        stop.set()
    flooder, documents, seconds = await task
    return theirs, flooder, documents, seconds


def _flooder_counts(
    results: list[AskResult], documents: Counter[str], seconds: float, wave_events: int
) -> dict[str, Any]:
    questions: Counter[str] = Counter()
    tokens = 0
    for r in results:
        if r.answer is None:
            questions["timed_out"] += 1
        elif r.answer.refusal is not None:
            questions["refused: " + ",".join(r.answer.refusal.reasons)] += 1
        else:
            questions["answered"] += 1
            tokens += r.answer.input_tokens + r.answer.output_tokens
    limited = questions["refused: rate_limited"] + documents["rate_limited"]
    accepted = len(results) + sum(documents.values()) - documents["no_record"] - limited
    allowed = BURST + RATE_PER_SECOND * seconds
    return {
        "documents": dict(documents),
        "questions": dict(questions),
        "events": len(results) + sum(documents.values()),
        "rate_limited": limited,
        "accepted_by_ingest": accepted,
        "allowed_by_rate_limit": round(allowed),
        "rate_limit_held": accepted <= allowed,
        "answered_tokens": tokens,
        "daily_token_budget": FLOODER_DAILY_TOKENS,
        "budget_held": tokens <= FLOODER_DAILY_TOKENS,
        "seconds": round(seconds, 1),
        "events_per_s": round((len(results) + sum(documents.values())) / seconds, 1),
        "wave_period_s": round(wave_events / FLOOD_EVENTS_PER_S, 1),
    }


def turn_away_cost(bootstrap: str, questions: list[str]) -> dict[str, Any]:
    """The flooder's `questions` (over its rate limit and its budget by now) sent at once:
    seconds until each is settled, and the stack's CPU for each refused over the rate limit."""
    groups = Processes.of_stack()
    before, started = cpu_seconds(groups), time.perf_counter()
    results = asyncio.run(ask_questions(bootstrap, FLOODER, questions, 180, len(questions)))
    seconds = time.perf_counter() - started
    after = cpu_seconds(groups)
    refusals = [r.answer.refusal for r in results if r.answer and r.answer.refusal]
    limited = sum(1 for refusal in refusals if "rate_limited" in refusal.reasons)
    spent = {name: after[name] - before[name] for name in groups}
    return {
        "questions": len(questions),
        "rate_limited": limited,
        "seconds": round(seconds, 2),
        "per_s": round(len(questions) / seconds, 1),
        "cpu_ms_each": cpu_ms_each(spent, limited),
    }


def another_tenant_each(questions: list[str]) -> list[str]:
    """`questions` a round later: asked by `ask_one_at_a_time` (OTHERS taking turns a round
    each), every question goes to another tenant than the one that asked it in `questions`
    (the next one; the first round's to the last round's tenant, hence the count's check)."""
    rounds, rest = divmod(len(questions), ROUND)
    if rest or rounds < 2 or rounds % len(OTHERS) == 1:
        raise ValueError(
            f"{len(questions)} questions: a whole number of rounds of {ROUND}, at least 2, "
            f"and not 1 more than a multiple of {len(OTHERS)}"
        )
    return questions[ROUND:] + questions[:ROUND]


def flood_figures(
    bootstrap: str,
    triton_url: str,
    baseline_questions: list[str],
    during_questions: list[str],
    flood_texts: list[str],
    flood_questions: list[str],
    command: str,
) -> dict[str, Any]:
    """The others' baseline, then the same tenants during the flood; p99 ratio and counts."""
    quiet_lineage: Lineage = (triton_url, {})
    busy_lineage: Lineage = (triton_url, {})
    baseline = asyncio.run(
        ask_one_at_a_time(bootstrap, OTHERS, baseline_questions, lineage=quiet_lineage)
    )
    during, flooder, documents, seconds = asyncio.run(
        _during(bootstrap, during_questions, flood_texts, flood_questions, busy_lineage)
    )
    turn_away = turn_away_cost(bootstrap, 2 * flood_questions)
    quiet, busy = spread(pipeline_ms(baseline)), spread(pipeline_ms(during))
    ratio = busy["p99"] / quiet["p99"] if busy["p99"] and quiet["p99"] else None
    counts = _flooder_counts(flooder, documents, seconds, len(flood_texts) + len(flood_questions))
    refused_others = sum(1 for r in baseline + during if r.refused)
    return {
        "limits": {"rate_per_second": RATE_PER_SECOND, "burst": BURST},
        "others": {
            "tenants": OTHERS,
            "refused": refused_others,
            "baseline": {
                "questions": len(baseline),
                "end_to_end_ms": quiet,
                "stages": stage_breakdown(quiet_lineage[1]),
            },
            "during": {
                "questions": len(during),
                "end_to_end_ms": busy,
                "stages": stage_breakdown(busy_lineage[1]),
            },
        },
        "flooder": counts,
        "turn_away": turn_away,
        "p99_ratio": None if ratio is None else round(ratio, 2),
        "target": P99_RATIO_TARGET,
        "met": ratio is not None and ratio <= P99_RATIO_TARGET,
        "limits_held": counts["rate_limit_held"] and counts["budget_held"],
        "command": command,
    }
