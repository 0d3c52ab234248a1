"""JSON Schema snapshot of the contracts, and the compatibility check CI runs against it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.registry import TOPICS, TopicSpec

SNAPSHOT_DIR = Path(__file__).resolve().parent / "schemas" / "v1"
_DOC_KEYS = {"title", "description", "examples", "default"}
_ROOT = "<root>"


def topic_schema(spec: TopicSpec) -> dict[str, Any]:
    """The JSON Schema a consumer of this topic validates a record's value against."""
    schema = spec.adapter.json_schema(mode="validation")
    schema["$id"] = spec.name
    schema["x-ragstream-key"] = spec.key_description
    return schema


def render_schema(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_snapshot(
    directory: Path = SNAPSHOT_DIR, topics: Iterable[TopicSpec] = TOPICS
) -> list[Path]:
    """Write one `<topic>.json` per topic; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in topics:
        path = directory / f"{spec.name}.json"
        path.write_text(render_schema(topic_schema(spec)), encoding="utf-8")
        written.append(path)
    return written


@dataclass
class CompatibilityReport:
    """Breaking changes fail the check; compatible ones are listed for the snapshot update."""

    breaking: list[str] = field(default_factory=list)
    compatible: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaking


def _strip_docs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_docs(v) for k, v in node.items() if k not in _DOC_KEYS}
    if isinstance(node, list):
        return [_strip_docs(v) for v in node]
    return node


def _definitions(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    defs = dict(schema.get("$defs", {}))
    root = {k: v for k, v in schema.items() if k not in ("$defs", "$id", "x-ragstream-key")}
    defs[_ROOT] = root
    return defs


def _compare_definition(
    where: str, old: dict[str, Any], new: dict[str, Any], report: CompatibilityReport
) -> None:
    old_props, new_props = old.get("properties"), new.get("properties")
    if old_props is None or new_props is None:
        if _strip_docs(old) != _strip_docs(new):
            report.breaking.append(f"type changed: {where}")
        return
    for name, old_field in old_props.items():
        if name not in new_props:
            report.breaking.append(f"field removed: {where}.{name}")
        elif _strip_docs(old_field) != _strip_docs(new_props[name]):
            before = json.dumps(_strip_docs(old_field))
            after = json.dumps(_strip_docs(new_props[name]))
            report.breaking.append(f"type changed: {where}.{name} ({before} → {after})")
    old_required = set(old.get("required", []))
    for name in new.get("required", []):
        if name not in old_required:
            kind = "new required field" if name not in old_props else "field made required"
            report.breaking.append(f"{kind}: {where}.{name}")
    for name in new_props.keys() - old_props.keys():
        if name not in new.get("required", []):
            report.compatible.append(f"optional field added: {where}.{name}")


def compare_schemas(
    topic: str, old: Mapping[str, Any], new: Mapping[str, Any], report: CompatibilityReport
) -> None:
    old_defs, new_defs = _definitions(old), _definitions(new)
    for name, old_def in old_defs.items():
        where = f"{topic}:{name}"
        if name not in new_defs:
            report.breaking.append(f"model removed: {where}")
            continue
        _compare_definition(where, old_def, new_defs[name], report)
    for name in new_defs.keys() - old_defs.keys():
        report.compatible.append(f"model added: {topic}:{name}")


def check_compatibility(
    directory: Path = SNAPSHOT_DIR, topics: Iterable[TopicSpec] = TOPICS
) -> CompatibilityReport:
    """Compare the models with the committed snapshot in `directory`."""
    report = CompatibilityReport()
    if not directory.is_dir():
        report.breaking.append(
            f"no schema snapshot at {directory}; run `ragstream contracts export` and commit it"
        )
        return report
    current = {spec.name: topic_schema(spec) for spec in topics}
    for path in sorted(directory.glob("*.json")):
        topic = path.stem
        old = json.loads(path.read_text(encoding="utf-8"))
        if topic not in current:
            report.breaking.append(f"topic removed: {topic}")
            continue
        compare_schemas(topic, old, current[topic], report)
    for topic in current.keys() - {p.stem for p in directory.glob("*.json")}:
        report.compatible.append(f"topic added: {topic}")
    return report
