"""The checks a generation must pass before it becomes an answer: validate's pure decision.

`validate_generation` parses the model's raw JSON and runs, in order, schema, citations,
grounded, pii, max_length, banned_phrases and injection. A schema failure ends it (nothing
else can be read); otherwise every check is reported, passed or not, so lineage shows the whole
verdict and a corrective retry can be told everything that was wrong at once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from contracts.v1.answers import ContextChunkV1
from services.runtime.injection import answer_injection_problems
from services.runtime.sentences import content_terms, split_sentences, supported_share
from services.validate.exceptions import AnswerSchemaError
from services.validate.pii import PiiMatch, leaked_pii

_ANSWER_KEYS = ("answer", "citations", "confidence")
# A sentence of fewer content terms ("Yes.", "See below.") states nothing a source could back.
_MIN_CLAIM_TERMS = 2


@dataclass(frozen=True)
class ValidationRules:
    """What an answer must meet; one per deployment, from the route settings.

    >>> ValidationRules(groundedness_threshold=0.7, banned_phrases=("as an ai",))
    ValidationRules(groundedness_threshold=0.7, max_answer_chars=1200, banned_phrases=('as an ai',))
    """

    groundedness_threshold: float = 0.6
    max_answer_chars: int = 1200
    banned_phrases: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedAnswer:
    """The model's answer object, read from its raw JSON output."""

    answer: str
    citations: list[str]
    confidence: float | None


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict; `detail` says why it failed, naming the offending value."""

    name: str  # "schema", "citations", "grounded", "pii", "max_length", "banned_phrases", …
    passed: bool
    detail: str = ""
    score: float | None = None


@dataclass(frozen=True)
class ValidationOutcome:
    """Every check run on one generation, in order.

    >>> outcome = validate_generation("not json", [], ValidationRules())
    >>> outcome.passed, outcome.failures[0][:38]
    (False, 'schema: model output is not valid JSON')
    """

    parsed: ParsedAnswer | None
    checks: list[CheckResult]

    @property
    def passed(self) -> bool:
        return self.parsed is not None and all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{check.name}: {check.detail}" for check in self.checks if not check.passed]


def parse_answer(raw_output: str) -> ParsedAnswer:
    """The answer object in `raw_output`, or AnswerSchemaError saying what is wrong with it.

    Expected: {"answer": non-empty string, "citations": [chunk id, ...], "confidence": 0..1}
    with confidence optional (or null) and no other keys.
    """
    try:
        data: Any = json.loads(raw_output)
    except json.JSONDecodeError as exc:
        raise AnswerSchemaError(
            f"model output is not valid JSON ({exc}); expected an object with "
            "'answer', 'citations' and optional 'confidence'"
        ) from exc
    if not isinstance(data, dict):
        raise AnswerSchemaError(
            f"model output is a JSON {type(data).__name__}, not an object with "
            "'answer', 'citations' and optional 'confidence'"
        )
    extra = sorted(set(data) - set(_ANSWER_KEYS))
    if extra:
        raise AnswerSchemaError(
            f"model output has unexpected key(s) {', '.join(map(repr, extra))}; "
            f"only {', '.join(map(repr, _ANSWER_KEYS))} are allowed"
        )
    missing = [key for key in ("answer", "citations") if key not in data]
    if missing:
        raise AnswerSchemaError(
            f"model output lacks required key(s) {', '.join(map(repr, missing))}"
        )
    answer, citations = data["answer"], data["citations"]
    if not isinstance(answer, str) or not answer.strip():
        raise AnswerSchemaError(f"'answer' must be a non-empty string, got {answer!r:.80}")
    if not isinstance(citations, list) or not all(isinstance(c, str) for c in citations):
        raise AnswerSchemaError(
            f"'citations' must be a list of chunk id strings, got {citations!r:.80}"
        )
    return ParsedAnswer(answer, citations, _confidence(data.get("confidence")))


def _confidence(value: Any) -> float | None:
    if value is None:
        return None
    # bool is an int to Python, but true is no confidence level.
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise AnswerSchemaError(f"'confidence' must be a number from 0 to 1, got {value!r:.40}")
    return float(value)


def _check_citations(citations: list[str], retrieved: set[str]) -> CheckResult:
    chunks = f"{len(retrieved)} retrieved chunk{'s' if len(retrieved) != 1 else ''}"
    if not citations:
        return CheckResult("citations", False, f"the answer cites none of the {chunks}")
    unknown = list(dict.fromkeys(c for c in citations if c not in retrieved))
    if unknown:
        named = ", ".join(repr(c) for c in unknown)
        verb = "is not one" if len(unknown) == 1 else "are not"
        return CheckResult("citations", False, f"citation {named} {verb} of the {chunks}")
    return CheckResult("citations", True)


def groundedness(answer: str, cited_texts: Sequence[str]) -> tuple[float, str]:
    """How well the cited texts support `answer` (0 to 1), and its least-supported sentence.

    The score is the minimum over the answer's sentences of the share of their content terms
    the cited texts contain: an answer is as grounded as its weakest claim. A mean would let
    three copied sentences carry an invented fourth over the threshold. Sentences too short to
    state a checkable fact are skipped unless the answer has nothing else."""
    if not cited_texts:
        return 0.0, answer
    sentences = split_sentences(answer) or [answer]
    claims = [s for s in sentences if len(content_terms(s)) >= _MIN_CLAIM_TERMS] or sentences
    scored = [(supported_share(claim, cited_texts), claim) for claim in claims]
    return min(scored, key=lambda pair: pair[0])


def _check_grounded(answer: str, cited_texts: Sequence[str], threshold: float) -> CheckResult:
    if not cited_texts:
        detail = "the answer cites no retrieved chunk, so nothing supports it"
        return CheckResult("grounded", False, detail, 0.0)
    score, weakest = groundedness(answer, cited_texts)
    if score >= threshold:
        return CheckResult("grounded", True, score=score)
    detail = (
        f"sentence {weakest!r:.160} is {score:.2f} supported by the cited chunks, "
        f"under the {threshold:.2f} threshold"
    )
    return CheckResult("grounded", False, detail, score)


def _masked(match: PiiMatch) -> str:
    """The value with its middle hidden: enough to find it, not enough to spread it further."""
    value = match.value
    keep = max(1, len(value) // 5)
    return value[:keep] + "*" * (len(value) - 2 * keep) + value[-keep:]


def _check_pii(answer: str, cited_texts: Sequence[str]) -> CheckResult:
    leaks = leaked_pii(answer, cited_texts)
    if not leaks:
        return CheckResult("pii", True)
    named = ", ".join(f"{m.kind} {_masked(m)!r} at {m.start}" for m in leaks)
    return CheckResult(
        "pii", False, f"the answer contains {named}, found in none of its cited chunks"
    )


def _check_length(answer: str, limit: int) -> CheckResult:
    if len(answer) <= limit:
        return CheckResult("max_length", True)
    return CheckResult(
        "max_length", False, f"answer is {len(answer)} characters, over the {limit} limit"
    )


def _check_banned(answer: str, phrases: Sequence[str]) -> CheckResult:
    lowered = answer.casefold()
    found = [phrase for phrase in phrases if phrase and phrase.casefold() in lowered]
    if not found:
        return CheckResult("banned_phrases", True)
    named = ", ".join(repr(phrase) for phrase in found)
    return CheckResult("banned_phrases", False, f"answer contains banned phrase(s) {named}")


def _check_injection(answer: str, cited_texts: Sequence[str]) -> CheckResult:
    """An answer that obeyed an injection: it leaks the prompt, links out, or gives orders."""
    problems = answer_injection_problems(answer, cited_texts)
    if not problems:
        return CheckResult("injection", True)
    return CheckResult("injection", False, "the answer looks injected: " + "; ".join(problems))


def _cited_texts(citations: list[str], context: Sequence[ContextChunkV1]) -> list[str]:
    """What each cited chunk says, its title and headings included: the model was shown them."""
    cited = set(citations)
    return [
        "\n".join([chunk.title, *chunk.heading_path, chunk.text])
        for chunk in context
        if chunk.chunk_id in cited
    ]


def validate_generation(
    raw_output: str, context: Sequence[ContextChunkV1], rules: ValidationRules
) -> ValidationOutcome:
    """Every check of `raw_output` against the chunks it was generated from.

    >>> outcome = validate_generation('{"answer": "Hi", "citations": ["x"]}', [], ValidationRules())
    >>> [check.name for check in outcome.checks if not check.passed]
    ['citations', 'grounded']
    """
    try:
        parsed = parse_answer(raw_output)
    except AnswerSchemaError as exc:
        return ValidationOutcome(None, [CheckResult("schema", False, str(exc))])
    cited_texts = _cited_texts(parsed.citations, context)
    checks = [
        CheckResult("schema", True),
        _check_citations(parsed.citations, {chunk.chunk_id for chunk in context}),
        _check_grounded(parsed.answer, cited_texts, rules.groundedness_threshold),
        _check_pii(parsed.answer, cited_texts),
        _check_length(parsed.answer, rules.max_answer_chars),
        _check_banned(parsed.answer, rules.banned_phrases),
        _check_injection(parsed.answer, cited_texts),
    ]
    return ValidationOutcome(parsed, checks)
