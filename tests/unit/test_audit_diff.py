"""Replay's diff of two lineages and the options it replays with, on plain records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from contracts.v1 import LineageRecordV1
from services.audit.diff import AnswerFacts, Difference, RequestLineage, diff_lineages
from services.audit.store import AuditStore, audit_db_path
from services.cli.replay_cmd import render_diff, replay_command, replay_options
from tests.unit.test_audit_store import record

K1, K2, K3 = "k1", "k2", "k3"


def before_hits() -> list[dict[str, Any]]:
    return [{"chunk_id": K1, "score": 0.81}, {"chunk_id": K2, "score": 0.64}]


def generated(
    correlation: str = "r-1",
    retrieved: list[dict[str, Any]] | None = None,
    tier: str = "small",
    prompt_version: str = "v1",
    tokens: tuple[int, int] = (300, 40),
) -> list[LineageRecordV1]:
    """ingest → embed → route (cache miss) → generate → validate."""
    c = correlation
    hits = retrieved if retrieved is not None else before_hits()
    return [
        record("ingest", f"{c}-l1", f"{c}-q", [f"{c}-a"], 0, 2, c),
        record("embed", f"{c}-l2", f"{c}-a", [f"{c}-v"], 5, 10, c),
        record("route", f"{c}-l3", f"{c}-v", [f"{c}-g"], 20, 8, c, cache="miss", retrieved=hits,
               tier=tier, corpus_version="c1"),
        record("generate", f"{c}-l4", f"{c}-g", [f"{c}-o"], 30, 100, c, tier=tier,
               prompt_version=prompt_version, model_name="generator", input_tokens=tokens[0],
               output_tokens=tokens[1], cost_usd=tokens[0] * 2e-8 + tokens[1] * 8e-8),
        record("validate", f"{c}-l5", f"{c}-o", [f"{c}-ans"], 140, 4, c),
    ]  # fmt: skip


def cache_hit(correlation: str = "r-2") -> list[LineageRecordV1]:
    c = correlation
    return [
        record("ingest", f"{c}-l1", f"{c}-q", [f"{c}-a"], 0, 2, c),
        record("embed", f"{c}-l2", f"{c}-a", [f"{c}-v"], 5, 10, c),
        record("route", f"{c}-l3", f"{c}-v", [f"{c}-ans"], 20, 3, c, cache="exact",
               similarity=1.0, cached_request_id="req-1", corpus_version="c1"),
    ]  # fmt: skip


def answered(text: str = "25 days.", citations: tuple[str, ...] = (K1,), **kw: Any) -> AnswerFacts:
    return AnswerFacts(answer=text, citations=list(citations), **({"tier": "small"} | kw))


def test_a_replay_that_went_the_same_way_has_no_differences() -> None:
    before = RequestLineage(generated("r-1"), answered())
    after = RequestLineage(generated("r-2"), answered())
    assert diff_lineages(before, after) == []


def test_an_exact_cache_hit_shows_as_a_changed_cache_decision_without_generation() -> None:
    before = RequestLineage(generated(), answered())
    after = RequestLineage(cache_hit(), answered(cache_hit="exact"))
    diffs = {d.field: d for d in diff_lineages(before, after)}
    assert list(diffs) == ["stages", "cache", "retrieved", "prompt_version", "model",
                           "input_tokens", "output_tokens", "cost_usd"]  # fmt: skip
    assert (diffs["cache"].before, diffs["cache"].after) == ("miss", "exact")
    assert diffs["retrieved"] == Difference("retrieved", before_hits(), None)
    assert diffs["stages"].after == ["ingest:ok", "embed:ok", "route:ok"]
    assert (diffs["prompt_version"].before, diffs["prompt_version"].after) == ("v1", None)
    assert (diffs["input_tokens"].after, diffs["output_tokens"].after) == (0, 0)
    assert diffs["cost_usd"].before == pytest.approx(300 * 2e-8 + 40 * 8e-8)
    assert diffs["cost_usd"].after == 0.0


def test_retrieval_is_compared_by_chunk_ids_in_rank_order_then_by_score() -> None:
    before = RequestLineage(generated(retrieved=before_hits()))
    after = RequestLineage(generated(retrieved=[{"chunk_id": K3, "score": 0.9},
                                                {"chunk_id": K1, "score": 0.7}]))  # fmt: skip
    assert diff_lineages(before, after) == [
        Difference("retrieved", before_hits(), [{"chunk_id": K3, "score": 0.9},
                                                {"chunk_id": K1, "score": 0.7}]),
        Difference(f"retrieved[{K1}].score", 0.81, 0.7),
    ]  # fmt: skip


def test_scores_that_differ_only_by_rounding_are_the_same() -> None:
    before = RequestLineage(generated(retrieved=[{"chunk_id": K1, "score": 0.8123}]))
    after = RequestLineage(generated(retrieved=[{"chunk_id": K1, "score": 0.8124}]))
    assert diff_lineages(before, after) == []


def test_a_changed_answer_lists_text_citations_tier_prompt_and_tokens() -> None:
    before = RequestLineage(generated(), answered("25 days.", (K1,)))
    after = RequestLineage(
        generated("r-2", tier="extractive", prompt_version="v2", tokens=(0, 20)),
        answered("Twenty-five days a year.", (K1, K2), tier="extractive"),
    )
    fields = [d.field for d in diff_lineages(before, after)]
    assert fields == ["tier", "prompt_version", "answer", "citations", "input_tokens",
                      "output_tokens", "cost_usd"]  # fmt: skip


def test_a_refusal_after_an_answer_shows_outcome_and_reasons() -> None:
    before = RequestLineage(generated(), answered())
    refusal = AnswerFacts(answer=None, refusal_reasons=["ungrounded"], tier="small")
    after = RequestLineage(generated("r-2"), refusal)
    diffs = {d.field: (d.before, d.after) for d in diff_lineages(before, after)}
    assert diffs["outcome"] == ("answered", "refused")
    assert diffs["refusal_reasons"] == ([], ["ungrounded"])
    assert diffs["answer"] == ("25 days.", None) and diffs["citations"] == ([K1], [])


def test_a_replay_asks_for_the_tier_route_chose_and_the_prompt_version_generate_used() -> None:
    options = replay_options(generated(tier="small", prompt_version="v3"), "extractive")
    assert (options.tier, options.prompt_version) == ("small", "v3")


def test_a_cached_original_is_replayed_with_its_answers_tier_and_default_prompt() -> None:
    options = replay_options(cache_hit(), "small")
    assert (options.tier, options.prompt_version) == ("small", None)
    refused = replay_options(cache_hit()[:2], "none")  # refused before any tier was chosen
    assert (refused.tier, refused.prompt_version) == (None, None)


def test_the_diff_renders_as_a_table_and_names_what_stayed_the_same() -> None:
    console = Console(record=True, width=160)
    before = RequestLineage(generated(), answered())
    after = RequestLineage(cache_hit(), answered(cache_hit="exact"))
    render_diff(console, {
        "request_id": "req-1", "replay_request_id": "req-2", "tenant_id": "acme",
        "options": {"tier": "small"},
        "differences": [d.__dict__ for d in diff_lineages(before, after)],
    })  # fmt: skip
    text = console.export_text()
    assert "replay of req-1 as req-2" in text and "exact" in text and "k1  0.8100" in text
    assert "same: tier, outcome, refusal_reasons, answer, citations" in text


def test_a_request_the_store_cannot_replay_is_refused_before_asking(tmp_path: Path) -> None:
    with AuditStore(audit_db_path(tmp_path)) as store:
        store.write(generated("r-1"))  # lineage, but no answer (in flight, or lost)
    console = Console(record=True, width=200)
    for request_id, why in [("req-x", "has no"), ("r-1", "has lineage records but no answer")]:
        code = replay_command(request_id, 1, True, "127.0.0.1:1", tmp_path, console, console)
        assert code == 1
        assert f"the audit store {why} for request {request_id}" in console.export_text()
    missing = replay_command("r-1", 1, True, "127.0.0.1:1", tmp_path / "none", console, console)
    assert missing == 1 and "no audit store at" in console.export_text()
