"""Document requests yield to questions in flight, for at most their longest wait."""

from __future__ import annotations

import asyncio

from inference.queries_first import QueriesFirst


async def _ticks(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_document_request_waits_until_the_question_in_flight_is_done() -> None:
    held: list[float] = []
    gate = QueriesFirst(grace_s=0.0, max_wait_s=60.0, on_hold=held.append)
    async with gate.query():
        waiter = asyncio.create_task(gate.before_document())
        await _ticks()
        assert not waiter.done()
    await asyncio.wait_for(waiter, 5)
    assert len(held) == 1


async def test_it_waits_for_every_question_in_flight_not_just_the_first() -> None:
    gate = QueriesFirst(grace_s=0.0, max_wait_s=60.0)
    second_done = asyncio.Event()

    async def second_question() -> None:
        async with gate.query():
            await second_done.wait()

    other = asyncio.create_task(second_question())
    async with gate.query():
        await _ticks()
        waiter = asyncio.create_task(gate.before_document())
        await _ticks()
    await _ticks()
    assert not waiter.done()  # the other question is still in flight
    second_done.set()
    await asyncio.wait_for(asyncio.gather(other, waiter), 5)


async def test_a_document_request_goes_at_once_when_no_question_is_about() -> None:
    held: list[float] = []
    gate = QueriesFirst(grace_s=30.0, max_wait_s=60.0, on_hold=held.append)
    await asyncio.wait_for(gate.before_document(), 5)  # no question yet: no grace to wait out
    assert held == []


async def test_the_grace_after_a_question_holds_documents_back() -> None:
    gate = QueriesFirst(grace_s=30.0, max_wait_s=60.0)
    async with gate.query():
        pass
    waiter = asyncio.create_task(gate.before_document())
    await _ticks()
    assert not waiter.done()
    waiter.cancel()


async def test_a_question_that_never_ends_delays_documents_only_up_to_the_longest_wait() -> None:
    held: list[float] = []
    gate = QueriesFirst(grace_s=30.0, max_wait_s=0.05, on_hold=held.append)
    async with gate.query():
        await asyncio.wait_for(gate.before_document(), 5)
        await asyncio.wait_for(gate.before_document(), 5)
    assert len(held) == 2 and all(seconds >= 0.05 for seconds in held)  # reported, to metrics


async def test_a_failed_question_releases_the_documents() -> None:
    gate = QueriesFirst(grace_s=0.0, max_wait_s=60.0)
    waiter: asyncio.Task[None] | None = None
    try:
        async with gate.query():
            waiter = asyncio.create_task(gate.before_document())
            await _ticks()
            raise RuntimeError("Triton rejected the question")
    except RuntimeError:
        pass
    assert waiter is not None
    await asyncio.wait_for(waiter, 5)


async def test_a_call_may_wait_less_than_the_gate_allows() -> None:
    """Route gives each batch one budget: a call's own `max_wait_s` bounds that call."""
    gate = QueriesFirst(grace_s=0.0, max_wait_s=60.0)
    async with gate.query():
        await asyncio.wait_for(gate.before_document(max_wait_s=0.05), 5)
