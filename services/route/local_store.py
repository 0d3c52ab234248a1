"""Qdrant's local mode without an fsync for every point it writes.

Local mode keeps each collection in an SQLite file and commits every point on its own, in
SQLite's default rollback journal, where each commit waits for the disk (fsync). That cost
route 1.5 ms of wall time and 0.9 ms of CPU a point on this machine's disk (0.16 and 0.16
with the change below), and route writes three points an answer (its pending cache entry,
the ready answer, the exact key) and one a chunk indexed, all on its event loop, which every
question behind them waits for: in a py-spy profile of `bench/run.py --only load --quick`,
17% of route's samples were in those commits.

`commit_without_fsync` puts each collection's file in WAL mode with `synchronous=NORMAL`: a
commit appends to the write-ahead log and returns; the log is synced when SQLite checkpoints
it. What it gives up: after a power loss or an operating system crash the last commits may
be rolled back. A process that is killed (kill -9, OOM) loses nothing, since a commit is in
the operating system's file cache when it returns. The embedded stack keeps its topics in
the broker's memory, so a machine that loses power loses them anyway; set
RAGSTREAM_QDRANT_LOCAL_FSYNC=true to keep an fsync for each point. A Qdrant server
(RAGSTREAM_QDRANT_URL) has its own storage and is not touched.

This reaches into the local client's objects (`AsyncQdrantLocal.collections`, each
collection's `storage`, its sqlite3 connection): a qdrant-client that lays them out otherwise
gets a warning and keeps its default, slower but correct.

>>> commit_without_fsync(client)  # doctest: +SKIP
['ragstream_answers', 'ragstream_chunks']
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

log = logging.getLogger("ragstream.route.qdrant")


def sqlite_connections(client: Any) -> dict[str, sqlite3.Connection] | None:
    """Each local collection's SQLite connection (an in-memory collection has none), or None
    when `client` is not laid out as the qdrant-client this was written against."""
    collections = getattr(getattr(client, "_client", None), "collections", None)
    if not isinstance(collections, dict):
        return None
    found: dict[str, sqlite3.Connection] = {}
    for name, collection in collections.items():
        connection = getattr(getattr(collection, "storage", None), "storage", None)
        if isinstance(connection, sqlite3.Connection):
            found[name] = connection
    return found


def commit_without_fsync(client: Any) -> list[str]:
    """Put every collection `client` (a local-mode QdrantClient or AsyncQdrantClient) has
    open into WAL mode with synchronous=NORMAL; the names of those changed. Call it after
    the collections are created: one created later keeps the default."""
    connections = sqlite_connections(client)
    if connections is None:
        log.warning(
            "qdrant-client's local mode is not laid out as expected: each point written "
            "keeps its own fsync (slower, equally correct)"
        )
        return []
    for connection in connections.values():
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
    return sorted(connections)
