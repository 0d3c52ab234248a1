"""Per-tenant rate limits: over the limit, an event goes to the DLQ as `rate_limited`."""

from __future__ import annotations

from aiolimiter import AsyncLimiter

#: Tenants tracked before those whose bucket is full again are forgotten (forgetting one
#: changes no decision): events under made-up tenant ids cannot grow memory without bound.
MAX_TRACKED_TENANTS = 10_000


class TenantRateLimits:
    """A token bucket per tenant: `burst` events at once, refilled at `rate_per_second`.

    >>> limits = TenantRateLimits(rate_per_second=1, burst=2)
    >>> [await limits.try_acquire("acme") for _ in range(3)]  # doctest: +SKIP
    [True, True, False]
    """

    def __init__(
        self, rate_per_second: float, burst: int, max_tracked: int = MAX_TRACKED_TENANTS
    ) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.max_tracked = max_tracked
        self._limiters: dict[str, AsyncLimiter] = {}
        self._forget_at = max_tracked

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

    async def try_acquire(self, tenant_id: str) -> bool:
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
