"""The async Triton client every stage uses: embed, generate, statistics; retries and a breaker."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as grpcclient
from opentelemetry import trace
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tritonclient.utils import InferenceServerException

from inference.breaker import CircuitBreaker
from inference.exceptions import (
    ClientNotWarmedUpError,
    InferenceRequestError,
    InferenceUnavailableError,
)
from inference.generation import GenerationRequest, GenerationResult
from inference.queries_first import QueriesFirst

_TRANSIENT = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}
EMBEDDING_DIMENSIONS = 384  # the embedder's output `embedding` (all-MiniLM-L6-v2)
T = TypeVar("T")
#: Model calls are spans with OpenTelemetry's GenAI attributes; a no-op without a provider.
_tracer = trace.get_tracer(__name__)


class EmbedPriority(IntEnum):
    """What a text is: a question (one request, all at once, ahead of documents) or document
    chunks (small requests, one after another, held while a question is in flight). Sent as
    Triton's request priority too, which Triton uses only for a model configured with
    `priority_levels`; the embedder is not (see its config.pbtxt)."""

    QUERY = 1
    DOCUMENT = 2


@dataclass(frozen=True)
class ModelStatistics:
    """Triton's server-side counters for one model since it loaded."""

    model: str
    inference_count: int  # items inferred (a request of 8 texts counts 8)
    execution_count: int  # model executions (one per batch Triton formed)
    success_count: int  # successful requests
    queue_ns: int
    compute_infer_ns: int

    @property
    def average_batch_size(self) -> float:
        return self.inference_count / self.execution_count if self.execution_count else 0.0


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, InferenceServerException) and error.status() in _TRANSIENT


