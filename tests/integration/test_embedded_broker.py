"""The embedded broker: answers on its port, never outlives a killed parent, and runs the
worker threads it was given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from services.runtime.embedded_broker import WORKER_THREADS, EmbeddedBroker
from services.runtime.kafka_admin import broker_answers

pytestmark = pytest.mark.integration

_PARENT = """
import sys, time
from services.runtime.embedded_broker import EmbeddedBroker
broker = EmbeddedBroker().start()
print(broker.pid, broker.bootstrap_servers, flush=True)
time.sleep(600)
"""


def test_a_killed_parent_takes_its_broker_with_it() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert parent.stdout is not None
    pid_text, bootstrap = parent.stdout.readline().split()
    broker_pid = int(pid_text)
    assert broker_answers(bootstrap, timeout_s=5)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    while broker_answers(bootstrap, timeout_s=1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not broker_answers(bootstrap, timeout_s=1), f"broker {broker_pid} outlived its parent"


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def _worker_threads_seen(pid: int) -> str | None:
    """The `TOKIO_WORKER_THREADS` the broker process was started with, if any."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        entries = dict(
            entry.split(b"=", 1) for entry in environ.read().split(b"\0") if b"=" in entry
        )
    value = entries.get(b"TOKIO_WORKER_THREADS")
    return value.decode() if value is not None else None


def test_the_broker_runs_one_worker_thread_unless_the_environment_names_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TOKIO_WORKER_THREADS", raising=False)
    with EmbeddedBroker() as default:
        assert default.pid is not None
        assert _worker_threads_seen(default.pid) == str(WORKER_THREADS) == "1"
        default_threads = _threads(default.pid)
    monkeypatch.setenv("TOKIO_WORKER_THREADS", "6")
    with EmbeddedBroker() as operators:
        assert operators.pid is not None
        assert _worker_threads_seen(operators.pid) == "6"
        # tokio reads it: five more workers than the default's one
        assert _threads(operators.pid) >= default_threads + 4
