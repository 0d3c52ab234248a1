"""The tenant flood's flooder (issue 9, LLM10), in a process of its own.

One tenant publishes F tiny documents and Q questions at once, wave after wave, until told to
stop: the next wave once the last one's questions are settled, and not sooner than its period
((F + Q) / FLOOD_EVENTS_PER_S). Its events are counted by outcome (accepted, rate-limited at
ingest, refused for its budget, answered); its limits hold when what ingest accepted stays
within burst + rate x seconds (from the first publish to ingest's last decision) and what it
was answered stays within its budget.

Why a process of its own: a flooder is another client than the tenants whose latency is
measured. In the measuring process it shared their event loop, where publishing 2,500 events
and reading 2,000 refusals could delay their questions' publication (each stamped when due),
and that delay would be counted as the pipeline's. Moving it out changed no figure beyond the
noise (bench/README.md, 2026-12-07): the others' wait at ingest during a wave comes from
ingest's own loop, busy turning the flood away, not from their client. The flooder's CPU
(`client_cpu_s`, ~1.5 ms an event) still comes from the same 2 cores, as an attacker's on the
same machine would.

    async with flooding(bootstrap, texts, questions) as counts:
        ...  # the others ask meanwhile
    counts["rate_limit_held"]

`python -m bench.flooder` is the process: it reads its bootstrap servers, texts and questions
as one JSON line on stdin, floods once it has said `{"started": true}` on stdout, and stops
when its stdin is closed, saying `{"counts": {...}}` once its last wave is settled.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.upstream import document_events, publish_documents
from contracts.registry import TOPICS
from services.cli.ask_cmd import AskResult, ask_questions
from services.runtime.topic_reader import TopicTail

ROOT = Path(__file__).resolve().parents[1]
FLOODER = "flooder"
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
#: Seconds for the flooder's process to start and connect; for its last wave to settle.
START_S = 120.0
SETTLE_S = 300.0


@dataclass
class Decisions:
    """Ingest's decision ("ok", "rate_limited", …) for each of the flooder's documents, by
    correlation id, and when the last one was published (Unix seconds)."""

    outcomes: dict[str, str] = field(default_factory=dict)
    last_at: float = 0.0
    #: Set once every id asked about has its decision.
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    async def settled(self, timeout_s: float) -> None:
        """Wait until every decision is in, at most `timeout_s` (one lost on the way counts
        as `no_record`)."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.complete.wait(), timeout_s)

    def counted(self, ids: set[str]) -> Counter[str]:
        """The decisions by outcome; `no_record` for each of `ids` without one."""
        outcomes = Counter(self.outcomes.values())
        outcomes["no_record"] = len(ids) - len(self.outcomes)
        return outcomes


async def ingest_outcomes(tail: TopicTail, correlation_ids: set[str], decisions: Decisions) -> None:
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
                    decisions.complete.set()


async def flood(
    bootstrap: str,
    texts: list[str],
    questions: list[str],
    stop: asyncio.Event,
    started: Callable[[], None] = lambda: None,
) -> tuple[list[AskResult], Counter[str], float]:
    """Waves of every document and question at once, the next once the last one's questions
    are settled and its share of FLOOD_EVENTS_PER_S has passed, until `stop` is set
    (`started` is called as the first wave is about to go out): each question's outcome, each
    document's ingest decision, and the seconds from the first publish until the last question
    was settled or the last document decided, whichever came later (ingest may still be
    deciding a wave's documents when its questions are settled: tokens its bucket refilled
    meanwhile count)."""
    ids: set[str] = set()
    results: list[AskResult] = []
    async with ingest_decisions(bootstrap, ids) as decisions:
        started_at = time.time()
        period = (len(texts) + len(questions)) / FLOOD_EVENTS_PER_S
        settled = started_at
        started()
        while not stop.is_set():
            wave_at = time.time()
            documents = document_events(texts, FLOODER)  # fresh ids: not deduplicated
            ids.update(d.correlation_id for d in documents)
            decisions.complete.clear()
            asked = asyncio.create_task(
                ask_questions(bootstrap, FLOODER, questions, 180, len(questions))
            )
            await publish_documents(bootstrap, documents)
            results += await asked
            settled = time.time()
            with suppress(TimeoutError):  # the wave's period out, unless stopped meanwhile
                await asyncio.wait_for(stop.wait(), wave_at + period - settled)
        await decisions.settled(60)
    return results, decisions.counted(ids), max(settled, decisions.last_at) - started_at


@asynccontextmanager
async def ingest_decisions(bootstrap: str, ids: set[str]) -> AsyncIterator[Decisions]:
    """Ingest's decisions on the documents whose correlation ids are (or are added to) `ids`,
    collected from the audit topic while the block runs."""
    decisions = Decisions()
    async with TopicTail(bootstrap, [TOPICS.audit.name]) as tail:
        collector = asyncio.create_task(ingest_outcomes(tail, ids, decisions))
        try:
            yield decisions
        finally:
            collector.cancel()
            with suppress(asyncio.CancelledError):
                await collector


def flooder_counts(
    results: list[AskResult], documents: Counter[str], seconds: float, wave_events: int
) -> dict[str, Any]:
    """The flood's events by outcome, and whether the rate limit and the budget held."""
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


@asynccontextmanager
async def flooding(
    bootstrap: str, texts: list[str], questions: list[str]
) -> AsyncIterator[dict[str, Any]]:
    """The flooder's process flooding while the block runs; once the block is left and the
    last wave settled, the yielded dict holds its counts (`flooder_counts`)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.flooder",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    counts: dict[str, Any] = {}
    try:
        spec = {"bootstrap": bootstrap, "texts": texts, "questions": questions}
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        await process.stdin.drain()
        await _said(process, "started", START_S)
        yield counts
        process.stdin.close()  # stop after the wave in flight
        counts.update(await _said(process, "counts", SETTLE_S))
        await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _said(process: asyncio.subprocess.Process, key: str, timeout_s: float) -> Any:
    """The value of the flooder's next `{key: value}` line on its stdout."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    if not line:
        code = await process.wait()
        raise RuntimeError(f"the flooder exited with code {code} before saying {key!r}")
    return json.loads(line)[key]


def _say(**message: Any) -> None:
    print(json.dumps(message), flush=True)


async def _main() -> None:
    spec = json.loads(sys.stdin.readline())
    stop, loop, stdin = asyncio.Event(), asyncio.get_running_loop(), sys.stdin.fileno()

    def parent_closed_stdin() -> None:  # once: a closed pipe stays readable, so remove it
        loop.remove_reader(stdin)
        stop.set()

    loop.add_reader(stdin, parent_closed_stdin)
    texts, questions = spec["texts"], spec["questions"]
    results, documents, seconds = await flood(
        spec["bootstrap"], texts, questions, stop, lambda: _say(started=True)
    )
    counts = flooder_counts(results, documents, seconds, len(texts) + len(questions))
    counts["client_cpu_s"] = round(sum(os.times()[:2]), 1)
    _say(counts=counts)


if __name__ == "__main__":
    asyncio.run(_main())
