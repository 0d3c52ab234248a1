"""The `ragstream` command: run the pipeline, feed it, watch it, inspect what it rejected."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from services.cli.audit_cmd import audit_app
from services.cli.k8s_cmd import k8s_render
from services.cli.topics_cmd import topics_app
from services.runtime.settings import RuntimeSettings
from services.runtime.stage import STAGES

app = typer.Typer(
    name="ragstream",
    help="Event-streaming RAG pipeline on Kafka. `ragstream up` starts everything on this "
    "machine; `ragstream ingest` feeds it; `ragstream status` tells whether it is ready.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
dlq_app = typer.Typer(help="Inspect and re-publish dead letters (events a stage could not handle).")
contracts_app = typer.Typer(
    help="The JSON Schema snapshot of the contracts and its compatibility check."
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(contracts_app, name="contracts")
app.add_typer(audit_app, name="audit")
k8s_app = typer.Typer(help="Kubernetes manifests generated from the topic registry.")
k8s_app.command("render")(k8s_render)
app.add_typer(k8s_app, name="k8s")
app.add_typer(topics_app, name="topics")

out = Console()
err = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


def _settings() -> RuntimeSettings:
    return RuntimeSettings()


def _bootstrap() -> str:
    from services.runtime.runstate import resolve_bootstrap

    return resolve_bootstrap(_settings())


def _parse_scale(values: list[str]) -> dict[str, int]:
    scale: dict[str, int] = {}
    for value in values:
        stage, _, count = value.partition("=")
        if stage not in STAGES or not count.isdigit() or int(count) < 1:
            raise typer.BadParameter(
                f"{value!r}: use STAGE=N with N >= 1 and STAGE one of {', '.join(STAGES)}"
            )
        scale[stage] = int(count)
    return scale


@app.command()
def up(
    scale: Annotated[
        list[str], typer.Option("--scale", help="Consumers per stage, e.g. --scale chunk=2.")
    ] = [],  # noqa: B006 - typer reads the default
    broker_port: Annotated[
        int, typer.Option(help="Port of the embedded broker (a free one if taken; 0: any).")
    ] = 9092,
) -> None:
    """Start the embedded default: broker and every stage, supervised; Ctrl-C stops all.

    The Kafka broker (Tansu, topics in memory) and each stage run as their own processes;
    a stage that crashes is restarted. Set RAGSTREAM_BOOTSTRAP_SERVERS to use an existing
    Kafka instead of the embedded broker. Logs go to <data dir>/logs."""
    from services.cli.processes import run_up

    raise typer.Exit(run_up(_settings(), _parse_scale(scale), broker_port))


@app.command()
def serve(
    stage: Annotated[str, typer.Argument(help=f"One of: {', '.join(STAGES)}.")],
    workers: Annotated[
        int, typer.Option(min=1, help="Consumer processes in the stage's group.")
    ] = 1,
) -> None:
    """Run one stage (the production entrypoint), connected to RAGSTREAM_BOOTSTRAP_SERVERS."""
    if stage not in STAGES:
        raise typer.BadParameter(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    from services.cli.processes import run_serve

    raise typer.Exit(run_serve(stage, workers, _settings()))


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).")] = 9092,
) -> None:
    """Start only the embedded Kafka broker (Tansu, topics in memory) and create the topics."""
    from services.cli.processes import run_broker

    raise typer.Exit(run_broker(_settings(), port))


@app.command()
def triton(
    http_port: Annotated[int, typer.Option(help="HTTP port (0: a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = 8001,
    metrics_port: Annotated[
        int, typer.Option(help="Prometheus metrics port (0: a free one).")
    ] = 8002,
    device: Annotated[
        str, typer.Option(help="auto (GPU when CUDA is there), cpu or gpu.")
    ] = "auto",
) -> None:
    """Start only Triton with the embedder and generator; waits until both are ready.

    With RAGSTREAM_TRITON_URL set, that server is used and nothing is started."""
    settings = _settings()
    if settings.triton_url:
        out.print(
            f"RAGSTREAM_TRITON_URL is set: using Triton at {settings.triton_url}; nothing to start"
        )
        return
    if device not in ("auto", "cpu", "gpu"):
        raise typer.BadParameter(f"device {device!r}: use auto, cpu or gpu")
    from inference.server import TritonServer, run_triton_foreground

    server = TritonServer(
        settings.data_dir,
        http_port=http_port or None,
        grpc_port=grpc_port or None,
        metrics_port=metrics_port or None,
        device=device,  # type: ignore[arg-type]
    )
    raise typer.Exit(run_triton_foreground(server, announce=err.print))


@app.command()
def status(
    as_json: JsonFlag = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    window: Annotated[
        float, typer.Option(help="Seconds over which events/s are measured (0: skip them).")
    ] = 1.0,
) -> None:
    """Is everything up (`ready`); per stage: consumers, partitions owned, lag, events/s.

    Events per second are measured over --window seconds (the refresh interval with --watch).
    JSON fields: ready, bootstrap_servers, broker, triton, qdrant, dlq.count, and per stage
    stages.NAME: pids, consumers_alive, ready, checks, events_per_s (in_per_s, out_per_s),
    topics.TOPIC (partitions, partitions_owned {pid: [partitions]}, events, lag,
    consumer_group)."""
    from services.cli.status_cmd import StatusSampler, collect_status, status_table

    settings = _settings()
    if as_json:
        print(json.dumps(collect_status(settings, window_s=window), indent=2))
        return
    if not watch:
        out.print(status_table(collect_status(settings, window_s=window)))
        return
    sampler = StatusSampler(settings)
    with Live(status_table(sampler.collect()), console=out) as live:
        try:
            while True:
                time.sleep(max(window, 0.5))
                live.update(status_table(sampler.collect()))
        except KeyboardInterrupt:
            pass


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (.md, .txt, .html).")],
    tenant: Annotated[str, typer.Option(help="Tenant the documents belong to.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Return when each document is through or rejected.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 300.0,
    reindex: Annotated[
        bool,
        typer.Option(
            "--reindex",
            help="Index unchanged documents again, as a new version: for documents lost "
            "downstream (events not yet indexed when the embedded broker restarted, or a "
            "vector store restored from an old backup).",
        ),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Publish files and folders as documents, with a progress bar and a summary.

    A folder's files get their path relative to it as document id, so publishing it again
    replaces changed documents and skips unchanged ones (--reindex publishes those too, as a
    new version). --wait follows every document to the last stage (or the DLQ) and exits 1
    if any was rejected or timed out."""
    from services.cli.ingest_cmd import ingest_paths
    from services.runtime.tracing import traced_process

    with traced_process("cli", _settings()):  # each document's trace starts here
        report = asyncio.run(
            ingest_paths(_bootstrap(), paths, tenant, wait, timeout, err, reindex=reindex)
        )
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_ingest_report(report, wait)
    failed = report.counts().get("rejected", 0) + report.counts().get("timed_out", 0)
    raise typer.Exit(1 if failed or not report.outcomes else 0)


