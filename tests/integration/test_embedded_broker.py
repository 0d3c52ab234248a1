"""The embedded broker: answers on its port, and never outlives a killed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

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
