"""`ragstream audit show / costs / latency / tail / export / dashboard`: the analysts' view of
the audit store (read while the audit stage writes it) and of the live audit topic, for every
tenant or, with `--tenant` or RAGSTREAM_AUDIT_TENANT, for one."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from pydantic import JsonValue, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from contracts.registry import TOPICS
from contracts.v1 import LineageRecordV1
from services.audit.dashboard import decision_line
from services.audit.exceptions import AuditStoreError
from services.audit.store import (
    AuditStore,
    CostKey,
    ExportFormat,
    ExportTable,
    audit_db_path,
    open_for_reading,
)
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_reader import TopicTail

audit_app = typer.Typer(
    help="The audit trail: one request's lineage, costs, latency percentiles, the live stream."
)
out = Console()
err = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
TenantFlag = Annotated[
    str | None,
    typer.Option(
        "--tenant",
        help="Only this tenant's records (default: every tenant, or RAGSTREAM_AUDIT_TENANT's "
        "when set; no other tenant is allowed then).",
    ),
]


def audit_scope(settings: RuntimeSettings, requested: str | None) -> str | None:
    """The tenant an audit command reads (None: every tenant): `--tenant`, else the tenant
    RAGSTREAM_AUDIT_TENANT pins the deployment to; another tenant than the pinned one is a
    usage error (exit 2), never a silent switch."""
    pinned = settings.audit_tenant or None
    if pinned is not None and requested is not None and requested != pinned:
        raise typer.BadParameter(
            f"{requested!r}: this deployment is pinned to tenant {pinned!r} by "
            f"RAGSTREAM_AUDIT_TENANT; leave --tenant out or use --tenant {pinned}",
            param_hint="--tenant",
        )
    return requested if requested is not None else pinned


def duration_ms(record: LineageRecordV1) -> float:
    return round((record.finished_at - record.started_at).total_seconds() * 1000, 2)


def request_report(store: AuditStore, request_id: str, tenant: str | None = None) -> dict[str, Any]:
    """One request's lineage (causal order), with its totals and final answer, as JSON; with
    a tenant, another tenant's request reads like an unknown one."""
    records = store.lineage(request_id, tenant)
    answer = store.answer(request_id, tenant)
    generations = [r for r in records if r.stage == "generate"]

    def total(key: str) -> float:
        return sum(
            float(v) for r in generations if isinstance(v := r.details.get(key), int | float)
        )

    return {
        "request_id": request_id,
        "correlation_ids": sorted({r.correlation_id for r in records}),
        "records": [{**r.model_dump(mode="json"), "duration_ms": duration_ms(r)} for r in records],
        "input_tokens": int(total("input_tokens")),
        "output_tokens": int(total("output_tokens")),
        "cost_usd": total("cost_usd"),
        "answer": None
        if answer is None
        else asdict(answer) | {"produced_at": str(answer.produced_at)},
    }


def _decision(key: str, value: JsonValue) -> str:
    return decision_line(key, value, max_items=4, max_chars=120)


def render_request(report: dict[str, Any]) -> Tree:
    """The lineage as a tree: each stage with outcome, time and decisions, then the answer."""
    tree = Tree(
        f"[bold]request {escape(report['request_id'])}[/]  {report['input_tokens']} in / "
        f"{report['output_tokens']} out tokens, ${report['cost_usd']:.6f}"
    )
    for record in report["records"]:
        node = tree.add(
            f"[bold]{record['stage']}[/] {record['outcome']}  {record['duration_ms']:.1f} ms"
            f"  [dim]{record['event_id']}[/]"
        )
        for key, value in record["details"].items():
            node.add(escape(_decision(key, value)))
    answer = report["answer"]
    if answer is None:
        tree.add("[yellow]no answer stored yet[/]")
    elif answer["answer"] is not None:
        node = tree.add(f"[green]answer[/] ({answer['tier']}, {answer['latency_ms']:.0f} ms)")
        node.add(escape(answer["answer"]))
    else:
        node = tree.add(f"[red]refusal[/] {', '.join(answer['refusal_reasons'])}")
        node.add(escape(answer["refusal_message"] or ""))
    return tree


def _open(settings: RuntimeSettings) -> Any:
    try:
        return open_for_reading(audit_db_path(settings.data_dir))
    except AuditStoreError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from exc


def _print_rows(rows: list[dict[str, Any]], title: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=title)
    for column in rows[0] if rows else ["(empty)"]:
        table.add_column(
            column, justify="left" if column in ("stage", "tenant", "model", "day") else "right"
        )
    for row in rows:
        table.add_row(
            *(
                f"{v:.6f}" if k == "cost_usd" else f"{v:.1f}" if isinstance(v, float) else str(v)
                for k, v in row.items()
            )
        )
    out.print(table)


@audit_app.command("show")
def audit_show(
    request_id: Annotated[str, typer.Argument(help="Request id (or correlation id).")],
    tenant: TenantFlag = None,
    as_json: JsonFlag = False,
) -> None:
    """One request's lineage in causal order: stage, outcome, time, decisions, tokens, cost,
    then the final answer. Exits 1 when the store has no record of it (for the tenant)."""
    settings = RuntimeSettings()
    scope = audit_scope(settings, tenant)
    with _open(settings) as store:
        report = request_report(store, request_id, scope)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        out.print(render_request(report))
    raise typer.Exit(0 if report["records"] else 1)


