"""Token budgets: what each tenant spent today, rebuilt from the generations topic.

The ledger counts the tokens every generation reports (corrective retries and fallbacks
included), once per generation event id, so a redelivered record is not charged twice. A
request sent to generate but not yet reported holds a reservation of its estimate, so a burst
of questions cannot overrun the cap before the first usage arrives.

>>> ledger = SpendLedger()
>>> ledger.reserve("acme", "req-1", 300, now)  # doctest: +SKIP
>>> decide_budget(ledger, "acme", estimate=500, daily_cap=600, now=now).allowed  # doctest: +SKIP
False
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from contracts.v1 import GenerationV1

#: A reservation whose generation never arrives stops counting after this long.
RESERVATION_TTL = timedelta(minutes=10)


@dataclass
class _Reservation:
    tenant_id: str
    day: date
    tokens: int
    at: datetime


@dataclass
class SpendLedger:
    """Tokens spent per (tenant, UTC day), plus reservations of requests in flight."""

    spent: dict[tuple[str, date], int] = field(default_factory=lambda: defaultdict(int))
    _seen: set[str] = field(default_factory=set)
    _reserved: dict[str, _Reservation] = field(default_factory=dict)

    def record(self, generation: GenerationV1) -> bool:
        """Charge a generation's tokens to its tenant's day; False if already charged."""
        if generation.event_id in self._seen:
            return False
        self._seen.add(generation.event_id)
        day = generation.produced_at.date()
        tokens = generation.input_tokens + generation.output_tokens
        self.spent[(generation.tenant_id, day)] += tokens
        self._reserved.pop(f"{generation.tenant_id}\x1f{generation.request_id}", None)
        return True

    def reserve(self, tenant_id: str, request_id: str, tokens: int, now: datetime) -> None:
        key = f"{tenant_id}\x1f{request_id}"
        self._reserved[key] = _Reservation(tenant_id, now.date(), tokens, now)

    def spent_today(self, tenant_id: str, now: datetime) -> int:
        """Tokens charged today plus live reservations."""
        today = now.date()
        live = {key: r for key, r in self._reserved.items() if now - r.at <= RESERVATION_TTL}
        self._reserved = live
        held = sum(r.tokens for r in live.values() if r.tenant_id == tenant_id and r.day == today)
        return self.spent.get((tenant_id, today), 0) + held


@dataclass(frozen=True)
class BudgetDecision:
    allowed: bool
    estimate: int
    spent_today: int
    daily_cap: int

    @property
    def reason(self) -> str:
        verdict = "fits" if self.allowed else "exceeds"
        return (
            f"estimate {self.estimate} + spent {self.spent_today} {verdict} "
            f"the daily cap of {self.daily_cap} tokens"
        )


def decide_budget(
    ledger: SpendLedger, tenant_id: str, estimate: int, daily_cap: int, now: datetime
) -> BudgetDecision:
    spent = ledger.spent_today(tenant_id, now)
    return BudgetDecision(spent + estimate <= daily_cap, estimate, spent, daily_cap)
