"""validate's decision over plain data: schema, citations, grounding, PII, length, phrases."""

import json

import pytest

from contracts.v1.answers import ContextChunkV1
from services.validate.checks import (
    ParsedAnswer,
    ValidationRules,
    groundedness,
    parse_answer,
    validate_generation,
)
from services.validate.exceptions import AnswerSchemaError

LEAVE = "3f1c9a4e-6a52-5d1e-9c7b-1e2f3a4b5c6d"
EXPENSES = "7a2b8c9d-1e2f-5a3b-8c4d-5e6f7a8b9c0d"
PAYROLL = "0b1c2d3e-4f5a-5b6c-9d7e-8f9a0b1c2d3e"
INVENTED = "ffffffff-ffff-5fff-bfff-ffffffffffff"

CONTEXT = [
    ContextChunkV1(
        chunk_id=LEAVE,
        doc_id="handbook/leave.md",
        title="Employee Handbook",
        heading_path=["Leave", "Annual leave"],
        text="Full-time employees get 25 days of annual leave per year. "
        "Unused days can be carried over until 31 March.",
        score=0.82,
    ),
    ContextChunkV1(
        chunk_id=EXPENSES,
        doc_id="handbook/expenses.md",
        title="Employee Handbook",
        heading_path=["Expenses"],
        text="Travel expenses are reimbursed within 30 days of a receipt being submitted.",
        score=0.41,
    ),
    ContextChunkV1(
        chunk_id=PAYROLL,
        doc_id="handbook/payroll.md",
        title="Employee Handbook",
        heading_path=["Payroll"],
        text="Payroll questions go to payroll@acme.example or +44 20 7946 0958.",
        score=0.35,
    ),
]
RULES = ValidationRules(groundedness_threshold=0.6, max_answer_chars=300)


def generation(answer: str, citations: list[str], **extra: object) -> str:
    return json.dumps({"answer": answer, "citations": citations, **extra})


def verdicts(raw_output: str, rules: ValidationRules = RULES) -> dict[str, bool]:
    outcome = validate_generation(raw_output, CONTEXT, rules)
    return {check.name: check.passed for check in outcome.checks}


def test_grounded_answer_with_real_citation_passes_every_check() -> None:
    raw = generation(
        "Full-time employees get 25 days of annual leave per year.", [LEAVE], confidence=0.9
    )
    outcome = validate_generation(raw, CONTEXT, RULES)
    assert outcome.passed, outcome.failures
    assert [c.name for c in outcome.checks] == [
        "schema",
        "citations",
        "grounded",
        "pii",
        "max_length",
        "banned_phrases",
        "injection",
    ]
    assert outcome.parsed == ParsedAnswer(
        "Full-time employees get 25 days of annual leave per year.", [LEAVE], 0.9
    )
    assert outcome.checks[2].score == 1.0


def test_repeated_citation_of_a_real_chunk_is_fine() -> None:
    raw = generation("Employees get 25 days of annual leave.", [LEAVE, LEAVE])
    assert verdicts(raw)["citations"]


def test_invented_citation_is_caught_and_named() -> None:
    raw = generation("Employees get 25 days of annual leave.", [LEAVE, INVENTED])
    outcome = validate_generation(raw, CONTEXT, RULES)
    assert not outcome.passed
    assert outcome.failures == [
        f"citations: citation '{INVENTED}' is not one of the 3 retrieved chunks"
    ]


def test_answer_without_citations_fails_citations_and_grounding() -> None:
    outcome = validate_generation(generation("Employees get 25 days.", []), CONTEXT, RULES)
    failed = {c.name: c for c in outcome.checks if not c.passed}
    assert set(failed) == {"citations", "grounded"}
    assert "cites none of the 3 retrieved chunks" in failed["citations"].detail
    assert failed["grounded"].score == 0.0


def test_only_invented_citations_score_zero_grounding() -> None:
    raw = generation("Employees get 25 days of annual leave.", [INVENTED])
    grounded = validate_generation(raw, CONTEXT, RULES).checks[2]
    assert (grounded.passed, grounded.score) == (False, 0.0)


def test_claims_missing_from_the_cited_chunk_are_not_grounded() -> None:
    raw = generation(
        "Employees get 25 days of annual leave. Managers approve unlimited sabbaticals "
        "with full pension contributions.",
        [LEAVE],
    )
    outcome = validate_generation(raw, CONTEXT, RULES)
    grounded = outcome.checks[2]
    assert not grounded.passed
    assert grounded.score is not None and grounded.score < 0.6
    assert "Managers approve unlimited sabbaticals" in grounded.detail
    assert "under the 0.60 threshold" in grounded.detail


def test_support_counts_only_the_cited_chunks() -> None:
    # The expenses chunk says this, but the answer cites the leave chunk.
    raw = generation("Travel expenses are reimbursed within 30 days of a receipt.", [LEAVE])
    assert not verdicts(raw)["grounded"]
    raw = generation("Travel expenses are reimbursed within 30 days of a receipt.", [EXPENSES])
    assert verdicts(raw)["grounded"]


