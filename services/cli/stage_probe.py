"""What `ragstream status` asks each live stage process: its metrics and its readiness.

Every stage process serves `/metrics` and `/readyz` (`services.runtime.health`) and says where
in its endpoint file. A probe reads both from each process of a stage and sums them: the
partitions each consumer owns now, the events it consumed and published so far (counters, so
two probes a moment apart give events per second), how often its event loop was held over
`STALL_S` (`services.runtime.stalls`; a stall holds every handler of the process), and its
readiness checks (Qdrant for route, Triton for embed and generate).

>>> first = probe_stage(stage_endpoints(data_dir, "embed"))  # doctest: +SKIP
>>> rates(first, probe_stage(stage_endpoints(data_dir, "embed")))  # doctest: +SKIP
{'in_per_s': 41.5, 'out_per_s': 41.5}
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.runtime.health import stage_endpoints
from services.runtime.stage import STAGES
from services.runtime.stalls import STALL_S

_TIMEOUT_S = 2.0
_STALL_LE = str(STALL_S)  # the bucket of `ragstream_event_loop_lag_seconds` at STALL_S


@dataclass
class StageProbe:
    """One moment's view of a stage's processes, summed over them."""

    sampled_at: float
    processes_answering: int = 0
    #: topic → {partition: pid} for each partition a process of this stage owns.
    partitions_owned: dict[str, dict[int, int]] = field(default_factory=dict)
    events_in: float = 0.0
    events_out: float = 0.0
    #: The loop-lag samples taken so far, and those of them at most `STALL_S` (since each start).
    lag_samples: float = 0.0
    lag_on_time: float = 0.0
    #: check name → ready, over every process (False if any process says False).
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def stalls(self) -> float:
        """The loop-lag samples over `STALL_S` so far."""
        return self.lag_samples - self.lag_on_time


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:  # /readyz answers 503 with its checks
        return int(error.code), error.read()


def _read_metrics(text: str, pid: int, probe: StageProbe) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ragstream_partition_owned" and sample.value >= 1:
                owned = probe.partitions_owned.setdefault(sample.labels["topic"], {})
                owned[int(sample.labels["partition"])] = pid
            elif sample.name == "ragstream_events_in_total":
                probe.events_in += sample.value
            elif sample.name == "ragstream_events_out_total":
                probe.events_out += sample.value
            elif sample.name == "ragstream_event_loop_lag_seconds_count":
                probe.lag_samples += sample.value
            elif sample.name == "ragstream_event_loop_lag_seconds_bucket":
                if sample.labels.get("le") == _STALL_LE:
                    probe.lag_on_time += sample.value


def probe_stage(endpoints: Iterable[Mapping[str, Any]]) -> StageProbe:
    """Ask each endpoint (from `stage_endpoints`) for its metrics and readiness."""
    probe = StageProbe(sampled_at=time.monotonic())
    for endpoint in endpoints:
        pid = int(endpoint.get("pid", 0))
        try:
            _, metrics = _get(str(endpoint["metrics_url"]))
            _read_metrics(metrics.decode("utf-8"), pid, probe)
            _, readiness = _get(str(endpoint["readyz_url"]))
            for name, ok in (json.loads(readiness).get("checks") or {}).items():
                probe.checks[name] = probe.checks.get(name, True) and bool(ok)
        except (OSError, KeyError, ValueError):  # a process stopping between file and probe
            continue
        probe.processes_answering += 1
    return probe


def probe_stages(data_dir: Path) -> dict[str, StageProbe]:
    """`probe_stage` of every stage of the pipeline whose data dir is `data_dir`."""
    return {stage: probe_stage(stage_endpoints(data_dir, stage)) for stage in STAGES}


def rates(earlier: StageProbe, later: StageProbe) -> dict[str, float | None]:
    """Events per second consumed and published between two probes (None without a gap).

    A process that restarted in between resets its counters; a negative difference is 0."""
    seconds = later.sampled_at - earlier.sampled_at
    if seconds <= 0:
        return {"in_per_s": None, "out_per_s": None}
    return {
        "in_per_s": round(max(0.0, later.events_in - earlier.events_in) / seconds, 2),
        "out_per_s": round(max(0.0, later.events_out - earlier.events_out) / seconds, 2),
    }


def stalls(earlier: StageProbe | None, later: StageProbe) -> dict[str, float | None]:
    """How often the stage's loop was held over `STALL_S`: since its processes started, and
    out of how many samples between two probes (None without an earlier one)."""
    window: dict[str, float | None] = {"samples": None, "stalls": None}
    if earlier is not None:
        window = {
            "samples": max(0.0, later.lag_samples - earlier.lag_samples),
            "stalls": max(0.0, later.stalls - earlier.stalls),
        }
    return {"over_s": STALL_S, "since_start": later.stalls, **window}