@audit_app.command("costs")
def audit_costs(
    by: Annotated[
        str,
        typer.Option(
            help="Group by tenant, model, version (model@version), prompt (name/version), "
            "arm (stable or canary) or day (UTC)."
        ),
    ] = "tenant",
    tenant: TenantFlag = None,
    as_json: JsonFlag = False,
) -> None:
    """Generations, input/output tokens and cost in USD, summed from generate's records.

    During a canary, --by version, --by prompt and --by arm compare the two sides."""
    if by not in get_args(CostKey):
        raise typer.BadParameter(f"--by {by!r}: use one of {', '.join(get_args(CostKey))}")
    key: CostKey = by  # type: ignore[assignment]
    settings = RuntimeSettings()
    scope = audit_scope(settings, tenant)
    with _open(settings) as store:
        rows = store.costs(key, scope)
    _print_rows(rows, f"costs by {by}", as_json)


@audit_app.command("latency")
def audit_latency(
    stage: Annotated[
        str | None, typer.Option(help="Only this stage (or end_to_end.query/.document).")
    ] = None,
    tenant: TenantFlag = None,
    as_json: JsonFlag = False,
) -> None:
    """p50/p95/p99/max handling time per stage, and end to end per request and document."""
    settings = RuntimeSettings()
    scope = audit_scope(settings, tenant)
    with _open(settings) as store:
        rows = store.latency(stage, scope)
    _print_rows(rows, "latency (ms)", as_json)


@audit_app.command("export")
def audit_export(
    out_path: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    table: Annotated[str, typer.Option(help="lineage or answers.")] = "lineage",
    tenant: TenantFlag = None,
) -> None:
    """Write the lineage (or answers) table, or one tenant's rows of it, to Parquet or JSON
    lines for other tools."""
    if fmt not in ("parquet", "jsonl") or table not in ("lineage", "answers"):
        raise typer.BadParameter("use --format parquet|jsonl and --table lineage|answers")
    chosen_fmt: ExportFormat = fmt  # type: ignore[assignment]
    chosen_table: ExportTable = table  # type: ignore[assignment]
    settings = RuntimeSettings()
    scope = audit_scope(settings, tenant)
    with _open(settings) as store:
        count = store.export(out_path, chosen_fmt, chosen_table, scope)
    err.print(f"wrote {count} {table} rows to {out_path}")


def _tail_line(record: LineageRecordV1) -> str:
    decisions = "; ".join(_decision(k, v) for k, v in list(record.details.items())[:4])
    return (
        f"{record.finished_at:%H:%M:%S.%f}"[:-3]
        + f"  {record.tenant_id}  {record.stage:<9} {record.outcome:<10} "
        f"{duration_ms(record):8.1f} ms  {record.correlation_id}  {decisions}"
    )


async def tail_audit(
    bootstrap: str, tenant: str | None, as_json: bool, seconds: float | None, console: Console
) -> int:
    """Print lineage records as they are published, until Ctrl-C or `seconds` pass."""
    shown = 0
    async with TopicTail(bootstrap, [TOPICS.audit.name]) as tail:
        async for message in tail.records(timeout_s=seconds if seconds is not None else 10**9):
            try:
                record = LineageRecordV1.model_validate_json(message.value)
            except ValidationError:
                continue
            if tenant and record.tenant_id != tenant:
                continue
            shown += 1
            if as_json:
                print(record.model_dump_json(), flush=True)
            else:
                console.print(escape(_tail_line(record)), soft_wrap=True)
    return shown


@audit_app.command("tail")
def audit_tail(
    tenant: TenantFlag = None,
    seconds: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow the audit topic live: one line (or JSON object) per lineage record."""
    from services.runtime.runstate import resolve_bootstrap

    settings = RuntimeSettings()
    scope = audit_scope(settings, tenant)
    try:
        asyncio.run(tail_audit(resolve_bootstrap(settings), scope, as_json, seconds, out))
    except KeyboardInterrupt:
        pass


@audit_app.command("dashboard")
def audit_dashboard(
    port: Annotated[int, typer.Option(help="Port to serve on (0: any free port).")] = 8765,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 for every one.")
    ] = "127.0.0.1",
    tenant: TenantFlag = None,
) -> None:
    """Serve a read-only web page for analysts: recent requests (outcome, tier, tokens,
    latency), one request's lineage, cost per tenant per day, latency percentiles per stage;
    and the same as JSON under /api/. Every page and endpoint holds only --tenant's (or
    RAGSTREAM_AUDIT_TENANT's) records when given. Works while the audit stage writes; Ctrl-C
    stops."""
    from services.cli.dashboard_cmd import serve_dashboard

    settings = RuntimeSettings()
    scope = audit_scope(settings, tenant)
    raise typer.Exit(serve_dashboard(audit_db_path(settings.data_dir), host, port, scope))
