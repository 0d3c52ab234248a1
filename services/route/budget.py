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

import asyncio
from collections import defaultdict
from collections.abc import Mapping
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


class LedgerCatchUp:
    """Whether the ledger has read the generations topic up to its end as of route's start.

    The ledger is rebuilt from the topic on every start while route's question consumer is
    already running: a question queued during a restart, checked against a ledger not yet
    rebuilt, could pass a cap its tenant had spent. Route's questions wait for this (`wait`).

    >>> catch_up = LedgerCatchUp({0: 120, 1: 0})  # each partition's end at the start
    >>> catch_up.read(0, 119)  # the last record there was charged
    >>> catch_up.caught_up
    True
    """

    def __init__(self, ends: Mapping[int, int]) -> None:
        #: The partitions still to read, each with its end offset (a partition with no
        #: records has nothing to wait for).
        self._left = {partition: end for partition, end in ends.items() if end > 0}
        self._settled = asyncio.Event()
        self.timed_out = False
        if not self._left:
            self._settled.set()

    @property
    def caught_up(self) -> bool:
        return not self._left

    @property
    def settled(self) -> bool:
        """Caught up, or given up waiting (`wait` timed out): questions no longer wait."""
        return self._settled.is_set()

    def read(self, partition: int, offset: int) -> None:
        """The record at `offset` in `partition` was charged (every record, valid or not)."""
        end = self._left.get(partition)
        if end is not None and offset + 1 >= end:
            del self._left[partition]
            if not self._left:
                self._settled.set()

    async def wait(self, timeout_s: float) -> bool:
        """Until caught up: True; False once `timeout_s` passed first (e.g. a partition's
        records were deleted by retention after its end was read, or its last offset is a
        transaction marker, which no consumer is handed), and from then on at once."""
        if not self._settled.is_set():
            try:
                await asyncio.wait_for(self._settled.wait(), timeout_s)
            except TimeoutError:
                self.timed_out = True
                self._settled.set()
        return self.caught_up