class TritonClient:
    """Typed async access to the `embedder` and `generator` models over gRPC.

    Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED) are retried with backoff; a call that
    still fails counts toward the circuit breaker, which then fails fast with CircuitOpenError.

    >>> client = TritonClient("127.0.0.1:8001")
    >>> await client.warm_up()
    >>> vectors = await client.embed(["what is kafka?"], priority=EmbedPriority.QUERY)
    """

    def __init__(
        self,
        url: str,
        *,
        embed_timeout_s: float = 30.0,
        generate_timeout_s: float = 300.0,
        attempts: int = 3,
        backoff_max_s: float = 2.0,
        breaker: CircuitBreaker | None = None,
        embed_batch_size: int = 64,
        document_request_size: int = 8,
        queries_first: QueriesFirst | None = None,
        embedder_model: str = "embedder",
        generator_model: str = "generator",
    ) -> None:
        self.url = url
        self.embed_timeout_s = embed_timeout_s
        self.generate_timeout_s = generate_timeout_s
        self.attempts = attempts
        self.backoff_max_s = backoff_max_s
        self.breaker = breaker or CircuitBreaker(f"triton at {url}")
        self.embed_batch_size = embed_batch_size
        self.document_request_size = document_request_size
        self.queries_first = queries_first or QueriesFirst()
        self.embedder_model = embedder_model
        self.generator_model = generator_model
        self.retries_total = 0
        self._client: grpcclient.InferenceServerClient | None = None

    async def warm_up(self) -> None:
        """Open the gRPC channel (idempotent). It connects lazily: Triton may start later."""
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.url)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def wait_until_ready(
        self, timeout_s: float = 60.0, models: Sequence[str] | None = None
    ) -> None:
        """Poll until `models` (default: both) are ready; InferenceUnavailableError at deadline."""
        client = self._require()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        models = tuple(models or (self.embedder_model, self.generator_model))
        while True:
            try:
                ready = [await client.is_model_ready(m, client_timeout=2.0) for m in models]
                if all(ready):
                    return
            except InferenceServerException:
                pass
            if loop.time() > deadline:
                raise InferenceUnavailableError(
                    f"models {list(models)} at {self.url} not ready after {timeout_s:.0f}s:"
                    " is tritonserver running (ragstream triton)?"
                )
            await asyncio.sleep(0.2)  # poll interval, bounded by the deadline

    async def embed(
        self, texts: Sequence[str], priority: EmbedPriority = EmbedPriority.DOCUMENT
    ) -> np.ndarray:
        """L2-normalised vectors, shape (len(texts), 384), float32."""
        client = self._require()
        if not texts:
            return np.zeros((0, EMBEDDING_DIMENSIONS), dtype=np.float32)
        with self._model_span("embeddings", self.embedder_model) as span:
            span.set_attribute("gen_ai.embeddings.dimension.count", EMBEDDING_DIMENSIONS)
            span.set_attribute("ragstream.embed.texts", len(texts))
            return await self._embed(client, texts, priority)

    async def _embed(
        self,
        client: grpcclient.InferenceServerClient,
        texts: Sequence[str],
        priority: EmbedPriority,
    ) -> np.ndarray:
        # A question's texts go in one request of at most `embed_batch_size` each, all at once.
        # Document chunks go in requests of `document_request_size`, one after another: Triton
        # cannot pre-empt a running batch, so a question arriving meanwhile waits for at most
        # one small request, and no document request is sent while a question is in flight
        # (`QueriesFirst`).
        query = priority == EmbedPriority.QUERY
        size = self.embed_batch_size if query else self.document_request_size
        parts = [texts[i : i + size] for i in range(0, len(texts), size)]

        async def embed_part(part: Sequence[str]) -> np.ndarray:
            data = np.array([[t.encode("utf-8")] for t in part], dtype=np.object_)
            inputs = [grpcclient.InferInput("text", list(data.shape), "BYTES")]
            inputs[0].set_data_from_numpy(data)
            result = await client.infer(
                self.embedder_model,
                inputs,
                outputs=[grpcclient.InferRequestedOutput("embedding")],
                priority=int(priority),
                client_timeout=self.embed_timeout_s,
            )
            return np.asarray(result.as_numpy("embedding"), dtype=np.float32)

        if query:
            async with self.queries_first.query():
                vectors = await asyncio.gather(
                    *(self._call(functools.partial(embed_part, p)) for p in parts)
                )
        else:
            vectors = []
            for part in parts:
                await self.queries_first.before_document()
                vectors.append(await self._call(functools.partial(embed_part, part)))
        return np.concatenate(vectors, axis=0)

    async def generate(
        self, request: GenerationRequest, model: str | None = None, model_version: str = ""
    ) -> GenerationResult:
        """Generate one completion with `model` (default: the client's generator) at
        `model_version` (default: the version Triton's policy serves); with `json_schema`,
        the text is JSON valid against it."""
        client = self._require()
        messages = json.dumps([m.model_dump() for m in request.messages])
        schema = json.dumps(request.json_schema) if request.json_schema is not None else ""
        values: list[tuple[str, np.ndarray, str]] = [
            ("messages", np.array([[messages.encode()]], dtype=np.object_), "BYTES"),
            ("max_new_tokens", np.array([[request.max_new_tokens]], dtype=np.int32), "INT32"),
            ("temperature", np.array([[request.temperature]], dtype=np.float32), "FP32"),
            ("json_schema", np.array([[schema.encode()]], dtype=np.object_), "BYTES"),
        ]
        inputs = []
        for name, data, datatype in values:
            tensor = grpcclient.InferInput(name, list(data.shape), datatype)
            tensor.set_data_from_numpy(data)
            inputs.append(tensor)

        model = model or self.generator_model

        async def infer() -> Any:
            return await client.infer(
                model, inputs, model_version=model_version, client_timeout=self.generate_timeout_s
            )

        with self._model_span("chat", model) as span:
            span.set_attribute("gen_ai.request.max_tokens", request.max_new_tokens)
            span.set_attribute("gen_ai.request.temperature", request.temperature)
            result = await self._call(infer)
            generated = GenerationResult(
                text=result.as_numpy("text").reshape(-1)[0].decode("utf-8"),
                input_tokens=int(result.as_numpy("input_tokens").reshape(-1)[0]),
                output_tokens=int(result.as_numpy("output_tokens").reshape(-1)[0]),
                finish_reason=result.as_numpy("finish_reason").reshape(-1)[0].decode(),
            )
            span.set_attribute("gen_ai.usage.input_tokens", generated.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", generated.output_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [generated.finish_reason])
        return generated

    async def statistics(self, model: str) -> ModelStatistics:
        """Triton's inference statistics for `model` (for benchmarks and tests)."""
        client = self._require()
        stats = await self._call(
            lambda: client.get_inference_statistics(model, as_json=True, client_timeout=10.0)
        )
        entry = stats["model_stats"][0]
        counters = entry.get("inference_stats", {})

        def number(section: str, field: str) -> int:
            return int(counters.get(section, {}).get(field, 0))

        return ModelStatistics(
            model=model,
            inference_count=int(entry.get("inference_count", 0)),
            execution_count=int(entry.get("execution_count", 0)),
            success_count=number("success", "count"),
            queue_ns=number("queue", "ns"),
            compute_infer_ns=number("compute_infer", "ns"),
        )

    def _model_span(self, operation: str, model: str) -> AbstractContextManager[trace.Span]:
        """A client span named as the GenAI conventions name it: "chat generator"."""
        return _tracer.start_as_current_span(
            f"{operation} {model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.system": "triton",
                "gen_ai.request.model": model,
                "server.address": self.url,
            },
        )

    def _require(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            raise ClientNotWarmedUpError(
                f"TritonClient for {self.url} used before warm_up(): await client.warm_up() first"
            )
        return self._client

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call` through the breaker, retrying transient errors with backoff."""
        self.breaker.before_call()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.1, max=self.backoff_max_s) + wait_random(0, 0.05),
            retry=retry_if_exception(_is_transient),
            before_sleep=self._count_retry,
            reraise=True,
        )

        async def attempt() -> T:  # a coroutine function: tenacity awaits it on every attempt
            return await call()

        try:
            result: T = await retrying(attempt)
        except InferenceServerException as error:
            if _is_transient(error):
                self.breaker.record_failure()
                raise InferenceUnavailableError(
                    f"Triton at {self.url} failed after {self.attempts} attempts"
                    f" ({error.status()}: {error.message()}): is tritonserver running?"
                ) from error
            self.breaker.record_success()  # the server answered: it is up
            raise InferenceRequestError(
                f"Triton at {self.url} rejected the request ({error.status()}): {error.message()}"
            ) from error
        except asyncio.CancelledError:
            self.breaker.record_abandoned()
            raise
        except Exception:
            self.breaker.record_failure()
            raise
        self.breaker.record_success()
        return result

    def _count_retry(self, state: RetryCallState) -> None:
        self.retries_total += 1
