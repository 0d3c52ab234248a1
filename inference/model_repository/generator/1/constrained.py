"""Constrained decoding for the generator: llguidance grammar masks with a budget-aware close."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, PreTrainedTokenizerFast

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# Compact JSON (no free whitespace): fewer tokens, and the closing mode below never has to
# compete with indentation.
_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
# Tokens reserved beyond the smallest valid document, for closing nested brackets and strings.
_RESERVE_MARGIN = 8


class SchemaError(ValueError):
    """The JSON schema of a request cannot be compiled into a grammar."""


class GrammarVocabulary:
    """The tokenizer as llguidance sees it, plus how much each token helps to close a document.

    Built once per model (about a second); shared by every request.

    >>> vocab = GrammarVocabulary(tokenizer, vocab_size=model.config.vocab_size)
    >>> row = vocab.json_row(schema, budget=64, temperature=0.0)
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        if not isinstance(tokenizer, PreTrainedTokenizerFast):
            raise TypeError(
                "constrained decoding needs a fast (Rust) tokenizer, got"
                f" {type(tokenizer).__name__}: save the checkpoint with tokenizer.json"
            )
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.eos_ids = set(self.ll_tokenizer.eos_tokens)
        # Two views of each token: as string content (only a leading quote closes) and as JSON
        # structure (quotes and brackets close; a comma moves on).
        self.closer_in_string = torch.zeros(vocab_size)
        self.closer_in_structure = torch.zeros(vocab_size)
        for token_id in range(vocab_size):
            text = self.ll_tokenizer.decode_bytes([token_id])
            self.closer_in_structure[token_id] = _structure_score(text)
            self.closer_in_string[token_id] = _string_score(text)

    def json_row(self, schema: dict[str, Any], budget: int, temperature: float) -> RowState:
        """Compile `schema` into a matcher for one request; raises SchemaError if it can't."""
        if not isinstance(schema, dict):
            raise SchemaError(f"json_schema must be a JSON object, got {type(schema).__name__}")
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=_JSON_OPTIONS)
        except ValueError as error:
            raise SchemaError(f"json_schema cannot be compiled into a grammar: {error}") from error
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self.ll_tokenizer
        )
        if is_error:
            raise SchemaError(f"json_schema cannot be compiled into a grammar: {messages[0]}")
        smallest = json.dumps(minimal_instance(schema), separators=(",", ":"))
        reserve = len(self.tokenizer.encode(smallest, add_special_tokens=False)) + _RESERVE_MARGIN
        if budget < reserve:
            raise SchemaError(
                f"max_new_tokens is {budget}, too few for json_schema: its smallest valid"
                f" document takes about {reserve - _RESERVE_MARGIN} tokens; give at least {reserve}"
            )
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        return RowState(budget=budget, temperature=temperature, matcher=matcher, reserve=reserve)


@dataclass
class RowState:
    """Decoding state of one request in a batch."""

    budget: int
    temperature: float
    matcher: llguidance.LLMatcher | None = None
    reserve: int = 0
    tokens: list[int] = field(default_factory=list)
    done: bool = False

    def consume(self, tokens: list[int]) -> None:
        """Advance the grammar over generated tokens it has not seen yet."""
        for token in tokens[len(self.tokens) :]:
            if self.matcher is not None and not self.matcher.consume_token(token):
                raise RuntimeError(f"grammar rejected token {token}: {self.matcher.get_error()}")
            self.tokens.append(token)

    def is_complete(self) -> bool:
        """True when the grammar (if any) accepts what has been generated."""
        return self.matcher is None or self.matcher.is_accepting()


