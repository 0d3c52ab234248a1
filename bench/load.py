"""Benchmark: many clients, traffic with repeats and paraphrases, the semantic cache on.

`CLIENTS` questions in flight (`ragstream ask`'s code) over seeded traffic (bench/traffic.py:
60% fresh, 25% exact repeats, 15% paraphrases). Per answer: the cache that answered it
(AnswerV1.cache_hit), its tokens, and the CPU it cost: the stage processes' CPU time over the
run (psutil) plus Triton's compute time for the embedder (server-side statistics), divided by
the answers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from bench.measure import StageProcesses, spread
from bench.traffic import TrafficQuestion, mix
from inference.client import TritonClient
from services.cli.ask_cmd import AskResult, ask_questions

CLIENTS = 32


async def _triton_compute_ns(triton_url: str) -> int:
    client = TritonClient(triton_url)
    await client.warm_up()
    try:
        return (await client.statistics("embedder")).compute_infer_ns
    finally:
        await client.close()


def _hits(results: list[AskResult], traffic: list[TrafficQuestion]) -> dict[str, dict[str, int]]:
    """Per traffic kind, how many answers came from each cache (or none), and how many
    semantic hits did not carry the asked fact (answered from another question's answer)."""
    out: dict[str, Counter[str]] = {}
    for result, asked in zip(results, traffic, strict=True):
        counts = out.setdefault(asked.kind, Counter())
        answer = result.answer
        counts["timed_out" if answer is None else answer.cache_hit] += 1
        if answer is not None and answer.cache_hit == "semantic":
            counts["semantic_without_fact"] += asked.key_fact not in (answer.answer or "")
    return {kind: dict(counts) for kind, counts in out.items()}


def load_figures(
    bootstrap: str, triton_url: str, tenant: str, traffic: list[TrafficQuestion], command: str
) -> dict[str, Any]:
    """Answers/s, latency, cache hit ratios, CPU time and tokens per answer."""
    stages = StageProcesses.find()
    cpu_before, triton_before = stages.cpu_seconds(), asyncio.run(_triton_compute_ns(triton_url))
    started = time.perf_counter()
    questions = [q.question for q in traffic]
    results = asyncio.run(ask_questions(bootstrap, tenant, questions, 120, CLIENTS))
    seconds = time.perf_counter() - started
    cpu_s = stages.cpu_seconds() - cpu_before
    triton_s = (asyncio.run(_triton_compute_ns(triton_url)) - triton_before) / 1e9
    answers = [r.answer for r in results if r.answer is not None]
    answered = max(1, len(answers))
    cache = Counter(a.cache_hit for a in answers)
    return {
        "clients": CLIENTS,
        "questions": len(traffic),
        "mix": mix(traffic),
        "answered": len(answers),
        "refused": sum(1 for a in answers if a.refusal is not None),
        "seconds": round(seconds, 1),
        "answers_per_s": round(len(answers) / seconds, 2),
        "client_latency_ms": spread([r.client_latency_ms for r in results if r.answer]),
        "end_to_end_ms": spread([a.latency_ms for a in answers]),
        "cache_hit_ratio": {
            kind: round(cache[kind] / answered, 3) for kind in ("exact", "semantic")
        },
        "cache_hits_by_kind": _hits(results, traffic),
        "stage_processes": len(stages.processes),
        "cpu_ms_per_answer": {
            "stages": round(cpu_s * 1000 / answered, 1),
            "triton_compute": round(triton_s * 1000 / answered, 1),
            "total": round((cpu_s + triton_s) * 1000 / answered, 1),
        },
        "tokens_per_answer": round(
            sum(a.input_tokens + a.output_tokens for a in answers) / answered, 1
        ),
        "command": command,
    }
