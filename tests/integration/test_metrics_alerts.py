"""Operators' view of the running pipeline: one budget alert when a tenant crosses 80% of its
daily cap (not repeated by more spend or by a restarted route), and every stage's metrics and
health port, found through `ragstream status`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts.registry import TOPICS
from contracts.v1 import AlertV1
from contracts.v1.envelope import utc_now
from services.cli.status_cmd import collect_status
from services.route.alerts import budget_alert_key
from services.runtime.health import stage_endpoints
from services.runtime.settings import RuntimeSettings
from services.runtime.stage import STAGES
from services.runtime.topic_reader import high_watermarks
from tests.integration.conftest import (
    ALERT_BUDGET_TENANT,
    ALERT_DAILY_TOKENS,
    StageProcesses,
    events_on,
    eventually,
)
from tests.integration.test_query_path import EXAMPLES, ask, ingest

pytestmark = pytest.mark.integration
QUESTIONS = [
    "How many days of paid vacation does a full-time employee receive per year?",
    "What per diem can I claim for meals on a travel day?",
    "How long must passwords be at least?",
    "At what times do production deployments run?",
    "How long is the fully paid parental leave?",
    "How much may a hotel cost per night in most cities?",
    "Within what time must a lost or stolen laptop be reported to the security team?",
    "How much traffic goes to the canary version at the start of a production deployment?",
    "How large is the home-office budget for a new employee?",
    "Within how many minutes must the on-call engineer acknowledge a page?",
    "How long are invoices stored?",
    "For how many consecutive working days of sickness is no doctor's certificate needed?",
    "When do carried-over vacation days expire?",
    "Who approves vacation requests?",
    "What happens when a public holiday falls on a weekend?",
    "How early must vacation longer than three days be requested?",
]


async def budget_alerts(pipeline: StageProcesses, tenant: str) -> list[AlertV1]:
    alerts = await events_on(pipeline.bootstrap, TOPICS.alerts, {tenant})
    return [a for a in alerts if a.kind == "budget_share"]


def _samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in _samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def _metrics(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


async def route_caught_up(pipeline: StageProcesses) -> None:
    """Wait until route has charged every generation now on the topic: FastStream's metrics
    count the records its handlers finished."""
    ends = await high_watermarks(pipeline.bootstrap, TOPICS.generations.name)
    published = sum(ends.values())

    async def charged() -> float | None:
        [endpoint] = stage_endpoints(pipeline.data_dir, "route")
        text = await _metrics(endpoint["metrics_url"])
        done = _value(
            text,
            "faststream_received_processed_messages_total",
            app_name="ragstream-route",
            handler=TOPICS.generations.name,
        )
        return done if done >= published else None

    await eventually(charged, timeout_s=60, what=f"route charged {published} generations")


async def test_a_tenant_over_its_alert_share_is_alerted_once_even_after_route_restarts(
    pipeline: StageProcesses,
) -> None:
    tenant = ALERT_BUDGET_TENANT
    await ingest(pipeline, tenant, EXAMPLES / "corpus")
    asked = 0
    for question in QUESTIONS:  # extractive: fast, and charged like any tier
        answer = await ask(pipeline, tenant, question, tier="extractive")
        asked += 1
        if answer.refusal and "budget_exceeded" in answer.refusal.reasons:
            break
        if await budget_alerts(pipeline, tenant):
            break
    alerts = await eventually(
        lambda: budget_alerts(pipeline, tenant), timeout_s=60, what="a budget alert"
    )
    assert len(alerts) == 1, alerts
    alert = alerts[0]
    assert (alert.subject, alert.threshold) == (tenant, 0.8)
    assert alert.value >= 0.8, alert
    assert alert.alert_key == budget_alert_key(tenant, utc_now().date())
    assert f"of its {ALERT_DAILY_TOKENS} daily tokens" in alert.message

    if asked < len(QUESTIONS):  # more spend on the same day: still one alert
        await ask(pipeline, tenant, QUESTIONS[asked], tier="extractive")
    await route_caught_up(pipeline)
    assert len(await budget_alerts(pipeline, tenant)) == 1

    status = await asyncio.to_thread(
        collect_status,
        RuntimeSettings(data_dir=pipeline.data_dir, bootstrap_servers=pipeline.bootstrap),
    )
    texts = {}
    for stage in STAGES:
        [url] = status["stages"][stage]["metrics_urls"]
        texts[stage] = await _metrics(url)
        assert _value(texts[stage], "ragstream_events_in_total", stage=stage) > 0, stage
        assert "faststream_received_messages_total" in texts[stage], stage
        await _ready(url.removesuffix("/metrics") + "/readyz")
    route, generate = texts["route"], texts["generate"]
    assert _value(route, "ragstream_alerts_total", kind="budget_share", subject=tenant) == 1
    assert _value(route, "ragstream_cache_lookups_total", result="miss") > 0
    assert _value(generate, "ragstream_tokens_total", tenant=tenant) >= 0.8 * ALERT_DAILY_TOKENS
    assert "ragstream_cost_usd_total" in generate
    assert _value(generate, "ragstream_model_latency_seconds_count", tier="extractive") > 0
    assert _value(texts["ingest"], "ragstream_events_out_total", stage="ingest") > 0

    pipeline.stop_stage("route")  # it rebuilds its ledger from the generations topic
    pipeline.restart("route")
    await route_caught_up(pipeline)
    assert len(await budget_alerts(pipeline, tenant)) == 1


async def _ready(url: str) -> None:
    async def answered() -> bool:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(url)
        return response.status_code == 200 and response.json()["ready"]

    await eventually(answered, timeout_s=60, what=f"{url} answering 200")
