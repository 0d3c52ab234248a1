"""The analysts' dashboard as HTML: recent requests, one request's lineage, cost per tenant per
day, latency percentiles per stage. Pure functions of the audit store's query results; no
script and nothing fetched from elsewhere (the page works offline).

>>> html = overview_page(store.recent(50), request_report(store, rid), store.costs_by_tenant_day(),
...                      store.latency(), generated_at=now, source="audit.duckdb")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import quote

from services.runtime.trace_export import redact_text

_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f4f6f9; }
header { background: #1d2330; color: #fff; padding: 10px 20px; display: flex; gap: 16px;
         align-items: baseline; }
header h1 { font-size: 17px; margin: 0; } header span { color: #aab3c5; font-size: 12px; }
header a { color: #fff; }
main { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; padding: 14px 20px; }
section { background: #fff; border: 1px solid #dde2ea; border-radius: 6px; padding: 10px 12px;
          overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 14px; margin: 0 0 8px; } h2 small { font-weight: normal; color: #5b6578; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #edf0f4;
         vertical-align: top; }
th { color: #5b6578; font-weight: 600; font-size: 12px; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.selected td { background: #eef4ff; }
code, .id { font: 12px ui-monospace, monospace; white-space: nowrap; }
.badge { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 11px; }
.answered, .ok { background: #dff3e4; color: #1b6b34; }
.refused, .rejected, .failed, .dead_lettered { background: #fde2e1; color: #9b1c1c; }
.cache_hit, .fallback, .retry, .escalated, .rate_limited { background: #fff1d6; color: #8a5300; }
.duplicate { background: #edf0f4; color: #5b6578; }
.decisions { margin: 0; padding-left: 14px; color: #3a4354; font-size: 12px; }
td ul.decisions { columns: 2; column-gap: 22px; }
.bar { position: relative; height: 10px; background: #edf0f4; min-width: 120px; }
.bar span { position: absolute; top: 0; height: 10px; background: #4a7bd0; min-width: 2px; }
.answer { margin-top: 10px; padding: 8px 10px; background: #f7f9fc;
          border-left: 3px solid #4a7bd0; }
.muted { color: #5b6578; } .nw { white-space: nowrap; }
"""
#: Decisions shown per lineage record; the rest are in the JSON API.
_MAX_DECISIONS = 8
_PERCENTILES = ("p50_ms", "p95_ms", "p99_ms", "max_ms")


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[str], numeric: Sequence[str] = ()) -> str:
    head = "".join(f'<th class="{"num" if h in numeric else ""}">{escape(h)}</th>' for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="muted">none yet</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(word: str) -> str:
    return f'<span class="badge {escape(word)}">{escape(word)}</span>'


def request_href(request_id: str) -> str:
    return f"/?request={quote(request_id, safe='')}"


def _recent_row(row: dict[str, Any], selected: str | None) -> str:
    question = redact_text(row.get("question") or "")
    short = question if len(question) <= 70 else question[:69] + "…"
    request_id = row["request_id"]
    css = ' class="selected"' if request_id == selected else ""
    # uuid7-based ids share their time prefix: the tail tells them apart
    label = request_id if len(request_id) <= 18 else f"{request_id[:4]}…{request_id[-10:]}"
    return (
        f'<tr{css} data-request-id="{escape(request_id)}">'
        f'<td class="nw" title="{escape(str(row["answered_at"]))}">'
        f"{escape(str(row['answered_at'])[11:19])}</td>"
        f'<td><a class="id" href="{escape(request_href(request_id))}" '
        f'title="{escape(request_id)}">{escape(label)}</a></td>'
        f'<td class="nw">{escape(row["tenant"])}</td><td>{escape(short)}</td>'
        f"<td>{_badge(row['outcome'])}</td><td>{escape(str(row['tier']))}</td>"
        f"<td>{escape(str(row['cache_hit']))}</td>"
        f'<td class="num">{_number(row["input_tokens"])} / {_number(row["output_tokens"])}</td>'
        f'<td class="num">${row["cost_usd"]:.6f}</td>'
        f'<td class="num">{_number(row["latency_ms"], 0)}</td></tr>'
    )


def recent_section(recent: Sequence[dict[str, Any]], selected: str | None) -> str:
    headers = ["time (UTC)", "request", "tenant", "question", "outcome", "tier", "cache",
               "tokens in / out", "cost", "latency ms"]  # fmt: skip
    table = _table(headers, (_recent_row(r, selected) for r in recent),
                   ("tokens in / out", "cost", "latency ms"))  # fmt: skip
    return (
        f'<section class="wide" id="recent"><h2>Recent requests <small>{len(recent)} newest '
        f"answers and refusals</small></h2>{table}</section>"
    )


def decision_line(key: str, value: Any, max_items: int = 3, max_chars: int = 90) -> str:
    """One lineage detail as a short line: chunk lists and checks summarised, long lists
    counted (more than `max_items`), long values cut at `max_chars`. The terminal and the
    dashboard both show details this way."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if all("name" in v and "passed" in v for v in value):
            return f"{key}: " + ", ".join(
                f"{v['name']} {'✓' if v['passed'] else '✗'}" for v in value
            )
        if all("chunk_id" in v for v in value):
            scores = [s for v in value if isinstance(s := v.get("score"), int | float)]
            top = f" (top score {max(scores):.3f})" if scores else ""
            return f"{key}: {len(value)} chunks{top}"
    if isinstance(value, list) and len(value) > max_items:
        return f"{key}: {len(value)} items"
    text = value if isinstance(value, str) else json.dumps(value)
    return f"{key}: {text if len(text) <= max_chars else text[: max_chars - 1] + '…'}"


def _lineage_row(record: dict[str, Any], start: datetime, span_ms: float) -> str:
    offset_ms = (datetime.fromisoformat(record["started_at"]) - start).total_seconds() * 1000
    took = record["duration_ms"]
    left = 100 * offset_ms / span_ms if span_ms else 0.0
    width = 100 * took / span_ms if span_ms else 100.0
    decisions = "".join(
        f"<li>{escape(decision_line(k, v))}</li>"
        for k, v in [(k, v) for k, v in record["details"].items() if v != ""][:_MAX_DECISIONS]
    )
    return (
        f'<tr data-stage="{escape(record["stage"])}"><td><b>{escape(record["stage"])}</b></td>'
        f"<td>{_badge(record['outcome'])}</td>"
        f'<td class="num">+{offset_ms:,.0f}</td><td class="num">{took:,.1f}</td>'
        f'<td><div class="bar" title="{offset_ms:.0f} ms after the first stage started">'
        f'<span style="left:{left:.2f}%;width:{width:.2f}%"></span></div></td>'
        f'<td><ul class="decisions">{decisions}</ul></td></tr>'
    )


def _answer_box(answer: dict[str, Any] | None, citations: Sequence[dict[str, Any]]) -> str:
    if answer is None:
        return '<div class="answer muted">no answer stored yet</div>'
    facts = (
        f'<div class="muted">tier {escape(str(answer["tier"]))} · cache '
        f"{escape(str(answer['cache_hit']))} · {_number(answer['latency_ms'], 0)} ms</div>"
    )
    if answer["answer"] is not None:
        body = f"{_badge('answered')} {escape(answer['answer'])}"
    else:
        reasons = ", ".join(answer["refusal_reasons"])
        body = f"{_badge('refused')} {escape(reasons)}: {escape(answer['refusal_message'] or '')}"
    cited = "".join(
        f"<li>{escape(c.get('title') or c.get('doc_id', ''))} "
        f'<span class="id muted">{escape(str(c.get("chunk_id", "")))}</span></li>'
        for c in citations
    )
    cited = f'<ol class="decisions">{cited}</ol>' if cited else ""
    return f'<div class="answer">{body}{cited}{facts}</div>'


def lineage_section(report: dict[str, Any] | None) -> str:
    """One request's lineage in causal order: stage, outcome, start offset, time, a waterfall
    bar and its decisions, then the answer or refusal with its citations."""
    if report is None:
        return (
            '<section class="wide" id="lineage"><h2>Lineage</h2><p class="muted">'
            "Pick a request above to see its lineage.</p></section>"
        )
    records = report["records"]
    starts = [datetime.fromisoformat(r["started_at"]) for r in records]
    ends = [datetime.fromisoformat(r["finished_at"]) for r in records]
    span_ms = (max(ends) - min(starts)).total_seconds() * 1000 if records else 0.0
    rows = (_lineage_row(r, min(starts), span_ms) for r in records)
    table = _table(["stage", "outcome", "start ms", "took ms", "timeline", "decisions"], rows,
                   ("start ms", "took ms"))  # fmt: skip
    summary = (
        f"{len(records)} records · {span_ms:,.0f} ms · {report['input_tokens']:,} in / "
        f"{report['output_tokens']:,} out tokens · ${report['cost_usd']:.6f}"
    )
    return (
        f'<section class="wide" id="lineage" data-request-id="{escape(report["request_id"])}">'
        f'<h2>Lineage of <span class="id">{escape(report["request_id"])}</span> '
        f"<small>{summary}</small></h2>{table}"
        f"{_answer_box(report['answer'], report.get('citations', []))}</section>"
    )


def costs_section(costs: Sequence[dict[str, Any]]) -> str:
    rows = (
        f"<tr><td>{escape(c['day'])}</td><td>{escape(str(c['tenant']))}</td>"
        f'<td class="num">{c["generations"]:,}</td><td class="num">{c["input_tokens"]:,}</td>'
        f'<td class="num">{c["output_tokens"]:,}</td><td class="num">${c["cost_usd"]:.6f}</td>'
        "</tr>"
        for c in costs
    )
    headers = ["day", "tenant", "generations", "tokens in", "tokens out", "cost"]
    return (
        '<section id="costs"><h2>Cost per tenant per day <small>UTC, from generate'
        f"</small></h2>{_table(headers, rows, headers[2:])}</section>"
    )


def latency_section(latency: Sequence[dict[str, Any]]) -> str:
    rows = (
        f'<tr data-stage="{escape(row["stage"])}"><td>{escape(row["stage"])}</td>'
        f'<td class="num">{row["count"]:,}</td>'
        + "".join(f'<td class="num">{_number(row[k])}</td>' for k in _PERCENTILES)
        + "</tr>"
        for row in latency
    )
    headers = ["stage", "count", "p50 ms", "p95 ms", "p99 ms", "max ms"]
    return (
        '<section id="latency"><h2>Latency per stage <small>handling time; end to end per '
        f"request and document</small></h2>{_table(headers, rows, headers[1:])}</section>"
    )


def page(title: str, body: str, generated_at: datetime, source: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f'<header><h1><a href="/">ragstream audit</a></h1><span>read-only · {escape(source)} · '
        f"generated {generated_at:%Y-%m-%d %H:%M:%S} UTC · JSON: "
        '<a href="/api/recent">recent</a> <a href="/api/costs">costs</a> '
        '<a href="/api/latency">latency</a></span></header>'
        f"<main>{body}</main></body></html>"
    )


def overview_page(
    recent: Sequence[dict[str, Any]],
    selected: dict[str, Any] | None,
    costs: Sequence[dict[str, Any]],
    latency: Sequence[dict[str, Any]],
    generated_at: datetime,
    source: str,
) -> str:
    """The whole dashboard: recent requests, the selected request's lineage, costs, latency."""
    body = (
        recent_section(recent, selected["request_id"] if selected else None)
        + lineage_section(selected)
        + costs_section(costs)
        + latency_section(latency)
    )
    return page("ragstream audit", body, generated_at, source)


def message_page(title: str, message: str, generated_at: datetime, source: str) -> str:
    """A page with one message (a request the store does not know, no store yet)."""
    body = f'<section class="wide"><h2>{escape(title)}</h2><p>{escape(message)}</p></section>'
    return page(title, body, generated_at, source)
