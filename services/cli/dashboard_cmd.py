"""`ragstream audit dashboard`: the audit store over HTTP for analysts, read-only: the
dashboard page and its JSON API, each request reading the store (a copy while the audit stage
writes it). A server scoped to a tenant serves only that tenant's records on every page and
endpoint; another tenant's request id answers like an unknown one."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from services.audit.dashboard import message_page, overview_page
from services.audit.exceptions import AuditStoreError
from services.audit.store import AuditStore, open_for_reading
from services.cli.audit_cmd import request_report

logger = logging.getLogger("ragstream.dashboard")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class DashboardServer(ThreadingHTTPServer):
    """An HTTP server over one audit store file, for every tenant or for one.

    >>> server = DashboardServer(("127.0.0.1", 0), db_path, "acme")  # doctest: +SKIP
    >>> server.serve_forever()  # doctest: +SKIP
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], db_path: Path, tenant: str | None = None) -> None:
        super().__init__(address, DashboardHandler)
        self.db_path = db_path
        self.tenant = tenant

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


def full_report(
    store: AuditStore, request_id: str, tenant: str | None = None
) -> dict[str, Any] | None:
    """`audit show`'s report with the answer's citations; None when the store has neither
    records nor an answer of the request (of that tenant, with one)."""
    report = request_report(store, request_id, tenant)
    if not report["records"] and report["answer"] is None:
        return None
    return report | {"citations": store.citations_of(request_id, tenant)}


def _limit(query: dict[str, list[str]]) -> int:
    value = query.get("limit", [""])[0]
    return min(MAX_LIMIT, max(1, int(value))) if value.isdigit() else DEFAULT_LIMIT


class DashboardHandler(BaseHTTPRequestHandler):
    """GET only: `/` (`?request=ID` selects a request, default the newest; `?limit=N`),
    `/api/recent`, `/api/requests/ID`, `/api/costs`, `/api/latency`."""

    server: DashboardServer
    server_version = "ragstream-audit"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        try:
            with open_for_reading(self.server.db_path) as store:
                status, body, kind = self._route(store, parts.path, query)
        except AuditStoreError as exc:  # no store yet, or no readable copy of it right now
            status, kind = HTTPStatus.SERVICE_UNAVAILABLE, "text/html"
            if parts.path.startswith("/api/"):
                body, kind = json.dumps({"error": str(exc)}), "application/json"
            else:
                body = message_page("Audit store unavailable", str(exc), _now(), self._source())
        self._send(status, body, kind)

    def _route(
        self, store: AuditStore, path: str, query: dict[str, list[str]]
    ) -> tuple[HTTPStatus, str, str]:
        tenant = self.server.tenant
        if path == "/":
            return *self._overview(store, query), "text/html"
        if path == "/api/recent":
            return self._json(store.recent(_limit(query), tenant))
        if path == "/api/costs":
            return self._json(store.costs_by_tenant_day(tenant))
        if path == "/api/latency":
            return self._json(store.latency(tenant=tenant))
        if path.startswith("/api/requests/"):
            report = full_report(store, unquote(path.removeprefix("/api/requests/")), tenant)
            if report is None:
                return (
                    HTTPStatus.NOT_FOUND,
                    json.dumps({"error": "no such request"}),
                    "application/json",
                )
            return self._json(report)
        page = message_page("Not found", f"nothing at {path}", _now(), self._source())
        return HTTPStatus.NOT_FOUND, page, "text/html"

    def _overview(self, store: AuditStore, query: dict[str, list[str]]) -> tuple[HTTPStatus, str]:
        tenant = self.server.tenant
        recent = store.recent(_limit(query), tenant)
        wanted = query.get("request", [""])[0] or (recent[0]["request_id"] if recent else "")
        selected = full_report(store, wanted, tenant) if wanted else None
        if wanted and selected is None:
            message = f"The audit store has no request {wanted}."
            page = message_page("Unknown request", message, _now(), self._source())
            return HTTPStatus.NOT_FOUND, page
        costs, latency = store.costs_by_tenant_day(tenant), store.latency(tenant=tenant)
        page = overview_page(recent, selected, costs, latency, _now(), self._source())
        return HTTPStatus.OK, page

    def _json(self, value: Any) -> tuple[HTTPStatus, str, str]:
        return HTTPStatus.OK, json.dumps(value, indent=2, default=str), "application/json"

    def _source(self) -> str:
        tenant = self.server.tenant
        return str(self.server.db_path) + ("" if tenant is None else f" · tenant {tenant}")

    def _send(self, status: HTTPStatus, body: str, kind: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.address_string(), format % args)


def _now() -> datetime:
    return datetime.now(UTC)


def serve_dashboard(db_path: Path, host: str, port: int, tenant: str | None = None) -> int:
    """Serve until Ctrl-C (only `tenant`'s records, when given); prints the URL first (port 0:
    any free port). Returns 0."""
    server = DashboardServer((host, port), db_path, tenant)
    scope = "every tenant" if tenant is None else f"tenant {tenant} only"
    print(f"audit dashboard at {server.url} (read-only, {scope}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