def _print_ingest_report(report: object, wait: bool) -> None:
    from services.cli.ingest_cmd import IngestReport

    assert isinstance(report, IngestReport)
    problems = [o for o in report.outcomes.values() if o.status in ("rejected", "timed_out")]
    if problems:
        table = Table(title="not ingested")
        for column in ("document", "status", "reason"):
            table.add_column(column)
        for o in problems:
            table.add_row(o.doc_id, o.status, o.detail)
        out.print(table)
    for path, reason in report.skipped:
        err.print(f"[yellow]skipped[/] {path}: {reason}")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    rate = len(report.outcomes) / report.elapsed_s if report.elapsed_s else 0.0
    out.print(
        f"{len(report.outcomes)} documents ({counts or 'none'}) in {report.elapsed_s:.1f} s "
        f"({rate:.0f} documents/s){'' if wait else '; use --wait to follow them through'}"
    )


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    tenant: Annotated[str, typer.Option(help="Tenant whose documents answer it.")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0,
    top_k: Annotated[int | None, typer.Option(min=1, max=50, help="Chunks to retrieve.")] = None,
    tier: Annotated[str | None, typer.Option(help="Ask for this model tier.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish a question and wait for its answer: text, numbered citations, tier, cache hit,
    tokens, cost, latency; or a refusal with its reasons.

    Exit 0 for an answer or a refusal, 2 when none came within --timeout, 1 when it could not
    be asked (bad tenant, no broker or topics). JSON fields: request_id, question, answer,
    citations (chunk_id, doc_id, source_uri, title, heading_path), tier, cache_hit,
    input_tokens, output_tokens, cost_usd, latency_ms, client_latency_ms, confidence,
    refusal (reasons, message), timed_out."""
    from services.cli.ask_cmd import ask_command
    from services.runtime.tracing import traced_process

    bootstrap = _bootstrap()
    with traced_process("cli", _settings()):  # the question's trace starts here
        code = ask_command(
            question, tenant, timeout, as_json, bootstrap, top_k=top_k, tier=tier, out=out, err=err
        )
    raise typer.Exit(code)


@app.command("eval")
def eval_(
    questions: Annotated[
        Path, typer.Argument(help="Questions JSONL: question, expected_doc, key_facts, id?.")
    ],
    tenant: Annotated[str, typer.Option(help="Tenant the corpus was ingested for.")],
    thresholds: Annotated[
        Path | None,
        typer.Option(
            "--thresholds",
            help="Minimum figures (JSON); default: eval_thresholds.json beside the questions.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each question may take.")] = 120.0,
    k: Annotated[int, typer.Option(min=1, help="Citations counted for hit@k.")] = 5,
    concurrency: Annotated[int, typer.Option(min=1, help="Questions in flight at once.")] = 4,
    as_json: JsonFlag = False,
) -> None:
    """Ask a labelled question set; score citations, key facts, refusals, tokens and latency.

    Exit 1 when a threshold fails, 2 when the evaluation could not run (bad file, no broker)."""
    from services.cli.eval_cmd import eval_command

    code = eval_command(
        questions, tenant, timeout, as_json, _bootstrap(),
        thresholds_path=thresholds, k=k, concurrency=concurrency, out=out, err=err,
    )  # fmt: skip
    raise typer.Exit(code)


@app.command()
def demo(
    timeout: Annotated[float, typer.Option(help="Seconds each step may wait.")] = 300.0,
) -> None:
    """The whole job once: start broker, Triton and every stage (or use the running ones),
    ingest examples/corpus as tenant `demo`, ask examples/questions.jsonl, print each answer
    with its citations and a summary, stop. Exits 1 if any part failed."""
    from services.cli.demo_cmd import run_demo

    raise typer.Exit(run_demo(_settings(), out, timeout))


@app.command()
def replay(
    request_id: Annotated[
        str, typer.Argument(help="The request to re-run (request or correlation id).")
    ],
    timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for its answer, and as long again for its lineage."),
    ] = 120.0,
    tenant: Annotated[
        str | None,
        typer.Option(help="Only this tenant's requests (RAGSTREAM_AUDIT_TENANT pins it)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-run a request from the audit store and diff the two lineages: "why did the answer
    change".

    Asks the stored question again for the same tenant, with a new request id and the
    original's tier and prompt version; waits for the answer and its lineage in the audit
    store; prints what differs: stages, cache decision, retrieved chunks and scores, tier,
    prompt version, model, outcome, answer, citations, tokens, cost. An exact-cache answer is a
    valid outcome.

    Exit 0 when diffed, 2 when the answer or its lineage did not come in time, 1 when it cannot
    be replayed (unknown request, no question stored, no broker). JSON fields: request_id,
    replay_request_id, tenant_id, question, options, before, after, differences."""
    from services.cli.audit_cmd import audit_scope
    from services.cli.replay_cmd import replay_command
    from services.runtime.tracing import traced_process

    bootstrap = _bootstrap()
    settings = _settings()
    scope = audit_scope(settings, tenant)
    with traced_process("cli", settings):
        code = replay_command(
            request_id,
            timeout,
            as_json,
            bootstrap,
            settings.data_dir,
            out=out,
            err=err,
            tenant=scope,
        )
    raise typer.Exit(code)


@dlq_app.command("list")
def dlq_list(
    stage: Annotated[str | None, typer.Option(help="Only this stage's dead letters.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="Only this error kind, e.g. rate_limited.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every dead letter: stage, error kind, source topic/partition/offset, reason."""
    from services.cli.dlq_cmd import dead_letters

    letters = asyncio.run(dead_letters(_bootstrap(), stage, kind, tenant))
    if as_json:
        print(json.dumps([letter.model_dump(mode="json") for letter in letters], indent=2))
        return
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("id", "stage", "kind", "source", "tenant", "reason"):
        table.add_column(column, overflow="fold")
    for letter in letters:
        source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
        table.add_row(
            letter.event_id,
            letter.stage,
            letter.error_kind,
            source,
            letter.tenant_id or "",
            letter.reason,
        )
    out.print(table)


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[str], typer.Argument(help="Dead-letter ids (from `dlq list`).")] = [],  # noqa: B006
    all_: Annotated[
        bool, typer.Option("--all", help="Every dead letter matching the filters.")
    ] = False,
    stage: Annotated[str | None, typer.Option(help="Only this stage's.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this error kind.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
) -> None:
    """Re-publish dead letters' original bytes, key and headers to their source topics."""
    from services.cli.dlq_cmd import dead_letters, replay

    if not ids and not all_:
        raise typer.BadParameter("name dead-letter ids, or pass --all (with optional filters)")
    bootstrap = _bootstrap()
    letters = asyncio.run(dead_letters(bootstrap, stage, kind, tenant))
    if ids:
        unknown = set(ids) - {letter.event_id for letter in letters}
        if unknown:
            missing = ", ".join(sorted(unknown))
            err.print(f"[red]no dead letter with id {missing}[/] (see `ragstream dlq list`)")
            raise typer.Exit(1)
        letters = [letter for letter in letters if letter.event_id in ids]
    count = asyncio.run(replay(bootstrap, letters))
    out.print(f"re-published {count} dead letters to their source topics")


@contracts_app.command("export")
def contracts_export(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Folder (default: the snapshot).")
    ] = None,
) -> None:
    """Write each topic's JSON Schema to contracts/schemas/v1/ (commit the result)."""
    from contracts.schema import SNAPSHOT_DIR, export_snapshot

    written = export_snapshot(out_dir or SNAPSHOT_DIR)
    out.print(f"wrote {len(written)} schemas to {out_dir or SNAPSHOT_DIR}")


@contracts_app.command("check")
def contracts_check(
    snapshot: Annotated[
        Path | None, typer.Option(help="Snapshot folder (default: committed).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare the models with the committed snapshot; fail on a breaking change.

    Breaking (exit 1, the field named): field removed, type changed, new required field.
    Compatible (listed, exit 0): optional field added, topic or model added."""
    from contracts.schema import SNAPSHOT_DIR, check_compatibility

    report = check_compatibility(snapshot or SNAPSHOT_DIR)
    if as_json:
        print(
            json.dumps(
                {"ok": report.ok, "breaking": report.breaking, "compatible": report.compatible}
            )
        )
    else:
        for line in report.breaking:
            err.print(f"[red]breaking[/] {line}")
        for line in report.compatible:
            out.print(f"compatible: {line}")
        out.print(
            "contracts compatible with the snapshot"
            if report.ok
            else "[red]contracts check failed[/]"
        )
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
