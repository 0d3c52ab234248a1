"""Typed request and result of the `generator` model, as the client sends and returns them."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel):
    """What to generate: chat messages, a token budget and, optionally, a JSON Schema.

    >>> GenerationRequest(
    ...     messages=[ChatMessage(role="user", content="Capital of France?")],
    ...     max_new_tokens=64,
    ...     json_schema={"type": "object", "properties": {"answer": {"type": "string"}}},
    ... )
    """

    model_config = ConfigDict(frozen=True)

    messages: list[ChatMessage] = Field(min_length=1)
    max_new_tokens: int = Field(default=256, ge=1, description="budget of generated tokens")
    temperature: float = Field(default=0.0, ge=0.0, description="0 is greedy decoding")
    json_schema: dict[str, Any] | None = Field(
        default=None, description="the output is constrained to this schema; None is free text"
    )


class GenerationResult(BaseModel):
    """What the generator returned, with token usage."""

    model_config = ConfigDict(frozen=True)

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: Literal["stop", "length"]

    def parsed_json(self) -> Any:
        """The text as JSON (always parses for a request with a schema and finish "stop")."""
        return json.loads(self.text)
