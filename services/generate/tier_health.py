"""Model alerts: a tier's error rate or p99 latency over its last calls, alerted once per crossing.

generate reports each tier call (ok or not, how long) to `TierHealth`; it answers with the
thresholds just crossed. A crossed threshold stays quiet until its tier recovers below it,
then re-arms. The state lives in the process: a restarted generate starts with empty windows.

>>> health = TierHealth(window=50, error_rate_alert=0.5, p99_alert_ms=60_000)
>>> health.observe("small", ok=False, latency_ms=12.0, now=now)  # doctest: +SKIP
[]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from contracts.v1 import AlertV1, Envelope
from services.runtime.publishing import derived_from

ModelAlertKind = Literal["model_error_rate", "model_p99_latency"]

#: Model alerts concern operators, not a tenant: their events carry this tenant id.
OPERATIONS_TENANT = "ragstream-operations"

#: Fewer calls than this in a window say nothing about a rate (one failure is not 100%).
MIN_CALLS = 10


@dataclass(frozen=True)
class _Call:
    ok: bool
    latency_ms: float
    at: datetime


@dataclass(frozen=True)
class TierCrossing:
    """A threshold a tier crossed (`recovered` False) or fell back below (True)."""

    tier: str
    kind: ModelAlertKind
    value: float
    threshold: float
    calls: int
    window_start: datetime
    recovered: bool = False

    @property
    def alert_key(self) -> str:
        return f"{self.kind}:{self.tier}:{self.window_start.isoformat()}"


def p99(latencies: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


class TierHealth:
    """Sliding windows of each tier's last `window` calls and which alerts are armed."""

    def __init__(self, window: int, error_rate_alert: float, p99_alert_ms: float) -> None:
        self.window = window
        self.thresholds: dict[ModelAlertKind, float] = {
            "model_error_rate": error_rate_alert,
            "model_p99_latency": p99_alert_ms,
        }
        self._calls: dict[str, deque[_Call]] = {}
        self._crossed: set[tuple[str, ModelAlertKind]] = set()

    def observe(self, tier: str, ok: bool, latency_ms: float, now: datetime) -> list[TierCrossing]:
        """Record a call; the crossings (and recoveries) it caused."""
        calls = self._calls.setdefault(tier, deque(maxlen=self.window))
        calls.append(_Call(ok, latency_ms, now))
        if len(calls) < min(MIN_CALLS, self.window):
            return []
        latencies = [c.latency_ms for c in calls if c.ok]
        values: dict[ModelAlertKind, float | None] = {
            "model_error_rate": sum(not c.ok for c in calls) / len(calls),
            # Failed calls' latency is how soon they failed: not the model's latency.
            "model_p99_latency": p99(latencies) if latencies else None,
        }
        changes = []
        for kind, value in values.items():
            if value is None:
                continue
            threshold = self.thresholds[kind]
            crossed = (tier, kind) in self._crossed
            if value >= threshold and not crossed:
                self._crossed.add((tier, kind))
            elif value < threshold and crossed:
                self._crossed.discard((tier, kind))
            else:
                continue
            changes.append(
                TierCrossing(
                    tier, kind, value, threshold, len(calls), calls[0].at, recovered=crossed
                )
            )
        return changes


def model_alert(crossing: TierCrossing, model: str, cause: Envelope, stage: str) -> AlertV1:
    """The alert event for a tier's crossing, caused by the request whose call crossed it."""
    measure = (
        f"{crossing.value:.0%} of its last {crossing.calls} calls failed"
        if crossing.kind == "model_error_rate"
        else f"p99 latency of its last {crossing.calls} calls is {crossing.value:.0f} ms"
    )
    setting = (
        "RAGSTREAM_MODEL_ERROR_RATE_ALERT"
        if crossing.kind == "model_error_rate"
        else "RAGSTREAM_MODEL_P99_ALERT_MS"
    )
    return AlertV1(
        **(derived_from(cause, stage, "model-alert") | {"tenant_id": OPERATIONS_TENANT}),
        kind=crossing.kind,
        severity="critical" if crossing.kind == "model_error_rate" else "warning",
        message=f"tier {crossing.tier} (model {model}): {measure}, at or over the threshold "
        f"of {crossing.threshold:g} ({setting})",
        value=round(crossing.value, 4),
        threshold=crossing.threshold,
        window_start=crossing.window_start,
        subject=crossing.tier,
        alert_key=crossing.alert_key,
    )
