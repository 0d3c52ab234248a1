"""The generator's budget logic, as plain functions: the smallest document and closing scores."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest

_SOURCE = (
    Path(__file__).resolve().parents[2] / "inference/model_repository/generator/1/constrained.py"
)


@pytest.fixture(scope="module")
def constrained() -> ModuleType:
    """The generator's constrained.py, loaded by path (Triton puts its folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("generator_constrained", _SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "citations": {"type": "array", "items": {"type": "string"}},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["answer", "citations", "confidence"],
        },
        {
            "type": "object",
            "properties": {
                "verdict": {"enum": ["grounded", "ungrounded"]},
                "reasons": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {"score": {"type": "integer", "minimum": 1}},
                        "required": ["score"],
                    },
                },
                "title": {"type": "string", "minLength": 3},
            },
            "required": ["verdict", "reasons", "title"],
        },
    ],
)
def test_smallest_document_is_valid_against_its_schema(
    constrained: ModuleType, schema: dict[str, object]
) -> None:
    smallest = constrained.minimal_instance(schema)

    jsonschema.validate(smallest, schema)
    assert len(json.dumps(smallest)) < 80


def test_closing_prefers_brackets_outside_strings_and_quotes_inside(
    constrained: ModuleType,
) -> None:
    structure, string = constrained._structure_score, constrained._string_score

    assert structure(b"]}") > structure(b"}") > structure(b",") > structure(b'"')
    assert structure(b'""') > structure(b"a") > structure("é".encode()[:1])
    assert string(b'"}') > string(b'"') > string(b"]}") > string("é".encode()[:1])
