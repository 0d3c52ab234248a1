"""Benchmark (issue 9, LLM10 unbounded consumption): other tenants' latency while one floods.

On a pipeline started with a per-tenant rate limit (`FLOOD_ENV`) and a daily token budget for
the flooder, four other tenants ask N questions one at a time (taking turns, `ROUND` each):
first with nothing else running (baseline), then N more while the flooder (`bench/flooder.py`,
a process of its own, as another client is) publishes F tiny documents and Q questions at
once, wave after wave, until the others are done: the next wave once the last one's questions
are settled, and not sooner than its period ((F + Q) / FLOOD_EVENTS_PER_S). Two versions of
the pipeline that each settle a wave within its period are so compared under the same attack:
with no period, a flooder that waits for its refusals floods harder the faster they come
(bench/README.md, 2026-12-07: 87 against 202 events/s when ingest turned questions away 2.7x
faster), and the ratio measures the attack as much as the pipeline. Within a wave the events
still come at once: a burst, as fast as ingest takes them. Until 2026-12-07 06:00 UTC the
flooder ran in the measuring process (`bench/flooder.py` says why no longer).
The others start once their rate limit's bucket has refilled after their corpus was indexed,
and four of them stay well under it (each asks a quarter of the questions), so none of theirs
is refused: a refusal's answer is fast and would flatter either phase. Both phases ask the
same questions, each by other tenants than in the other phase (`both_phases`), so every one
takes the whole path (the exact cache is per tenant). The flooder counts its events by
outcome and says whether its limits held (`flooder_counts`).
Ratio: the others' p99 during the flood / without, over their answered (not refused) questions.
Before and after each phase every stage's metrics are read (`ragstream status`'s probe): how
many of its event loop's lag samples (ten a second) were late by over `STALL_S` in each phase.
The ratio alone cannot show what a flood costs (a faster ingest settles a wave sooner, so its
burst is sharper). So, last, the flooder's questions are sent twice over at once (a fixed
amount of work) and the benchmark times their turning-away and reads the CPU each costs the
stack (broker, stages, Triton; the idle stack's polling included), and the CPU each beyond the
idle stack's rate, read over `IDLE_S` just before.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from bench.flooder import (
    BURST,
    FLOODER,
    FLOODER_DAILY_TOKENS,
    RATE_PER_SECOND,
    flooding,
    ingest_decisions,
)
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
from bench.upstream import document_events, publish_documents
from services.cli.ask_cmd import AskResult, ask_questions
from services.cli.stage_probe import StageProbe, probe_stages, stalls
from services.runtime.stalls import STALL_S

T = TypeVar("T")
#: Before each fixed flood: seconds for the last phase's work to end, then seconds over which
#: the idle stack's CPU rate is read (its consumers' polling, which a flood's CPU includes).
SETTLE_S = 2.0
IDLE_S = 5.0
P99_RATIO_TARGET = 2.0
OTHERS = ["tenant-a", "tenant-b", "tenant-c", "tenant-d"]
FLOOD_ENV = {
    "RAGSTREAM_TENANT_RATE_PER_SECOND": str(RATE_PER_SECOND),
    "RAGSTREAM_TENANT_BURST": str(BURST),
    "RAGSTREAM_TENANT_BUDGETS": json.dumps({FLOODER: {"daily_tokens": FLOODER_DAILY_TOKENS}}),
    # every question of the others takes the whole path in both phases
    "RAGSTREAM_SEMANTIC_CACHE_THRESHOLD": "1.0",
}


async def _during(
    bootstrap: str,
    others: list[str],
    flood_texts: list[str],
    flood_questions: list[str],
    lineage: Lineage,
) -> tuple[list[AskResult], dict[str, Any]]:
    """The others ask every one of `others` while the flood goes on (from another process,
    `bench/flooder.py`); it stops after them. Their results, and the flooder's counts."""
    async with flooding(bootstrap, flood_texts, flood_questions) as counts:
        await asyncio.sleep(0.5)
        theirs = await ask_one_at_a_time(bootstrap, OTHERS, others, lineage=lineage)
    return theirs, counts


def turn_away_cost(bootstrap: str, questions: list[str]) -> dict[str, Any]:
    """The flooder's `questions` (over its rate limit and its budget by now) sent at once:
    seconds until each is settled, and the stack's CPU for each refused over the rate limit."""
    work = ask_questions(bootstrap, FLOODER, questions, 180, len(questions))
    results, seconds, spent, idle = _on_the_stack(work)
    refusals = [r.answer.refusal for r in results if r.answer and r.answer.refusal]
    limited = sum(1 for refusal in refusals if "rate_limited" in refusal.reasons)
    return {
        "questions": len(questions),
        **_turned_away(len(questions), limited, seconds, spent, idle),
    }


def documents_turn_away_cost(bootstrap: str, texts: list[str]) -> dict[str, Any]:
    """The flooder's tiny documents `texts` (new ids) published at once, as
    `turn_away_cost` does its questions: seconds until ingest decided each, and the stack's
    CPU for each one it dead-lettered over the rate limit."""
    outcomes, seconds, spent, idle = _on_the_stack(_documents_decided(bootstrap, texts))
    limited = outcomes["rate_limited"]
    return {
        "documents": len(texts),
        "outcomes": dict(outcomes),
        **_turned_away(len(texts), limited, seconds, spent, idle),
    }


