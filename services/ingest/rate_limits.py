"""Per-tenant rate limits: over the limit, a document goes to the DLQ as `rate_limited` and a
question is answered with a refusal; either is counted, and logged as a summary."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from aiolimiter import AsyncLimiter

logger = logging.getLogger("ragstream.ingest")

#: Tenants tracked before those whose bucket is full again are forgotten (forgetting one
#: changes no decision): events under made-up tenant ids cannot grow memory without bound.
MAX_TRACKED_TENANTS = 10_000
#: Decisions remembered by (tenant, event id), the newest kept: an event handled again in this
#: process (a run of questions retried after broker trouble, an upstream's duplicate send) gets
#: the decision it got first, so an accepted event is not refused (a second answer) the next
#: time, nor does it take a second token.
REMEMBERED_DECISIONS = 4096
#: Events turned away over a rate limit are logged at most once in this many seconds.
SUMMARY_INTERVAL_S = 10.0
#: Tenants a summary names (the most refused); the rest are counted.
SUMMARY_TENANTS = 10


class RefusalSummary:
    """The events turned away over a rate limit, logged as one line an interval at most (a
    flood would otherwise write a line an event): the first refusal after a quiet interval at
    once, then each tenant's count since the line before. `ragstream_rate_limited_total`
    counts every one; the audit topic has each one's lineage.

    >>> summary = RefusalSummary(rate_per_second=2, burst=20)
    >>> summary.add("flooder")
    'over the rate limit (2 events/s, burst 20) since the last summary: flooder 1'
    >>> summary.add("flooder") is None  # within 10 s of the last line: counted, not logged
    True
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        interval_s: float = SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self._limit = f"{rate_per_second:g} events/s, burst {burst}"
        self._clock = clock
        self._counts: Counter[str] = Counter()
        self._logged_at = -math.inf

    def add(self, tenant_id: str) -> str | None:
        """Count a refusal; the line logged, if this one was due."""
        self._counts[tenant_id] += 1
        now = self._clock()
        if now - self._logged_at < self.interval_s:
            return None
        named = self._counts.most_common(SUMMARY_TENANTS)
        line = ", ".join(f"{tenant} {count}" for tenant, count in named)
        if len(self._counts) > len(named):
            rest = self._counts.total() - sum(count for _, count in named)
            line += f"; {len(self._counts) - len(named)} more tenants: {rest}"
        line = f"over the rate limit ({self._limit}) since the last summary: {line}"
        logger.warning("%s", line)
        self._counts.clear()
        self._logged_at = now
        return line


class TenantRateLimits:
    """A token bucket per tenant: `burst` events at once, refilled at `rate_per_second`.

    >>> limits = TenantRateLimits(rate_per_second=1, burst=2)
    >>> [await limits.try_acquire("acme", f"e-{n}") for n in range(3)]  # doctest: +SKIP
    [True, True, False]
    >>> await limits.try_acquire("acme", "e-0")  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        max_tracked: int = MAX_TRACKED_TENANTS,
        remembered: int = REMEMBERED_DECISIONS,
    ) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.max_tracked = max_tracked
        self.remembered = remembered
        self._limiters: dict[str, AsyncLimiter] = {}
        self._forget_at = max_tracked
        self._decided: OrderedDict[tuple[str, str], bool] = OrderedDict()
        #: What its callers turned away, for the log (they count each turn-away there).
        self.refusals = RefusalSummary(rate_per_second, burst)

    @property
    def tracked(self) -> int:
        return len(self._limiters)

    def _forget_idle(self) -> None:
        self._limiters = {
            tenant: limiter
            for tenant, limiter in self._limiters.items()
            if not limiter.has_capacity(limiter.max_rate)
        }
        # All still busy: look again only when twice as many (amortised O(1) per event).
        self._forget_at = max(self.max_tracked, 2 * len(self._limiters))

    async def try_acquire(self, tenant_id: str, event_id: str) -> bool:
        """Whether `tenant_id`'s event `event_id` is within the limit: the decision it got
        before, if it was decided lately, else a token taken from its tenant's bucket."""
        key = (tenant_id, event_id)
        decided = self._decided.get(key)
        if decided is None:
            decided = self._decided[key] = await self._take(tenant_id)
            if len(self._decided) > self.remembered:
                self._decided.popitem(last=False)
        return decided

    async def _take(self, tenant_id: str) -> bool:
        limiter = self._limiters.get(tenant_id)
        if limiter is None:
            if len(self._limiters) >= self._forget_at:
                self._forget_idle()
            limiter = AsyncLimiter(self.burst, self.burst / self.rate_per_second)
            self._limiters[tenant_id] = limiter
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # has capacity: returns at once
        return True
