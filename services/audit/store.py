"""The audit store: lineage records and answers in DuckDB on disk, queried by analysts.

>>> store = AuditStore(tmp / "audit.duckdb")  # doctest: +SKIP
>>> store.write(records, answers)  # one transaction; idempotent on event_id
>>> store.lineage(request_id)  # that request's records in causal order
>>> store.costs(by="model", tenant="acme")  # every query takes an optional tenant

With a tenant, a query reads only that tenant's rows: the filter is in the SQL (a bound
parameter), so another tenant's request id reads exactly like an unknown one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from contracts.v1 import AnswerV1, LineageRecordV1, ProducedBy
from services.audit.causal import causal_order, utc
from services.audit.exceptions import AuditStoreError, AuditStoreMissingError

CostKey = Literal["tenant", "model", "version", "prompt", "arm", "day"]
#: How `costs` groups generate's records: the SQL expression of each key.
_COST_GROUPS: dict[str, str] = {
    "tenant": "tenant_id",
    "model": "model_name",
    # A canary serves two versions of a model side by side: compare them.
    "version": "model_name || '@' || coalesce(details->>'model_version', '?')",
    "prompt": "coalesce(details->>'prompt_name', '?') || '/' "
    "|| coalesce(details->>'prompt_version', '?')",
    "arm": "coalesce(details->>'model_arm', 'stable')",
    "day": "CAST(started_at AS DATE)",
}
ExportFormat = Literal["parquet", "jsonl"]
ExportTable = Literal["lineage", "answers"]
#: Stages in pipeline order, for tables; unknown stages sort after them.
PIPELINE_ORDER = ("ingest", "chunk", "embed", "route", "generate", "validate")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lineage (
    event_id VARCHAR PRIMARY KEY, schema_version VARCHAR, tenant_id VARCHAR NOT NULL,
    correlation_id VARCHAR NOT NULL, causation_id VARCHAR, producer VARCHAR,
    producer_version VARCHAR, produced_at TIMESTAMP, stage VARCHAR NOT NULL,
    input_event_id VARCHAR, output_event_ids VARCHAR[], outcome VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP NOT NULL, details JSON,
    model_name VARCHAR, input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE);
CREATE TABLE IF NOT EXISTS answers (
    event_id VARCHAR PRIMARY KEY, request_id VARCHAR NOT NULL, correlation_id VARCHAR NOT NULL,
    tenant_id VARCHAR NOT NULL, produced_at TIMESTAMP, tier VARCHAR, cache_hit VARCHAR,
    answer VARCHAR, refusal_reasons VARCHAR[], refusal_message VARCHAR, citations JSON,
    input_tokens BIGINT, output_tokens BIGINT, cost_usd DOUBLE, latency_ms DOUBLE);
ALTER TABLE answers ADD COLUMN IF NOT EXISTS question VARCHAR;
"""
#: A query's tenant scope: every row when $tenant is NULL, else only that tenant's.
_OF_TENANT = "($tenant IS NULL OR tenant_id = $tenant)"
_LINEAGE_COLUMNS = (
    "event_id, schema_version, tenant_id, correlation_id, causation_id, producer, "
    "producer_version, produced_at, stage, input_event_id, output_event_ids, outcome, "
    "started_at, finished_at, details, model_name, input_tokens, output_tokens, cost_usd"
)
_ANSWER_COLUMNS = (
    "event_id, request_id, correlation_id, tenant_id, produced_at, tier, cache_hit, answer, "
    "refusal_reasons, refusal_message, citations, input_tokens, output_tokens, cost_usd, latency_ms"
)


def audit_db_path(data_dir: Path) -> Path:
    return data_dir / "audit" / "audit.duckdb"


def _naive(moment: datetime) -> datetime:
    return utc(moment).replace(tzinfo=None)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class StoredAnswer:
    event_id: str
    request_id: str
    correlation_id: str
    tenant_id: str
    produced_at: datetime
    tier: str
    cache_hit: str
    answer: str | None
    refusal_reasons: list[str]
    refusal_message: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float


def _lineage_row(r: LineageRecordV1) -> tuple[Any, ...]:
    d = r.details
    tokens_in, tokens_out = _number(d.get("input_tokens")), _number(d.get("output_tokens"))
    model = d.get("model_name")
    return (
        r.event_id, r.schema_version, r.tenant_id, r.correlation_id, r.causation_id,
        r.produced_by.service, r.produced_by.version, _naive(r.produced_at), r.stage,
        r.input_event_id, list(r.output_event_ids), r.outcome, _naive(r.started_at),
        _naive(r.finished_at), json.dumps(d), model if isinstance(model, str) else None,
        None if tokens_in is None else int(tokens_in),
        None if tokens_out is None else int(tokens_out), _number(d.get("cost_usd")),
    )  # fmt: skip


