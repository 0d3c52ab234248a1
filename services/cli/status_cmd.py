"""`ragstream status`: is everything up, where is the broker, how far behind is each stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.table import Table

from contracts.registry import TOPICS
from services.runtime.broker import consumer_group
from services.runtime.kafka_admin import broker_answers, end_offsets
from services.runtime.runstate import pid_alive, read_state, resolve_bootstrap
from services.runtime.settings import RuntimeSettings
from services.runtime.stage import STAGE_INPUTS, STAGES


def _lag(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> int:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=5)
    finally:
        consumer.close()
    return sum(ends[tp.partition] - max(tp.offset, 0) for tp in committed)


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
                    ends = end_offsets(bootstrap, spec.name)
                    lag = _lag(bootstrap, consumer_group(stage, spec), spec.name, ends)
                except KafkaException:
                    ends, lag = {}, None
                topics[spec.name] = {
                    "partitions": len(ends),
                    "events": sum(ends.values()),
                    "lag": lag,
                    "consumer_group": consumer_group(stage, spec),
                }
        stages[stage] = {"pids": pids, "ready": ready, "topics": topics}
    dlq_count = sum(end_offsets(bootstrap, TOPICS.dlq.name).values()) if broker_ok else None
    return {
        "ready": broker_ok and all(s["ready"] for s in stages.values()),
        "bootstrap_servers": bootstrap,
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
    table.caption = f"DLQ: {status['dlq']['count']} dead letters ({status['dlq']['topic']})"
    return table
