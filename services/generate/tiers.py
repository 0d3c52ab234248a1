"""Tier runners: one shape for every way of producing an answer (Triton, an OpenAI-compatible
endpoint, extractive, fixed test outputs): a request in, raw JSON output and usage out."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from string import Template
from typing import Any, Protocol

import httpx

from contracts.v1 import GenerationRequestV1
from inference.exceptions import InferenceRequestError, InferenceUnavailableError
from inference.generation import ChatMessage, GenerationRequest
from services.generate.extractive import extract_answer
from services.runtime.rollout import Arm, canary_arm
from services.runtime.sentences import estimate_tokens
from services.runtime.settings import TierSpec


class TierUnavailableError(RuntimeError):
    """The tier cannot answer now (server down, circuit open): try the next tier."""


@dataclass(frozen=True)
class TierOutput:
    raw_output: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    model_name: str
    model_version: str
    latency_ms: float


class TierRunner(Protocol):
    spec: TierSpec

    async def run(
        self, request: GenerationRequestV1, messages: list[ChatMessage]
    ) -> TierOutput: ...


def answer_schema(chunk_ids: list[str], max_chars: int) -> dict[str, Any]:
    """The JSON Schema a tier's output follows; citations can only be retrieved chunk ids."""
    return {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "minLength": 1, "maxLength": max_chars},
            "citations": {
                "type": "array",
                "items": {"type": "string", "enum": chunk_ids or ["none"]},
                "minItems": 1,
                "maxItems": 3,
            },
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["answer", "citations", "confidence"],
        "additionalProperties": False,
    }


def _sources(request: GenerationRequestV1) -> list[tuple[str, str]]:
    return [(c.chunk_id, c.text) for c in request.context]


def source_labels(request: GenerationRequestV1) -> list[str]:
    """What a model sees for each context chunk: "1", "2" … (small models copy a short
    number reliably; a 36-character chunk id derails them)."""
    return [str(i) for i in range(1, len(request.context) + 1)]


def labelled_sources(request: GenerationRequestV1) -> list[tuple[str, str]]:
    return list(zip(source_labels(request), (c.text for c in request.context), strict=True))


def restore_chunk_ids(raw_output: str, request: GenerationRequestV1) -> str:
    """The model's output with its source labels replaced by the chunk ids they stand for.
    Output that is not the expected JSON is returned as it is, for validate to reject."""
    try:
        data = json.loads(raw_output)
        labels = dict(
            zip(source_labels(request), (c.chunk_id for c in request.context), strict=True)
        )
        data["citations"] = [labels.get(str(label), str(label)) for label in data["citations"]]
    except (ValueError, KeyError, TypeError):
        return raw_output
    return json.dumps(data, ensure_ascii=False)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class ExtractiveTier:
    def __init__(self, spec: TierSpec) -> None:
        self.spec = spec

    async def run(self, request: GenerationRequestV1, messages: list[ChatMessage]) -> TierOutput:
        started = time.perf_counter()
        result = extract_answer(request.question, _sources(request))
        raw = json.dumps(
            {
                "answer": result.answer,
                "citations": result.citations,
                "confidence": result.confidence,
            }
        )
        read = estimate_tokens(request.question) + sum(
            estimate_tokens(t) for _, t in _sources(request)
        )
        return TierOutput(
            raw,
            read,
            estimate_tokens(result.answer),
            "stop",
            "extractive",
            "1",
            _elapsed_ms(started),
        )


class FixedTier:
    """Returns its configured outputs in turn (one per attempt): drives validation tests.
    `$chunk_0`, `$chunk_1` … stand for the ids of the request's context chunks."""

    def __init__(self, spec: TierSpec) -> None:
        self.spec = spec

    async def run(self, request: GenerationRequestV1, messages: list[ChatMessage]) -> TierOutput:
        if not self.spec.outputs:
            raise TierUnavailableError(f"fixed tier {self.spec.name} has no outputs configured")
        template = self.spec.outputs[min(request.attempt, len(self.spec.outputs) - 1)]
        ids = {f"chunk_{i}": c.chunk_id for i, c in enumerate(request.context)}
        raw = Template(template).safe_substitute(ids)
        return TierOutput(raw, 0, estimate_tokens(raw), "stop", f"fixed:{self.spec.name}", "1", 0.0)


