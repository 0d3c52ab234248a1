"""The user's commands end to end: `ragstream up`, `status`, `ingest --wait`, `dlq`, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.registry import TOPICS
from services.runtime.runstate import pid_alive
from services.runtime.stage import STAGES
from tests.integration.conftest import records_with_librdkafka

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "corpus"
QUESTIONS = REPO / "examples" / "questions.jsonl"


def ragstream(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _ctrl_c_as_in_a_terminal() -> None:
    """`up` gets SIGINT as from a terminal even when the test run itself was started in the
    background (`cmd &`), whose children inherit SIGINT ignored: Python then never raises
    KeyboardInterrupt, and the Ctrl-C test would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, str], subprocess.Popen[str]]]:
    data_dir = tmp_path_factory.mktemp("up")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGSTREAM_")}
    env["RAGSTREAM_DATA_DIR"] = str(data_dir)
    up = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--broker-port", "0"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    deadline = time.monotonic() + 400  # the first Triton start converts the LLM
    status: dict[str, Any] = {}
    while time.monotonic() < deadline and up.poll() is None:
        result = ragstream(env, "status", "--json", timeout=60)
        status = json.loads(result.stdout) if result.returncode == 0 else {}
        if status.get("ready"):
            break
        time.sleep(0.5)
    if not status.get("ready"):
        up.kill()
        raise AssertionError(f"ragstream up not ready: {status}\n{up.communicate()[0][-3000:]}")
    yield env, up
    if up.poll() is None:
        up.kill()


def _chunk_events_with_confluent_kafka(bootstrap: str, tenant: str) -> list[dict[str, Any]]:
    """The chunks topic read with librdkafka (confluent-kafka), not ragstream's code."""
    records = records_with_librdkafka(bootstrap, TOPICS.chunks.name)
    return [event for event in records if event["tenant_id"] == tenant]


def test_up_status_ingest_wait_and_chunks_on_the_topic(running: tuple[dict[str, str], Any]) -> None:
    env, _ = running
    status = json.loads(ragstream(env, "status", "--json").stdout)
    assert status["ready"] is True
    assert all(stage["pids"] for stage in status["stages"].values())
    assert set(status["stages"]) == set(STAGES)
    assert status["triton"]["models_ready"] == {"embedder": True, "generator": True}

    result = ragstream(env, "ingest", str(CORPUS), "--tenant", "demo", "--wait", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    files = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*") if p.is_file())
    assert sorted(r["doc_id"] for r in report["results"]) == files
    assert report["counts"] == {"done": len(files)}

    events = _chunk_events_with_confluent_kafka(status["bootstrap_servers"], "demo")
    chunk_sets = [e for e in events if e["event_type"] == "chunk.set"]
    chunks = [e for e in events if e["event_type"] == "chunk"]
    assert sorted(s["doc_id"] for s in chunk_sets) == files
    assert len(chunks) == sum(len(s["chunk_ids"]) for s in chunk_sets) >= len(files)
    onboarding = [c for c in chunks if c["doc_id"] == "handbook/onboarding.html"]
    assert ["Your first week at Northwind Labs", "Day one"] in [
        c["heading_path"] for c in onboarding
    ]

    again = json.loads(
        ragstream(env, "ingest", str(CORPUS), "--tenant", "demo", "--wait", "--json").stdout
    )
    assert again["counts"] == {"unchanged": len(files)}


def test_ask_prints_a_cited_answer_and_eval_meets_its_thresholds(
    running: tuple[dict[str, str], Any],
) -> None:
    env, _ = running
    assert ragstream(env, "ingest", str(CORPUS), "--tenant", "asker", "--wait").returncode == 0
    question = "How many days of paid vacation does a full-time employee receive?"
    result = ragstream(env, "ask", question, "--tenant", "asker", "--json", "--timeout", "120")
    assert result.returncode == 0, result.stdout + result.stderr
    answer = json.loads(result.stdout)
    assert answer["request_id"] and answer["refusal"] is None
    assert "25 days" in answer["answer"]
    assert {c["doc_id"] for c in answer["citations"]} == {"handbook/leave.md"}
    assert answer["citations"][0]["title"] == "Leave and time off"
    assert answer["tier"] in {"extractive", "small"} and answer["cache_hit"] == "none"
    assert answer["latency_ms"] > 0

    shown = ragstream(env, "ask", question, "--tenant", "asker")
    assert shown.returncode == 0 and "25 days" in shown.stdout and "exact" in shown.stdout

    evaluated = ragstream(env, "eval", str(QUESTIONS), "--tenant", "asker", "--json", timeout=900)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["passed"] is True and report["threshold_failures"] == [], report


def test_a_rejected_document_is_listed_and_replayed_from_the_dlq(
    running: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, _ = running
    (tmp_path / "empty.md").write_text("   \n\n  ")
    result = ragstream(env, "ingest", str(tmp_path), "--tenant", "dlqtest", "--wait", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["counts"] == {"rejected": 1}

    listed = json.loads(ragstream(env, "dlq", "list", "--tenant", "dlqtest", "--json").stdout)
    assert [(d["stage"], d["error_kind"]) for d in listed] == [("ingest", "rejected")]
    assert "no text content" in listed[0]["reason"]

    replayed = ragstream(env, "dlq", "replay", listed[0]["event_id"])
    assert replayed.returncode == 0 and "re-published 1" in replayed.stdout
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = json.loads(ragstream(env, "dlq", "list", "--tenant", "dlqtest", "--json").stdout)
        if len(listed) == 2:
            break
    assert len(listed) == 2 and listed[0]["original_value"] == listed[1]["original_value"]
    status = json.loads(ragstream(env, "status", "--json").stdout)
    assert status["dlq"]["count"] >= 2


def test_ctrl_c_stops_everything_cleanly(
    running: tuple[dict[str, str], subprocess.Popen[str]],
) -> None:
    env, up = running
    pids = [
        pid
        for stage in json.loads(ragstream(env, "status", "--json").stdout)["stages"].values()
        for pid in stage["pids"]
    ]
    up.send_signal(signal.SIGINT)
    output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in pids)
    assert json.loads(ragstream(env, "status", "--json").stdout)["ready"] is False


def test_demo_runs_the_whole_job_and_passes(
    running: tuple[dict[str, str], subprocess.Popen[str]],
) -> None:
    env, up = running
    if up.poll() is None:  # the demo starts its own pipeline in the same data dir
        up.send_signal(signal.SIGINT)
        up.wait(timeout=60)
    result = ragstream(env, "demo", timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "25 days" in result.stdout and "demo passed" in result.stdout
    assert "handbook/leave.md" in result.stdout
    assert json.loads(ragstream(env, "status", "--json").stdout)["ready"] is False
