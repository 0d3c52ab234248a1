"""`ragstream status`: is everything up, where is the broker, how far behind is each stage."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.table import Table

from contracts.registry import TOPICS
from services.runtime.broker import consumer_group
from services.runtime.health import stage_endpoints
from services.runtime.kafka_admin import broker_answers
from services.runtime.runstate import pid_alive, read_state, resolve_bootstrap
from services.runtime.settings import RuntimeSettings
from services.runtime.stage import STAGE_INPUTS, STAGES
from services.runtime.topic_reader import high_watermarks


def _lag(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=5)
    finally:
        consumer.close()
    return sum(max(0, ends[tp.partition] - max(tp.offset, 0)) for tp in committed)


TRITON_MODELS = ("embedder", "generator")


def triton_status(state: dict[str, Any], settings: RuntimeSettings) -> dict[str, Any] | None:
    """Triton's addresses and which models are ready (None when no stage needs one)."""
    grpc_url = settings.triton_url or state.get("triton_grpc_url")
    http_url = state.get("triton_http_url")
    if not grpc_url:
        return None
    ready: dict[str, bool] = {}
    for model in TRITON_MODELS:
        try:
            if http_url:
                url = f"{http_url.rstrip('/')}/v2/models/{model}/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    ready[model] = response.status == 200
            else:
                import tritonclient.grpc as grpcclient

                ready[model] = grpcclient.InferenceServerClient(grpc_url).is_model_ready(model)
        except Exception:  # unreachable or not ready: the answer is "no", not an error
            ready[model] = False
    return {
        "grpc_url": grpc_url,
        "http_url": http_url,
        "models_ready": ready,
        "ready": all(ready.values()),
    }


def collect_status(settings: RuntimeSettings) -> dict[str, Any]:
    state = read_state(settings.data_dir) or {}
    bootstrap = resolve_bootstrap(settings)
    broker_ok = broker_answers(bootstrap, timeout_s=2.0)
    ready_dir = Path(state["ready_dir"]) if state.get("ready_dir") else None
    stages: dict[str, Any] = {}
    for stage in STAGES:
        pids = [pid for pid in (state.get("stages") or {}).get(stage, []) if pid_alive(pid)]
        ready = (
            bool(pids)
            and ready_dir is not None
            and all((ready_dir / f"{stage}-{pid}").exists() for pid in pids)
        )
        topics: dict[str, Any] = {}
        if broker_ok:
            for spec in STAGE_INPUTS[stage]:
                try:
                    ends = asyncio.run(high_watermarks(bootstrap, spec.name))
                    lag = _lag(bootstrap, consumer_group(stage, spec), spec.name, ends)
                except KafkaException:
                    ends, lag = {}, None
                topics[spec.name] = {
                    "partitions": len(ends),
                    "events": sum(ends.values()),
                    "lag": lag,
                    "consumer_group": consumer_group(stage, spec),
                }
        urls = [e["metrics_url"] for e in stage_endpoints(settings.data_dir, stage)]
        stages[stage] = {"pids": pids, "ready": ready, "topics": topics, "metrics_urls": urls}
    dlq_ends = asyncio.run(high_watermarks(bootstrap, TOPICS.dlq.name)) if broker_ok else None
    dlq_count = sum(dlq_ends.values()) if dlq_ends is not None else None
    triton = triton_status(state, settings)
    return {
        "ready": broker_ok
        and all(s["ready"] for s in stages.values())
        and (triton is None or triton["ready"]),
        "bootstrap_servers": bootstrap,
        "triton": triton,
        "broker": {"reachable": broker_ok, "pid": state.get("broker_pid"), "embedded": bool(state)},
        "stages": stages,
        "dlq": {"topic": TOPICS.dlq.name, "count": dlq_count},
        "logs": state.get("logs"),
    }


def status_table(status: dict[str, Any]) -> Table:
    ready = "[green]ready[/]" if status["ready"] else "[red]not ready[/]"
    broker = "reachable" if status["broker"]["reachable"] else "[red]unreachable[/]"
    table = Table(title=f"ragstream {ready} — broker {status['bootstrap_servers']} {broker}")
    for column in ("stage", "pids", "ready", "topic", "partitions", "events", "lag"):
        table.add_column(column)
    for stage, info in status["stages"].items():
        rows = list(info["topics"].items()) or [("", {})]
        for index, (topic, t) in enumerate(rows):
            first = index == 0
            table.add_row(
                stage if first else "",
                ", ".join(map(str, info["pids"])) or "-" if first else "",
                ("yes" if info["ready"] else "[red]no[/]") if first else "",
                topic,
                str(t.get("partitions", "")),
                str(t.get("events", "")),
                str(t.get("lag", "")),
            )
    caption = f"DLQ: {status['dlq']['count']} dead letters ({status['dlq']['topic']})"
    if triton := status.get("triton"):
        models = ", ".join(
            f"{m} {'ready' if ok else 'NOT ready'}" for m, ok in triton["models_ready"].items()
        )
        caption += f"\nTriton {triton['grpc_url']}: {models}"
    table.caption = caption
    return table
