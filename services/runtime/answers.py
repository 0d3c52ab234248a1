"""Answers as route and validate publish them: latency from the question, refusals with reasons."""

from __future__ import annotations

from datetime import datetime

from contracts.v1 import AnswerV1, Envelope, RefusalV1
from contracts.v1.envelope import utc_now
from services.runtime.publishing import derived_from

#: The `tier` of an answer no tier produced (a refusal before generation).
NO_TIER = "none"


def latency_ms(asked_at: datetime | None, fallback: datetime) -> float:
    """Milliseconds from the question's publication (or `fallback`) to now."""
    started = asked_at or fallback
    return max(0.0, (utc_now() - started).total_seconds() * 1000)


def refusal_answer(
    event: Envelope,
    stage: str,
    *,
    request_id: str,
    question: str,
    reasons: list[str],
    message: str,
    asked_at: datetime | None,
    tier: str = NO_TIER,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: float = 0.0,
) -> AnswerV1:
    """A graceful refusal: no answer, the reasons and a message a user can act on."""
    return AnswerV1(
        **derived_from(event, stage),
        request_id=request_id,
        question=question,
        refusal=RefusalV1(reasons=reasons, message=message),
        tier=tier,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        latency_ms=latency_ms(asked_at, event.produced_at),
    )
