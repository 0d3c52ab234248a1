"""Why did the answer change: two requests' lineages compared field by field (for replay).

>>> diff_lineages(RequestLineage(before_records, before_answer),
...               RequestLineage(after_records, after_answer))  # doctest: +SKIP
[Difference(field='cache', before='miss', after='exact'), ...]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import JsonValue

from contracts.v1 import LineageRecordV1

#: The fields compared, in the order a reader follows a request through the pipeline.
COMPARED = (
    "stages",
    "cache",
    "retrieved",
    "tier",
    "prompt_version",
    "model",
    "outcome",
    "refusal_reasons",
    "answer",
    "citations",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
#: Retrieval scores are stored rounded to 4 decimals: a last-digit flip is not a change.
SCORE_TOLERANCE = 1e-4
#: An answer's tier when no tier produced it (a refusal before generation).
_NO_TIER = "none"


@dataclass(frozen=True)
class Difference:
    """One field that differs between the original request and its replay."""

    field: str
    before: JsonValue
    after: JsonValue


@dataclass(frozen=True)
class AnswerFacts:
    """What the user got, as the answers table has it."""

    answer: str | None
    refusal_reasons: list[str] = field(default_factory=list)
    citations: list[str] = field(default_factory=list)  # cited chunk ids, in order
    tier: str = _NO_TIER
    cache_hit: str = "none"


@dataclass(frozen=True)
class RequestLineage:
    """A request's lineage records (causal order) and its answer, if one is stored."""

    records: Sequence[LineageRecordV1]
    answer: AnswerFacts | None = None


def _last(records: Sequence[LineageRecordV1], stage: str) -> LineageRecordV1 | None:
    found = [r for r in records if r.stage == stage]
    return found[-1] if found else None


def _total(records: Sequence[LineageRecordV1], key: str) -> float:
    return sum(
        float(v)
        for r in records
        if r.stage == "generate"
        and isinstance(v := r.details.get(key), int | float)
        and not isinstance(v, bool)
    )


def _retrieved(route: LineageRecordV1 | None) -> list[JsonValue] | None:
    """route's retrieved chunks ({chunk_id, score}); None when route did not retrieve (an
    answer from the cache) or left no record."""
    value = route.details.get("retrieved") if route is not None else None
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else None


def _tier(lineage: RequestLineage) -> JsonValue:
    """The tier that answered; for a refusal without one, the tier route had chosen."""
    if lineage.answer is not None and lineage.answer.tier != _NO_TIER:
        return lineage.answer.tier
    for record in reversed(lineage.records):
        if record.stage in ("generate", "route") and "tier" in record.details:
            return record.details["tier"]
    return None


def _cache(lineage: RequestLineage) -> JsonValue:
    route = _last(lineage.records, "route")
    if route is not None and "cache" in route.details:
        return route.details["cache"]
    return lineage.answer.cache_hit if lineage.answer is not None else None


def lineage_facts(lineage: RequestLineage) -> dict[str, JsonValue]:
    """The compared fields of one request (see COMPARED); None where the request has no such
    thing (no generation: no prompt version or model)."""
    records, answer = lineage.records, lineage.answer
    generate = _last(records, "generate")
    outcome = None if answer is None else "answered" if answer.answer is not None else "refused"
    return {
        "stages": [f"{r.stage}:{r.outcome}" for r in records],
        "cache": _cache(lineage),
        "retrieved": _retrieved(_last(records, "route")),
        "tier": _tier(lineage),
        "prompt_version": generate.details.get("prompt_version") if generate else None,
        "model": generate.details.get("model_name") if generate else None,
        "outcome": outcome,
        "refusal_reasons": list(answer.refusal_reasons) if answer is not None else None,
        "answer": answer.answer if answer is not None else None,
        "citations": list(answer.citations) if answer is not None else None,
        "input_tokens": int(_total(records, "input_tokens")),
        "output_tokens": int(_total(records, "output_tokens")),
        "cost_usd": _total(records, "cost_usd"),
    }


def _scores(retrieved: list[JsonValue]) -> dict[str, float]:
    return {
        str(item["chunk_id"]): float(score)
        for item in retrieved
        if isinstance(item, dict) and isinstance(score := item.get("score"), int | float)
    }


def _chunk_ids(retrieved: JsonValue) -> list[JsonValue] | None:
    if not isinstance(retrieved, list):
        return None
    return [item.get("chunk_id") for item in retrieved if isinstance(item, dict)]


def _retrieval_differences(before: JsonValue, after: JsonValue) -> list[Difference]:
    """Both retrieved lists ({chunk_id, score} in rank order) if their chunk ids differ, then
    each chunk retrieved both times whose score moved. (A new document version has new chunk
    ids throughout: the scores say whether the same passages still rank the same.)"""
    same_ids = _chunk_ids(before) == _chunk_ids(after)
    found = [] if same_ids else [Difference("retrieved", before, after)]
    if not isinstance(before, list) or not isinstance(after, list):
        return found
    scores_before, scores_after = _scores(before), _scores(after)
    for chunk_id, score in scores_before.items():
        moved = scores_after.get(chunk_id)
        if moved is not None and abs(moved - score) > SCORE_TOLERANCE + 1e-12:
            found.append(Difference(f"retrieved[{chunk_id}].score", score, moved))
    return found


def _same(before: JsonValue, after: JsonValue) -> bool:
    if isinstance(before, float) and isinstance(after, float):
        return math.isclose(before, after, rel_tol=1e-9, abs_tol=1e-12)
    return before == after


def diff_lineages(before: RequestLineage, after: RequestLineage) -> list[Difference]:
    """Each compared field whose value differs, in COMPARED order; empty when the replay went
    the same way. Retrieval is compared by chunk ids, then score by score."""
    facts_before, facts_after = lineage_facts(before), lineage_facts(after)
    differences: list[Difference] = []
    for name in COMPARED:
        old, new = facts_before[name], facts_after[name]
        if name == "retrieved":
            differences += _retrieval_differences(old, new)
        elif not _same(old, new):
            differences.append(Difference(name, old, new))
    return differences
