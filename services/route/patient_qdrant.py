"""A Qdrant client that waits out an unreachable server instead of failing the event.

With a Qdrant server (RAGSTREAM_QDRANT_URL) the store can be away for a while: restarted,
rescheduled, behind a broken network. An event whose handling needs it must then wait, not
burn its handler attempts and land in the DLQ: every call retries, with backoff and a log
line per try, for as long as the server is unreachable (connection refused or reset, a
timeout, 502/503/504), and the consumer commits nothing meanwhile. Any other error (a bad
request, a missing collection) is raised at once, as before. Readiness asks the plain
client, bounded by the health server's timeout, so `/readyz` and `ragstream status` say
`qdrant: false` while calls wait. Local mode never raises these errors, so there it changes
nothing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx
from qdrant_client import AsyncQdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential

log = logging.getLogger("ragstream.route.qdrant")
#: Statuses a server answers while it starts, stops or sits behind an unready proxy.
UNAVAILABLE_STATUSES = frozenset({502, 503, 504})


def unreachable(error: BaseException) -> bool:
    """Whether `error` says the server is away (wait for it) rather than the call is wrong."""
    if isinstance(error, UnexpectedResponse):
        return error.status_code in UNAVAILABLE_STATUSES
    return isinstance(error, (ResponseHandlingException, httpx.TransportError, ConnectionError))


def _log_wait(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "qdrant unreachable (%s: %s); try %d failed, waiting %.1f s: events wait, none is lost",
        type(error).__name__,
        error,
        state.attempt_number,
        wait,
    )


def patient(client: AsyncQdrantClient, max_wait_s: float = 5.0) -> AsyncQdrantClient:
    """`client`, whose coroutine methods retry while the server is unreachable."""
    return cast(AsyncQdrantClient, _Patient(client, max_wait_s))


class _Patient:
    def __init__(self, client: AsyncQdrantClient, max_wait_s: float) -> None:
        self._client = client
        self._max_wait_s = max_wait_s

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return self._waiting(attribute)

    def _waiting(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def waiting(*args: Any, **kwargs: Any) -> Any:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(unreachable),
                wait=wait_exponential(multiplier=0.2, max=self._max_wait_s),
                before_sleep=_log_wait,
                reraise=True,
            ):
                with attempt:
                    return await call(*args, **kwargs)
            raise AssertionError("unreachable: AsyncRetrying without stop never gives up")

        return waiting
