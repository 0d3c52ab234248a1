"""Per-tenant rate limits: over the limit, an event goes to the DLQ as `rate_limited`."""

from __future__ import annotations

from aiolimiter import AsyncLimiter


class TenantRateLimits:
    """A token bucket per tenant: `burst` events at once, refilled at `rate_per_second`.

    >>> limits = TenantRateLimits(rate_per_second=1, burst=2)
    >>> [await limits.try_acquire("acme") for _ in range(3)]  # doctest: +SKIP
    [True, True, False]
    """

    def __init__(self, rate_per_second: float, burst: int) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self._limiters: dict[str, AsyncLimiter] = {}

    async def try_acquire(self, tenant_id: str) -> bool:
        limiter = self._limiters.get(tenant_id)
        if limiter is None:
            limiter = AsyncLimiter(self.burst, self.burst / self.rate_per_second)
            self._limiters[tenant_id] = limiter
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # has capacity: returns at once
        return True
