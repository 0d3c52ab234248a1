"""Benchmark: question latency while a backfill is being ingested, against none, same run.

On a running pipeline whose corpus is indexed: first questions asked one at a time with no
other load (baseline), then a backfill of B new documents is published at once and questions
are asked one at a time until route has indexed every one of them. Same tenant, fresh
questions in both phases (no cache hits). Ratio: p99 during the backfill / p99 without.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.document_path import time_path
from bench.measure import Lineage, ask_one_at_a_time, pipeline_ms, spread
from bench.query_path import stage_breakdown

#: Issue 8's target: the backfill may at most double the question p99.
P99_RATIO_TARGET = 2.0


async def _during(
    bootstrap: str,
    tenant: str,
    texts: list[str],
    questions: list[str],
    timeout_s: float,
    lineage: Lineage,
) -> tuple[list[Any], float, int]:
    done = asyncio.Event()

    async def backfill() -> tuple[float, int]:
        try:
            return await time_path(bootstrap, texts, timeout_s, tenant)  # fresh document ids
        finally:
            done.set()

    task = asyncio.create_task(backfill())
    await asyncio.sleep(0.5)  # the backfill's first documents are on their way
    results = await ask_one_at_a_time(bootstrap, [tenant], questions, until=done, lineage=lineage)
    seconds, chunks = await task
    return results, seconds, chunks


def backfill_figures(
    bootstrap: str,
    triton_url: str,
    tenant: str,
    backfill_texts: list[str],
    baseline_questions: list[str],
    during_questions: list[str],
    command: str,
) -> dict[str, Any]:
    """Baseline, then during the backfill; p99 ratio against P99_RATIO_TARGET."""
    started = time.perf_counter()
    quiet_lineage: Lineage = (triton_url, {})
    busy_lineage: Lineage = (triton_url, {})
    baseline = asyncio.run(
        ask_one_at_a_time(bootstrap, [tenant], baseline_questions, lineage=quiet_lineage)
    )
    baseline_s = time.perf_counter() - started
    timeout_s = 60 + 2 * len(backfill_texts)
    during, backfill_s, chunks = asyncio.run(
        _during(bootstrap, tenant, backfill_texts, during_questions, timeout_s, busy_lineage)
    )
    quiet, busy = spread(pipeline_ms(baseline)), spread(pipeline_ms(during))
    ratio = busy["p99"] / quiet["p99"] if busy["p99"] and quiet["p99"] else None
    return {
        "backfill_documents": len(backfill_texts),
        "backfill_chunks": chunks,
        "backfill_seconds": round(backfill_s, 1),
        "backfill_chunks_per_s": round(chunks / backfill_s, 1),
        "baseline": {"questions": len(baseline), "answered": len(pipeline_ms(baseline)),
                     "seconds": round(baseline_s, 1), "end_to_end_ms": quiet,
                     "stages": stage_breakdown(quiet_lineage[1])},
        "during": {"questions": len(during), "answered": len(pipeline_ms(during)),
                   "end_to_end_ms": busy,
                   "stages": stage_breakdown(busy_lineage[1])},
        "p99_ratio": None if ratio is None else round(ratio, 2),
        "target": P99_RATIO_TARGET,
        "met": ratio is not None and ratio <= P99_RATIO_TARGET,
        "command": command,
    }  # fmt: skip
