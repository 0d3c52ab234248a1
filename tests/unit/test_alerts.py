"""Alert decisions on plain data: a tenant's budget share once per day, a tier's error rate and
p99 latency once per crossing, re-armed when the tier recovers."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from contracts.registry import TOPICS
from contracts.v1 import GenerationRequestV1, GenerationV1, ProducedBy
from services.generate.tier_health import (
    OPERATIONS_TENANT,
    TierCrossing,
    TierHealth,
    model_alert,
    p99,
)
from services.route.alerts import BudgetAlerts, alerted_keys, budget_alert, budget_alert_key

TODAY = date(2026, 11, 23)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PRODUCER = ProducedBy(service="test", version="1")


def generation(tenant: str = "acme") -> GenerationV1:
    return GenerationV1(
        tenant_id=tenant,
        correlation_id="c-1",
        produced_by=PRODUCER,
        request_id="r-1",
        question="How many vacation days?",
        tier="small",
        model_name="generator",
        model_version="1",
        prompt_name="grounded_answer",
        prompt_version="v1",
        raw_output="{}",
        input_tokens=700,
        output_tokens=120,
        finish_reason="stop",
        model_latency_ms=800.0,
    )


def test_a_tenant_is_alerted_once_when_its_spend_crosses_the_share_of_its_cap() -> None:
    alerts = BudgetAlerts(share=0.8)
    assert alerts.check("acme", TODAY, spent=799, daily_cap=1000, today=TODAY) is None
    crossing = alerts.check("acme", TODAY, spent=820, daily_cap=1000, today=TODAY)
    assert crossing is not None and crossing.alert_key == "budget_share:acme:2026-11-23"
    alerts.remember(crossing.alert_key)
    assert alerts.check("acme", TODAY, spent=990, daily_cap=1000, today=TODAY) is None
    assert alerts.check("other", TODAY, spent=900, daily_cap=1000, today=TODAY) is not None
    tomorrow = TODAY + timedelta(days=1)
    assert alerts.check("acme", tomorrow, spent=900, daily_cap=1000, today=tomorrow) is not None


def test_an_unpublished_crossing_is_offered_again() -> None:
    alerts = BudgetAlerts(share=0.8)
    assert alerts.check("acme", TODAY, spent=900, daily_cap=1000, today=TODAY) is not None
    assert alerts.check("acme", TODAY, spent=910, daily_cap=1000, today=TODAY) is not None


def test_past_days_and_zero_caps_raise_no_budget_alert() -> None:
    alerts = BudgetAlerts(share=0.8)
    yesterday = TODAY - timedelta(days=1)
    assert alerts.check("acme", yesterday, spent=5000, daily_cap=1000, today=TODAY) is None
    assert alerts.check("acme", TODAY, spent=0, daily_cap=0, today=TODAY) is None


def test_budget_alerts_read_back_from_the_topic_are_not_raised_again() -> None:
    first = BudgetAlerts(share=0.8)
    crossing = first.check("acme", TODAY, spent=850, daily_cap=1000, today=TODAY)
    assert crossing is not None
    alert = budget_alert(crossing, generation(), "route")
    read_back = TOPICS.alerts.adapter.validate_json(alert.model_dump_json())
    restarted = BudgetAlerts(share=0.8, alerted=alerted_keys([read_back]))
    assert restarted.check("acme", TODAY, spent=850, daily_cap=1000, today=TODAY) is None


def test_a_budget_alert_names_the_tenant_day_share_and_setting() -> None:
    crossing = BudgetAlerts(share=0.8).check("acme", TODAY, 850, 1000, TODAY)
    assert crossing is not None
    alert = budget_alert(crossing, generation(), "route")
    assert (alert.tenant_id, alert.kind, alert.subject) == ("acme", "budget_share", "acme")
    assert (alert.value, alert.threshold) == (0.85, 0.8)
    assert alert.alert_key == budget_alert_key("acme", TODAY)
    assert alert.window_start == datetime(2026, 11, 23, tzinfo=UTC)
    assert "850 of its 1000 daily tokens" in alert.message
    assert "RAGSTREAM_BUDGET_ALERT_SHARE" in alert.message


def _calls(health: TierHealth, oks: list[bool], latency_ms: float = 100.0) -> list[TierCrossing]:
    crossings: list[TierCrossing] = []
    for n, ok in enumerate(oks):
        crossings += health.observe("small", ok, latency_ms, NOW + timedelta(seconds=n))
    return crossings


def test_a_tier_error_rate_alerts_once_per_crossing_and_re_arms_after_recovery() -> None:
    health = TierHealth(window=10, error_rate_alert=0.5, p99_alert_ms=60_000)
    assert _calls(health, [True] * 5 + [False] * 4) == []  # 9 calls: too few to judge
    [crossing] = _calls(health, [False])
    assert (crossing.kind, crossing.value, crossing.calls) == ("model_error_rate", 0.5, 10)
    assert not crossing.recovered
    assert _calls(health, [False] * 3) == []  # still over: no second alert
    recovered = _calls(health, [True] * 8)
    assert [(c.kind, c.recovered) for c in recovered] == [("model_error_rate", True)]
    again = _calls(health, [False] * 10)
    assert [(c.kind, c.recovered) for c in again] == [("model_error_rate", False)]


def test_a_tier_p99_latency_over_the_threshold_alerts_once() -> None:
    health = TierHealth(window=20, error_rate_alert=0.5, p99_alert_ms=1_000)
    assert _calls(health, [True] * 19, latency_ms=200) == []
    [slow] = health.observe("small", True, 5_000, NOW)
    assert (slow.kind, slow.value, slow.threshold) == ("model_p99_latency", 5_000, 1_000)
    assert health.observe("small", True, 6_000, NOW) == []
    assert health.observe("other", True, 6_000, NOW) == []  # another tier, its own window


def test_how_soon_a_call_failed_is_not_model_latency() -> None:
    health = TierHealth(window=10, error_rate_alert=0.9, p99_alert_ms=1_000)
    assert _calls(health, [True] * 5) == []
    assert _calls(health, [False] * 5, latency_ms=50_000) == []  # timeouts: 50% < 90% errors
    assert p99([50.0] * 99 + [30_000.0]) == 50.0


def test_a_model_alert_belongs_to_operators_and_names_the_tier() -> None:
    health = TierHealth(window=10, error_rate_alert=0.5, p99_alert_ms=60_000)
    [crossing] = _calls(health, [False] * 10)
    request = GenerationRequestV1(
        tenant_id="acme",
        correlation_id="c-9",
        produced_by=PRODUCER,
        request_id="r-9",
        question="q?",
        tier="small",
        prompt_name="grounded_answer",
        prompt_version="v1",
        max_output_tokens=64,
        token_budget=500,
        complexity_score=0.7,
    )
    alert = model_alert(crossing, "generator", request, "generate")
    assert (alert.tenant_id, alert.subject, alert.kind) == (
        OPERATIONS_TENANT,
        "small",
        "model_error_rate",
    )
    assert (alert.correlation_id, alert.causation_id) == ("c-9", request.event_id)
    assert "tier small (model generator): 100% of its last 10 calls failed" in alert.message
    assert alert.alert_key and alert.alert_key.startswith("model_error_rate:small:")
