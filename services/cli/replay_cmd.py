"""`ragstream replay`: ask a stored request's question again, with its tier and prompt version,
and show how the second lineage differs from the first ("why did the answer change")."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue
from rich.console import Console
from rich.table import Table
from rich.text import Text

from contracts.v1 import LineageRecordV1, QueryOptionsV1
from services.audit.diff import (
    COMPARED,
    AnswerFacts,
    Difference,
    RequestLineage,
    diff_lineages,
    lineage_facts,
)
from services.audit.exceptions import AuditStoreError
from services.audit.store import AuditStore, StoredAnswer, audit_db_path, open_for_reading
from services.cli.ask_cmd import (
    EXIT_ANSWERED,
    EXIT_TIMED_OUT,
    EXIT_UNAVAILABLE,
    PipelineUnavailableError,
    ask_questions,
)

_NO_TIER = "none"
_POLL_S = 0.25


class ReplayNotPossibleError(RuntimeError):
    """The audit store does not know the request, or not its question."""


@dataclass(frozen=True)
class OriginalRequest:
    """What replay asks again: the stored request's tenant, question and options."""

    request_id: str
    tenant_id: str
    question: str
    options: QueryOptionsV1
    lineage: RequestLineage


def replay_options(records: list[LineageRecordV1], answer_tier: str | None) -> QueryOptionsV1:
    """The tier route chose (the answer's tier when route chose none, e.g. a cache hit) and
    the prompt version generate rendered first; unset when the original had none."""
    tier: str | None = None
    for record in records:
        if record.stage == "route" and isinstance(chosen := record.details.get("tier"), str):
            tier = chosen
    if tier is None and answer_tier and answer_tier != _NO_TIER:
        tier = answer_tier
    prompt_version = next(
        (
            version
            for r in records
            if r.stage == "generate" and isinstance(version := r.details.get("prompt_version"), str)
        ),
        None,
    )
    return QueryOptionsV1(tier=tier, prompt_version=prompt_version)


def _answer_facts(answer: StoredAnswer | None, citations: list[dict[str, Any]]) -> AnswerFacts:
    assert answer is not None
    return AnswerFacts(
        answer=answer.answer,
        refusal_reasons=list(answer.refusal_reasons),
        citations=[str(c.get("chunk_id")) for c in citations],
        tier=answer.tier,
        cache_hit=answer.cache_hit,
    )


def stored_lineage(store: AuditStore, request_id: str, tenant: str | None = None) -> RequestLineage:
    """A request's records and answer as the audit store holds them now (of `tenant` only)."""
    answer = store.answer(request_id, tenant)
    facts = (
        None if answer is None else _answer_facts(answer, store.citations_of(request_id, tenant))
    )
    return RequestLineage(store.lineage(request_id, tenant), facts)


def load_original(store: AuditStore, request_id: str, tenant: str | None = None) -> OriginalRequest:
    """The request to replay; with `tenant`, another tenant's request reads as unknown."""
    asked = store.question_of(request_id, tenant)
    if asked is None:
        records = store.lineage(request_id, tenant)
        known = "has lineage records but no answer" if records else "has no"
        raise ReplayNotPossibleError(
            f"the audit store {known} for request {request_id}: replay needs the question, "
            "which the store keeps with the answer; check the id with `ragstream audit show`"
        )
    tenant, question = asked
    if question is None:
        raise ReplayNotPossibleError(
            f"request {request_id} was stored before the audit store kept questions; ask it "
            f'again with `ragstream ask "…" --tenant {tenant}`'
        )
    lineage = stored_lineage(store, request_id, tenant)
    answered_by = lineage.answer.tier if lineage.answer is not None else None
    options = replay_options(list(lineage.records), answered_by)
    return OriginalRequest(request_id, tenant, question, options, lineage)


def _complete(store: AuditStore, request_id: str) -> RequestLineage | None:
    """The lineage once it reaches the record that produced the stored answer (validate's, or
    route's for a cache hit or refusal), else None."""
    answer = store.answer(request_id)
    if answer is None:
        return None
    records = store.lineage(request_id)
    if not any(answer.event_id in r.output_event_ids for r in records):
        return None
    return RequestLineage(records, _answer_facts(answer, store.citations_of(request_id)))


