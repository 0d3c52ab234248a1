"""Scoring a labelled question set: which answers cite the expected document, state the key
facts, were refused or timed out, and how they compare with committed thresholds."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.cli.ask_cmd import AskResult

THRESHOLDS_FILE = "eval_thresholds.json"
# threshold name -> (report figure, True when the threshold is a minimum)
THRESHOLD_FIGURES: dict[str, tuple[str, bool]] = {
    "answered_from_expected_doc": ("answered_from_expected_doc", True),
    "citation_accuracy": ("citation_accuracy", True),
    "key_fact_containment": ("key_fact_containment", True),
    "groundedness": ("groundedness", True),
    "max_refusal_rate": ("refusal_rate", False),
    "max_timeouts": ("timeouts", False),
    "max_latency_p95_ms": ("latency_p95_ms", False),
}


class EvalInputError(ValueError):
    """A questions or thresholds file that cannot be used, with the line or name at fault."""


class QuestionSpec(BaseModel):
    """One labelled question: the document that answers it and facts a right answer states.

    >>> QuestionSpec(question="How many vacation days?", expected_doc="handbook/leave.md",
    ...              key_facts=["25 days"]).expected_doc
    'handbook/leave.md'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    expected_doc: str = Field(min_length=1, description="Document id, as ingest gives it.")
    key_facts: list[str] = Field(description="Phrases a correct answer contains (any case).")
    id: str | None = None


