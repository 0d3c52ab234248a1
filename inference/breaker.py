"""Circuit breaker for calls to Triton: stop calling a server that keeps failing, retry later."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from inference.exceptions import CircuitOpenError

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failures; half-open after `cooldown_s`.

    While open, `before_call()` raises CircuitOpenError so the caller can fall back at once.
    Half-open lets one trial call through: success closes the circuit, failure reopens it.

    >>> breaker = CircuitBreaker("triton 127.0.0.1:8001", failure_threshold=5, cooldown_s=10)
    >>> breaker.before_call()
    >>> breaker.record_failure()
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold is {failure_threshold}: use 1 or more")
        self.name = name
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def before_call(self) -> None:
        """Raise CircuitOpenError unless a call may go through now."""
        state = self.state
        if state == "closed":
            return
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return
        remaining = (
            0.0 if self._opened_at is None else self.cooldown_s - (self._clock() - self._opened_at)
        )
        raise CircuitOpenError(
            f"circuit for {self.name} is open after {self._failures} consecutive failures;"
            f" next trial in {max(remaining, 0.0):.1f}s: fall back or retry later"
        )

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_flight = False

    def record_abandoned(self) -> None:
        """A call was cancelled before it finished: it proves nothing either way."""
        self._trial_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            if self._opened_at is None or self.state == "half_open":
                self.times_opened += 1
            self._opened_at = self._clock()
