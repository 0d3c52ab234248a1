"""Canary rollouts of prompts and models: the arm a request takes, route's prompt choice and
generate's model choice, as plain functions over plain data."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from contracts.v1 import GenerationRequestV1, ProducedBy
from inference.exceptions import InferenceRequestError
from inference.generation import ChatMessage, GenerationRequest, GenerationResult
from inference.prompts import load_prompt
from services.generate.tiers import TierUnavailableError, TritonTier, build_arms, model_arm
from services.route.planner import choose_prompt
from services.runtime.rollout import canary_arm
from services.runtime.settings import QuerySettings, TierSpec

IDS = [f"req-{i}" for i in range(4000)]
ASK = [ChatMessage(role="user", content="How many vacation days?")]


def settings(**overrides: Any) -> QuerySettings:
    return QuerySettings.model_validate(overrides)


def test_share_0_is_never_canary_and_share_1_always() -> None:
    assert {canary_arm(i, 0.0) for i in IDS} == {"stable"}
    assert {canary_arm(i, 1.0) for i in IDS} == {"canary"}


@pytest.mark.parametrize("share", [0.05, 0.25, 0.5, 0.9])
def test_about_the_share_of_request_ids_go_to_the_canary(share: float) -> None:
    canary = sum(canary_arm(i, share) == "canary" for i in IDS) / len(IDS)
    assert abs(canary - share) < 0.03


def test_a_request_keeps_its_arm_and_a_bigger_share_only_adds_requests() -> None:
    first = [canary_arm(i, 0.3) for i in IDS]
    assert first == [canary_arm(i, 0.3) for i in IDS]
    wider = [canary_arm(i, 0.6) for i in IDS]
    assert all(w == "canary" for f, w in zip(first, wider, strict=True) if f == "canary")


def test_rollouts_with_different_salts_split_traffic_independently() -> None:
    prompt = {i for i in IDS if canary_arm(i, 0.5, salt="prompt") == "canary"}
    model = {i for i in IDS if canary_arm(i, 0.5, salt="model:small") == "canary"}
    assert 0.2 < len(prompt & model) / len(IDS) < 0.3  # about 0.5 * 0.5


def test_route_sends_a_share_of_requests_to_the_canary_prompt() -> None:
    canary = settings(prompt_canary_version="v2", prompt_canary_share=0.5)
    choices = [choose_prompt(i, None, canary) for i in IDS[:400]]
    assert {(c.version, c.arm) for c in choices} == {("v1", "stable"), ("v2", "canary")}
    assert choices == [choose_prompt(i, None, canary) for i in IDS[:400]]


def test_rolled_back_prompt_canary_sends_everything_to_the_stable_version() -> None:
    rolled_back = settings(prompt_canary_version="v2", prompt_canary_share=0.0)
    assert {choose_prompt(i, None, rolled_back).version for i in IDS[:400]} == {"v1"}


def test_a_query_that_names_its_prompt_version_gets_it() -> None:
    canary = settings(prompt_canary_version="v2", prompt_canary_share=1.0)
    choice = choose_prompt("req-1", "v1", canary)
    assert (choice.version, choice.arm) == ("v1", "requested")


def test_a_canary_share_without_a_canary_is_refused() -> None:
    with pytest.raises(ValidationError, match="RAGSTREAM_PROMPT_CANARY_VERSION"):
        settings(prompt_canary_share=0.2)
    with pytest.raises(ValidationError, match="needs canary_model or canary_model_version"):
        TierSpec(name="small", kind="triton", model="generator", canary_share=0.2)


class _Triton:
    """Records the model and version each generation asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str | None]] = []

    async def generate(
        self, request: GenerationRequest, model: str | None = None, **pinned: str
    ) -> GenerationResult:
        self.calls.append((model, pinned.get("model_version")))
        return GenerationResult(
            text='{"answer": "x", "citations": ["1"], "confidence": 1}',
            input_tokens=1,
            output_tokens=1,
            finish_reason="stop",
        )


def _request(request_id: str) -> GenerationRequestV1:
    return GenerationRequestV1(
        tenant_id="acme",
        correlation_id="c-1",
        produced_by=ProducedBy(service="test", version="1"),
        request_id=request_id,
        question="How many vacation days?",
        tier="small",
        prompt_name="grounded_answer",
        prompt_version="v1",
        max_output_tokens=16,
        token_budget=100,
        complexity_score=0.5,
    )


async def test_generate_runs_the_canary_model_version_for_its_share_of_requests() -> None:
    spec = TierSpec(
        name="small", kind="triton", model="generator", canary_model_version="2", canary_share=0.5
    )
    triton = _Triton()
    arms = build_arms(spec, triton, 200)
    seen = set()
    for request_id in IDS[:40]:
        runner, arm = arms.for_request(request_id)
        assert arm == model_arm(spec, request_id) == arms.for_request(request_id)[1]
        output = await runner.run(_request(request_id), ASK)
        seen.add((arm, output.model_name, output.model_version))
    assert seen == {("stable", "generator", "1"), ("canary", "generator", "2")}
    assert set(triton.calls) == {("generator", "1"), ("generator", "2")}  # both pinned


async def test_a_tier_without_a_canary_asks_for_the_version_triton_serves() -> None:
    triton = _Triton()
    arms = build_arms(TierSpec(name="small", kind="triton", model="generator"), triton, 200)
    runner, arm = arms.for_request("req-1")
    assert isinstance(runner, TritonTier) and arm == "stable" and arms.canary is None
    await runner.run(_request("req-1"), ASK)
    assert triton.calls == [("generator", None)]


def test_rolled_back_model_canary_keeps_every_request_on_the_stable_model() -> None:
    spec = TierSpec(name="small", kind="triton", model="generator", canary_model="generator-v2")
    arms = build_arms(spec, _Triton(), 200)
    assert {arms.for_request(i)[0].spec.model for i in IDS[:200]} == {"generator"}


def test_the_second_prompt_version_asks_for_a_quoted_sentence() -> None:
    v1, v2 = load_prompt("grounded_answer", "v1"), load_prompt("grounded_answer", "v2")
    sources = [("1", "Staff get 25 days.")]
    rendered = v2.render("How many days?", sources, ["no citation"])
    assert rendered != v1.render("How many days?", sources, ["no citation"])
    assert "quot" in rendered[0].content.lower() and "[1] Staff get 25 days." in rendered[1].content
    assert "no citation" in rendered[1].content


async def test_a_request_triton_rejects_makes_the_tier_unavailable_so_the_chain_falls_back() -> (
    None
):
    """A model this Triton does not serve (NOT_FOUND) must not lose the question: generate
    goes on along the fallback chain, as it does when Triton is unreachable."""

    class _Rejecting(_Triton):
        async def generate(
            self, request: GenerationRequest, model: str | None = None, **pinned: str
        ) -> GenerationResult:
            raise InferenceRequestError(
                "Triton rejected the request (StatusCode.NOT_FOUND): Request for unknown model"
            )

    arms = build_arms(TierSpec(name="small", kind="triton", model="generator"), _Rejecting(), 200)
    runner, _ = arms.for_request("req-1")
    with pytest.raises(TierUnavailableError, match=r"small: .*unknown model"):
        await runner.run(_request("req-1"), ASK)