def _answer_row(a: AnswerV1) -> tuple[Any, ...]:
    citations = json.dumps([c.model_dump(mode="json") for c in a.citations])
    refusal = a.refusal
    return (
        a.event_id, a.request_id, a.correlation_id, a.tenant_id, _naive(a.produced_at), a.tier,
        a.cache_hit, a.answer, list(refusal.reasons) if refusal else [],
        refusal.message if refusal else None, citations, a.input_tokens, a.output_tokens,
        a.cost_usd, a.latency_ms, a.question,
    )  # fmt: skip


def _record(row: tuple[Any, ...]) -> LineageRecordV1:
    (event_id, version, tenant, correlation, causation, producer, producer_version, produced_at,
     stage, input_id, outputs, outcome, started, finished, details) = row[:15]  # fmt: skip
    return LineageRecordV1(
        event_id=event_id, schema_version=version, tenant_id=tenant, correlation_id=correlation,
        causation_id=causation, produced_by=ProducedBy(service=producer, version=producer_version),
        produced_at=utc(produced_at), stage=stage, input_event_id=input_id,
        output_event_ids=list(outputs or []), outcome=outcome, started_at=utc(started),
        finished_at=utc(finished), details=json.loads(details) if details else {},
    )  # fmt: skip


def _stage_rank(stage: str) -> tuple[int, str]:
    if stage in PIPELINE_ORDER:
        return (PIPELINE_ORDER.index(stage), stage)
    return (len(PIPELINE_ORDER) + stage.startswith("end_to_end"), stage)


