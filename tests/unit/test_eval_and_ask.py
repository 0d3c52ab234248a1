"""`ragstream ask` and `ragstream eval` without a broker: scoring, thresholds, output shapes,
and the labelled question set in examples/."""

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from contracts.v1 import AnswerV1, CitationV1, DocumentUpsertV1, ProducedBy, RefusalV1
from services.cli import ask_cmd, eval_cmd
from services.cli.ask_cmd import AskResult, answer_json, ask_command, query_event, render_answer
from services.cli.eval_cmd import eval_command
from services.cli.evaluation import (
    EvalInputError,
    QuestionSpec,
    check_thresholds,
    evaluate,
    load_questions,
    load_thresholds,
    percentile,
    report_json,
)
from services.ingest.acceptance import PreparedDocument, prepare_document
from services.runtime.settings import IngestSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LEAVE = "handbook/leave.md"
EXPENSES = "handbook/expenses.md"


def citation(doc_id: str, n: int = 0) -> CitationV1:
    return CitationV1(
        chunk_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}#{n}")),
        doc_id=doc_id,
        source_uri=f"file:///corpus/{doc_id}",
        title="Leave and time off" if doc_id == LEAVE else "Travel and expenses",
        heading_path=["Vacation"] if doc_id == LEAVE else [],
    )


def answer(
    request_id: str,
    text: str | None = "You get 25 days.",
    cited: tuple[str, ...] = (LEAVE,),
    tier: str = "small",
    latency_ms: float = 100.0,
    refusal: RefusalV1 | None = None,
    **usage: Any,
) -> AnswerV1:
    return AnswerV1(
        tenant_id="acme",
        correlation_id=request_id,
        produced_by=ProducedBy(service="validate", version="1"),
        request_id=request_id,
        question="q",
        answer=None if refusal else text,
        citations=[] if refusal else [citation(d, i) for i, d in enumerate(cited)],
        refusal=refusal,
        tier=tier,
        latency_ms=latency_ms,
        **usage,
    )


def result(a: AnswerV1 | None, client_ms: float = 150.0, question: str = "q") -> AskResult:
    request_id = a.request_id if a is not None else "ask-lost"
    return AskResult(question, request_id, a, client_ms, timed_out=a is None)


def spec(doc: str = LEAVE, facts: tuple[str, ...] = ("25 days",)) -> QuestionSpec:
    return QuestionSpec(question="q", expected_doc=doc, key_facts=list(facts))


NO_CONTEXT = RefusalV1(reasons=["no_relevant_context"], message="I could not find that.")


def mixed_run() -> tuple[list[AskResult], list[QuestionSpec]]:
    """A right answer, an answer from the wrong document, a refusal and a timeout."""
    results = [
        result(answer("r1", "Everyone receives 25 DAYS of paid vacation.", (LEAVE, EXPENSES))),
        result(answer("r2", "The per diem is 45 EUR.", (EXPENSES,), tier="large", latency_ms=300)),
        result(answer("r3", refusal=NO_CONTEXT, latency_ms=50)),
        result(None, client_ms=30_000),
    ]
    specs = [spec(), spec(LEAVE, ("16 weeks", "fully paid")), spec(), spec()]
    return results, specs


def test_evaluate_scores_citations_key_facts_refusals_and_timeouts() -> None:
    report = evaluate(*mixed_run(), k=5)

    assert (report.questions, report.answered, report.refused, report.timeouts) == (4, 2, 1, 1)
    assert report.answered_from_expected_doc == 0.25
    assert report.citation_accuracy == pytest.approx(1 / 3)  # 1 of the 3 citations given
    assert report.key_fact_containment == pytest.approx(1 / 5)  # refused/timed out facts missed
    assert report.refusal_rate == 0.25
    assert [o.status for o in report.per_question] == [
        "answered",
        "answered",
        "refused",
        "timed_out",
    ]


def test_hit_at_k_counts_only_the_first_k_citations() -> None:
    results = [result(answer("r1", cited=(EXPENSES, EXPENSES, LEAVE)))]

    assert evaluate(results, [spec()], k=3).answered_from_expected_doc == 1.0
    assert evaluate(results, [spec()], k=2).answered_from_expected_doc == 0.0


