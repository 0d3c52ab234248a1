"""Filtered vector queries that stay fast in Qdrant's local mode.

Local mode checks a query's filter in Python against every point (18 ms a query for 2,000
chunks of one tenant), while an unfiltered query scores every point in numpy (1.6 ms). So in
local mode a filtered query is first made without its filter for `OVERFETCH` times its limit,
and the points whose payload passes the filter are kept. When at least `limit` of them pass,
or the query ran out of points above its score threshold, they are exactly what the filtered
query returns: a passing point that scored higher would be among them. Otherwise the filtered
query is made. A Qdrant server indexes the payload, so there the filtered query goes first.

>>> tenant_is = models.FieldCondition(key="tenant_id", match=models.MatchValue(value="acme"))
>>> await query_filtered(client, "chunks", vector, [tenant_is], 5, 0.2, local=True)  # doctest:+SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

from qdrant_client import AsyncQdrantClient, models

#: How many times the limit the unfiltered query asks for.
OVERFETCH = 4


def _exact_matches(conditions: Sequence[models.Condition]) -> list[tuple[str, object]] | None:
    """(field, value) of each condition when all are plain matches of one value, else None."""
    pairs: list[tuple[str, object]] = []
    for condition in conditions:
        if not isinstance(condition, models.FieldCondition):
            return None
        if not isinstance(condition.match, models.MatchValue) or "." in condition.key:
            return None
        pairs.append((condition.key, condition.match.value))
    return pairs


async def query_filtered(
    client: AsyncQdrantClient,
    collection: str,
    vector: Sequence[float],
    must: Sequence[models.Condition],
    limit: int,
    score_threshold: float | None,
    *,
    local: bool,
) -> list[models.ScoredPoint]:
    """The `limit` nearest points whose payload meets every condition of `must`, best first."""
    pairs = _exact_matches(must) if local else None
    if pairs is not None:
        wide = await client.query_points(
            collection,
            query=list(vector),
            limit=limit * OVERFETCH,
            score_threshold=score_threshold,
            with_payload=True,
        )
        passing = [
            point
            for point in wide.points
            if all((point.payload or {}).get(key) == value for key, value in pairs)
        ]
        if len(passing) >= limit or len(wide.points) < limit * OVERFETCH:
            return passing[:limit]
    result = await client.query_points(
        collection,
        query=list(vector),
        query_filter=models.Filter(must=list(must)),
        limit=limit,
        score_threshold=score_threshold,
        with_payload=True,
    )
    return result.points