def _on_the_stack(
    work: Coroutine[Any, Any, T],
) -> tuple[T, float, dict[str, float], dict[str, float]]:
    """Run `work`: its result, its seconds, the CPU seconds each of the running stack's
    process groups spent meanwhile, and each group's CPU seconds a second while idle just
    before (`IDLE_S`, after `SETTLE_S` for what came before to end)."""
    groups = Processes.of_stack()
    time.sleep(SETTLE_S)
    idle_from = cpu_seconds(groups)
    time.sleep(IDLE_S)
    before, started = cpu_seconds(groups), time.perf_counter()
    result = asyncio.run(work)
    seconds = time.perf_counter() - started
    after = cpu_seconds(groups)
    spent = {name: after[name] - before[name] for name in groups}
    return result, seconds, spent, {n: (before[n] - idle_from[n]) / IDLE_S for n in groups}


def _turned_away(
    count: int, limited: int, seconds: float, spent: dict[str, float], idle: dict[str, float]
) -> dict[str, Any]:
    """A fixed flood's figures: `count` sent, `limited` turned away over the rate limit; the
    CPU each, and the CPU each beyond what the idle stack (`idle`, a second) spends anyway
    in as long: embed, which never sees a refusal, spent 0.2-0.3 ms a refused question."""
    beyond = {name: max(0.0, spent[name] - idle[name] * seconds) for name in spent}
    return {
        "rate_limited": limited,
        "seconds": round(seconds, 2),
        "per_s": round(count / seconds, 1),
        "cpu_ms_each": cpu_ms_each(spent, limited),
        "idle_cores": {name: round(rate, 3) for name, rate in idle.items()},
        "cpu_ms_each_beyond_idle": cpu_ms_each(beyond, limited),
    }


async def _documents_decided(bootstrap: str, texts: list[str]) -> Counter[str]:
    """Publish the flooder's `texts` as new documents at once; ingest's decision on each
    (`no_record` for one not decided within 180 s)."""
    documents = document_events(texts, FLOODER)
    ids = {d.correlation_id for d in documents}
    async with ingest_decisions(bootstrap, ids) as decisions:
        await publish_documents(bootstrap, documents)
        await decisions.settled(180)
    return decisions.counted(ids)


def _loop_stalls(
    before: dict[str, StageProbe], after: dict[str, StageProbe]
) -> dict[str, dict[str, float | None]]:
    """Per stage, its loop-lag samples between two probes and those over `STALL_S`."""
    held = {stage: stalls(before[stage], after[stage]) for stage in before}
    return {stage: {"stalls": h["stalls"], "samples": h["samples"]} for stage, h in held.items()}


def both_phases(questions: list[str]) -> tuple[list[str], list[str]]:
    """What the others ask without the flood and during it: `questions` once by each of
    OTHERS (who take turns a round each in `ask_one_at_a_time`), by half of them in the
    first phase and by the other half in the second. The exact cache is per tenant, so each
    question takes the whole path in both phases, and a phase asks twice as many as
    `questions` (its p99 is then not just its slowest question)."""
    rounds, rest = divmod(len(questions), ROUND)
    tenants = len(OTHERS)
    if rest or not rounds or rounds % tenants:
        raise ValueError(
            f"{len(questions)} questions: a whole number of rounds of {ROUND}, and a multiple "
            f"of {tenants} rounds (each tenant asks each question once)"
        )

    def by_tenants_shifted(shift: int) -> list[str]:  # each round to the tenant `shift` on
        return questions[shift * ROUND :] + questions[: shift * ROUND]

    return (
        [q for shift in range(0, tenants, 2) for q in by_tenants_shifted(shift)],
        [q for shift in range(1, tenants, 2) for q in by_tenants_shifted(shift)],
    )


def flood_figures(
    bootstrap: str,
    triton_url: str,
    baseline_questions: list[str],
    during_questions: list[str],
    flood_texts: list[str],
    flood_questions: list[str],
    command: str,
    data_dir: Path,
) -> dict[str, Any]:
    """The others' baseline, then the same tenants during the flood; p99 ratio and counts;
    how often each stage's loop was held in each phase (the stack under `data_dir`)."""
    quiet_lineage: Lineage = (triton_url, {})
    busy_lineage: Lineage = (triton_url, {})
    probes = [probe_stages(data_dir)]
    baseline = asyncio.run(
        ask_one_at_a_time(bootstrap, OTHERS, baseline_questions, lineage=quiet_lineage)
    )
    probes.append(probe_stages(data_dir))
    during, counts = asyncio.run(
        _during(bootstrap, during_questions, flood_texts, flood_questions, busy_lineage)
    )
    probes.append(probe_stages(data_dir))
    turn_away = turn_away_cost(bootstrap, 2 * flood_questions)
    turn_away_documents = documents_turn_away_cost(bootstrap, 2 * flood_texts)
    quiet, busy = spread(pipeline_ms(baseline)), spread(pipeline_ms(during))
    ratio = busy["p99"] / quiet["p99"] if busy["p99"] and quiet["p99"] else None
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
        "loop_stalls": {
            "over_s": STALL_S,
            "baseline": _loop_stalls(probes[0], probes[1]),
            "during": _loop_stalls(probes[1], probes[2]),
        },
        "flooder": counts,
        "turn_away": turn_away,
        "turn_away_documents": turn_away_documents,
        "p99_ratio": None if ratio is None else round(ratio, 2),
        "target": P99_RATIO_TARGET,
        "met": ratio is not None and ratio <= P99_RATIO_TARGET,
        "limits_held": counts["rate_limit_held"] and counts["budget_held"],
        "command": command,
    }