def test_tiers_get_their_tokens_cost_and_latency_percentiles() -> None:
    results = [
        result(answer(f"r{ms}", latency_ms=ms, input_tokens=100, output_tokens=10, cost_usd=0.01))
        for ms in (100.0, 200.0, 300.0, 400.0)
    ] + [result(answer("big", tier="large", latency_ms=900.0, input_tokens=7))]

    report = evaluate(results, [spec()] * 5)

    small = report.tiers["small"]
    assert (small.questions, small.input_tokens, small.output_tokens) == (4, 400, 40)
    assert small.cost_usd == pytest.approx(0.04)
    assert (small.latency_p50_ms, small.latency_p95_ms) == pytest.approx((250.0, 385.0))
    assert report.tiers["large"].input_tokens == 7
    assert report.latency_p50_ms == 300.0
    assert report.client_latency_p50_ms == 150.0


def test_groundedness_is_the_mean_confidence_of_answers_that_carry_one() -> None:
    results = [
        result(answer("r1", confidence=0.9)),
        result(answer("r2", confidence=0.5)),
        result(answer("r3")),
    ]

    assert evaluate(results, [spec()] * 3).groundedness == pytest.approx(0.7)
    assert evaluate(results[2:], [spec()]).groundedness is None


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([5.0], 95) == 5.0
    assert percentile([400.0, 100.0, 300.0, 200.0], 50) == 250.0
    assert percentile([100.0, 200.0, 300.0, 400.0], 95) == pytest.approx(385.0)


def test_key_facts_match_regardless_of_case_and_line_breaks() -> None:
    results = [result(answer("r1", "Deployments run at 10:00,\n13:00 AND 16:00 CET."))]
    specs = [spec(facts=("10:00, 13:00 and 16:00", "17:00"))]

    assert evaluate(results, specs).key_fact_containment == 0.5


def test_results_must_pair_with_the_questions() -> None:
    with pytest.raises(ValueError, match="2 results for 1 questions"):
        evaluate([result(None), result(None)], [spec()])


def test_thresholds_flag_regressions_with_figure_value_and_threshold() -> None:
    report = evaluate(*mixed_run())
    thresholds = {
        "answered_from_expected_doc": 0.7,
        "key_fact_containment": 0.1,
        "max_refusal_rate": 0.2,
        "max_timeouts": 0,
    }

    failures = check_thresholds(report, thresholds)

    assert failures == [
        "answered_from_expected_doc is 0.25, below the minimum 0.7 (answered_from_expected_doc)",
        "refusal_rate is 0.25, above the maximum 0.2 (max_refusal_rate)",
        "timeouts is 1, above the maximum 0 (max_timeouts)",
    ]


def test_thresholds_pass_when_every_figure_holds() -> None:
    report = evaluate([result(answer("r1"))], [spec()])

    assert check_thresholds(report, load_thresholds(EXAMPLES / "eval_thresholds.json")) == []


def test_a_figure_that_could_not_be_measured_fails_its_threshold() -> None:
    report = evaluate([result(answer("r1"))], [spec()])

    assert check_thresholds(report, {"groundedness": 0.5}) == [
        "groundedness could not be measured in this run (threshold 0.5)"
    ]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"max_refusal_rate": 0.2, "max_refusals": 1}', "unknown threshold 'max_refusals'"),
        ('{"max_timeouts": "none"}', "threshold max_timeouts is 'none', not a number"),
        ("[0.7]", "expected a JSON object"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_thresholds_files_are_rejected(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(content)

    with pytest.raises(EvalInputError, match=match):
        load_thresholds(path)


GOOD_LINE = '{"question": "q?", "expected_doc": "a.md", "key_facts": ["x"]}'


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"question": "q?", "expected_doc": "a.md", "key_facts": ["x"]', "line 3: not valid JSON"),
        ('{"question": "q?", "key_facts": ["x"]}', "line 3: expected_doc: Field required"),
        ('{"question": "q?", "expected_doc": "a.md", "key_facts": "x"}', "line 3: key_facts"),
        ('{"question": "q?", "expected_doc": "a.md", "key_facts": [], "doc": 1}', "line 3: doc"),
        ('["q?", "a.md"]', "line 3: the line: Input should be an object"),
    ],
)
def test_malformed_question_lines_are_named(tmp_path: Path, bad_line: str, match: str) -> None:
    path = tmp_path / "questions.jsonl"
    path.write_text(f"{GOOD_LINE}\n\n{bad_line}\n{GOOD_LINE}\n")

    with pytest.raises(EvalInputError, match=match):
        load_questions(path)


