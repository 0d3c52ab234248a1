"""How long a stage's event loop is held, on /metrics: its lag and the collector's pauses.

One handler step that runs without awaiting, or one garbage collection, holds every other
handler of the stage: in a tenant flood route's loop stalled 100-700 ms at a time, from a
delete its local vector store checked in Python on every cached answer and from full
collections of ~160,000 objects (bench/README.md, "Tenant flood, 2026-12-07 14:05-15:55
UTC"). Those were found with a throwaway probe; these two histograms keep it in every stage:

- `ragstream_event_loop_lag_seconds`: how late a task that sleeps `LAG_PROBE_S` wakes, i.e.
  the longest the loop was held in that time (a lag of 0.2 s: some step ran 0.2 s alone);
- `ragstream_gc_pause_seconds`: each collection's wall time, by generation (2 is a full one).

>>> async with watching_stalls("route"):  # doctest: +SKIP
...     await serve()
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from prometheus_client import Histogram

#: How often the lag is sampled: a stall shorter than this may go unseen; a sample costs a
#: wake-up of the loop (ten a second).
LAG_PROBE_S = 0.1
#: A lag over this is a stall (`ragstream status`, the tenant-flood benchmark): the loop was
#: held longer than a question's whole hop takes when idle. One of the buckets below.
STALL_S = 0.1
_PAUSE_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, STALL_S, 0.25, 0.5, 1.0, 2.5)

LOOP_LAG = Histogram(
    "ragstream_event_loop_lag_seconds",
    "How late the stage's event loop woke a task sleeping 0.1 s: the longest it was held.",
    ["stage"],
    buckets=_PAUSE_BUCKETS,
)
GC_PAUSE = Histogram(
    "ragstream_gc_pause_seconds",
    "Garbage collections' wall time (the stage's threads wait meanwhile), by generation.",
    ["stage", "generation"],
    buckets=_PAUSE_BUCKETS,
)


@asynccontextmanager
async def watching_stalls(stage: str) -> AsyncIterator[None]:
    """While open, `stage`'s loop lag is sampled and every garbage collection timed."""
    timer = _collection_timer(stage)
    gc.callbacks.append(timer)
    sampler = asyncio.create_task(_sample_lag(stage), name=f"{stage}-loop-lag")
    try:
        yield
    finally:
        sampler.cancel()
        with suppress(asyncio.CancelledError):
            await sampler
        gc.callbacks.remove(timer)


async def _sample_lag(stage: str) -> None:
    lag = LOOP_LAG.labels(stage)
    loop = asyncio.get_running_loop()
    while True:
        asleep = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        lag.observe(max(0.0, loop.time() - asleep - LAG_PROBE_S))


def _collection_timer(stage: str) -> Any:
    """A `gc.callbacks` entry timing each collection (collections never overlap)."""
    pauses = [GC_PAUSE.labels(stage, str(generation)) for generation in range(3)]
    started = 0.0

    def timer(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            pauses[info["generation"]].observe(time.perf_counter() - started)

    return timer
