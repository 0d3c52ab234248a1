"""Benchmark: the query path's own overhead, end to end minus Triton's compute, per stage.

Questions are asked one at a time (`ragstream ask`'s own code) against a running pipeline;
each one's lineage is read off the audit topic meanwhile. Model time is Triton's compute time
for the embedder over the run (server-side statistics), divided by the questions asked; the
rest of the end-to-end time is the pipeline's: hops, queues, decoding, retrieval, extraction.
Asking the same questions again measures the exact cache.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.registry import TOPICS
from inference.client import TritonClient
from services.cli.ask_cmd import AskResult, ask_questions
from services.cli.evaluation import percentile
from services.runtime.topic_reader import TopicTail

#: Targets from issue 8, in milliseconds.
OVERHEAD_P50_TARGET_MS = 15.0
OVERHEAD_P99_TARGET_MS = 50.0
EXACT_CACHE_P99_TARGET_MS = 20.0
#: Stages of the query path, in order; a question's lineage ends at validate or a cache hit.
QUERY_STAGES = ("ingest", "embed", "route", "generate", "validate")


@dataclass
class QueryRun:
    """One pass over the questions: the answers, each request's lineage, Triton's compute."""

    results: list[AskResult]
    lineage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    model_ms_per_question: float = 0.0
    triton_requests: int = 0


def _ms(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds() * 1000


def _complete(records: list[dict[str, Any]]) -> bool:
    return any(r["stage"] == "validate" or r["outcome"] == "cache_hit" for r in records)


class _LineageReader:
    """Records of the query stages by correlation id, and an event set once every request
    named in `expect` has its complete lineage."""

    def __init__(self) -> None:
        self.lineage: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.expected: set[str] | None = None
        self.complete = asyncio.Event()

    def expect(self, request_ids: list[str]) -> None:
        self.expected = set(request_ids)
        self._check()

    def _check(self) -> None:
        if self.expected is not None and all(_complete(self.lineage[r]) for r in self.expected):
            self.complete.set()

    async def read(self, tail: TopicTail, horizon_s: float) -> None:
        async for record in tail.records(horizon_s):
            payload = json.loads(record.value)
            if payload.get("stage") in QUERY_STAGES:
                self.lineage[payload["correlation_id"]].append(payload)
                self._check()


async def ask_with_lineage(
    bootstrap: str,
    triton_url: str,
    tenant: str,
    questions: list[str],
    timeout_s: float = 60,
    concurrency: int = 1,
) -> QueryRun:
    """Ask `questions`, `concurrency` in flight; wait for each answered one's lineage."""
    client = TritonClient(triton_url)
    await client.warm_up()
    before = await client.statistics("embedder")
    reader = _LineageReader()
    async with TopicTail(bootstrap, [TOPICS.audit.name]) as tail:
        collector = asyncio.create_task(reader.read(tail, len(questions) * timeout_s + 120))
        results = await ask_questions(bootstrap, tenant, questions, timeout_s, concurrency)
        answered = [r.request_id for r in results if not r.timed_out]
        reader.expect(answered)
        with suppress(TimeoutError):  # a record lost on the way: its request counts without it
            await asyncio.wait_for(reader.complete.wait(), 30)
        collector.cancel()
    after = await client.statistics("embedder")
    await client.close()
    compute_ns = after.compute_infer_ns - before.compute_infer_ns
    return QueryRun(
        results=results,
        lineage={r: reader.lineage[r] for r in answered},
        model_ms_per_question=compute_ns / 1e6 / max(1, len(questions)),
        triton_requests=after.success_count - before.success_count,
    )


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)}


def stage_breakdown(lineage: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per stage: `wait` (its input's publication to the stage starting on it: the hop, the
    consumer's poll and batching) and `work` (start to its lineage record), p50/p95/p99 ms."""
    waits: dict[str, list[float]] = defaultdict(list)
    works: dict[str, list[float]] = defaultdict(list)
    for records in lineage.values():
        for r in records:
            # queued_at is optional in the contract (an input without produced_at)
            if r.get("queued_at"):
                waits[r["stage"]].append(_ms(r["queued_at"], r["started_at"]))
            works[r["stage"]].append(_ms(r["started_at"], r["finished_at"]))
    return {
        stage: {"records": len(works[stage]), "wait_ms": _spread(waits[stage]),
                "work_ms": _spread(works[stage])}
        for stage in QUERY_STAGES if works[stage]
    }  # fmt: skip


def _latencies(results: list[AskResult]) -> tuple[list[float], list[float]]:
    """Pipeline (publication to answer published) and client (to answer read) milliseconds."""
    answered = [r for r in results if r.answer is not None]
    return [r.answer.latency_ms for r in answered if r.answer], [
        r.client_latency_ms for r in answered
    ]


def query_figures(first: QueryRun, again: QueryRun) -> dict[str, Any]:
    """The figures and verdicts of a first pass and an exact-cache pass."""
    pipeline, client = _latencies(first.results)
    model = first.model_ms_per_question
    overhead = _spread([ms - model for ms in pipeline])
    cached_pipeline, cached_client = _latencies(again.results)
    tiers: dict[str, int] = defaultdict(int)
    for r in first.results:
        tiers[r.answer.tier if r.answer else "timed out"] += 1
    exact_hits = sum(1 for r in again.results if r.answer and r.answer.cache_hit == "exact")
    cache_p99 = _spread(cached_pipeline)["p99"]
    met = {
        "overhead_p50": overhead["p50"] is not None and overhead["p50"] <= OVERHEAD_P50_TARGET_MS,
        "overhead_p99": overhead["p99"] is not None and overhead["p99"] <= OVERHEAD_P99_TARGET_MS,
        "exact_cache_p99": cache_p99 is not None and cache_p99 <= EXACT_CACHE_P99_TARGET_MS,
    }
    return {
        "questions": len(first.results),
        "answered": len(pipeline),
        "tiers": dict(tiers),
        "end_to_end_ms": _spread(pipeline),
        "client_end_to_end_ms": _spread(client),
        "model_ms_per_question": round(model, 2),
        "triton_requests": first.triton_requests,
        "overhead_ms": overhead,
        "stages": stage_breakdown(first.lineage),
        "exact_cache": {
            "questions": len(again.results),
            "exact_hits": exact_hits,
            "end_to_end_ms": _spread(cached_pipeline),
            "client_end_to_end_ms": _spread(cached_client),
            "stages": stage_breakdown(again.lineage),
        },
        "targets_ms": {
            "overhead_p50": OVERHEAD_P50_TARGET_MS,
            "overhead_p99": OVERHEAD_P99_TARGET_MS,
            "exact_cache_p99": EXACT_CACHE_P99_TARGET_MS,
        },
        "met": met,
    }
