"""Questions first: a document request waits while a question's embedding is in flight.

Triton orders its queue by priority but cannot pre-empt a running batch, and on CPU a document
request and a question's request share the same cores: a document request sent while a
question is being embedded slows the question down (or is merged with it by the dynamic
batcher). So document requests are held back while any question is in flight, and for
`grace_s` after the last one finished (a question's next steps, retrieval and generation, run
then); never longer than `max_wait_s` each, so a steady stream of questions slows a backfill
down but cannot stop it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress


class QueriesFirst:
    """One per process: `async with gate.query(): ...` around a question's embedding,
    `await gate.before_document()` before each document request.

    >>> gate = QueriesFirst(grace_s=0.0, max_wait_s=2.0)
    >>> async with gate.query():
    ...     vectors = await embed_question()
    """

    def __init__(
        self,
        grace_s: float = 0.0,
        max_wait_s: float = 2.0,
        on_hold: Callable[[float], None] | None = None,
    ) -> None:
        self.grace_s = grace_s
        self.max_wait_s = max_wait_s
        self.on_hold = on_hold  # called with the seconds each held document request waited
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_done = float("-inf")

    @asynccontextmanager
    async def query(self) -> AsyncIterator[None]:
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._last_done = asyncio.get_running_loop().time()
                self._idle.set()

    async def before_document(self, max_wait_s: float | None = None) -> None:
        """Return once no question is in flight nor finished within `grace_s`, or after
        `max_wait_s` (this call's, else the gate's), whichever is first."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + (self.max_wait_s if max_wait_s is None else max_wait_s)
        waited = False
        while (remaining := deadline - loop.time()) > 0:
            if self._in_flight:
                waited = True
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), remaining)
                continue
            grace_left = self._last_done + self.grace_s - loop.time()
            if grace_left <= 0:
                break
            waited = True
            await asyncio.sleep(min(grace_left, remaining))
        if waited and self.on_hold is not None:
            self.on_hold(loop.time() - started)
