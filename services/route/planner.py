"""route's decision for a question that no cache answered: tier, context and budget, or refusal.

A plain function over plain data, so every branch is tested without a broker:

>>> plan = plan_generation(question, hits, QueryOptionsV1(), settings, "acme", spent_today=0)
>>> plan.refusal or (plan.choice.tier.name, len(plan.context))  # doctest: +SKIP
('extractive', 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from contracts.v1 import ContextChunkV1, QueryOptionsV1
from services.route.context import select_context
from services.route.index import Hit
from services.route.tiers import Complexity, TierChoice, choose_tier, complexity
from services.runtime.rollout import canary_arm
from services.runtime.sentences import estimate_tokens
from services.runtime.settings import QuerySettings

#: Tokens of the prompt template around the question and context (instructions, schema hint).
PROMPT_OVERHEAD_TOKENS = 150

NO_CONTEXT = "no_relevant_documents"
BUDGET_EXCEEDED = "budget_exceeded"


@dataclass(frozen=True)
class Refusal:
    reasons: list[str]
    message: str


@dataclass(frozen=True)
class PromptChoice:
    """The prompt version a request uses and why: the stable or canary arm of the rollout,
    or "requested" when the query named a version itself."""

    version: str
    arm: str


def choose_prompt(request_id: str, requested: str | None, settings: QuerySettings) -> PromptChoice:
    """The query's own prompt version, else the canary for its share of request ids, else
    the stable one; by the request id, so a retried request keeps its prompt."""
    if requested:
        return PromptChoice(requested, "requested")
    if settings.prompt_canary_version:
        arm = canary_arm(request_id, settings.prompt_canary_share, salt="prompt")
        if arm == "canary":
            return PromptChoice(settings.prompt_canary_version, arm)
    return PromptChoice(settings.prompt_version, "stable")


@dataclass(frozen=True)
class Plan:
    """What to ask which tier with which context, or why not to ask at all."""

    refusal: Refusal | None = None
    choice: TierChoice | None = None
    score: Complexity | None = None
    context: list[ContextChunkV1] = field(default_factory=list)
    max_output_tokens: int = 1
    token_budget: int = 0
    estimate: int = 0
    details: dict[str, JsonValue] = field(default_factory=dict)


def plan_generation(
    question: str,
    hits: Sequence[Hit],
    options: QueryOptionsV1,
    settings: QuerySettings,
    tenant_id: str,
    spent_today: int,
) -> Plan:
    retrieved: list[JsonValue] = [
        {"chunk_id": h.chunk_id, "score": round(h.score, 4)} for h in hits
    ]
    details: dict[str, JsonValue] = {"retrieved": retrieved}
    if not hits:
        message = (
            f"No document of tenant {tenant_id} matches this question closely enough "
            f"(minimum similarity {settings.min_score}); nothing to answer from."
        )
        return Plan(refusal=Refusal([NO_CONTEXT], message), details=details)
    score = complexity(question, [h.score for h in hits])
    choice = choose_tier(settings.tiers, score, options.tier)
    tier = choice.tier
    request_budget, daily_cap = settings.budget_of(tenant_id)
    max_output = min(options.max_output_tokens or tier.max_output_tokens, tier.max_output_tokens)
    room = request_budget - max_output - PROMPT_OVERHEAD_TOKENS - estimate_tokens(question)
    details |= {
        "complexity": score.value,
        "complexity_reasons": dict(score.reasons),
        "tier": tier.name,
        "tier_reason": choice.reason,
        "fallback_chain": list(choice.fallback_chain),
        "request_token_budget": request_budget,
    }
    if room <= 0:
        message = (
            f"The per-request budget of {request_budget} tokens leaves no room for context "
            f"after {max_output} output tokens (RAGSTREAM_REQUEST_TOKEN_BUDGET)."
        )
        return Plan(refusal=Refusal([BUDGET_EXCEEDED], message), details=details)
    context = select_context(question, hits, min(tier.context_tokens, room))
    context_tokens = sum(estimate_tokens(c.text) for c in context)
    estimate = PROMPT_OVERHEAD_TOKENS + estimate_tokens(question) + context_tokens + max_output
    details |= {
        "selected": [c.chunk_id for c in context],
        "context_tokens": context_tokens,
        "estimated_tokens": estimate,
        "spent_today": spent_today,
        "daily_token_cap": daily_cap,
    }
    if spent_today + estimate > daily_cap:
        message = (
            f"Tenant {tenant_id} has used {spent_today} of its {daily_cap} tokens today; this "
            f"question needs about {estimate} more. The budget resets at 00:00 UTC."
        )
        return Plan(refusal=Refusal([BUDGET_EXCEEDED], message), details=details)
    return Plan(
        choice=choice,
        score=score,
        context=context,
        max_output_tokens=max_output,
        token_budget=request_budget,
        estimate=estimate,
        details=details,
    )
