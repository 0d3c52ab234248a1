"""`ragstream eval`: ask a labelled question set and score the answers against thresholds."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from services.cli.ask_cmd import (
    PipelineUnavailableError,
    ask_questions,
    validation_problems,
)
from services.cli.evaluation import (
    THRESHOLDS_FILE,
    EvalInputError,
    EvalReport,
    check_thresholds,
    evaluate,
    load_questions,
    load_thresholds,
    report_json,
)

EXIT_PASSED = 0
EXIT_BELOW_THRESHOLDS = 1
EXIT_CANNOT_EVALUATE = 2
_PROGRESS_COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
)


def _figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if unit == "ms" else f"{value:.1%}"


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str | Text, ...]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _pair(low: float | None, high: float | None) -> str:
    return f"{_figure(low, 'ms')} / {_figure(high, 'ms')}"


def render_report(console: Console, report: EvalReport, failures: list[str] | None = None) -> None:
    """The summary, per-tier and per-question tables, then the threshold verdict."""
    r = report
    summary: list[tuple[str | Text, ...]] = [
        (f"cited expected doc (hit@{r.k})", _figure(r.answered_from_expected_doc)),
        ("citation accuracy", _figure(r.citation_accuracy)),
        ("key-fact containment", _figure(r.key_fact_containment)),
        ("groundedness (mean confidence)", _figure(r.groundedness)),
        ("refusal rate", _figure(r.refusal_rate)),
        ("answered / refused / timed out", f"{r.answered} / {r.refused} / {r.timeouts}"),
        ("latency p50 / p95", _pair(r.latency_p50_ms, r.latency_p95_ms)),
        ("client latency p50 / p95", _pair(r.client_latency_p50_ms, r.client_latency_p95_ms)),
        ("cache hits", ", ".join(f"{k} {v}" for k, v in sorted(r.cache_hits.items())) or "-"),
    ]
    tiers: list[tuple[str | Text, ...]] = [
        (
            name,
            str(t.questions),
            str(t.input_tokens),
            str(t.output_tokens),
            f"${t.cost_usd:.6f}",
            _pair(t.latency_p50_ms, t.latency_p95_ms),
        )
        for name, t in r.tiers.items()
    ]
    questions: list[tuple[str | Text, ...]] = [
        (
            o.id or "",
            o.status,
            "yes" if o.cited_expected_doc else "no",
            f"{o.key_facts_found}/{o.key_facts}",
            o.tier or "",
            Text(o.question),
        )
        for o in r.per_question
    ]
    console.print(_table(f"evaluation of {r.questions} questions", ("figure", "value"), summary))
    tier_columns = ("tier", "replies", "input tokens", "output tokens", "cost", "p50 / p95")
    console.print(_table("per tier", tier_columns, tiers))
    question_columns = ("id", "status", "expected doc cited", "key facts", "tier", "question")
    console.print(_table("per question", question_columns, questions))
    for failure in failures or []:
        console.print(Text(f"below threshold: {failure}", style="red"))
    if failures is not None and not failures:
        console.print(Text("all thresholds met", style="green"))


def eval_command(
    questions_path: Path,
    tenant: str,
    timeout: float,
    json_output: bool,
    bootstrap: str,
    thresholds_path: Path | None = None,
    k: int = 5,
    concurrency: int = 4,
    out: Console | None = None,
    err: Console | None = None,
) -> int:
    """`ragstream eval`: 0 when every threshold holds (or none is set), 1 when one fails,
    2 when the evaluation could not run (bad file, no broker, bad tenant)."""
    out = out or Console()
    err = err or Console(stderr=True)
    beside = questions_path.parent / THRESHOLDS_FILE
    thresholds_path = thresholds_path or (beside if beside.is_file() else None)
    try:
        specs = load_questions(questions_path)
        thresholds = load_thresholds(thresholds_path) if thresholds_path else None
        with Progress(*_PROGRESS_COLUMNS, console=err, transient=True) as progress:
            asking = progress.add_task("asking", total=len(specs))
            results = asyncio.run(
                ask_questions(
                    bootstrap,
                    tenant,
                    specs,
                    timeout,
                    concurrency,
                    on_result=lambda _: progress.advance(asking),
                )
            )
    except ValidationError as exc:
        err.print(Text(f"cannot evaluate: {validation_problems(exc)}", style="red"))
        return EXIT_CANNOT_EVALUATE
    except (EvalInputError, OSError, PipelineUnavailableError) as exc:
        err.print(Text(f"cannot evaluate: {exc}", style="red"))
        return EXIT_CANNOT_EVALUATE
    report = evaluate(results, specs, k)
    failures = check_thresholds(report, thresholds) if thresholds is not None else None
    if json_output:
        print(json.dumps(report_json(report, failures), indent=2, ensure_ascii=False))
    else:
        render_report(out, report, failures)
    return EXIT_BELOW_THRESHOLDS if failures else EXIT_PASSED