def test_question_files_need_questions_with_unique_ids(tmp_path: Path) -> None:
    empty, twice = tmp_path / "empty.jsonl", tmp_path / "twice.jsonl"
    empty.write_text("\n\n")
    line = '{"id": "a", "question": "q?", "expected_doc": "a.md", "key_facts": []}\n'
    twice.write_text(line * 2)

    with pytest.raises(EvalInputError, match="holds no questions"):
        load_questions(empty)
    with pytest.raises(EvalInputError, match="question id a used more than once"):
        load_questions(twice)


DOCUMENTED_KEYS = {
    "request_id",
    "question",
    "answer",
    "citations",
    "tier",
    "cache_hit",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "latency_ms",
    "refusal",
    "timed_out",
}


def test_answer_json_has_the_documented_keys_for_answers_refusals_and_timeouts() -> None:
    answered = answer_json(result(answer("r1", input_tokens=12, cost_usd=0.5)))
    refused = answer_json(result(answer("r2", refusal=NO_CONTEXT)))
    timed_out = answer_json(result(None))

    for shape in (answered, refused, timed_out):
        assert DOCUMENTED_KEYS <= shape.keys()
        json.dumps(shape)
    assert answered["citations"] == [
        {
            "chunk_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "handbook/leave.md#0")),
            "doc_id": LEAVE,
            "source_uri": "file:///corpus/handbook/leave.md",
            "title": "Leave and time off",
            "heading_path": ["Vacation"],
        }
    ]
    assert (answered["answer"], answered["refusal"], answered["timed_out"]) == (
        "You get 25 days.",
        None,
        False,
    )
    assert (answered["input_tokens"], answered["cost_usd"]) == (12, 0.5)
    assert refused["refusal"] == {"reasons": ["no_relevant_context"], "message": NO_CONTEXT.message}
    assert (timed_out["timed_out"], timed_out["answer"], timed_out["tier"]) == (True, None, None)


def rendered(r: AskResult) -> str:
    console = ask_cmd.Console(file=io.StringIO(), width=200, color_system=None)
    render_answer(console, r)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_render_answer_numbers_citations_and_shows_the_cost_line() -> None:
    a = answer("r1", "You get [bold]25 days[/].", (LEAVE, EXPENSES), input_tokens=120)
    text = rendered(result(a))

    assert "You get [bold]25 days[/]." in text  # model output is not read as markup
    assert "[1] Leave and time off \u203a Vacation (handbook/leave.md)" in text
    assert "[2] Travel and expenses (handbook/expenses.md)" in text
    assert "tier small · cache none · 120 in / 0 out tokens" in text
    assert "100 ms (client 150 ms)" in text


def test_render_answer_shows_refusal_reasons_and_timeouts() -> None:
    assert "Refused: I could not find that." in rendered(result(answer("r", refusal=NO_CONTEXT)))
    assert "reasons: no_relevant_context" in rendered(result(answer("r", refusal=NO_CONTEXT)))
    assert "no answer after 30.0 s" in rendered(result(None, client_ms=30_000))


def test_query_events_carry_a_fresh_request_id_as_their_correlation() -> None:
    first, second = query_event("How many days?", "acme"), query_event("How many days?", "acme")

    assert first.request_id.startswith("ask-") and len(first.request_id) == 4 + 32
    assert first.request_id != second.request_id
    assert first.correlation_id == first.request_id
    assert first.produced_by.service == "ragstream-cli"


