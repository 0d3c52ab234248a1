"""`ragstream status`: is everything up, where is the broker, how far behind is each stage."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.table import Table

from contracts.registry import TOPICS, TopicSpec
from services.cli.stage_probe import StageProbe, probe_stages, rates, stalls
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


def _owned_by_pid(owned: dict[int, int]) -> dict[str, list[int]]:
    by_pid: dict[str, list[int]] = {}
    for partition, pid in sorted(owned.items()):
        by_pid.setdefault(str(pid), []).append(partition)
    return by_pid


class StatusSampler:
    """Collects `ragstream status`; events per second come from the gap since the last call."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self._previous: dict[str, StageProbe] = {}

    def probe(self) -> dict[str, StageProbe]:
        probes = probe_stages(self.settings.data_dir)
        self._previous = probes
        return probes

    def collect(self) -> dict[str, Any]:
        previous = self._previous
        probes = self.probe()
        settings = self.settings
        state = read_state(settings.data_dir) or {}
        bootstrap = resolve_bootstrap(settings)
        broker_ok = broker_answers(bootstrap, timeout_s=2.0)
        ready_dir = Path(state["ready_dir"]) if state.get("ready_dir") else None
        stages: dict[str, Any] = {}
        for stage in STAGES:
            endpoints = stage_endpoints(settings.data_dir, stage)
            # `up` records its stages' pids; a `serve` process is known by its endpoint file.
            known = (state.get("stages") or {}).get(stage, [])
            pids = sorted({p for p in known if pid_alive(p)} | {int(e["pid"]) for e in endpoints})
            ready = (
                bool(pids)
                and ready_dir is not None
                and all((ready_dir / f"{stage}-{pid}").exists() for pid in pids)
            )
            probe = probes[stage]
            topics: dict[str, Any] = {}
            if broker_ok:
                for spec in STAGE_INPUTS[stage]:
                    topics[spec.name] = _topic_status(bootstrap, stage, spec)
                    owned = probe.partitions_owned.get(spec.name, {})
                    topics[spec.name]["partitions_owned"] = _owned_by_pid(owned)
            earlier = previous.get(stage)
            stages[stage] = {
                "pids": pids,
                "consumers_alive": len(pids),
                "ready": ready,
                "topics": topics,
                "events_per_s": rates(earlier, probe) if earlier else None,
                "loop_stalls": stalls(earlier, probe),
                "checks": probe.checks,
                "metrics_urls": [e["metrics_url"] for e in endpoints],
            }
        dlq_ends = asyncio.run(high_watermarks(bootstrap, TOPICS.dlq.name)) if broker_ok else None
        dlq_count = sum(dlq_ends.values()) if dlq_ends is not None else None
        triton = triton_status(state, settings)
        qdrant = _qdrant_status(probes["route"])
        return {
            "ready": broker_ok
            and all(s["ready"] for s in stages.values())
            and (triton is None or triton["ready"])
            and (qdrant is None or qdrant["ready"]),
            "bootstrap_servers": bootstrap,
            "triton": triton,
            "qdrant": qdrant,
            "broker": {
                "reachable": broker_ok,
                "pid": state.get("broker_pid"),
                "embedded": bool(state),
            },
            "stages": stages,
            "dlq": {"topic": TOPICS.dlq.name, "count": dlq_count},
            "logs": state.get("logs"),
        }


def _topic_status(bootstrap: str, stage: str, spec: TopicSpec) -> dict[str, Any]:
    try:
        ends = asyncio.run(high_watermarks(bootstrap, spec.name))
        lag = _lag(bootstrap, consumer_group(stage, spec), spec.name, ends)
    except KafkaException:
        ends, lag = {}, None
    return {
        "partitions": len(ends),
        "events": sum(ends.values()),
        "lag": lag,
        "consumer_group": consumer_group(stage, spec),
    }


def _qdrant_status(route: StageProbe) -> dict[str, Any] | None:
    """Qdrant as route sees it (its readiness check); None when no route process answers.

    In local mode the index has one owner, route, so asking route is the only way to know."""
    if "qdrant" not in route.checks:
        return None
    return {"ready": route.checks["qdrant"], "checked_by": "route"}


def collect_status(settings: RuntimeSettings, window_s: float = 1.0) -> dict[str, Any]:
    """The status now; with `window_s` > 0, events per second over that many seconds."""
    sampler = StatusSampler(settings)
    if window_s > 0:
        sampler.probe()
        time.sleep(window_s)
    return sampler.collect()


def _rate_cell(info: dict[str, Any]) -> str:
    rate = info.get("events_per_s")
    if not rate or rate.get("in_per_s") is None:
        return "-"
    return f"{rate['in_per_s']:g} / {rate['out_per_s']:g}"


def _stalls_cell(info: dict[str, Any]) -> str:
    """Samples of the loop held over the threshold: in the window, of how many, and in all."""
    held = info.get("loop_stalls")
    if not held or not info.get("pids"):
        return "-"
    since = f"{held['since_start']:g} since start"
    if held.get("samples") is None:
        return since
    return f"{held['stalls']:g}/{held['samples']:g}, {since}"


def _owned_cell(topic: dict[str, Any]) -> str:
    owned = topic.get("partitions_owned") or {}
    if not topic.get("partitions"):
        return ""
    by_pid = " ".join(f"{pid}:{','.join(map(str, ps))}" for pid, ps in owned.items())
    count = sum(len(ps) for ps in owned.values())
    return f"{count}/{topic['partitions']}" + (f" ({by_pid})" if by_pid else "")


def status_table(status: dict[str, Any]) -> Table:
    ready = "[green]ready[/]" if status["ready"] else "[red]not ready[/]"
    broker = "reachable" if status["broker"]["reachable"] else "[red]unreachable[/]"
    table = Table(title=f"ragstream {ready} — broker {status['bootstrap_servers']} {broker}")
    for column in ("stage", "consumers", "ready", "in/s out/s", "loop held > 0.1 s", "topic",
                   "owned (pid:partitions)", "events", "lag"):  # fmt: skip
        table.add_column(column)
    for stage, info in status["stages"].items():
        rows = list(info["topics"].items()) or [("", {})]
        for index, (topic, t) in enumerate(rows):
            first = index == 0
            table.add_row(
                stage if first else "",
                str(info["consumers_alive"]) if first else "",
                ("yes" if info["ready"] else "[red]no[/]") if first else "",
                _rate_cell(info) if first else "",
                _stalls_cell(info) if first else "",
                topic,
                _owned_cell(t),
                str(t.get("events", "")),
                str(t.get("lag", "")),
            )
    caption = f"DLQ: {status['dlq']['count']} dead letters ({status['dlq']['topic']})"
    if triton := status.get("triton"):
        models = ", ".join(
            f"{m} {'ready' if ok else 'NOT ready'}" for m, ok in triton["models_ready"].items()
        )
        caption += f"\nTriton {triton['grpc_url']}: {models}"
    if (qdrant := status.get("qdrant")) is not None:
        caption += f"\nQdrant (as route sees it): {'ready' if qdrant['ready'] else 'NOT ready'}"
    table.caption = caption
    return table
