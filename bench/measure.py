"""What several benchmarks measure alike: latency spreads, answers asked in a loop, CPU time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from bench.query_path import ask_with_lineage
from services.cli.ask_cmd import AskResult, ask_questions
from services.cli.evaluation import percentile
from services.runtime.stage import STAGES

#: Questions per `ask_questions` call when asking one at a time in a loop (one answers-topic
#: subscription per call, not per question).
ROUND = 5
#: Triton's gRPC URL and the dict that collects each request's lineage records.
Lineage = tuple[str, dict[str, list[dict[str, Any]]]]


def spread(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / p99 in ms, rounded; None when there is nothing to measure."""
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{q}": round(percentile(values, q), 1) for q in (50, 95, 99)}


def pipeline_ms(results: list[AskResult]) -> list[float]:
    """Each answered question's latency from its publication to its answer's (AnswerV1);
    refusals are left out (a rate limit's or a budget's answer is fast, and would flatter)."""
    return [r.answer.latency_ms for r in results if r.answer is not None and not r.refused]


async def ask_one_at_a_time(
    bootstrap: str,
    tenants: list[str],
    questions: list[str],
    until: asyncio.Event | None = None,
    timeout_s: float = 60,
    lineage: Lineage | None = None,
) -> list[AskResult]:
    """Ask `questions` one at a time (`ragstream ask`'s code), tenants taking turns; stop
    early once `until` is set (at least one round is asked). With `lineage` (Triton's URL and
    a dict), each request's lineage records are added to the dict, read off the audit topic."""
    results: list[AskResult] = []
    for start in range(0, len(questions), ROUND):
        tenant = tenants[(start // ROUND) % len(tenants)]
        batch = questions[start : start + ROUND]
        if lineage is None:
            results += await ask_questions(bootstrap, tenant, batch, timeout_s, concurrency=1)
        else:
            run = await ask_with_lineage(bootstrap, lineage[0], tenant, batch, timeout_s)
            results += run.results
            lineage[1].update(run.lineage)
        if until is not None and until.is_set():
            break
    return results


@dataclass(frozen=True)
class Processes:
    """Some of this process's descendants (the stages, Triton's, the broker), whose CPU time
    is read together."""

    processes: list[psutil.Process]

    @classmethod
    def _matching(cls, keep: Callable[[list[str]], bool]) -> Processes:
        found = []
        for child in psutil.Process().children(recursive=True):
            try:
                command = child.cmdline()
            except psutil.Error:
                continue
            if command and keep(command):
                found.append(child)
        return cls(found)

    @classmethod
    def stage(cls, name: str) -> Processes:
        """One stage's processes (`ragstream serve NAME`, each worker)."""
        return cls._matching(
            lambda command: (
                "services.cli.main" in command and "serve" in command and name in command
            )
        )

    @classmethod
    def named(cls, *names: str) -> Processes:
        """Those whose program's file name starts with one of `names`: `tritonserver`,
        Triton's `triton_python_backend_stub`, the broker's `tansu`."""
        return cls._matching(lambda command: command[0].rsplit("/", 1)[-1].startswith(names))

    @classmethod
    def of_stack(cls) -> dict[str, Processes]:
        """The running stack's processes, grouped: each stage, Triton's, the broker's."""
        return {stage: cls.stage(stage) for stage in STAGES} | {
            "triton": cls.named("tritonserver", "triton_python_backend_stub"),
            "broker": cls.named("tansu"),
        }

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every one still running."""
        total = 0.0
        for process in self.processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total


def cpu_seconds(groups: dict[str, Processes]) -> dict[str, float]:
    """Each group's CPU seconds so far (subtract two readings for an interval's)."""
    return {name: group.cpu_seconds() for name, group in groups.items()}


def cpu_ms_each(spent: dict[str, float], count: int) -> dict[str, Any]:
    """CPU ms per item (answer, chunk) from each group's CPU seconds over the items' run:
    the stages together, Triton, the broker, the total, and each stage."""

    def each(seconds: float) -> float:
        return round(seconds * 1000 / max(1, count), 1)

    return {
        "stages": each(sum(spent[stage] for stage in STAGES)),
        "triton": each(spent["triton"]),
        "broker": each(spent["broker"]),
        "total": each(sum(spent.values())),
        "by_stage": {stage: each(spent[stage]) for stage in STAGES},
    }