class TritonTier:
    """A generator model on Triton, constrained to the answer schema. With `pin_version`, it
    asks for `spec.model_version` (two versions of one model served side by side in a canary);
    without, for the version Triton's policy serves."""

    def __init__(
        self, spec: TierSpec, client: Any, max_answer_chars: int, pin_version: bool = False
    ) -> None:
        self.spec = spec
        self.client = client
        self.max_answer_chars = max_answer_chars
        self.pin_version = pin_version

    async def run(self, request: GenerationRequestV1, messages: list[ChatMessage]) -> TierOutput:
        started = time.perf_counter()
        schema = answer_schema(source_labels(request), self.max_answer_chars)
        pinned = {"model_version": self.spec.model_version} if self.pin_version else {}
        try:
            result = await self.client.generate(
                GenerationRequest(
                    messages=messages,
                    max_new_tokens=request.max_output_tokens,
                    json_schema=schema,
                ),
                model=self.spec.model or None,
                **pinned,
            )
        except (InferenceUnavailableError, InferenceRequestError) as error:
            # Rejected (e.g. a model this Triton does not serve) is as good as unreachable for
            # this request: the next tier of the chain answers it, and the answer says why.
            raise TierUnavailableError(f"{self.spec.name}: {error}") from error
        return TierOutput(
            restore_chunk_ids(result.text, request),
            result.input_tokens,
            result.output_tokens,
            result.finish_reason,
            self.spec.model,
            self.spec.model_version,
            _elapsed_ms(started),
        )


class OpenAITier:
    """Any OpenAI-compatible chat completions endpoint, asked for JSON by response_format."""

    def __init__(self, spec: TierSpec, max_answer_chars: int, timeout_s: float = 60.0) -> None:
        if not spec.url or not spec.model:
            raise ValueError(f"tier {spec.name}: kind openai needs `url` and `model`")
        self.spec = spec
        self.max_answer_chars = max_answer_chars
        self.timeout_s = timeout_s

    async def run(self, request: GenerationRequestV1, messages: list[ChatMessage]) -> TierOutput:
        started = time.perf_counter()
        key = os.environ.get(self.spec.api_key_env, "") if self.spec.api_key_env else ""
        schema = answer_schema(source_labels(request), self.max_answer_chars)
        body = {
            "model": self.spec.model,
            "messages": [m.model_dump() for m in messages],
            "max_tokens": request.max_output_tokens,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            },
        }
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                response = await http.post(
                    self.spec.url.rstrip("/") + "/chat/completions", json=body, headers=headers
                )
        except httpx.TransportError as error:
            raise TierUnavailableError(f"{self.spec.name} at {self.spec.url}: {error}") from error
        if response.status_code >= 500 or response.status_code == 429:
            raise TierUnavailableError(
                f"{self.spec.name} at {self.spec.url} answered {response.status_code}"
            )
        response.raise_for_status()
        data = response.json()
        usage = data.get("usage", {})
        choice = data["choices"][0]
        return TierOutput(
            restore_chunk_ids(choice["message"]["content"] or "", request),
            int(usage.get("prompt_tokens", 0)),
            int(usage.get("completion_tokens", 0)),
            "length" if choice.get("finish_reason") == "length" else "stop",
            self.spec.model,
            self.spec.model_version,
            _elapsed_ms(started),
        )


def build_runner(
    spec: TierSpec, triton: Any, max_answer_chars: int, pin_version: bool = False
) -> TierRunner:
    if spec.kind == "extractive":
        return ExtractiveTier(spec)
    if spec.kind == "fixed":
        return FixedTier(spec)
    if spec.kind == "openai":
        return OpenAITier(spec, max_answer_chars)
    return TritonTier(spec, triton, max_answer_chars, pin_version)


@dataclass(frozen=True)
class TierArms:
    """A tier's stable runner and, while it has a canary configured, its canary runner."""

    stable: TierRunner
    canary: TierRunner | None = None

    def for_request(self, request_id: str) -> tuple[TierRunner, Arm]:
        """The runner of the request's arm: by its id, so a retry stays on the same model."""
        spec = self.stable.spec
        if self.canary is None or model_arm(spec, request_id) == "stable":
            return self.stable, "stable"
        return self.canary, "canary"


def model_arm(spec: TierSpec, request_id: str) -> Arm:
    """The tier's arm for a request; each tier's rollout splits traffic on its own."""
    return canary_arm(request_id, spec.canary_share, salt=f"model:{spec.name}")


def build_arms(spec: TierSpec, triton: Any, max_answer_chars: int) -> TierArms:
    """Both arms of a tier; a canary that is another version of the same model pins both
    versions, since Triton's policy would otherwise serve one of them to both arms."""
    if not (spec.canary_model or spec.canary_model_version):
        return TierArms(build_runner(spec, triton, max_answer_chars))
    pin = bool(spec.canary_model_version)
    return TierArms(
        build_runner(spec, triton, max_answer_chars, pin),
        build_runner(spec.canary(), triton, max_answer_chars, pin),
    )