def test_wrong_number_lowers_grounding() -> None:
    supported, _ = groundedness("Employees get 25 days of leave.", [CONTEXT[0].text])
    changed, _ = groundedness("Employees get 40 days of leave.", [CONTEXT[0].text])
    assert changed < supported == 1.0


def test_one_invented_sentence_sinks_an_otherwise_copied_answer() -> None:
    copied = "Full-time employees get 25 days of annual leave per year."
    answer = f"{copied} {copied} {copied} Contractors receive stock options quarterly."
    score, weakest = groundedness(answer, [CONTEXT[0].text])
    assert score < 0.6
    assert weakest == "Contractors receive stock options quarterly."


def test_pii_not_in_cited_chunks_is_caught() -> None:
    raw = generation(
        "Employees get 25 days of annual leave; ask jane.doe@corp.example for details.", [LEAVE]
    )
    outcome = validate_generation(raw, CONTEXT, RULES)
    pii = outcome.checks[3]
    assert not pii.passed
    assert pii.detail.startswith("the answer contains email 'ja")
    assert "jane.doe@corp.example" not in pii.detail  # the detail masks what it found


def test_pii_copied_from_a_cited_chunk_passes() -> None:
    raw = generation("Payroll questions go to payroll@acme.example or +44 20 7946 0958.", [PAYROLL])
    assert verdicts(raw)["pii"]


def test_pii_from_an_uncited_chunk_is_still_a_leak() -> None:
    raw = generation("Payroll questions go to payroll@acme.example.", [LEAVE])
    assert not verdicts(raw)["pii"]


@pytest.mark.parametrize(
    ("raw_output", "problem"),
    [
        ('{"answer": "25 days", "citations": [', "not valid JSON"),
        ('["25 days"]', "is a JSON list, not an object"),
        ('{"answer": "25 days"}', "lacks required key\\(s\\) 'citations'"),
        ('{"citations": []}', "lacks required key\\(s\\) 'answer'"),
        (
            '{"answer": "25 days", "citations": [], "reasoning": "..."}',
            "unexpected key\\(s\\) 'reasoning'",
        ),
        ('{"answer": "  ", "citations": []}', "'answer' must be a non-empty string"),
        ('{"answer": "25 days", "citations": "abc"}', "'citations' must be a list"),
        ('{"answer": "25 days", "citations": [1]}', "'citations' must be a list"),
        ('{"answer": "25 days", "citations": [], "confidence": 1.5}', "from 0 to 1, got 1.5"),
        ('{"answer": "25 days", "citations": [], "confidence": true}', "from 0 to 1, got True"),
        ('{"answer": "25 days", "citations": [], "confidence": NaN}', "from 0 to 1, got nan"),
    ],
)
def test_malformed_output_fails_schema_naming_the_problem(raw_output: str, problem: str) -> None:
    with pytest.raises(AnswerSchemaError, match=problem):
        parse_answer(raw_output)
    outcome = validate_generation(raw_output, CONTEXT, RULES)
    assert outcome.parsed is None
    assert [(c.name, c.passed) for c in outcome.checks] == [("schema", False)]
    assert outcome.failures[0].startswith("schema: ")


def test_confidence_is_optional() -> None:
    assert parse_answer('{"answer": "25 days", "citations": []}').confidence is None
    assert parse_answer('{"answer": "x", "citations": [], "confidence": null}').confidence is None
    assert parse_answer('{"answer": "x", "citations": [], "confidence": 1}').confidence == 1.0


def test_too_long_answer_is_caught_with_its_length() -> None:
    answer = "Employees get 25 days of annual leave. " * 10
    outcome = validate_generation(generation(answer, [LEAVE]), CONTEXT, RULES)
    assert outcome.failures == [
        f"max_length: answer is {len(answer)} characters, over the 300 limit"
    ]


def test_banned_phrase_is_caught_whatever_its_case() -> None:
    rules = ValidationRules(banned_phrases=("as an ai language model",))
    raw = generation("As an AI Language Model, employees get 25 days of annual leave.", [LEAVE])
    outcome = validate_generation(raw, CONTEXT, rules)
    assert outcome.failures == [
        "banned_phrases: answer contains banned phrase(s) 'as an ai language model'"
    ]


def test_every_check_is_reported_when_several_fail() -> None:
    rules = ValidationRules(max_answer_chars=10, banned_phrases=("sabbatical",))
    raw = generation("Unlimited sabbatical for jane.doe@corp.example.", [INVENTED])
    outcome = validate_generation(raw, CONTEXT, rules)
    assert [c.name for c in outcome.checks if not c.passed] == [
        "citations",
        "grounded",
        "pii",
        "max_length",
        "banned_phrases",
    ]
    assert len(outcome.failures) == 5