def wait_for_lineage(path: Path, request_id: str, deadline: float) -> RequestLineage | None:
    """Poll the audit store (a copy while the audit stage writes it) until the request's
    lineage is complete, or None at the deadline (time.monotonic())."""
    while True:
        try:
            with open_for_reading(path) as store:
                lineage = _complete(store, request_id)
        except AuditStoreError:
            lineage = None  # not written yet, or mid-checkpoint: try again
        if lineage is not None or time.monotonic() >= deadline:
            return lineage
        time.sleep(_POLL_S)


def replay_json(
    original: OriginalRequest, replay_id: str, after: RequestLineage, diffs: list[Difference]
) -> dict[str, Any]:
    return {
        "request_id": original.request_id,
        "replay_request_id": replay_id,
        "tenant_id": original.tenant_id,
        "question": original.question,
        "options": original.options.model_dump(mode="json", exclude_none=True),
        "before": lineage_facts(original.lineage),
        "after": lineage_facts(after),
        "differences": [asdict(d) for d in diffs],
    }


def _line(item: JsonValue) -> str:
    if isinstance(item, dict) and "chunk_id" in item:  # a retrieved chunk: id and score
        score = item.get("score")
        return f"{item['chunk_id']}  {score:.4f}" if isinstance(score, float) else str(item)
    return item if isinstance(item, str) else json.dumps(item)


def _cell(value: JsonValue) -> Text:
    if value is None:
        return Text("—", style="dim")
    if isinstance(value, list):
        return Text("\n".join(_line(v) for v in value) or "[]")
    if isinstance(value, float):
        return Text(f"{value:.6g}")
    return Text(str(value))  # model output and ids: never read as markup


def render_diff(console: Console, report: dict[str, Any]) -> None:
    """The differences as a table (before, after), then the fields that stayed the same."""
    options = ", ".join(f"{k} {v}" for k, v in report["options"].items()) or "default options"
    console.print(
        Text(
            f"replay of {report['request_id']} as {report['replay_request_id']} "
            f"(tenant {report['tenant_id']}, {options})",
            style="bold",
        )
    )
    differences = report["differences"]
    if differences:
        table = Table("field", "before", "after", show_lines=True)
        for d in differences:
            table.add_row(Text(d["field"]), _cell(d["before"]), _cell(d["after"]))
        console.print(table)
    else:
        console.print(Text("no differences: the replay went the same way", style="green"))
    changed = {d["field"].split("[")[0] for d in differences}
    same = [name for name in COMPARED if name not in changed]
    console.print(Text(f"same: {', '.join(same) or 'nothing'}", style="dim"))


def replay_command(
    request_id: str,
    timeout: float,
    json_output: bool,
    bootstrap: str,
    data_dir: Path,
    out: Console | None = None,
    err: Console | None = None,
    tenant: str | None = None,
) -> int:
    """`ragstream replay` (of `tenant`'s requests only, when given): 0 when the replay's
    lineage is in the audit store and diffed, 2 when its answer did not come within `timeout`
    seconds (or its lineage within as long again), 1 when it could not be replayed (unknown
    request, no question stored, no broker or store)."""
    out = out or Console()
    err = err or Console(stderr=True)
    path = audit_db_path(data_dir)
    try:
        with open_for_reading(path) as store:
            original = load_original(store, request_id, tenant)
    except (AuditStoreError, ReplayNotPossibleError) as exc:
        err.print(Text(str(exc), style="red"))
        return EXIT_UNAVAILABLE
    try:
        with nullcontext() if json_output else err.status("waiting for the replay's answer…"):
            (result,) = asyncio.run(
                ask_questions(
                    bootstrap, original.tenant_id, [original.question], timeout, 1, original.options
                )
            )
    except PipelineUnavailableError as exc:
        err.print(Text(str(exc), style="red"))
        return EXIT_UNAVAILABLE
    if result.timed_out:
        err.print(
            Text(f"no answer to the replay {result.request_id} within {timeout:g} s", style="red")
        )
        return EXIT_TIMED_OUT
    with nullcontext() if json_output else err.status("waiting for its lineage in the store…"):
        after = wait_for_lineage(path, result.request_id, time.monotonic() + timeout)
    if after is None:
        err.print(
            Text(
                f"the replay {result.request_id} was answered, but its lineage is not complete in "
                f"the audit store {path} {timeout:g} s later; is the audit stage running? "
                f"Compare later with `ragstream audit show {result.request_id}`",
                style="red",
            )
        )
        return EXIT_TIMED_OUT
    report = replay_json(original, result.request_id, after, diff_lineages(original.lineage, after))
    if json_output:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        render_diff(out, report)
    return EXIT_ANSWERED
