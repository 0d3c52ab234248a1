"""A prompt canary on the real pipeline: route sends a share of requests to prompt v2, the
version is in every lineage record, and setting the share to 0 (route restarted, nothing
else) rolls every new request back to v1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.registry import TOPICS
from contracts.v1 import LineageRecordV1, QueryOptionsV1
from services.cli.ask_cmd import ask_questions
from services.runtime.topic_reader import read_topic
from tests.integration.conftest import StageProcesses, eventually, tenant_name
from tests.integration.test_query_path import ingest

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Extractive answers fast on CPU; generate still renders and records the prompt version.
EXTRACTIVE = QueryOptionsV1(tier="extractive")


def _questions() -> list[str]:
    lines = (EXAMPLES / "questions.jsonl").read_text().splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


async def _ask(pipeline: StageProcesses, tenant: str, questions: list[str]) -> set[str]:
    """The correlation ids of the questions' answers."""
    results = await ask_questions(pipeline.bootstrap, tenant, questions, 240, options=EXTRACTIVE)
    answers = [r.answer for r in results]
    assert all(a is not None and a.refusal is None for a in answers), answers
    return {a.correlation_id for a in answers if a is not None}


async def _prompt_versions(
    pipeline: StageProcesses, correlations: set[str]
) -> dict[str, tuple[LineageRecordV1, list[LineageRecordV1]]]:
    """Per question: route's lineage record and generate's, once all are on the audit topic."""

    async def probe() -> dict[str, tuple[LineageRecordV1, list[LineageRecordV1]]] | None:
        records = [
            TOPICS.audit.adapter.validate_json(r.value)
            for r in await read_topic(pipeline.bootstrap, TOPICS.audit.name)
        ]
        mine = [r for r in records if r.correlation_id in correlations]
        found = {}
        for correlation in correlations:
            route = [r for r in mine if r.correlation_id == correlation and r.stage == "route"]
            generate = [
                r for r in mine if r.correlation_id == correlation and r.stage == "generate"
            ]
            if not route or not generate:
                return None
            found[correlation] = (route[0], generate)
        return found

    return await eventually(probe, 60, "route and generate lineage of every question")


@pytest.fixture
def stable_route(pipeline: StageProcesses) -> Iterator[StageProcesses]:
    """Route goes back to the pipeline's own settings after the test, whatever happens."""
    yield pipeline
    if "route" in pipeline.processes:
        pipeline.stop_stage("route")
    pipeline.restart("route")


async def test_prompt_canary_serves_a_share_and_rolls_back_with_a_setting(
    stable_route: StageProcesses,
) -> None:
    pipeline = stable_route
    tenant = tenant_name("rollout")
    await ingest(pipeline, tenant, EXAMPLES / "corpus")
    questions = _questions()
    pipeline.stop_stage("route")
    pipeline.restart(
        "route", RAGSTREAM_PROMPT_CANARY_VERSION="v2", RAGSTREAM_PROMPT_CANARY_SHARE="0.5"
    )

    lineage = await _prompt_versions(pipeline, await _ask(pipeline, tenant, questions[:8]))
    assert len(lineage) == 8
    arms = set()
    for route, generated in lineage.values():
        arm, version = route.details["prompt_arm"], route.details["prompt_version"]
        assert (arm, version) in {("stable", "v1"), ("canary", "v2")}, route.details
        assert {g.details["prompt_version"] for g in generated} == {version}, generated
        arms.add(arm)
    if arms != {"stable", "canary"}:  # 2 in 256 request-id draws put all 8 on one arm
        more = await _prompt_versions(pipeline, await _ask(pipeline, tenant, questions[8:10]))
        arms |= {route.details["prompt_arm"] for route, _ in more.values()}
    assert arms == {"stable", "canary"}

    pipeline.stop_stage("route")  # rollback: the share to 0, only route restarted
    pipeline.restart(
        "route", RAGSTREAM_PROMPT_CANARY_VERSION="v2", RAGSTREAM_PROMPT_CANARY_SHARE="0"
    )
    rolled_back = await _prompt_versions(pipeline, await _ask(pipeline, tenant, questions[10:]))
    for route, generated in rolled_back.values():
        assert route.details["prompt_arm"] == "stable", route.details
        assert {g.details["prompt_version"] for g in generated} == {"v1"}, generated
