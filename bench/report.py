"""The benchmark run's record: one JSON file and one Markdown table under bench/results/."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**missed**")


def _ms(spread: dict[str, float | None]) -> str:
    return " / ".join("-" if v is None else f"{v:.0f}" for v in spread.values()) + " ms"


def rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, value, target, verdict) for every figure the run produced."""
    out: list[tuple[str, str, str, str, str]] = []
    doc = report["benchmarks"].get("document_path")
    if doc:
        out.append(("document path", "pipeline", f"{doc['path_chunks_per_s']} chunks/s", "", ""))
        if "cpu_ms_per_chunk" in doc:
            out += _cpu_rows("document path", "chunk", doc["cpu_ms_per_chunk"])
    if doc and "path_over_in_process" in doc:  # absent when a later benchmark failed first
        out += [
            ("document path", "in-process limit (batch "
             f"{doc['best_batch_size']})", f"{doc['in_process_chunks_per_s']} chunks/s", "", ""),
            ("document path", "pipeline / limit", f"{doc['path_over_in_process']}", ">= 0.8",
             _verdict(doc["met"])),
        ]  # fmt: skip
    query = report["benchmarks"].get("query_path")
    if query:
        met, cache = query["met"], query["exact_cache"]
        out += [
            ("query path", "end to end p50 / p95 / p99", _ms(query["end_to_end_ms"]), "", ""),
            ("query path", "model time (Triton compute) per question",
             f"{query['model_ms_per_question']} ms", "", ""),
            ("query path", "overhead p50 / p95 / p99", _ms(query["overhead_ms"]),
             "p50 <= 15, p99 <= 50 ms",
             f"p50 {_verdict(met['overhead_p50'])}, p99 {_verdict(met['overhead_p99'])}"),
            ("query path", f"exact cache p50 / p95 / p99 ({cache['exact_hits']} hits)",
             _ms(cache["end_to_end_ms"]), "p99 <= 20 ms", _verdict(met["exact_cache_p99"])),
        ]  # fmt: skip
        for stage, figures in query["stages"].items():
            wait, work = figures["wait_ms"], figures["work_ms"]
            value = f"wait {_ms(wait)}, work {_ms(work)}"
            out.append(("query path", f"stage {stage} p50 / p95 / p99", value, "", ""))
    peer = report["benchmarks"].get("peer_quix")
    if peer:
        if "skipped" in peer:
            out.append(("vs Quix Streams", "skipped", peer["skipped"], "", ""))
        else:
            ratio = peer.get("ours_over_theirs")
            out += [
                ("vs Quix Streams", "Quix Streams app", f"{peer['chunks_per_s']} chunks/s", "", ""),
                ("vs Quix Streams", "ours / theirs", "-" if ratio is None else f"{ratio}",
                 ">= 2", _verdict(peer.get("met"))),
            ]  # fmt: skip
    hay = report["benchmarks"].get("peer_haystack")
    if hay and "skipped" not in hay:
        ours, theirs = hay["ours"], hay["theirs"]
        for name, side in (("ours", ours), ("Haystack 2", theirs)):
            value = f"{side['answers_per_s']} answers/s, p50 / p95 / p99 {_ms(side['latency_ms'])}"
            out.append((f"vs Haystack ({ours['clients']} clients)", name, value, "", ""))
        for stage, figures in ours.get("stages", {}).items():
            value = f"wait {_ms(figures['wait_ms'])}, work {_ms(figures['work_ms'])}"
            out.append(
                (f"vs Haystack ({ours['clients']} clients)", f"ours: {stage}", value, "", "")
            )
        out.append((f"vs Haystack ({ours['clients']} clients)", "ours / theirs answers/s",
                    f"{hay['ours_over_theirs']}", ">= 3 at equal or lower p99",
                    _verdict(hay["met"])))  # fmt: skip
    elif hay:
        out.append(("vs Haystack", "skipped", hay["skipped"], "", ""))
    for name, rows_of in (("backfill", _backfill), ("load", _load), ("scaling", _scaling),
                          ("tenant_flood", _flood)):  # fmt: skip
        if name in report["benchmarks"]:
            out += rows_of(report["benchmarks"][name])
    gpu = report["benchmarks"].get("gpu")
    if gpu:
        out.append(("GPU", "did not run", gpu["skipped"], "", ""))
    return out


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value}"


