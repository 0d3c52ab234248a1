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
import time
from collections import Counter
from typing import Any

from bench.measure import Processes, spread
from bench.traffic import TrafficQuestion, mix
from services.cli.ask_cmd import AskResult, ask_questions
from services.runtime.stage import STAGES

CLIENTS = 32


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
    groups = {stage: Processes.stage(stage) for stage in STAGES} | {
        "triton": Processes.named("tritonserver", "triton_python_backend_stub"),
        "broker": Processes.named("tansu"),
    }
    before = {name: group.cpu_seconds() for name, group in groups.items()}
    started = time.perf_counter()
    questions = [q.question for q in traffic]
    results = asyncio.run(ask_questions(bootstrap, tenant, questions, 120, CLIENTS))
    seconds = time.perf_counter() - started
    cpu_s = {name: group.cpu_seconds() - before[name] for name, group in groups.items()}
    answers = [r.answer for r in results if r.answer is not None]
    answered = max(1, len(answers))

    def per_answer(cpu_seconds: float) -> float:
        return round(cpu_seconds * 1000 / answered, 1)

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
        "cpu_ms_per_answer": {
            "stages": per_answer(sum(cpu_s[stage] for stage in STAGES)),
            "triton": per_answer(cpu_s["triton"]),
            "broker": per_answer(cpu_s["broker"]),
            "total": per_answer(sum(cpu_s.values())),
            "by_stage": {stage: per_answer(cpu_s[stage]) for stage in STAGES},
        },
        "tokens_per_answer": round(
            sum(a.input_tokens + a.output_tokens for a in answers) / answered, 1
        ),
        "command": command,
    }
