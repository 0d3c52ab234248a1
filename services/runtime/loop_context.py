"""Handler parameters from FastStream's context (the message, the broker, a stage's resources),
resolved on the event loop instead of in a worker thread.

fast_depends runs a custom field's synchronous `use` through `anyio.to_thread.run_sync`, so
each `Context()` parameter cost a thread hop on every handler call: ~0.2 ms of CPU each, and a
handler with three of them 0.79 ms a message against 0.19 ms (bench/README.md). `LoopContext`
makes `use` a coroutine, which fast_depends awaits on the loop; what it resolves is the same.

>>> Route = Annotated[RouteResources, LoopContext("route")]  # doctest: +SKIP
>>> async def route_queries(values: list[bytes], message: KafkaMessage, route: Route): ...
"""

from __future__ import annotations

from typing import Annotated, Any

# FastStream's public `Context()` returns an instance of this class; it has no public name.
from faststream._internal.context import Context as _ContextField
from faststream.kafka.broker import KafkaBroker as _KafkaBroker
from faststream.kafka.message import KafkaMessage as _KafkaMessage


class LoopContext(_ContextField):
    """`faststream.Context(name)`, resolved without a thread hop."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return super().use(**kwargs)


#: `faststream.kafka.annotations.KafkaMessage` and `KafkaBroker`, resolved on the loop.
KafkaMessage = Annotated[_KafkaMessage, LoopContext("message")]
KafkaBroker = Annotated[_KafkaBroker, LoopContext("broker")]