def load_questions(path: Path) -> list[QuestionSpec]:
    """Questions from a JSONL file (blank lines skipped); errors name the line."""
    specs: list[QuestionSpec] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            specs.append(QuestionSpec.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "json_invalid":
                raise EvalInputError(f"{where}: not valid JSON ({first['msg']})") from None
            field_name = ".".join(map(str, first["loc"])) or "the line"
            raise EvalInputError(
                f"{where}: {field_name}: {first['msg']}; each line is "
                '{"question": str, "expected_doc": str, "key_facts": [str, ...], "id"?: str}'
            ) from None
    if not specs:
        raise EvalInputError(f"{path} holds no questions")
    ids = Counter(spec.id for spec in specs if spec.id is not None)
    if duplicated := sorted(i for i, n in ids.items() if n > 1):
        raise EvalInputError(f"{path}: question id {', '.join(duplicated)} used more than once")
    return specs


@dataclass(frozen=True)
class QuestionOutcome:
    id: str | None
    question: str
    status: str  # answered, refused or timed_out
    cited_expected_doc: bool
    citations: int
    citations_of_expected_doc: int
    key_facts_found: int
    key_facts: int
    tier: str | None
    latency_ms: float | None


@dataclass(frozen=True)
class TierFigures:
    questions: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_p50_ms: float
    latency_p95_ms: float


@dataclass(frozen=True)
class EvalReport:
    """Scores of one run; shares are 0..1 over all questions, None when nothing to measure."""

    k: int
    questions: int
    answered: int
    refused: int
    timeouts: int
    answered_from_expected_doc: float
    citation_accuracy: float | None
    key_fact_containment: float | None
    refusal_rate: float
    groundedness: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    client_latency_p50_ms: float | None
    client_latency_p95_ms: float | None
    cache_hits: dict[str, int] = field(default_factory=dict)
    tiers: dict[str, TierFigures] = field(default_factory=dict)
    per_question: list[QuestionOutcome] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _contains(answer: str, fact: str) -> bool:
    return " ".join(fact.split()).casefold() in " ".join(answer.split()).casefold()


def _outcome(result: AskResult, spec: QuestionSpec, k: int) -> QuestionOutcome:
    answer = result.answer
    answered = answer is not None and answer.refusal is None
    cited = [c.doc_id for c in answer.citations] if answer is not None and answered else []
    text = (answer.answer or "") if answer is not None and answered else ""
    return QuestionOutcome(
        id=spec.id,
        question=spec.question,
        status="timed_out" if answer is None else "answered" if answered else "refused",
        cited_expected_doc=spec.expected_doc in cited[:k],
        citations=len(cited),
        citations_of_expected_doc=cited.count(spec.expected_doc),
        key_facts_found=sum(_contains(text, fact) for fact in spec.key_facts),
        key_facts=len(spec.key_facts),
        tier=answer.tier if answer is not None else None,
        latency_ms=answer.latency_ms if answer is not None else None,
    )


def _tier_figures(results: list[AskResult]) -> dict[str, TierFigures]:
    tiers: dict[str, list[AskResult]] = {}
    for result in results:
        if result.answer is not None:
            tiers.setdefault(result.answer.tier, []).append(result)
    figures = {}
    for tier, tier_results in sorted(tiers.items()):
        answers = [r.answer for r in tier_results if r.answer is not None]
        latencies = [a.latency_ms for a in answers]
        figures[tier] = TierFigures(
            questions=len(answers),
            input_tokens=sum(a.input_tokens for a in answers),
            output_tokens=sum(a.output_tokens for a in answers),
            cost_usd=sum(a.cost_usd for a in answers),
            latency_p50_ms=percentile(latencies, 50),
            latency_p95_ms=percentile(latencies, 95),
        )
    return figures


def evaluate(results: list[AskResult], specs: list[QuestionSpec], k: int = 5) -> EvalReport:
    """Score results against the specs they answer (same order, same length).

    A refusal or timeout counts as a miss in the expected-doc and key-fact shares; citation
    accuracy is over the citations answers gave; groundedness is the mean confidence of the
    answers that carry one."""
    if len(results) != len(specs):
        raise ValueError(f"{len(results)} results for {len(specs)} questions: pair them one to one")
    outcomes = [_outcome(r, s, k) for r, s in zip(results, specs, strict=True)]
    answers = [r.answer for r in results if r.answer is not None]
    confidences = [a.confidence for a in answers if a.refusal is None and a.confidence is not None]
    latencies = [a.latency_ms for a in answers]
    client = [r.client_latency_ms for r in results if not r.timed_out]
    n = len(outcomes)
    return EvalReport(
        k=k,
        questions=n,
        answered=sum(o.status == "answered" for o in outcomes),
        refused=sum(o.status == "refused" for o in outcomes),
        timeouts=sum(o.status == "timed_out" for o in outcomes),
        answered_from_expected_doc=sum(o.cited_expected_doc for o in outcomes) / n if n else 0.0,
        citation_accuracy=_share(
            sum(o.citations_of_expected_doc for o in outcomes), sum(o.citations for o in outcomes)
        ),
        key_fact_containment=_share(
            sum(o.key_facts_found for o in outcomes), sum(o.key_facts for o in outcomes)
        ),
        refusal_rate=sum(o.status == "refused" for o in outcomes) / n if n else 0.0,
        groundedness=sum(confidences) / len(confidences) if confidences else None,
        latency_p50_ms=percentile(latencies, 50) if latencies else None,
        latency_p95_ms=percentile(latencies, 95) if latencies else None,
        client_latency_p50_ms=percentile(client, 50) if client else None,
        client_latency_p95_ms=percentile(client, 95) if client else None,
        cache_hits=dict(Counter(a.cache_hit for a in answers)),
        tiers=_tier_figures(results),
        per_question=outcomes,
    )


def load_thresholds(path: Path) -> dict[str, float]:
    """Minimum and maximum figures from a JSON object, e.g. {"max_refusal_rate": 0.2}."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EvalInputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise EvalInputError(f"{path}: expected a JSON object of threshold name to number")
    thresholds: dict[str, float] = {}
    for name, value in raw.items():
        if name not in THRESHOLD_FIGURES:
            known = ", ".join(THRESHOLD_FIGURES)
            raise EvalInputError(f"{path}: unknown threshold {name!r}; known: {known}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EvalInputError(f"{path}: threshold {name} is {value!r}, not a number")
        thresholds[name] = float(value)
    return thresholds


def check_thresholds(report: EvalReport, thresholds: dict[str, float]) -> list[str]:
    """One human-readable line per threshold the report misses; empty when all hold."""
    failures = []
    for name, limit in thresholds.items():
        figure, is_minimum = THRESHOLD_FIGURES[name]
        value = getattr(report, figure)
        if value is None:
            failures.append(f"{figure} could not be measured in this run (threshold {limit:g})")
        elif is_minimum and value < limit:
            failures.append(f"{figure} is {value:.3g}, below the minimum {limit:g} ({name})")
        elif not is_minimum and value > limit:
            failures.append(f"{figure} is {value:.3g}, above the maximum {limit:g} ({name})")
    return failures


def report_json(report: EvalReport, failures: list[str] | None = None) -> dict[str, Any]:
    data = asdict(report)
    if failures is not None:
        data["threshold_failures"] = failures
        data["passed"] = not failures
    return data