def fake_asking(answers: list[AnswerV1 | None]) -> Any:
    async def ask_questions(
        bootstrap: str, tenant: str, questions: list[Any], *args: Any, **kw: Any
    ) -> list[AskResult]:
        on_result = kw.get("on_result")
        results = []
        for q, a in zip(questions, answers, strict=True):
            text = q if isinstance(q, str) else q.question
            results.append(AskResult(text, "ask-1", a, 10.0, timed_out=a is None))
            if on_result:
                on_result(results[-1])
        return results

    return ask_questions


@pytest.mark.parametrize(
    ("reply", "code"),
    [(answer("r1"), 0), (answer("r1", refusal=NO_CONTEXT), 0), (None, 2)],
)
def test_ask_exits_0_on_answer_or_refusal_and_2_on_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], reply: Any, code: int
) -> None:
    monkeypatch.setattr(ask_cmd, "ask_questions", fake_asking([reply]))

    assert ask_command("How many days?", "acme", 1.0, True, "127.0.0.1:1") == code
    assert json.loads(capsys.readouterr().out)["timed_out"] is (reply is None)


def test_ask_with_a_bad_tenant_says_so_without_connecting() -> None:
    err = ask_cmd.Console(file=io.StringIO(), width=200)

    assert ask_command("q?", "Not A Slug", 1.0, False, "127.0.0.1:1", err=err) == 1
    assert "cannot ask: tenant_id: String should match pattern" in err.file.getvalue()  # type: ignore[attr-defined]


def test_eval_fails_on_the_thresholds_beside_the_questions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text(GOOD_LINE + "\n" + GOOD_LINE + "\n")
    (tmp_path / "eval_thresholds.json").write_text('{"max_timeouts": 0}')
    monkeypatch.setattr(eval_cmd, "ask_questions", fake_asking([answer("r1"), None]))
    err = ask_cmd.Console(file=io.StringIO())

    assert eval_command(questions, "acme", 1.0, True, "127.0.0.1:1", err=err) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] is False
    assert out["threshold_failures"] == ["timeouts is 1, above the maximum 0 (max_timeouts)"]


def test_eval_cannot_run_on_a_malformed_questions_file(tmp_path: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text("{not json\n")
    err = ask_cmd.Console(file=io.StringIO(), width=300)

    assert eval_command(questions, "acme", 1.0, False, "127.0.0.1:1", err=err) == 2
    assert "line 1: not valid JSON" in err.file.getvalue()  # type: ignore[attr-defined]


def test_report_json_is_plain_json() -> None:
    data = report_json(evaluate(*mixed_run()), failures=[])

    assert json.loads(json.dumps(data))["passed"] is True
    assert data["per_question"][3]["status"] == "timed_out"


def _as_the_pipeline_reads_it(path: Path, doc_id: str) -> str:
    content_type = {".md": "text/markdown", ".txt": "text/plain", ".html": "text/html"}
    event = DocumentUpsertV1(
        tenant_id="acme",
        correlation_id="c",
        produced_by=ProducedBy(service="test", version="1"),
        doc_id=doc_id,
        content_type=content_type[path.suffix],  # type: ignore[arg-type]
        content=path.read_text(encoding="utf-8"),
    )
    prepared = prepare_document(event, IngestSettings())
    assert isinstance(prepared, PreparedDocument), prepared
    return prepared.text


def test_example_questions_are_answerable_from_the_example_corpus() -> None:
    specs = load_questions(EXAMPLES / "questions.jsonl")

    assert 10 <= len(specs) <= 12
    for s in specs:
        document = EXAMPLES / "corpus" / s.expected_doc
        assert document.is_file(), f"{s.id}: {s.expected_doc} is not in examples/corpus"
        raw = " ".join(document.read_text(encoding="utf-8").split()).casefold()
        normalised = " ".join(_as_the_pipeline_reads_it(document, s.expected_doc).split())
        assert 1 <= len(s.key_facts) <= 3, s.id
        for fact in s.key_facts:
            assert fact.casefold() in raw, f"{s.id}: {fact!r} is not in {s.expected_doc}"
            assert fact.casefold() in normalised.casefold(), f"{s.id}: {fact!r} lost by ingest"
