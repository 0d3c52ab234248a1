"""Document versions per tenant: drops unchanged re-publishes, numbers changed ones."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class VersionDecision:
    """What an upsert or delete means given what was seen before."""

    kind: Literal["new", "changed", "unchanged", "reindex", "deleted", "already_deleted"]
    version: int


class DocumentVersions:
    """Content hash and version of each (tenant, doc id), in SQLite under the data dir.

    Decide first, publish, then `record`: a crash in between republishes the same version,
    which downstream absorbs (deterministic ids), instead of losing it.

    >>> versions = DocumentVersions(Path(":memory:"))
    >>> versions.decide_upsert("acme", "d1", "ab" * 32)
    VersionDecision(kind='new', version=1)
    """

    def __init__(self, path: Path) -> None:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS document_versions ("
            " tenant_id TEXT NOT NULL, doc_id TEXT NOT NULL, content_hash TEXT,"
            " version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (tenant_id, doc_id))"
        )

    def _current(self, tenant_id: str, doc_id: str) -> tuple[str | None, int, bool] | None:
        row = self._db.execute(
            "SELECT content_hash, version, deleted FROM document_versions"
            " WHERE tenant_id = ? AND doc_id = ?",
            (tenant_id, doc_id),
        ).fetchone()
        return (row[0], int(row[1]), bool(row[2])) if row else None

    def decide_upsert(
        self, tenant_id: str, doc_id: str, content_hash: str, reindex: bool = False
    ) -> VersionDecision:
        """`reindex` makes unchanged content a new version: downstream may have lost it."""
        current = self._current(tenant_id, doc_id)
        if current is None:
            return VersionDecision("new", 1)
        known_hash, version, deleted = current
        if known_hash == content_hash and not deleted:
            return VersionDecision("reindex" if reindex else "unchanged", version + int(reindex))
        return VersionDecision("changed", version + 1)

    def decide_delete(self, tenant_id: str, doc_id: str) -> VersionDecision:
        current = self._current(tenant_id, doc_id)
        if current is None:
            return VersionDecision("deleted", 1)
        _, version, deleted = current
        return VersionDecision(
            "already_deleted" if deleted else "deleted", version + int(not deleted)
        )

    def record(self, tenant_id: str, doc_id: str, content_hash: str | None, version: int) -> None:
        self._db.execute(
            "INSERT INTO document_versions (tenant_id, doc_id, content_hash, version, deleted)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, doc_id) DO UPDATE SET"
            " content_hash = excluded.content_hash, version = excluded.version,"
            " deleted = excluded.deleted",
            (tenant_id, doc_id, content_hash, version, int(content_hash is None)),
        )

    def close(self) -> None:
        self._db.close()