def _backfill(b: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    name = f"backfill ({b['backfill_documents']} documents)"
    base, during = b["baseline"], b["during"]
    return [
        (name, f"no backfill: end to end p50 / p95 / p99 ({base['answered']} asked one at a "
         "time)", _ms(base["end_to_end_ms"]), "", ""),
        (name, f"during the backfill ({during['answered']} asked; backfill "
         f"{b['backfill_chunks_per_s']} chunks/s, {b['backfill_seconds']} s)",
         _ms(during["end_to_end_ms"]), "", ""),
        (name, "p99 during / p99 without", _ratio(b["p99_ratio"]), "<= 2", _verdict(b["met"])),
        *_stages(name, base.get("stages", {}), during.get("stages", {}), "backfill"),
    ]  # fmt: skip


def _stages(
    name: str, quiet: dict[str, Any], busy: dict[str, Any], load: str
) -> list[tuple[str, str, str, str, str]]:
    """One row per stage: wait / work p50, without the load and with it."""
    out = []
    for stage in busy:
        if stage in quiet:
            q, b = quiet[stage], busy[stage]
            without = f"{q['wait_ms']['p50']:.0f} / {q['work_ms']['p50']:.0f} ms without"
            value = f"{without}, {b['wait_ms']['p50']:.0f} / {b['work_ms']['p50']:.0f} ms {load}"
            out.append((name, f"stage {stage}: wait / work p50", value, "", ""))
    return out


def _load(b: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    name = f"load ({b['clients']} clients, {b['questions']} questions)"
    mix = ", ".join(f"{v} {k}" for k, v in b["mix"].items())
    hits, cpu = b["cache_hit_ratio"], b["cpu_ms_per_answer"]
    return [
        (name, f"answers/s ({b['answered']} answered; {mix})", f"{b['answers_per_s']}", "", ""),
        (name, "client p50 / p95 / p99", _ms(b["client_latency_ms"]), "", ""),
        (name, "cache hit ratio exact / semantic", f"{hits['exact']} / {hits['semantic']}",
         "", ""),
        *_cpu_rows(name, "answer", cpu),
        (name, "tokens per answer", f"{b['tokens_per_answer']}", "", ""),
        (name, "unanswered in 120 s: where each one's lineage ends", _trail_ends(b), "", ""),
    ]  # fmt: skip


def _cpu_rows(name: str, per: str, cpu: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """CPU per `per` (answer, chunk): stages + Triton + broker, then by stage."""
    by_stage = ", ".join(f"{stage} {ms}" for stage, ms in cpu.get("by_stage", {}).items())
    return [
        (name, f"CPU per {per}: stages + Triton + broker",
         f"{cpu['stages']} + {cpu['triton']} + {cpu['broker']} = {cpu['total']} ms", "", ""),
        (name, f"CPU per {per} by stage", f"{by_stage} ms", "", ""),
    ]  # fmt: skip


def _trail_ends(b: dict[str, Any]) -> str:
    """How many unanswered questions end their lineage at each `stage:outcome`."""
    trails = b.get("unanswered", {})
    if not trails:
        return "none"
    ends = Counter((t["trail"] or ["no lineage"])[-1] for t in trails.values())
    return f"{len(trails)}: " + ", ".join(f"{n} at {end}" for end, n in ends.most_common())


def _scaling(b: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    docs = ", ".join(f"{d['embed_workers']}: {d['chunks_per_s']}" for d in b["documents"])
    asks = ", ".join(f"{c['clients']}: {c['answers_per_s']}" for c in b["clients"])
    return [
        ("scaling", "document path chunks/s by embed workers", docs,
         "", f"saturates at {b['documents_saturate_at'] or '-'}"),
        ("scaling", "answers/s by concurrent clients", asks,
         "", f"saturates at {b['clients_saturate_at'] or '-'}"),
        ("scaling", "plot", b.get("png", "-"), "", ""),
    ]  # fmt: skip


def _flood(b: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    name = "tenant flood"
    others, flooder = b["others"], b["flooder"]
    limits = f"{b['limits']['rate_per_second']:g}/s, burst {b['limits']['burst']}"
    rate = ""
    if "events_per_s" in flooder:
        rate = f" ({flooder['events_per_s']}/s; a wave at most each {flooder['wave_period_s']} s)"
    if "client_cpu_s" in flooder:  # its own process since 2026-12-07
        rate += f"; its client's CPU {flooder['client_cpu_s']} s"
    return [
        (name, f"others, no flood: p50 / p95 / p99 ({others['baseline']['questions']} asked, "
         f"{len(others['tenants'])} tenants taking turns)",
         _ms(others["baseline"]["end_to_end_ms"]), "", ""),
        (name, f"others, during the flood ({others['during']['questions']} asked)",
         _ms(others["during"]["end_to_end_ms"]), "", ""),
        (name, f"flooder: {flooder['events']} events in {flooder['seconds']} s{rate}, "
         f"limit {limits}", f"accepted {flooder['accepted_by_ingest']} (allowed "
         f"{flooder['allowed_by_rate_limit']}), rate-limited {flooder['rate_limited']}, "
         f"questions {flooder['questions']}", "rate limit holds",
         _verdict(flooder["rate_limit_held"])),
        (name, "flooder's answered tokens / daily budget",
         f"{flooder['answered_tokens']} / {flooder['daily_token_budget']}", "budget holds",
         _verdict(flooder["budget_held"])),
        *_turn_away(name, b.get("turn_away")),
        *_turn_away(name, b.get("turn_away_documents"), "documents", "dead-lettered"),
        (name, "others' questions refused (left out of their latencies)",
         str(others["refused"]), "", ""),
        (name, "others' p99 during / without", _ratio(b["p99_ratio"]), "<= 2",
         _verdict(b["met"])),
        *_stages(name, others["baseline"].get("stages", {}),
                 others["during"].get("stages", {}), "during the flood"),
        *_stalls(name, b.get("loop_stalls")),
    ]  # fmt: skip


def _stalls(name: str, held: dict[str, Any] | None) -> list[tuple[str, str, str, str, str]]:
    """A row of how often each stage's loop was held, without and during the flood (since
    2026-12-07 19:00 UTC)."""
    if held is None:
        return []

    def cell(counts: dict[str, Any]) -> str:
        return f"{counts['stalls']:g}/{counts['samples']:g}"

    by_stage = ", ".join(
        f"{stage} {cell(without)} → {cell(held['during'][stage])}"
        for stage, without in held["baseline"].items()
    )
    return [(name, f"loop held > {held['over_s']:g} s: samples late / taken, without → during "
             "the flood", by_stage, "", "")]  # fmt: skip


def _turn_away(
    name: str, t: dict[str, Any] | None, what: str = "questions", done: str = "turned away"
) -> list[tuple[str, str, str, str, str]]:
    """The row of a fixed flood's turning-away (`what`: its `questions` or `documents`)."""
    if t is None:
        return []
    cpu = t["cpu_ms_each"]
    value = (f"{t['per_s']} {what}/s; CPU {cpu['total']} ms each (broker {cpu['broker']}, "
             f"stages {cpu['stages']}, Triton {cpu['triton']})")  # fmt: skip
    if beyond := t.get("cpu_ms_each_beyond_idle"):  # since 2026-12-07 19:00 UTC
        stages = ", ".join(f"{s} {ms}" for s, ms in beyond["by_stage"].items())
        value += (f"; beyond the idle stack's: {beyond['total']} ms (broker "
                  f"{beyond['broker']}, {stages})")  # fmt: skip
    return [
        (name, f"the flooder's {t[what]} {what} at once: {t['rate_limited']} "
         f"{done} over its rate limit in {t['seconds']} s", value, "", ""),
    ]  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    sizes = ", ".join(f"{k} {v}" for k, v in report["sizes"].items())
    lines = [
        f"### {report['date']} ({'quick' if report['quick'] else 'full'}: {sizes})",
        "",
        f"`{report['command']}` on {report['machine']}; load average "
        f"{report['load_average']['start']} at the start, {report['load_average']['end']} at "
        "the end. Every figure's own command is in the JSON beside this file.",
        "",
        "| benchmark | figure | value | target | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {' | '.join(row)} |" for row in rows(report)]
    if report.get("error"):
        last = report["error"].strip().splitlines()[-1]
        lines += ["", f"**Stopped by an error** (traceback in the JSON): `{last}`"]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], stem: str) -> tuple[Path, Path]:
    """bench/results/<stem>.json and .md; returns both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
