"""Complexity and tier: how hard a question is, which model tier answers it, where it falls back.

>>> score = complexity("How many vacation days do I get?", [0.71, 0.42, 0.40])
>>> round(score.value, 2), score.reasons["question_type"]
(0.12, 'factual')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.runtime.sentences import content_terms
from services.runtime.settings import TierSpec

_FACTUAL = re.compile(
    r"^\s*(what|when|who|whom|where|which|how (many|much|long|often|old))\b", re.I
)
_REASONING = re.compile(
    r"\b(why|explain|compare|difference|trade-?offs?|pros and cons|should (i|we)|versus|vs\.?|"
    r"how (do|does|can|should|would)|what happens|implications?|summari[sz]e)\b",
    re.I,
)


@dataclass(frozen=True)
class Complexity:
    """A score in [0, 1] and the parts it is made of (recorded in the lineage)."""

    value: float
    reasons: dict[str, str | float] = field(default_factory=dict)


def complexity(question: str, scores: Sequence[float]) -> Complexity:
    """Score a question: its type, its length, how many retrieved chunks it needs, how many
    questions it holds. Factual one-liners whose answer sits in one chunk score low."""
    terms = len(content_terms(question))
    kind = (
        "reasoning"
        if _REASONING.search(question)
        else "factual"
        if _FACTUAL.search(question)
        else "open"
    )
    type_part = {"factual": 0.0, "open": 0.25, "reasoning": 0.45}[kind]
    length_part = min(terms, 24) / 24 * 0.25
    # Chunks within 0.05 of the best one: evidence is spread over them, not in one place.
    best = max(scores, default=0.0)
    spread = sum(1 for s in scores if best - s <= 0.05) if scores else 0
    needs_part = min(max(spread - 1, 0), 3) / 3 * 0.2
    parts = question.count("?") + len(re.findall(r"\b(and also|as well as)\b", question, re.I))
    multi_part = 0.1 if parts > 1 else 0.0
    value = min(1.0, type_part + length_part + needs_part + multi_part)
    return Complexity(
        round(value, 4),
        {
            "question_type": kind,
            "type": type_part,
            "content_terms": terms,
            "length": round(length_part, 4),
            "chunks_needed": spread,
            "spread": round(needs_part, 4),
            "multi_part": multi_part,
        },
    )


@dataclass(frozen=True)
class TierChoice:
    tier: TierSpec
    reason: str
    fallback_chain: list[str]


def fallback_chain(tiers: Sequence[TierSpec], chosen: TierSpec) -> list[str]:
    """The automatic tiers cheaper than `chosen`, most capable first, ending with extractive."""
    position = next(i for i, t in enumerate(tiers) if t.name == chosen.name)
    below = [t.name for t in reversed(tiers[:position]) if t.auto]
    if not chosen.auto:  # a tier asked for by name falls back to every automatic tier
        below = [t.name for t in reversed(tiers) if t.auto]
    return below


def choose_tier(
    tiers: Sequence[TierSpec], score: Complexity, requested: str | None = None
) -> TierChoice:
    """The requested tier if any, else the first automatic tier whose ceiling covers `score`."""
    if requested:
        for tier in tiers:
            if tier.name == requested:
                return TierChoice(tier, "requested by the query", fallback_chain(tiers, tier))
    for tier in tiers:
        if tier.auto and score.value <= tier.max_complexity:
            reason = f"complexity {score.value:.2f} <= {tier.name} ceiling {tier.max_complexity}"
            if requested:
                reason = f"unknown tier {requested!r} requested; " + reason
            return TierChoice(tier, reason, fallback_chain(tiers, tier))
    last = [t for t in tiers if t.auto][-1]
    return TierChoice(
        last, f"complexity {score.value:.2f} above every ceiling", fallback_chain(tiers, last)
    )
