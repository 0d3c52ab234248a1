"""Budget alerts: once per tenant and UTC day, when its spend today crosses a share of its cap.

route charges every generation to the ledger; after each, `BudgetAlerts.check` says whether the
tenant's day has just crossed `budget_alert_share` of its cap and was not alerted yet. A
crossing is remembered only once its alert is published, so a failed publish is retried.

Across restarts: route rebuilds its ledger by replaying the generations topic, which would
cross again. Before it consumes, it reads the alerts topic back (`remember` every budget alert's
`alert_key`), so a crossing already alerted is not alerted again. The key is deterministic
(`budget_share:TENANT:DAY`), so a consumer can also deduplicate the copies two route replicas
would publish.

>>> alerts = BudgetAlerts(share=0.8)
>>> crossing = alerts.check("acme", today, spent=850, daily_cap=1000, today=today)  # doctest: +SKIP
>>> alerts.remember(crossing.alert_key)  # after publishing its alert  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from pydantic import ValidationError

from contracts.registry import TOPICS
from contracts.v1 import AlertV1, Envelope
from services.runtime.kafka_admin import wait_for_broker
from services.runtime.kafka_security import librdkafka_security
from services.runtime.publishing import derived_from
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_reader import read_topic

BUDGET_SHARE = "budget_share"


def budget_alert_key(tenant_id: str, day: date) -> str:
    return f"{BUDGET_SHARE}:{tenant_id}:{day.isoformat()}"


@dataclass(frozen=True)
class BudgetCrossing:
    tenant_id: str
    day: date
    spent: int
    daily_cap: int
    share: float

    @property
    def alert_key(self) -> str:
        return budget_alert_key(self.tenant_id, self.day)

    @property
    def spent_share(self) -> float:
        return self.spent / self.daily_cap


class BudgetAlerts:
    """Which tenant-days crossed their alert share, and which were alerted already."""

    def __init__(self, share: float, alerted: Iterable[str] = ()) -> None:
        self.share = share
        self._alerted = set(alerted)

    def remember(self, alert_key: str) -> None:
        self._alerted.add(alert_key)

    def check(
        self, tenant_id: str, day: date, spent: int, daily_cap: int, today: date
    ) -> BudgetCrossing | None:
        """The crossing to alert on now, or None: below the share, alerted, not today, or no cap
        (a cap of 0 lets no generation through, so nothing can cross it)."""
        if day != today or daily_cap <= 0 or spent < self.share * daily_cap:
            return None
        if budget_alert_key(tenant_id, day) in self._alerted:
            return None
        return BudgetCrossing(tenant_id, day, spent, daily_cap, self.share)


def budget_alert(crossing: BudgetCrossing, cause: Envelope, stage: str) -> AlertV1:
    """The alert event for a crossing, caused by the generation that crossed it."""
    return AlertV1(
        **derived_from(cause, stage, "budget-alert"),
        kind=BUDGET_SHARE,
        severity="warning",
        message=(
            f"tenant {crossing.tenant_id} spent {crossing.spent} of its {crossing.daily_cap} "
            f"daily tokens on {crossing.day.isoformat()} ({crossing.spent_share:.0%}), over the "
            f"alert share of {crossing.share:.0%} (RAGSTREAM_BUDGET_ALERT_SHARE)"
        ),
        value=round(crossing.spent_share, 4),
        threshold=crossing.share,
        window_start=datetime.combine(crossing.day, time(), tzinfo=UTC),
        subject=crossing.tenant_id,
        alert_key=crossing.alert_key,
    )


def alerted_keys(alerts: Iterable[AlertV1]) -> set[str]:
    """The budget crossings already alerted, from the alerts topic read back."""
    return {a.alert_key for a in alerts if a.kind == BUDGET_SHARE and a.alert_key}


async def read_alerted_keys(bootstrap_servers: str, settings: RuntimeSettings) -> set[str]:
    """The budget crossings the alerts topic already holds (records of other shapes skipped),
    once the broker answers."""
    security = librdkafka_security(settings)
    await asyncio.to_thread(wait_for_broker, bootstrap_servers, 60.0, security)
    alerts = []
    for record in await read_topic(bootstrap_servers, TOPICS.alerts.name, settings=settings):
        try:
            alerts.append(TOPICS.alerts.adapter.validate_json(record.value or b""))
        except ValidationError:
            continue
    return alerted_keys(alerts)
