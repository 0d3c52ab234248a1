"""Benchmark: many clients, traffic with repeats and paraphrases, the semantic cache on.

`CLIENTS` questions in flight (`ragstream ask`'s code) over seeded traffic
(bench/traffic.py: 60% fresh, 25% exact repeats, 15% paraphrases). Per answer: the cache
that answered it (AnswerV1.cache_hit), its tokens, and the CPU it cost: the CPU time
(psutil, user + system) over the run of the stage processes (also per stage), of Triton's
processes (server and Python-backend stub) and of the broker, divided by the answers. Not
Triton's `compute_infer` statistic: it is per request, so a batch's time counts once for
every request in it (32 questions at once: 2,315 ms of it for 157 ms of wall time).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

from bench.measure import Processes, cpu_ms_each, cpu_seconds, spread
from bench.traffic import TrafficQuestion, mix
from contracts.registry import TOPICS
from services.cli.ask_cmd import AskResult, ask_questions
from services.runtime.topic_reader import read_topic

CLIENTS = 32
#: A question with no answer by then counts as unanswered (client p99 is ~3 s at full size).
ASK_TIMEOUT_S = 120
#: How often the CPU of the stack is read while the clients ask.
CPU_SAMPLE_S = 0.5


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
    bootstrap: str, tenant: str, traffic: list[TrafficQuestion], command: str
) -> dict[str, Any]:
    """Answers/s, latency, cache hit ratios, CPU time and tokens per answer."""
    groups = Processes.of_stack()
    questions = [q.question for q in traffic]
    results, seconds, cpu_s = asyncio.run(_asked(bootstrap, tenant, questions, groups))
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
        "processes": {name: len(group.processes) for name, group in groups.items()},
        "cpu_ms_per_answer": cpu_ms_each(cpu_s, answered),
        "tokens_per_answer": round(
            sum(a.input_tokens + a.output_tokens for a in answers) / answered, 1
        ),
        "unanswered": _unanswered(bootstrap, [r for r in results if r.answer is None]),
        "command": command,
    }


async def _asked(
    bootstrap: str, tenant: str, questions: list[str], groups: dict[str, Processes]
) -> tuple[list[AskResult], float, dict[str, float]]:
    """The results, and the seconds and CPU seconds (per group) from the first question to
    the last answer: a question that never gets one holds the run until its timeout
    (`ASK_TIMEOUT_S`), and that idle wait is not the answers' cost."""
    started, before = time.perf_counter(), cpu_seconds(groups)
    trail: list[tuple[float, dict[str, float]]] = []
    last_answer = started

    def answered(result: AskResult) -> None:
        nonlocal last_answer
        if result.answer is not None:
            last_answer = time.perf_counter()

    async def sample() -> None:
        while True:
            await asyncio.sleep(CPU_SAMPLE_S)
            trail.append((time.perf_counter(), cpu_seconds(groups)))

    sampler = asyncio.create_task(sample())
    try:
        results = await ask_questions(
            bootstrap, tenant, questions, ASK_TIMEOUT_S, CLIENTS, on_result=answered
        )
    finally:
        sampler.cancel()
    trail.append((time.perf_counter(), cpu_seconds(groups)))
    at, after = next((t, cpu) for t, cpu in trail if t >= last_answer)
    return results, at - started, {name: after[name] - before[name] for name in groups}


def _unanswered(bootstrap: str, unanswered: list[AskResult]) -> dict[str, dict[str, Any]]:
    """Where each unanswered question's trail ends: its lineage (`stage:outcome` in order),
    any dead letter (`dlq:stage:error_kind`, with its reason); a question's correlation id is
    its request id."""
    trails: dict[str, dict[str, Any]] = {
        r.request_id: {"question": r.question, "trail": [], "reasons": []} for r in unanswered
    }
    if not trails:
        return {}
    for topic in (TOPICS.audit, TOPICS.dlq):
        for record in asyncio.run(read_topic(bootstrap, topic.name, 120)):
            payload = json.loads(record.value)
            found = trails.get(payload.get("correlation_id"))
            if found is None:
                continue
            if topic is TOPICS.audit:
                found["trail"].append(f"{payload.get('stage')}:{payload.get('outcome')}")
            else:
                found["trail"].append(f"dlq:{payload.get('stage')}:{payload.get('error_kind')}")
                found["reasons"].append(str(payload.get("reason"))[:1000])
    return trails
