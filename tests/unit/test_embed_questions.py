"""embed remembers each tenant's question vectors: the same words are sent to Triton once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pytest

from contracts.v1 import AcceptedQueryV1, ProducedBy
from inference.client import EmbedPriority, TritonClient
from services.embed.app import EmbedResources, _question_vectors
from services.runtime.lru import Lru
from services.runtime.settings import EmbedSettings


class _CountingEmbedder:
    """Records the texts of each embed call; a text's vector is derived from the text."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str], priority: EmbedPriority) -> np.ndarray:
        assert priority == EmbedPriority.QUERY
        self.calls.append(list(texts))
        return np.array([[float(len(t)), float(sum(map(ord, t)))] for t in texts])


def _question(text: str, tenant: str = "acme", n: int = 0) -> AcceptedQueryV1:
    return AcceptedQueryV1(
        tenant_id=tenant,
        correlation_id=f"c-{tenant}-{n}",
        produced_by=ProducedBy(service="test", version="1"),
        request_id=f"r-{tenant}-{n}",
        question=text,
        question_hash="a" * 64,
        asked_at=datetime(2026, 12, 6, tzinfo=UTC),
    )


def _embed(entries: int) -> tuple[EmbedResources, _CountingEmbedder]:
    triton = _CountingEmbedder()
    settings = EmbedSettings(bootstrap_servers="localhost:1", query_vector_cache_entries=entries)
    resources = EmbedResources(
        settings,
        cast(TritonClient, triton),
        cast(Any, None),
        cast(Any, None),
        question_vectors=Lru(entries),
    )
    return resources, triton


@pytest.mark.asyncio
async def test_a_question_asked_again_is_not_embedded_again_but_another_tenants_is() -> None:
    embed, triton = _embed(16)
    days, desks = "How many days of leave?", "How many desks are there?"
    first = [_question(days, n=0), _question(days, n=1), _question(desks, n=2)]
    vectors, embedded = await _question_vectors(embed, first)
    assert triton.calls == [[days, desks]]  # the same words twice in a batch: embedded once
    assert vectors[0] == vectors[1] != vectors[2]
    assert embedded == {("acme", days), ("acme", desks)}

    later = [_question(desks, n=3), _question(days, tenant="globex", n=4)]
    again, embedded = await _question_vectors(embed, later)
    assert triton.calls[1:] == [[days]]  # only the other tenant's
    assert again[0] == vectors[2] and again[1].decode() == vectors[0].decode()
    assert embedded == {("globex", days)}


@pytest.mark.asyncio
async def test_with_no_entries_every_question_is_embedded() -> None:
    embed, triton = _embed(0)
    days = "How many days of leave?"
    for n in range(2):
        _, embedded = await _question_vectors(embed, [_question(days, n=n)])
        assert embedded == {("acme", days)}
    assert triton.calls == [[days], [days]]