class ConstrainedBatchProcessor(LogitsProcessor):
    """Masks each row of a left-padded batch to its own grammar, budget and temperature.

    Rows without a matcher generate free text. A JSON row enters *closing mode* when its
    remaining budget falls to its reserve (the token length of the smallest valid document
    plus a margin): from then on, among the tokens the grammar allows, it takes the one that
    closes most (`"`, `]`, `}`, end of sequence), so the document is complete within budget.
    """

    def __init__(self, vocab: GrammarVocabulary, rows: list[RowState], prompt_length: int) -> None:
        self._vocab = vocab
        self._rows = rows
        self._prompt_length = prompt_length
        self._eos = min(vocab.eos_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self._prompt_length
        for index, row in enumerate(self._rows):
            if step > 0 and not row.done:
                last = int(input_ids[index, -1])
                if last in self._vocab.eos_ids:
                    row.done = True
                else:
                    row.consume(input_ids[index, self._prompt_length :].tolist())
            scores[index] = self._row_scores(row, scores[index], step)
        return scores

    def _row_scores(self, row: RowState, scores: torch.Tensor, step: int) -> torch.Tensor:
        if row.done or step >= row.budget:
            return self._only(scores, torch.tensor([self._eos]))
        if row.matcher is not None:
            allowed = self._allowed(row.matcher, scores.shape[0])
            if not allowed.any():  # the grammar is finished or stuck: end the row
                return self._only(scores, torch.tensor([self._eos]))
            scores = scores.masked_fill(~allowed, float("-inf"))
            if row.budget - step <= row.reserve:
                scores = self._closing(scores, allowed, self._in_string(row))
        if row.temperature <= 0.0:
            return self._only(scores, scores.argmax().reshape(1))
        return scores / row.temperature

    def _allowed(self, matcher: llguidance.LLMatcher, width: int) -> torch.Tensor:
        if matcher.is_error():
            raise RuntimeError(f"grammar matcher failed: {matcher.get_error()}")
        words = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        bits = np.unpackbits(words, bitorder="little")[: self._vocab.vocab_size].astype(bool)
        allowed = torch.zeros(width, dtype=torch.bool)
        allowed[: bits.shape[0]] = torch.from_numpy(bits)
        return allowed

    def _in_string(self, row: RowState) -> bool | None:
        """Whether the JSON so far ends inside a string (None: right after a backslash)."""
        text = self._vocab.ll_tokenizer.decode_bytes(row.tokens)
        inside, escaped = False, False
        for byte in text:
            if escaped:
                escaped = False
            elif inside and byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                inside = not inside
        return None if escaped else inside

    def _closing(
        self, scores: torch.Tensor, allowed: torch.Tensor, in_string: bool | None
    ) -> torch.Tensor:
        if in_string is None:
            return scores
        priority = torch.zeros_like(scores)
        closer = self._vocab.closer_in_string if in_string else self._vocab.closer_in_structure
        priority[: self._vocab.vocab_size] = closer
        priority[~allowed] = -1.0
        for eos in self._vocab.eos_ids:
            if eos < priority.shape[0] and allowed[eos]:
                priority[eos] = 100.0
        best = priority.max()
        if best <= 0:
            return scores
        return scores.masked_fill(priority < best, float("-inf"))

    @staticmethod
    def _only(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        forced = torch.full_like(scores, float("-inf"))
        forced[keep] = 0.0
        return forced


def _plain_score(text: bytes) -> float:
    """A token of printable ASCII beats a fragment of a multi-byte character (fewer tokens)."""
    return 0.25 if text and all(0x20 <= byte < 0x7F for byte in text) else 0.0


def _structure_score(text: bytes) -> float:
    """Outside a string: brackets close (more is better), a comma moves on, `""` ends a value."""
    if text[:1] in (b"]", b"}"):
        return 2.0 + len(text) - len(text.lstrip(b"]}"))
    if text == b'""' or text.startswith(b","):
        return 1.0
    return 0.5 if text == b'"' else _plain_score(text)


def _string_score(text: bytes) -> float:
    """Inside a string: only a leading quote closes it; brackets after it close further."""
    if not text.startswith(b'"'):
        return _plain_score(text)
    rest = text[1:]
    return 2.0 + len(rest) - len(rest.lstrip(b"]}"))


def minimal_instance(schema: Any) -> Any:
    """The smallest document valid against common JSON Schema shapes, to size the reserve."""
    if not isinstance(schema, dict):
        return None
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0])
    kind = schema.get("type", "object" if "properties" in schema else None)
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind == "object":
        props = schema.get("properties", {})
        return {name: minimal_instance(props.get(name)) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal_instance(schema.get("items"))] * int(schema.get("minItems", 0))
    if kind == "string":
        return "a" * int(schema.get("minLength", 0))
    if kind in ("number", "integer"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None
