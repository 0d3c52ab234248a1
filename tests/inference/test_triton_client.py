"""The client's failure handling: warm-up guard, retries and the circuit breaker."""

from __future__ import annotations

import pytest

from inference.breaker import CircuitBreaker
from inference.client import TritonClient
from inference.exceptions import (
    CircuitOpenError,
    ClientNotWarmedUpError,
    InferenceUnavailableError,
)
from inference.server import free_port


async def test_client_used_before_warm_up_says_so() -> None:
    client = TritonClient("127.0.0.1:1")
    with pytest.raises(ClientNotWarmedUpError, match="warm_up"):
        await client.embed(["text"])


@pytest.mark.triton
async def test_breaker_opens_when_the_server_is_unreachable() -> None:
    url = f"127.0.0.1:{free_port()}"
    breaker = CircuitBreaker(url, failure_threshold=3, cooldown_s=600)
    client = TritonClient(url, attempts=2, backoff_max_s=0.05, embed_timeout_s=2, breaker=breaker)
    await client.warm_up()
    try:
        for _ in range(3):
            with pytest.raises(InferenceUnavailableError, match="failed after 2 attempts"):
                await client.embed(["text"])
        with pytest.raises(CircuitOpenError, match="open after 3 consecutive failures"):
            await client.embed(["text"])
    finally:
        await client.close()
    assert client.retries_total == 3
    assert breaker.state == "open"


def test_breaker_half_opens_after_cooldown_and_closes_on_success() -> None:
    now = [0.0]
    breaker = CircuitBreaker("triton", failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    breaker.record_failure()
    breaker.record_failure()
    with pytest.raises(CircuitOpenError):
        breaker.before_call()

    now[0] = 10.0
    breaker.before_call()  # the one trial call
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # others still fail fast while the trial runs
    breaker.record_success()

    assert breaker.state == "closed"
    breaker.before_call()


def test_failed_trial_reopens_the_breaker() -> None:
    now = [0.0]
    breaker = CircuitBreaker("triton", failure_threshold=1, cooldown_s=5, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 6.0
    breaker.before_call()
    breaker.record_failure()

    assert breaker.state == "open"
    assert breaker.times_opened == 2