class AuditStore:
    """Lineage records and answers in one DuckDB file; one process writes, others read copies.

    >>> with AuditStore(path) as store:  # doctest: +SKIP
    ...     store.write([record], [answer])
    ...     store.costs(by="tenant")
    """

    def __init__(self, path: Path, read_only: bool = False, lock_wait_s: float = 0.0) -> None:
        self.path = path
        self.read_only = read_only
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + lock_wait_s
        while True:  # a reader may hold the file for a moment
            try:
                self._db = duckdb.connect(str(path), read_only=read_only)
                break
            except duckdb.IOException:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)
        self._inserts: dict[str, str] = {}
        if not read_only:
            self._db.execute(_SCHEMA)
            self._inserts = {table: self._insert_sql(table) for table in ("lineage", "answers")}

    def _insert_sql(self, table: str) -> str:
        """One INSERT of whole columns (lists unnested side by side): far faster in DuckDB
        than a statement per row."""
        types = self._db.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = ? "
            "ORDER BY ordinal_position",
            [table],
        ).fetchall()
        columns = ", ".join(f"unnest(${i}::{t}[])" for i, (t,) in enumerate(types, start=1))
        return f"INSERT OR IGNORE INTO {table} SELECT {columns}"

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def write(self, records: Sequence[LineageRecordV1], answers: Sequence[AnswerV1] = ()) -> None:
        """Store records and answers in one transaction; ones already there are kept as is."""
        lineage = list({r.event_id: _lineage_row(r) for r in records}.values())
        answer_rows = list({a.event_id: _answer_row(a) for a in answers}.values())
        self._db.execute("BEGIN TRANSACTION")
        try:
            for table, rows in (("lineage", lineage), ("answers", answer_rows)):
                if rows:
                    self._db.execute(
                        self._inserts[table], [list(c) for c in zip(*rows, strict=True)]
                    )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def count(self, table: ExportTable = "lineage") -> int:
        row = self._db.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0

    def correlations_of(
        self, request_or_correlation_id: str, tenant: str | None = None
    ) -> list[str]:
        rows = self._db.execute(
            "SELECT DISTINCT correlation_id FROM answers "
            f"WHERE (request_id = $id OR event_id = $id) AND {_OF_TENANT}",
            {"id": request_or_correlation_id, "tenant": tenant},
        ).fetchall()
        return sorted({request_or_correlation_id, *(r[0] for r in rows)})

    def lineage(
        self, request_or_correlation_id: str, tenant: str | None = None
    ) -> list[LineageRecordV1]:
        """The records of a request (by request id or correlation id), in causal order."""
        rows = self._db.execute(
            f"SELECT {_LINEAGE_COLUMNS} FROM lineage "
            f"WHERE list_contains($ids, correlation_id) AND {_OF_TENANT}",
            {"ids": self.correlations_of(request_or_correlation_id, tenant), "tenant": tenant},
        ).fetchall()
        return causal_order([_record(row) for row in rows])

    def _latest_answer(
        self, columns: str, request_or_correlation_id: str, tenant: str | None
    ) -> tuple[Any, ...] | None:
        """Those columns of a request's latest answer (by request id or correlation id)."""
        return self._db.execute(
            f"SELECT {columns} FROM answers WHERE (request_id = $id OR correlation_id = $id) "
            f"AND {_OF_TENANT} ORDER BY produced_at DESC LIMIT 1",
            {"id": request_or_correlation_id, "tenant": tenant},
        ).fetchone()

    def answer(
        self, request_or_correlation_id: str, tenant: str | None = None
    ) -> StoredAnswer | None:
        """The latest answer of a request (by request id or correlation id)."""
        row = self._latest_answer(_ANSWER_COLUMNS, request_or_correlation_id, tenant)
        if row is None:
            return None
        values = dict(zip(_ANSWER_COLUMNS.split(", "), row, strict=True))
        del values["citations"]
        values["produced_at"] = utc(values["produced_at"])
        values["refusal_reasons"] = list(values["refusal_reasons"] or [])
        return StoredAnswer(**values)

    def costs(self, by: CostKey = "tenant", tenant: str | None = None) -> list[dict[str, Any]]:
        """Generations, input/output tokens and cost summed per tenant, model, model version,
        prompt version, canary arm or UTC day."""
        rows = self._db.execute(
            f"SELECT CAST({_COST_GROUPS[by]} AS VARCHAR) AS key, count(*), "
            "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cost_usd), 0.0) FROM lineage WHERE stage = 'generate' "
            f"AND {_OF_TENANT} GROUP BY key ORDER BY key",
            {"tenant": tenant},
        ).fetchall()
        return [
            {by: key, "generations": n, "input_tokens": int(i), "output_tokens": int(o),
             "cost_usd": float(c)}
            for key, n, i, o, c in rows
        ]  # fmt: skip

    def costs_by_tenant_day(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Generations, tokens and cost per tenant per UTC day, the latest day first."""
        rows = self._db.execute(
            "SELECT tenant_id, CAST(CAST(started_at AS DATE) AS VARCHAR) AS day, count(*), "
            "coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cost_usd), 0.0) FROM lineage WHERE stage = 'generate' "
            f"AND {_OF_TENANT} GROUP BY tenant_id, day ORDER BY day DESC, tenant_id",
            {"tenant": tenant},
        ).fetchall()
        return [
            {"day": day, "tenant": tenant_id, "generations": n, "input_tokens": int(i),
             "output_tokens": int(o), "cost_usd": float(c)}
            for tenant_id, day, n, i, o, c in rows
        ]  # fmt: skip

    def recent(self, limit: int = 50, tenant: str | None = None) -> list[dict[str, Any]]:
        """The latest answered (or refused) requests, newest first: outcome, tier, cache,
        tokens and cost (summed from generate's records, as `lineage` shows them), latency."""
        rows = self._db.execute(
            f"""
            WITH latest AS (
                SELECT * FROM answers WHERE {_OF_TENANT}
                QUALIFY row_number() OVER (
                    PARTITION BY tenant_id, request_id ORDER BY produced_at DESC) = 1
                ORDER BY produced_at DESC LIMIT $limit),
            spent AS (
                SELECT correlation_id, tenant_id, sum(input_tokens) AS tokens_in,
                       sum(output_tokens) AS tokens_out, sum(cost_usd) AS cost
                FROM lineage WHERE stage = 'generate' AND {_OF_TENANT}
                  AND correlation_id IN (SELECT correlation_id FROM latest)
                GROUP BY correlation_id, tenant_id)
            SELECT l.request_id, l.tenant_id, l.produced_at, l.question, l.answer IS NOT NULL,
                   l.refusal_reasons, l.tier, l.cache_hit, coalesce(s.tokens_in, 0),
                   coalesce(s.tokens_out, 0), coalesce(s.cost, 0.0), l.latency_ms
            FROM latest l LEFT JOIN spent s USING (correlation_id, tenant_id)
            ORDER BY l.produced_at DESC, l.request_id
            """,
            {"limit": max(0, limit), "tenant": tenant},
        ).fetchall()
        return [
            {"request_id": request_id, "tenant": tenant, "answered_at": utc(at).isoformat(),
             "question": question, "outcome": "answered" if answered else "refused",
             "refusal_reasons": list(reasons or []), "tier": tier, "cache_hit": cache,
             "input_tokens": int(i), "output_tokens": int(o), "cost_usd": float(c),
             "latency_ms": latency}
            for request_id, tenant, at, question, answered, reasons, tier, cache, i, o, c, latency
            in rows
        ]  # fmt: skip

    def question_of(
        self, request_or_correlation_id: str, tenant: str | None = None
    ) -> tuple[str, str | None] | None:
        """(tenant, question) of a request from its latest answer; the question is None for
        answers stored before the store kept questions. None when no answer is stored."""
        row = self._latest_answer("tenant_id, question", request_or_correlation_id, tenant)
        return None if row is None else (row[0], row[1])

    def citations_of(
        self, request_or_correlation_id: str, tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """The citations (chunk id, document id, source, title, headings) of the latest answer."""
        row = self._latest_answer("citations", request_or_correlation_id, tenant)
        return list(json.loads(row[0])) if row and row[0] else []

    def latency(self, stage: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        """p50/p95/p99/max of each stage's handling time (ms), and end to end per request
        (`end_to_end.query`: first started → last finished of a correlation with an answer)
        and per document upload (`end_to_end.document`)."""
        rows = self._db.execute(
            f"""
            WITH scoped AS (SELECT * FROM lineage WHERE {_OF_TENANT}),
            spans AS (
                SELECT stage, date_diff('microsecond', started_at, finished_at) / 1000.0 AS ms
                FROM scoped
                UNION ALL
                SELECT CASE WHEN correlation_id IN
                                 (SELECT correlation_id FROM answers WHERE {_OF_TENANT})
                            THEN 'end_to_end.query' ELSE 'end_to_end.document' END,
                       date_diff('microsecond', min(started_at), max(finished_at)) / 1000.0
                FROM scoped GROUP BY correlation_id)
            SELECT stage, count(*), quantile_cont(ms, 0.5), quantile_cont(ms, 0.95),
                   quantile_cont(ms, 0.99), max(ms)
            FROM spans WHERE $stage IS NULL OR stage = $stage GROUP BY stage
            """,
            {"stage": stage, "tenant": tenant},
        ).fetchall()
        result = [
            {"stage": s, "count": n, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": top}
            for s, n, p50, p95, p99, top in rows
        ]
        return sorted(result, key=lambda row: _stage_rank(row["stage"]))

    def export(
        self,
        path: Path,
        fmt: ExportFormat,
        table: ExportTable = "lineage",
        tenant: str | None = None,
    ) -> int:
        """Write a table (or one tenant's rows of it) to Parquet or JSON lines with DuckDB's
        COPY; returns the number of rows written."""
        if table not in ("lineage", "answers"):
            raise ValueError(f"unknown audit table {table!r}; use lineage or answers")
        options = {"parquet": "FORMAT parquet", "jsonl": "FORMAT json"}[fmt]
        path.parent.mkdir(parents=True, exist_ok=True)
        target = str(path).replace("'", "''")
        order = "started_at" if table == "lineage" else "produced_at"
        written = self._db.execute(
            f"COPY (SELECT * FROM {table} WHERE {_OF_TENANT} ORDER BY {order}) "
            f"TO '{target}' ({options})",
            {"tenant": tenant},
        ).fetchone()
        return int(written[0]) if written else 0


def _file_state(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def _snapshot(path: Path, folder: Path, attempts: int = 20) -> AuditStore:
    """Copy the database and its write-ahead log while the writer has them open, and open the
    copy. A copy taken while the writer checkpointed (the main file changed under it), or one
    DuckDB cannot open, is taken again."""
    wal = path.with_name(path.name + ".wal")
    copy = folder / path.name
    copy_wal = copy.with_name(copy.name + ".wal")
    last: Exception | None = None
    for _ in range(attempts):
        before = _file_state(path)
        shutil.copyfile(path, copy)
        copy_wal.unlink(missing_ok=True)
        if wal.exists():
            shutil.copyfile(wal, copy_wal)
        if _file_state(path) == before:
            try:
                return AuditStore(copy, read_only=True)
            except duckdb.Error as exc:
                last = exc
        time.sleep(0.05)
    raise AuditStoreError(
        f"could not take a readable copy of the audit store {path} while the audit stage "
        f"writes it ({last or 'it kept changing'}); try again"
    )


@contextmanager
def open_for_reading(path: Path) -> Iterator[AuditStore]:
    """The store read-only; while the audit stage holds its lock, a consistent copy of it."""
    if not path.exists():
        raise AuditStoreMissingError(
            f"no audit store at {path}: start the audit stage (`ragstream serve audit`) with "
            "the same RAGSTREAM_DATA_DIR, or point RAGSTREAM_DATA_DIR at its data directory"
        )
    try:
        store = AuditStore(path, read_only=True)
    except (duckdb.IOException, duckdb.ConnectionException) as exc:
        # IOException: another process writes it; ConnectionException: this one does
        if isinstance(exc, duckdb.IOException) and "lock" not in str(exc).lower():
            raise AuditStoreError(f"cannot open the audit store {path}: {exc}") from exc
        with tempfile.TemporaryDirectory(prefix="ragstream-audit-") as folder:
            with _snapshot(path, Path(folder)) as snapshot:
                yield snapshot
        return
    with store:
        yield store
